//! A response cache for tower HTTP clients: the last good answer when the upstream
//! fails (stale-if-error), or a fresh one without going live, partitioned per caller.
//!
//! ```
//! use std::time::Duration;
//! use brownout_cache::{CacheConfig, CacheLayer, CacheStatus};
//! use brownout_core::Body;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An upstream that answers once, then is overloaded.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let upstream = service_fn(move |_: Request<Body>| {
//!     let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let (status, body) = if n == 0 { (200, "Paris.") } else { (529, "overloaded") };
//!         Response::builder().status(status).body(Body::from(body))
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(CacheLayer::new(CacheConfig::new().stale_window(Duration::from_secs(3600))))
//!     .service(upstream);
//! let ask = || {
//!     Request::post("https://api.anthropic.com/v1/messages")
//!         .header("x-api-key", "sk-ant-caller-1")
//!         .body(Full::new(Bytes::from(r#"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"Capital of France?"}]}"#)))
//! };
//!
//! assert_eq!(client.clone().oneshot(ask()?).await?.status(), 200);
//! // The upstream is overloaded now: the stored answer stands in, marked stale.
//! let response = client.clone().oneshot(ask()?).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["x-brownout-cache"], "stale");
//! assert_eq!(response.extensions().get::<CacheStatus>(), Some(&CacheStatus::Stale));
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "Paris.");
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! When yesterday's answer beats an error: a stored answer stands in while the
//! upstream is overloaded or down ([`Mode::StaleIfError`]), or answers repeated
//! questions without going live at all ([`Mode::FreshHit`]). Not for streams (see
//! below).
//!
//! # Modes
//!
//! - [`Mode::StaleIfError`] (the default, for LLM calls): always go live; store every
//!   complete successful answer; when the live path fails with an outcome
//!   [`serve_stale_when`](CacheConfig::serve_stale_when) accepts — by default
//!   [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable):
//!   overloaded, rate limited, server error, timeout, connection failure, refused by
//!   a breaker — answer with the stored one if it is younger than
//!   [`ttl`](CacheConfig::ttl) + [`stale_window`](CacheConfig::stale_window). Client
//!   errors go back unchanged.
//! - [`Mode::FreshHit`] (for FAQ-style traffic): an entry younger than the TTL is
//!   served without going live; identical concurrent misses are coalesced into one
//!   upstream call, whose answer the others receive as hits. Failures fall back to
//!   stale entries as above.
//!
//! The live answer is classified once: the outcome a layer further in recorded on it
//! is reused, else the stack's classifier
//! ([`DefaultClassifier`](brownout_core::classify::DefaultClassifier), or yours through
//! a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the HTTP client)
//! decides.
//!
//! Answers from the store carry `x-brownout-cache: hit|stale`, `age`, the
//! [`CacheStatus`] extension, and a
//! [`ServedFromCache`](CacheEvent::ServedFromCache) event.
//!
//! # Keys and partitions
//!
//! Two requests are the same when their method, path, query, selected headers
//! (`anthropic-version`, `anthropic-beta`, `openai-organization`, `openai-project`) and
//! JSON body agree — the body canonicalised, so member order and whitespace do not
//! matter, while any value (a different `temperature`) does. The caller's credential
//! (the providers' credential headers of
//! [`CREDENTIAL_HEADERS`](brownout_core::provider::CREDENTIAL_HEADERS): `x-api-key`,
//! `authorization`, `api-key`) is hashed into the key, so one caller never receives
//! another's answer; sharing across callers takes an explicit
//! [`no_credential_partitioning`](CacheConfig::no_credential_partitioning). Keys are
//! BLAKE3 digests; credentials are never stored or logged. (The credential goes into
//! the key's own digest rather than through the request facts' `Fingerprint`: one
//! digest per request instead of two.)
//!
//! # What is buffered, and what is stored
//!
//! - The request body, always, whole: it is the key. It is read once for the whole
//!   stack, under the stack's [`BodyLimits`](brownout_core::body::BodyLimits) (4 MiB by
//!   default, set in the request's extensions). A longer body bypasses the cache:
//!   the bytes read so far, then the rest, go to the upstream as they come.
//! - A successful (2xx) answer that is not an event stream and not marked
//!   `cache-control: no-store` is read whole, up to
//!   [`max_entry_bytes`](CacheConfig::max_entry_bytes), before the caller receives its
//!   first byte, in both modes: that is how it is stored. One whose `content-length`
//!   is over the limit is handed on unread; one that turns out longer, fails while
//!   it is read, or ends with trailers is handed on whole (the bytes read, then the
//!   rest or the failure) and not stored.
//! - An error answer is read only as far as the classifier needs (the first 4 KiB of
//!   a 429 or 5xx body, and only once in a stack), and never stored.
//!
//! Only those complete successful answers are stored. The store is a `quick_cache` cache
//! ([`LocalCacheStore`]) bounded by [`max_entries`](CacheConfig::max_entries)
//! (exactly) and [`max_bytes`](CacheConfig::max_bytes). Freshness is judged with
//! `tokio::time`, so tests can pause it.
//!
//! Another [`CacheStore`] can be given to [`CacheConfig::store`]: the Redis-backed
//! store of `brownout-redis` (`RedisCacheStore`) shares the entries between the
//! replicas of a deployment, with a local tier in front. The key, and (in fresh-hit
//! mode) the memo of exact request forms that saves a repeated request the canonical
//! form, stay the layer's, whichever store holds the entries; the layer's own store is called
//! directly, without a boxed future.
//!
//! **Streaming** requests (`"stream": true` at the top level of the body, as the
//! request's facts say) share their entry with the same request that does not
//! stream: the key leaves `stream` and `stream_options` out. A streamed answer goes
//! to the caller as it comes (it is not held back), copied on the way; once it has
//! ended whole (its `message_stop` or `[DONE]`, no error event) the message it
//! amounts to is stored as JSON. A stored answer served to a request that streams is
//! rendered as the stream the provider would have sent for it, one content delta for
//! the whole text, marked like any other stored answer; served to one that does not
//! stream, it is the JSON. Answers that neither form renders faithfully (tool use, a
//! stop sequence, the Responses API) are neither stored from a stream nor served as
//! one. The stored stream is not a replay of the original's timing or events.
//!
//! # On failure
//!
//! A caller's request body that breaks or stalls while it is read is answered at once
//! with a [`BrokenBody`](brownout_core::error::BrokenBody) error, and one that names
//! its top-level `model` twice with an
//! [`InvalidRequest`](brownout_core::error::InvalidRequest) error: the upstream is not
//! called, nothing is stored, and no stored answer stands in, even a fresh one for
//! the same key. When the live path fails, see the modes above; when the store has
//! nothing to serve, the live failure goes back as it is.
//!
//! # Where it goes in a stack
//!
//! Outside the fallback, breaker and retry layers, so that a stored answer stands in
//! only when every live path has failed; inside the degrade layer, which answers when
//! even the store has nothing.

mod canon;
mod config;
mod event;
mod future;
mod key;
mod layer;
mod serve;
mod service;
mod store;
mod stream;

pub use config::{CacheConfig, Mode};
pub use event::{CacheEvent, CacheStatus};
pub use key::CacheKey;
pub use layer::CacheLayer;
pub use service::Cache;
pub use store::{CacheStore, CachedResponse, LocalCacheStore, StoreFuture};

pub use future::ResponseFuture;
