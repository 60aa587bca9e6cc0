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
//!
//! What the layers share — how a result is classified, replayable bodies, response
//! metadata and events — is re-exported from `brownout-core` at the top level:
//! [`classify`], [`body`], [`meta`], [`event`], [`health`], [`json`], [`error`],
//! [`rng`].
//!
//! ```
//! # #[cfg(feature = "retry")] {
//! use std::time::Duration;
//! use brownout::retry::{RetryConfig, RetryLayer};
//! use tower::ServiceBuilder;
//!
//! # let client = tower::service_fn(|_: http::Request<brownout::body::PrefixedBody<http_body_util::Full<bytes::Bytes>>>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! # });
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryConfig::new().deadline(Duration::from_secs(60))))
//!     .service(client);
//! # let _ = client;
//! # }
//! ```

pub use brownout_core::{body, classify, error, event, health, json, meta, rng};
pub use brownout_core::{BoxError, Classifier, Classify, Outcome, OutcomeKind};

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

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
