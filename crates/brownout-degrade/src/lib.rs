//! Canned answers for tower HTTP clients of LLM APIs: when every live path has failed,
//! reply in the provider's own shape, clearly marked as degraded, instead of an error.
//!
//! ```
//! use brownout_core::Body;
//! use brownout_degrade::{DegradeConfig, DegradeLayer, Degraded};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The provider is overloaded.
//! let upstream = service_fn(|_: Request<Body>| async {
//!     Response::builder().status(529).body(Body::from(
//!         r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
//!     ))
//! });
//! let config = DegradeConfig::from_toml_str(
//!     r#"
//!     generic = "The assistant is briefly unavailable. Please try again in a few minutes."
//!
//!     [[rule]]
//!     name = "refunds"
//!     pattern = "(?i)refund"
//!     answer = "You can request a refund from Settings › Billing."
//!     "#,
//! )?;
//! let client = ServiceBuilder::new().layer(DegradeLayer::new(config)).service(upstream);
//!
//! let request = Request::post("https://api.anthropic.com/v1/messages").body(Full::new(
//!     Bytes::from(
//!         r#"{"model":"claude-sonnet-4-5","max_tokens":1024,
//!             "messages":[{"role":"user","content":"How do I get a refund?"}]}"#,
//!     ),
//! ))?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["x-brownout-degraded"], "true");
//! assert_eq!(response.headers()["x-brownout-degraded-rule"], "refunds");
//! assert_eq!(response.extensions().get::<Degraded>().unwrap().rule(), Some("refunds"));
//!
//! // An Anthropic Messages response, as the SDKs expect it.
//! let bytes = response.into_body().collect().await?.to_bytes();
//! let message: serde_json::Value = serde_json::from_slice(&bytes)?;
//! assert_eq!(message["type"], "message");
//! assert_eq!(message["model"], "claude-sonnet-4-5");
//! assert_eq!(message["content"][0]["text"], "You can request a refund from Settings › Billing.");
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! When a clearly marked canned answer serves your users better than an error: a
//! support assistant that can still point to the refund page, a chat that says "back in
//! a few minutes" in the conversation instead of failing in the UI. Answers are static
//! text chosen by rules; nothing of the request is ever written into them.
//!
//! # Where it goes in a stack
//!
//! Outermost: outside the cache, fallback, circuit breaker and retry layers, so that it
//! answers only once all of them have failed — a stale cached answer or a lighter
//! model is better than a canned one.
//!
//! # What it answers
//!
//! The rules are tried in order against the text of the request's **last user
//! message** (its `content` string, or its `text` blocks joined with newlines, in the
//! Anthropic Messages and OpenAI chat shapes alike; for the Responses API, `input`
//! when it is a string, else its last user item's text or `input_text` parts); the first whose regular expression
//! matches gives the answer, and the generic answer is given when none does or the
//! text cannot be read (the body is not JSON, or longer than the stack's replay limit,
//! [`BodyLimits`](brownout_core::body::BodyLimits)).
//!
//! The answer has the shape the request's API returns
//! ([`RequestFacts::api`](brownout_core::RequestFacts::api)), so that the official SDKs
//! parse it like any other: an OpenAI chat completion for
//! [`Api::OpenAiChat`](brownout_core::provider::Api::OpenAiChat) (paths ending in
//! `/chat/completions`), a Responses API `response` for
//! [`Api::OpenAiResponses`](brownout_core::provider::Api::OpenAiResponses) (paths
//! ending in `/responses`), else an Anthropic Messages response; with `"stream": true`
//! in the request, the SSE stream of each (Anthropic's `message_start` …
//! `message_stop` events; OpenAI's `chat.completion.chunk`s ending in `data: [DONE]`,
//! with a usage chunk when `stream_options.include_usage` asked for one; the
//! Responses API's `response.created` … `response.completed` events). It names the
//! requested model (or [`UNKNOWN_MODEL`]), has a fresh id (`msg_…`, `chatcmpl-…`,
//! `resp_…`; fix the sequence with [`seed`](DegradeConfig::seed)), 0 input tokens and an estimate of the
//! output tokens. The request's model, `stream` and API are the
//! [`RequestFacts`](brownout_core::RequestFacts) read once for the whole stack; only the
//! message text is read by this layer, and only once a request has failed.
//!
//! Every degraded answer is marked: the [`x-brownout-degraded: true`](DEGRADED_HEADER)
//! header, the rule's name in [`x-brownout-degraded-rule`](DEGRADED_RULE_HEADER), the
//! [`Degraded`] extension, and a
//! [`Degraded`](DegradeEvent::Degraded) event naming the rule and
//! the outcome that led to it. The status is 200, or the one configured with
//! [`status`](DegradeConfig::status) (503, say, with
//! [`retry_after`](DegradeConfig::retry_after)).
//!
//! # On failure
//!
//! brownout-core's classification decides what failed (one classifier for the stack:
//! a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the HTTP client, or
//! the default one). By default the failures for which
//! [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable) holds are
//! answered: an overload, a rate limit, a server error, a timeout, a connection failure,
//! and a refusal by a layer such as a circuit breaker — whether the inner service
//! returned them as a response or as an error (such as a breaker's refusal, a retry
//! layer's `DeadlineExceeded` or a fallback's `AllTargetsFailed`); change that with
//! [`degrade_when`](DegradeConfig::degrade_when). A client error (400, 401, 403, 404,
//! 413, an exhausted quota) goes back to the caller unchanged, since the caller has to
//! fix its request, and so does every success, byte for byte.
//!
//! The request body is buffered once for the whole stack, up to the replay limit of
//! [`BodyLimits`](brownout_core::body::BodyLimits) (one setting for the stack, 4 MiB by
//! default), and read after a failure; the inner service gets the same bytes. A longer
//! body is sent on streamed, and a failure gets the generic answer; its `model` and
//! `stream` are the [`RequestFacts`](brownout_core::RequestFacts) of the bytes read
//! ahead of the rest (none, and so a JSON answer, when none were read).
//!
//! A caller's broken or invalid request is **never** answered with a canned reply: a
//! request body that is cut short or stalls while it is buffered
//! ([`BrokenBody`](brownout_core::error::BrokenBody)), or that names its `model` twice
//! ([`InvalidRequest`](brownout_core::error::InvalidRequest)), is refused with that
//! error at once, without calling the inner service. A body over the replay limit that
//! breaks while the inner service streams it reaches the inner service as a
//! `BrokenBody`; the error it returns, with that `BrokenBody` in its source chain, is
//! handed back as it is. An error from the inner service's `poll_ready` is returned
//! as it is: tower gives no request to answer there.
//!
//! A response is judged on its head (and the start of an error body). A stream that
//! fails after its `200` head reached the caller is the upstream's answer, and is not
//! replaced.
//!
//! # Rules files
//!
//! [`DegradeConfig::from_toml_str`] and [`DegradeConfig::from_file`] read:
//!
//! ```toml
//! generic = "The assistant is briefly unavailable. Please try again in a few minutes."
//! status = 200        # optional; 503 makes the SDKs raise (and retry) instead
//! retry_after = 30    # optional, seconds: sent as `retry-after`
//!
//! [[rule]]
//! name = "refunds"    # printable ASCII; sent in x-brownout-degraded-rule
//! pattern = "(?i)refund"
//! answer = "You can request a refund from Settings › Billing."
//! ```
//!
//! Every key is optional but a rule's three; unknown keys are refused. Patterns use the
//! [`regex`] syntax, which matches in linear time whatever the user wrote. A bad file
//! fails at load with an [`InvalidConfig`] that names the rule (or its position, when it
//! has no name) and the line: a TOML error, an invalid pattern, an empty answer or
//! name, a name used twice.
//!
//! ```
//! use brownout_degrade::DegradeConfig;
//!
//! let error = DegradeConfig::from_toml_str(
//!     "[[rule]]\nname = \"refunds\"\npattern = \"(refund\"\nanswer = \"See Settings.\"\n",
//! )
//! .unwrap_err();
//! assert_eq!(error.key(), "rule.pattern");
//! assert_eq!(error.item_name(), Some("refunds"));
//! assert_eq!(error.line(), Some(3));
//! ```

mod answer;
mod config;
mod error;
mod event;
mod file;
mod future;
mod id;
mod layer;
mod reply;
mod request;
mod rules;
mod service;

pub use config::{DegradeConfig, DEFAULT_GENERIC_ANSWER};
pub use error::InvalidConfig;
pub use event::{DegradeEvent, Degraded};
pub use layer::DegradeLayer;
pub use reply::{DEGRADED_HEADER, DEGRADED_RULE_HEADER, UNKNOWN_MODEL};
pub use rules::Rule;
pub use service::Degrade;

pub use future::ResponseFuture;
