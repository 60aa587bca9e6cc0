//! Circuit breakers for tower HTTP clients, one per model or host: fail fast while an
//! upstream is down, and let a few probes find out when it is back.
//!
//! Use it when an upstream's outages last long enough that waiting on it (and
//! retrying into it) only adds load and latency: an LLM provider's model that is
//! overloaded for minutes, a host that is down. While a breaker is open, its requests
//! fail at once, and a fallback outside can send them elsewhere.
//!
//! ```
//! use std::time::Duration;
//! use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, CircuitOpen, FailurePolicy, OpenDuration};
//! use brownout_core::Body;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An upstream whose every answer is an overload.
//! let upstream = service_fn(|_: Request<Body>| async {
//!     Response::builder().status(529).body(Body::empty())
//! });
//! let breakers = CircuitBreakerLayer::new(
//!     BreakerConfig::new()
//!         .policy(FailurePolicy::consecutive(3)?)
//!         .open_duration(OpenDuration::Fixed(Duration::from_secs(20))),
//! );
//! let handle = breakers.handle();
//! let client = ServiceBuilder::new().layer(breakers).service(upstream);
//!
//! let request = || {
//!     Request::post("https://api.anthropic.com/v1/messages")
//!         .body(Full::new(Bytes::from(r#"{"model":"claude-opus-4-1","max_tokens":64}"#)))
//! };
//! for _ in 0..3 {
//!     assert_eq!(client.clone().oneshot(request()?).await?.status(), 529);
//! }
//! // The fourth request is refused at once, and says why.
//! let error = client.clone().oneshot(request()?).await.unwrap_err();
//! let open = error.downcast_ref::<CircuitOpen>().unwrap();
//! assert_eq!(open.key(), "claude-opus-4-1");
//! assert_eq!(open.retry_after(), Some(Duration::from_secs(20)));
//! assert!(!brownout_core::health::Health::is_available(&handle, "claude-opus-4-1"));
//! # Ok(()) }
//! ```
//!
//! # States
//!
//! A breaker is **closed** (requests pass, outcomes are counted) until its
//! [`FailurePolicy`] trips it: so many failures in a row, or a failure rate over a
//! window of the last N calls or of the last stretch of time, once the window holds a
//! minimum number of calls. It is then **open**: requests fail at once, without
//! reaching the inner service, for the [`OpenDuration`] — fixed, or growing with
//! jitter on repeated trips — and never less than the delay a failing response asked
//! for (`retry-after`, `retry-after-ms`, rate-limit reset headers), up to
//! [`max_server_delay`](BreakerConfig::max_server_delay). Then it is **half-open**: a
//! configured number of probes may be in flight at once, the rest are refused; enough
//! successful probes close it, one failed probe opens it again.
//!
//! # What counts
//!
//! brownout-core's classification decides, and by default an outcome fails when
//! [`OutcomeKind::is_upstream_failure`](brownout_core::OutcomeKind::is_upstream_failure)
//! says so: rate limits, overloads, server errors (an invalid status such as 641
//! included), timeouts and connection failures count as failures; client errors (400,
//! 401, 403, 404, 413, an exhausted quota) and refusals by another breaker are not
//! counted at all, since they say nothing about the upstream's health. With
//! [`slow_call`](BreakerConfig::slow_call), a call slower than the threshold is a
//! failure whatever it returned. Change which outcomes fail with
//! [`failure_when`](BreakerConfig::failure_when); change what a response means for the
//! whole stack with a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over
//! the HTTP client, whose recorded outcome this layer reads.
//!
//! # When the caller's request is at fault
//!
//! A request body that breaks or stalls while it is read to find its key (the caller
//! hung up, the upload was cut short) is never sent: the call fails at once with
//! brownout-core's [`BrokenBody`](brownout_core::error::BrokenBody) error, and no
//! breaker counts it. Keyed by model, the body is read only as far as its top-level
//! `model` (a 200 KB conversation after it is not walked on the success path); when
//! the call fails, the rest is checked before the failure counts, and a body that
//! names its `model` twice (an upstream may have served the second) counts against no
//! breaker. Layers that rewrite or store the request (fallback, cache, degrade)
//! refuse such a body with [`InvalidRequest`](brownout_core::error::InvalidRequest)
//! before it is sent. Keyed by host or by [`key_by`](BreakerConfig::key_by), the body is not
//! read here: it streams to the inner service as it comes (unless a layer further out
//! already buffered it), marked as the caller's, so that if it breaks on the way the
//! client's error holds a `BrokenBody`, which no breaker counts.
//!
//! # Keys
//!
//! One breaker per key, so that one model's outage never blocks another. By default the
//! key is the top-level `model` of a JSON body, from the request's
//! [`RequestFacts`](brownout_core::RequestFacts) (read once for the whole stack, from
//! the body buffered under the stack's [`BodyLimits`](brownout_core::body::BodyLimits);
//! for a body over that limit, from the bytes read ahead of the rest), else the host.
//! The keys are bounded: see [`LocalStore`].
//!
//! # Where the breakers live
//!
//! In a [`LocalStore`] in this process, unless the config is given a
//! [`store`](BreakerConfig::store) of its own: anything that implements
//! [`BreakerStore`], such as a store shared by several replicas.
//!
//! # When it refuses
//!
//! With a [`CircuitOpen`] error (`downcast_ref` it from the `BoxError`) naming the key
//! and when to retry, which the default classifier of the layers further out reads as
//! [`Rejected`](brownout_core::OutcomeKind::Rejected); or, with [`OnOpen::Respond`], a
//! `503` with `retry-after`, an error body in the provider's shape, and the same
//! `Rejected` outcome recorded on it. Either
//! way a [`CircuitRejected`](BreakerEvent::CircuitRejected) event is
//! emitted, and every state change is a
//! [`CircuitStateChanged`](BreakerEvent::CircuitStateChanged) event
//! with key, from, to and why.
//!
//! # Where it goes in a stack
//!
//! Outside the retry layer: the breaker then counts a whole retried call once, and a
//! retry never hammers an open circuit. Inside a fallback, which asks the
//! [`BreakerHandle`] (a [`Health`](brownout_core::health::Health) view) which targets
//! to skip.

mod config;
mod error;
mod event;
mod future;
mod handle;
mod keys;
mod layer;
mod refusal;
mod service;
mod shared;
mod state;
mod store;
mod stripe;

pub use config::{BreakerConfig, FailurePolicy, GrowingOpen, OnOpen, OpenDuration, Window};
pub use error::CircuitOpen;
pub use event::{BreakerEvent, CircuitState, TransitionReason};
pub use future::ResponseFuture;
pub use handle::BreakerHandle;
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
pub use state::{Admission, Force, Permit, Snapshot, Transition, Verdict};
pub use store::{BreakerEntry, BreakerStore, LocalStore};

/// A setting that was refused, naming it and why.
pub use brownout_core::error::InvalidConfig;
