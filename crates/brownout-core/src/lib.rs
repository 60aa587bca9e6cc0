//! The shared vocabulary of brownout's layers.
//!
//! brownout is a set of `tower` layers that keep an application answering when the
//! HTTP API it calls (first of all an LLM provider) is overloaded, rate-limiting or
//! down. This crate holds no layer of its own: it is what the layers agree on.
//!
//! - [`classify`]: one decision of what happened to a request ([`Outcome`]), knowing
//!   generic HTTP, Anthropic and OpenAI semantics, replaceable by your own.
//! - [`body`]: [`Body`], the one body of every layer, buffered once for replay.
//! - [`request`]: the facts of an LLM request (API, model, `max_tokens`, `stream`,
//!   caller), read once and carried in its extensions.
//! - [`provider`]: what brownout knows of Anthropic and OpenAI, in one place.
//! - [`event`]: every decision as a `tracing` event and for a [`Listener`](event::Listener).
//! - [`future`]: the boxed response future of the layers that read bodies.
//! - [`health`]: which targets can take requests now, as a fallback asks it.
//! - [`json`]: top-level members of a JSON body, found without a full parse.
//! - [`shape`]: the providers' response and error bodies and their SSE streams, byte
//!   for byte.
//! - [`sse`]: server-sent events cut into whole events without copying, and what
//!   each means in a provider's stream (content, the end, an error).
//! - [`rng`]: injectable randomness; time comes only from `tokio::time`, so tests can
//!   pause it.
//! - [`error`]: the errors layers create themselves.
//! - `testing` (feature `test-util`, for tests only): a scripted upstream and test
//!   request bodies.
//!
//! ```
//! use brownout_core::classify::{classify_response, DefaultClassifier, OutcomeKind, DEFAULT_ERROR_BODY_LIMIT};
//! use http_body_util::{BodyExt, Full};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
//! let response = http::Response::builder()
//!     .status(529)
//!     .header("retry-after", "3")
//!     .body(brownout_core::Body::new(Full::new(bytes::Bytes::from(body))))
//!     .unwrap();
//!
//! let (response, outcome) =
//!     classify_response(&DefaultClassifier::new(), response, DEFAULT_ERROR_BODY_LIMIT).await;
//! assert_eq!(outcome.kind(), OutcomeKind::Overloaded);
//! assert_eq!(outcome.error_type(), Some("overloaded_error"));
//! assert_eq!(outcome.server_delay(), Some(std::time::Duration::from_secs(3)));
//! // The caller still receives the whole body.
//! let bytes = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(bytes, body.as_bytes());
//! # }
//! ```

pub mod body;
pub mod classify;
pub mod error;
pub mod event;
pub mod future;
pub mod health;
pub mod json;
pub mod provider;
pub mod request;
pub mod rng;
pub mod shape;
pub mod sse;
#[cfg(feature = "test-util")]
pub mod testing;

pub use body::Body;
pub use classify::{Classifier, Classify, Outcome, OutcomeKind};
pub use error::BoxError;
pub use request::RequestFacts;
