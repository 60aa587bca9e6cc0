//! A model cascade for tower HTTP clients: when the preferred model is overloaded,
//! answer from a lighter one, and say which.
//!
//! ```
//! use brownout_core::{Body, RequestFacts};
//! use brownout_fallback::{FallbackConfig, FallbackLayer, ServedBy, Target};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Opus is overloaded; the others answer.
//! let upstream = service_fn(|request: Request<Body>| async move {
//!     // The layers inside see the facts of the body they are sent, read once.
//!     let model = RequestFacts::of(request.extensions()).and_then(|f| f.model()).unwrap_or("");
//!     let status = if model.contains("opus") { 529 } else { 200 };
//!     let body = request.into_body().collect().await?.to_bytes();
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
//!         Response::builder().status(status).body(Body::from(body))?,
//!     )
//! });
//! let cascade = FallbackConfig::new([
//!     Target::new("claude-opus-4-1"),
//!     Target::new("claude-sonnet-4-5"),
//!     Target::new("claude-haiku-4-5").max_tokens(8192),
//! ])?
//! .served_header_default();
//! let client = ServiceBuilder::new().layer(FallbackLayer::new(cascade)).service(upstream);
//!
//! let request = Request::post("https://api.anthropic.com/v1/messages").body(Full::new(
//!     Bytes::from(r#"{"model":"claude-opus-4-1","max_tokens":1024,"messages":[]}"#),
//! ))?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["x-brownout-model"], "claude-sonnet-4-5");
//! assert_eq!(response.extensions().get::<ServedBy>().unwrap().position(), 1);
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! When a lighter model's answer is better than no answer: the caller asked for the
//! preferred model, and gets another one (and is told which) while the preferred one
//! is overloaded, rate limited or down.
//!
//! # How it moves along
//!
//! The targets are tried in order, from the requested model when it is one of them
//! (the cascade never upgrades a request), else from the first — or, with
//! [`UnknownModels::PassThrough`], a request for another model is sent unchanged.
//! Each target gets the request with its model written into the JSON body's
//! top-level `model` — only that value changes, and `max_tokens` when the target has
//! a lower limit: every other byte is kept, order and whitespace included, and
//! `content-length` follows (see
//! [`RequestFacts::retarget`](brownout_core::RequestFacts::retarget)). The target's
//! request carries the [`RequestFacts`](brownout_core::RequestFacts) of its own body,
//! so that the layers inside (a breaker keyed by model) see the model it asks for
//! without reading the body again. A target can also have its own endpoint and
//! credentials ([`Target::base_url`], [`Target::header`]) or its own service
//! ([`Fallback::target_service`]).
//!
//! The cascade moves on when the target's outcome is
//! [`unavailable`](brownout_core::OutcomeKind::is_unavailable) (the default of
//! [`fallback_when`](FallbackConfig::fallback_when)): overloaded, rate limited,
//! failing, timing out, unreachable, or refused by a circuit breaker; a client error
//! (400, 401, 403, 404, 413) goes back at once, since another model would refuse the
//! same request. Each answer is classified once: the outcome a layer further in
//! recorded on it is reused, else the stack's classifier
//! ([`DefaultClassifier`](brownout_core::classify::DefaultClassifier), or yours through
//! a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the HTTP client)
//! decides. A target whose breaker is open is skipped without being sent anything
//! when a [`health`](FallbackConfig::health) view (a breaker layer's handle) is
//! configured. One [`deadline`](FallbackConfig::deadline) covers the cascade; a
//! target is not started with less than [`min_time_left`](FallbackConfig::min_time_left)
//! to go.
//!
//! The response carries a [`ServedBy`] extension and,
//! if configured, a header naming the model; each move is a
//! [`FallingBack`](FallbackEvent::FallingBack) event ("fallback from A
//! to B because …"). When every target fails, the caller gets the last response with
//! an [`AllTargetsFailed`] report in its extensions, or that report as the error (see
//! [`Exhausted`]).
//!
//! # What it buffers, and what it does on failure
//!
//! The request body is buffered once for the whole stack, under the one limit of the
//! stack, the [`BodyLimits`](brownout_core::body::BodyLimits) in the request's
//! extensions (4 MiB by default); a layer further out that buffered it already is not
//! read again.
//!
//! - A caller's body that breaks or stalls while it is read is answered at once with
//!   a [`BrokenBody`](brownout_core::error::BrokenBody) error, and a body naming its
//!   top-level `model` twice with an
//!   [`InvalidRequest`](brownout_core::error::InvalidRequest) error: no target is sent
//!   anything, and there is no event. Both are the caller's errors.
//! - A body that is not JSON or has no string `model` is sent unchanged to the first
//!   target only, with a [`NoCascade`](FallbackEvent::NoCascade)
//!   event saying why.
//! - A body over the limit is sent once, never to a second target: to the first
//!   target of its cascade, its model (read from the bytes read ahead of the rest)
//!   written into those bytes, with a `NoCascade` event.
//!
//! # Streaming
//!
//! A target's answer is judged on its head (and the start of an error body). To judge
//! a stream on what it does after its `200` — an `overloaded_error` event, a stall, a
//! cut before the first content — put a [`StreamGuardLayer`](stream::StreamGuardLayer)
//! right over the HTTP client: such a stream is then an attempt failure like a 529,
//! retried, counted by the breaker, and the cascade moves on, and the caller gets one
//! clean stream from the model that answered. A stream that fails after content
//! reached the caller is ended well-formed by the guard, or, with
//! [`after_first_byte(AfterFirstByte::Resume)`](FallbackConfig::after_first_byte),
//! continued on the next model and stitched into one message. See [`stream`].
//!
//! # Where it goes in a stack
//!
//! Outside the circuit breaker and the retry layer: each target is then retried as
//! configured, and the breaker's handle tells the cascade which models to skip. The
//! stream guard, when there is one, goes inside them all, right over the client.

mod cascade;
mod config;
mod error;
mod event;
mod future;
mod layer;
mod meta;
mod service;
pub mod stream;

pub use config::{Exhausted, FallbackConfig, Target, UnknownModels};
pub use error::AllTargetsFailed;
pub use event::{FallbackEvent, FallbackReason, NoCascadeReason};
pub use layer::FallbackLayer;
pub use meta::ServedBy;
pub use service::Fallback;

pub use future::ResponseFuture;

/// A setting that was refused, naming it and why.
pub use brownout_core::error::InvalidConfig;
