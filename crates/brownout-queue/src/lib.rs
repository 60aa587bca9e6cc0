//! Holds requests for a model through an overload window, and drains them on recovery
//! without a thundering herd.
//!
//! Use it when an upstream's bad moments are short — a model that answers `529` for a
//! few hundred milliseconds at a time, a breaker that opens for a second — and the
//! caller would rather have the preferred model's answer a little later than a
//! lighter model's answer now, or an error. While a key (the model, by default) is
//! known to be unavailable, its requests wait in a bounded queue instead of being sent
//! into the burst; when it is back, a single probe goes first, then admission grows
//! 1, 2, 4 … in flight (slow start) and halves on a new overload (AIMD). Every queued
//! request gets exactly one answer: the live one, or a shed answer in the provider's
//! shape.
//!
//! ```
//! use std::time::Duration;
//! use brownout_core::{testing::{Step, Upstream}, Body};
//! use brownout_queue::{QueueConfig, QueueLayer};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The model is overloaded once, and asks for 300 ms.
//! let upstream = Upstream::new();
//! upstream.script(
//!     "claude-opus-4-1",
//!     [Step::Answer(529, vec![("retry-after-ms", "300".into())], r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)],
//! );
//! let queue = QueueLayer::new(QueueConfig::new().max_wait(Duration::from_secs(2)));
//! let handle = queue.handle();
//! let client = ServiceBuilder::new().layer(queue).service(upstream.clone());
//! let request = || {
//!     http::Request::post("https://api.anthropic.com/v1/messages")
//!         .body(Full::new(Bytes::from(r#"{"model":"claude-opus-4-1","max_tokens":64}"#)))
//! };
//!
//! // The overload passes through (a retry or fallback layer outside decides about it)…
//! assert_eq!(client.clone().oneshot(request()?).await?.status(), 529);
//! // …and the next request waits the 300 ms out instead of meeting the burst.
//! let start = tokio::time::Instant::now();
//! let response = client.clone().oneshot(request()?).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(start.elapsed(), Duration::from_millis(300));
//! assert_eq!(upstream.attempts(), 2);
//! assert_eq!(handle.depth("claude-opus-4-1"), 0);
//! # let _: Body = response.into_body();
//! # Ok(()) }
//! ```
//!
//! # When a key is unavailable
//!
//! The queue learns it from two sources, neither of which is another layer's crate:
//!
//! - **The answers that pass through it.** An overload (`529`, `503`), a rate limit
//!   (`429`) or another layer's refusal (a circuit breaker's `CircuitOpen`, which
//!   brownout-core classifies as [`Rejected`](brownout_core::OutcomeKind::Rejected))
//!   that carries a server-given delay (`retry-after`, `retry-after-ms`, the rate-limit
//!   reset headers, a breaker's reopening time) makes the key unavailable for that
//!   long. The outcome is the one brownout-core's classifier recorded on the
//!   response, so the queue agrees with every other layer about what an answer meant.
//!   An overload without a delay does not hold anything back on its own (it may be one
//!   unlucky request); while a key is recovering, it halves admission.
//! - **A [`Health`](brownout_core::health::Health) view**, given with
//!   [`QueueConfig::health`]: a circuit breaker's handle (`BreakerHandle`), or any
//!   closure. While it says no, requests wait and ask again every
//!   [`poll_interval`](QueueConfig::poll_interval). How long it will say no is
//!   unknown unless a [`reopen_hint`](QueueConfig::reopen_hint) tells (for a breaker:
//!   `move |key| handle.state(key).and_then(|s| s.open_for)`).
//!
//! Otherwise requests pass straight through: with no key unavailable and no health
//! view to ask, the layer costs one atomic load and a look at the answer's head; the
//! request's facts are read only when an answer says its key is unavailable (see the
//! `queue` benchmark).
//!
//! # Draining without a herd
//!
//! When a key becomes unavailable its admission limit drops to one. When the delay has
//! passed (and the health view says yes), the first waiter goes alone, as a half-open
//! probe. Each success admits one more in flight, so admission doubles each round
//! (1, 2, 4 …); the key is back to normal (no limit, nothing tracked) once nobody waits
//! any more or admission reaches [`recovery_limit`](QueueConfig::recovery_limit). A new
//! overload while recovering halves the limit (once per round: answers of calls
//! admitted before the last halving do not halve it again) and growth goes on by one
//! per round from there (AIMD); one with a delay also holds the key again for that
//! long. Requests already in flight when a key became unavailable are not counted
//! against its limit.
//!
//! Two settings fit LLM APIs, where an overload is answered in milliseconds and an
//! answer takes seconds:
//!
//! - [`early_ack`](QueueConfig::early_ack) (120 ms by default): an admitted call that
//!   has not failed after that long counts as a success for slow start and gives its
//!   place in flight to the next one, so that the backlog does not wait a whole answer
//!   per round.
//! - [`probe_after`](QueueConfig::probe_after) (off by default): probe after at most
//!   that long, even when the server asked for longer (`retry-after` has whole
//!   seconds; a burst is often over sooner).
//!
//! A request the queue admitted that meets a new overload or rate limit with a delay
//! (or a breaker's refusal) is held again in its place, as long as its wait allows;
//! otherwise its caller gets that live answer. Only the queue's own admissions are
//! held again, and only with their body in memory.
//!
//! # Bounded and fair
//!
//! - At most [`max_queue`](QueueConfig::max_queue) requests wait per key.
//! - No request waits longer than [`max_wait`](QueueConfig::max_wait) or past its
//!   deadline ([`QueueConfig::deadline`], or a [`Deadline`] in its extensions). One whose
//!   *expected* wait is already longer is shed at once, not after waiting.
//! - Requests are admitted by priority class, highest first, first come first served
//!   within a class ([`Priority`], from the `x-brownout-priority` header or a closure).
//! - One caller's credential holds at most its [`caller_share`](QueueConfig::caller_share)
//!   of a key's queue (half by default), so that one tenant cannot fill it.
//!
//! # What it does on failure
//!
//! Every request gets exactly one answer. A shed request (queue full, caller share
//! used, wait too long, wait expired, shutdown) is answered by default in the
//! provider's shape: Anthropic's `529 overloaded_error` (OpenAI's APIs: a `503`), with
//! `retry-after` when the wait is known and `x-should-retry: false`, the [`Shed`] in its
//! extensions and a `Rejected` outcome recorded, so that a fallback outside moves on;
//! or, with [`OnShed::Error`], the [`Shed`] error (its source is brownout-core's
//! [`Rejected`](brownout_core::error::Rejected)). A caller who hangs up while waiting
//! leaves the queue at once and is never sent. [`QueueHandle::shutdown`] sheds every
//! waiting request. A caller's broken or invalid request body fails at once with the
//! caller's error, and is never queued.
//!
//! # Wait or move
//!
//! With a cascade, whether to wait for the preferred model or move to the next one is
//! one rule, [`PreferWait`] ([`prefer_wait_up_to`]): wait when the expected wait is at
//! most 500 ms (by default), move when it is longer or unknown. The [`QueueHandle`] is a
//! [`Health`](brownout_core::health::Health) view that applies it: give it to the
//! fallback instead of the breaker's handle, and the fallback skips a model only when
//! waiting for it would take too long. A retry layer can apply the same rule to a
//! `retry-after`: sleep it when short, hand the answer to the cascade when long.
//!
//! # Events
//!
//! [`QueueEvent`]s (layer `"queue"`): `queued` (key, depth, expected wait), `admitted`
//! (key, time waited), `shed` (key, reason, time waited) and `admission_changed`
//! (key, new limit, why). The [`QueueHandle`] reads each key's depth and limit.
//!
//! # Where it goes in a stack
//!
//! Inside the fallback, which asks the [`QueueHandle`] whether to wait or move, and
//! outside the retry layer. Either side of the circuit breaker:
//!
//! - `fallback > breaker > queue > retry > client` (measured best on the simulator's
//!   burst script): the breaker counts a held request once, as it counts a retried
//!   one, so that short bursts do not open it; give the fallback both views,
//!   `queue.handle().and(breakers.handle())`. While the breaker is open the fallback
//!   moves on, as without the queue.
//! - `fallback > queue > breaker > retry > client`, with
//!   [`QueueConfig::health`]`(breakers.handle())`: requests also wait while the breaker
//!   is open (each probe the queue sends is counted by the breaker).
//!
//! The queue buffers the request once under the stack's
//! [`BodyLimits`](brownout_core::body::BodyLimits) and reads its
//! [`RequestFacts`](brownout_core::RequestFacts) when it may have to hold it, which the
//! layers inside then reuse.

mod config;
mod error;
mod event;
mod future;
mod handle;
mod layer;
mod policy;
mod service;
mod shed;
mod state;

pub use config::{OnShed, Priority, QueueConfig, PRIORITY_HEADER};
pub use error::{Shed, ShedReason};
pub use event::QueueEvent;
pub use future::ResponseFuture;
pub use handle::{Both, QueueHandle};
pub use layer::QueueLayer;
pub use policy::{prefer_wait_up_to, Choice, PreferWait};
pub use service::Queue;

/// A setting that was refused, naming it and why.
pub use brownout_core::error::InvalidConfig;

/// The caller's deadline for one request, in its extensions (brownout-core's, shared by
/// every layer that holds requests): the queue never holds it past this instant, and
/// sheds it at once when the expected wait ends later. Takes precedence over
/// [`QueueConfig::deadline`].
pub use brownout_core::request::Deadline;
