//! Tower middleware that keeps an application answering when the HTTP API it calls is
//! overloaded, rate-limiting or down — first of all LLM providers (Anthropic's 529
//! `overloaded_error` and 429 `rate_limit_error`, OpenAI's 429 and 503), and any other
//! HTTP service too.
//!
//! Each layer lives in its own crate and is re-exported here behind a feature of the
//! same name; `full` turns them all on.
//!
//! | feature | module | what it does |
//! |---|---|---|
//! | `retry` (default) | [`retry`] | retry with full jitter, server-given delays, a budget and a deadline |
//! | `breaker` (default) | [`breaker`] | circuit breakers per model or host, with half-open probes |
//! | `fallback` (default) | [`fallback`] | a cascade from the preferred model to lighter ones |
//! | `cache` (default) | [`cache`] | the last good answer when the upstream fails, per caller |
//! | `degrade` (default) | [`degrade`] | canned answers in the provider's shape when nothing else answers |
//! | `limit` | [`limit`] | client-side RPM/TPM limits, tokens counted before sending, settled from usage |
//! | `queue` | [`queue`] | holds a model's requests through a short overload, drains them with slow start |
//! | `observe`, `observe-sqlite`, `observe-alert` | [`observe`] | one record per request and per upstream call: metrics (the `metrics` facade), a span, a status board; the SQLite availability log and report; alert rules |
//! | `reqwest` | [`reqwest_bridge`] | a `reqwest::Client` as the inner service |
//! | `client` | [`client`] | a ready HTTPS client (hyper-util over rustls, HTTP/2 by ALPN) as the inner service |
//! | `reqwest-middleware` | [`reqwest_middleware`] | a reqwest-middleware `Middleware` that sends each request through a stack |
//! | `axum` | [`Error`] | `IntoResponse` for [`Error`], the view of a stack's failure |
//!
//! [`Error`] reads any error a stack returns (an open circuit with its retry-after,
//! an exhausted cascade with each target's reason, a deadline, a connection failure)
//! and turns it into the answer a handler gives: a status, `retry-after`, and an
//! error body in the provider's shape.
//!
//! What the layers share is re-exported from `brownout-core` at the top level:
//! [`Body`], the one body type of every layer (a client under a brownout stack is
//! `Client<C, brownout::Body>`, whichever layers are on, and
//! `ServiceBuilder::option_layer` works with each layer); [`classify`], one
//! classification per attempt that travels outward with the response (set your own
//! with [`classify::ClassifyLayer`] over the client); [`request`], the facts of an LLM
//! request read once; [`body::BodyLimits`], the one replay limit of the stack;
//! [`provider`], [`event`], [`health`], [`json`], [`error`], [`rng`].
//!
//! # The recommended order
//!
//! Outermost first, as [`ServiceBuilderExt`] reads:
//!
//! 1. **degrade** — the last resort: it answers only when everything inside failed, so
//!    it wraps everything.
//! 2. **cache** — a stored answer stands in only when every live path failed (the
//!    cascade included), and a fresh hit saves the whole live path.
//! 3. **fallback** — moves to the next model when one fails or its breaker is open; it
//!    asks the breaker's handle, so it must sit outside the breaker.
//! 4. **breaker** — counts each (retried) call once, and fails fast without letting the
//!    retry layer hammer an open circuit.
//! 5. **retry** — closest to the network: each retry is one more attempt at the same
//!    target, with the body replayed byte for byte.
//! 6. the HTTP client (hyper-util, [`reqwest_bridge::ReqwestService`], …).
//!
//! ```
//! # #[cfg(all(feature = "retry", feature = "breaker", feature = "fallback", feature = "cache"))] {
//! use std::time::Duration;
//! use brownout::{
//!     breaker::{BreakerConfig, CircuitBreakerLayer},
//!     cache::CacheConfig,
//!     fallback::{FallbackConfig, Target},
//!     retry::RetryConfig,
//!     ServiceBuilderExt,
//! };
//! use tower::ServiceBuilder;
//!
//! # let http_client = tower::service_fn(|_: http::Request<brownout::Body>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(brownout::Body::empty()))
//! # });
//! let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
//! let cascade = FallbackConfig::new([Target::new("claude-sonnet-4-5"), Target::new("claude-haiku-4-5")])
//!     .unwrap()
//!     .health(breakers.handle());
//! let client = ServiceBuilder::new()
//!     .response_cache(CacheConfig::new())
//!     .model_fallback(cascade)
//!     .circuit_breaker(breakers)
//!     .retry_with_jitter(RetryConfig::new().deadline(Duration::from_secs(60)))
//!     .service(http_client);
//! # let _ = client;
//! # }
//! ```

pub use brownout_core::{
    body, classify, error, event, health, json, provider, request, rng, shape,
};
pub use brownout_core::{Body, BoxError, Classifier, Classify, Outcome, OutcomeKind, RequestFacts};

#[cfg(feature = "retry")]
#[doc(inline)]
pub use brownout_retry as retry;

#[cfg(feature = "breaker")]
#[doc(inline)]
pub use brownout_breaker as breaker;

#[cfg(feature = "fallback")]
#[doc(inline)]
pub use brownout_fallback as fallback;

#[cfg(feature = "cache")]
#[doc(inline)]
pub use brownout_cache as cache;

#[cfg(feature = "degrade")]
#[doc(inline)]
pub use brownout_degrade as degrade;

#[cfg(feature = "limit")]
#[doc(inline)]
pub use brownout_limit as limit;

#[cfg(feature = "observe")]
#[doc(inline)]
pub use brownout_observe as observe;

#[cfg(feature = "queue")]
#[doc(inline)]
pub use brownout_queue as queue;

#[cfg(feature = "redis")]
#[doc(inline)]
pub use brownout_redis as redis;

mod builder;
pub use builder::ServiceBuilderExt;

#[cfg(feature = "reqwest")]
pub mod reqwest_bridge;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "reqwest-middleware")]
pub mod reqwest_middleware;

mod failure;
pub use failure::{Error, ErrorKind, TargetFailure};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
