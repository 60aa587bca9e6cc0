//! Retry with jitter for HTTP APIs under load: full-jitter backoff, server-given
//! delays, a shared retry budget and an overall deadline.
//!
//! Use it in front of an HTTP API whose failures are often brief (a 529 overload, a
//! 429 with a reset time, a dropped connection), where sending the same request again
//! a moment later is the cheapest way to an answer.
//!
//! ```
//! use std::time::Duration;
//! use brownout_core::Body;
//! use brownout_retry::{Backoff, RetryConfig, RetryLayer};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An upstream that is overloaded once, then answers.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let upstream = service_fn(move |request: Request<Body>| {
//!     let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let body = request.into_body().collect().await?.to_bytes();
//!         let status = if n == 0 { 529 } else { 200 };
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
//!             Response::builder().status(status).body(Body::from(body))?,
//!         )
//!     }
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(
//!         RetryConfig::new()
//!             .max_attempts(4)
//!             .backoff(Backoff::full_jitter(Duration::from_millis(200), Duration::from_secs(5))?)
//!             .deadline(Duration::from_secs(30)),
//!     ))
//!     .service(upstream);
//!
//! let response = client
//!     .oneshot(Request::post("/v1/messages").body(Full::new(Bytes::from("{}")))?)
//!     .await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(brownout_retry::Attempts::of(response.extensions()), 2);
//! # Ok(()) }
//! ```
//!
//! # What it retries
//!
//! What a result means comes from brownout-core's classification (see
//! [`brownout_core::classify`]): rate limits (429), overloads (529, 503), other server
//! errors, timeouts and connection failures are retried; client errors (400, 401, 403,
//! 404, 413, OpenAI's `insufficient_quota`) go back at the first attempt, and
//! `x-should-retry` overrides the status either way. To decide otherwise, give your
//! classifier to a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) right
//! over the HTTP client: it is the one classifier of the whole stack, and this layer
//! reads the outcome it recorded on each answer.
//!
//! # How long it waits
//!
//! The larger of the [`Backoff`] (full jitter by default: a draw from
//! `[0, min(8 s, 500 ms × 2ⁿ⁻¹))`) and the delay the server asked for (`retry-after-ms`,
//! `retry-after` in seconds or as a date, the provider's rate-limit reset headers). A
//! server delay above [`RetryConfig::max_server_delay`] (60 s by default) is not
//! waited for: the response goes back at once. Each wait is announced by a `DEBUG`
//! event ([`RetryEvent::Retrying`]) before it starts.
//!
//! # When it stops
//!
//! - after [`max_attempts`](RetryConfig::max_attempts) (3 by default, the first one
//!   included);
//! - when the [`RetryBudget`] shared by all clones is spent;
//! - when the next wait would end after the call's [`deadline`](RetryConfig::deadline);
//!   an attempt still running when the deadline passes is cut off;
//! - when the request body is longer than the stack's replay limit
//!   ([`BodyLimits`](brownout_core::body::BodyLimits), one setting for every layer,
//!   4 MiB by default) and so cannot be sent again: it is sent once, whole, and an
//!   event says why it was not retried.
//!
//! The caller gets the last response (with the count of attempts in its
//! [`Attempts`] extension when there was more than one; read it with
//! [`Attempts::of`]) or the last error. Errors the
//! layer makes itself ([`AttemptTimedOut`](brownout_core::error::AttemptTimedOut),
//! [`DeadlineExceeded`](brownout_core::error::DeadlineExceeded)) come as a
//! [`BoxError`](brownout_core::BoxError) to `downcast_ref`.
//!
//! # When the caller's request is at fault
//!
//! A request body that breaks or stalls while it is read (the caller hung up, the
//! upload was cut short of its `content-length`) is never sent: the call fails at once
//! with the [`BrokenBody`](brownout_core::error::BrokenBody) error (find it with
//! [`brownout_core::error::find`]). Nothing is retried, nothing is deposited into or
//! taken from the budget, and no event is emitted: it says nothing about the
//! upstream.
//!
//! # Where it goes in a stack
//!
//! Inside a circuit breaker and a model fallback, outside any per-request timeout and
//! the HTTP client: each retry is then one more attempt against the same target, and
//! the breaker sees the result of the whole retried call. The layer buffers the
//! request body once to replay it (unless a layer further out already did), so the
//! inner service receives a [`Body`](brownout_core::Body), and answers with one:
//! the classifier may have read the start of an error body (never a success body),
//! and the caller still receives every byte.
//!
//! # Compared with `tower::retry`
//!
//! tower's `Retry` needs a cloneable request and a policy written by hand. This layer
//! buffers the body itself, knows what LLM providers' errors mean, honours server
//! delays, and has the budget, deadline and events built in.

mod backoff;
mod budget;
mod config;
mod event;
mod future;
mod layer;
mod meta;
mod service;

pub use backoff::{Backoff, Jitter};
pub use brownout_core::error::InvalidConfig;
pub use budget::{BudgetStore, RetryBudget};
pub use config::RetryConfig;
pub use event::{GiveUpReason, RetryEvent};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use meta::Attempts;
pub use service::Retry;
