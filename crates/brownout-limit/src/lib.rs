//! Client-side rate limits for LLM APIs: stay under the provider's requests, input
//! tokens and output tokens per minute, counted before sending, so that the
//! application waits a little instead of collecting 429s.
//!
//! ```
//! use std::time::Duration;
//! use brownout_core::Body;
//! use brownout_limit::{Limits, RateLimitConfig, RateLimitLayer};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let upstream = service_fn(|_: Request<Body>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Body::from(
//!         r#"{"type":"message","usage":{"input_tokens":12,"output_tokens":20}}"#,
//!     )))
//! });
//! let limits = RateLimitLayer::new(
//!     RateLimitConfig::new()
//!         .model(
//!             "claude-sonnet-4-5",
//!             Limits::new().requests_per_minute(2).output_tokens_per_minute(8_000),
//!         )
//!         .max_wait(Duration::from_secs(45)),
//! )?;
//! let handle = limits.handle();
//! let client = ServiceBuilder::new().layer(limits).service(upstream);
//! let request = || {
//!     Request::post("https://api.anthropic.com/v1/messages")
//!         .header("x-api-key", "sk-ant-example")
//!         .body(Full::new(Bytes::from(
//!             r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Hi"}]}"#,
//!         )))
//! };
//! let start = tokio::time::Instant::now();
//! for _ in 0..2 {
//!     client.clone().oneshot(request()?).await?;
//! }
//! // The third request of the minute waits for room: 30 s at 2 a minute.
//! assert_eq!(client.clone().oneshot(request()?).await?.status(), 200);
//! assert_eq!(start.elapsed(), Duration::from_secs(30));
//! // max_tokens was reserved, and the 20 tokens of usage settled it.
//! let key = &handle.keys()[0];
//! assert_eq!(key.waits, 1);
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! When one application (or a fleet sharing a key, with a limit per replica) can send
//! more than its provider tier allows. Preventing a 429 costs the caller a short wait;
//! a 429 costs a round trip, a retry and often a longer `retry-after`. Limits are per
//! key: by default the model and the caller's credential fingerprint (so two tenants'
//! keys never share a budget), or [`key_by`](RateLimitConfig::key_by) a closure.
//!
//! # What it counts
//!
//! Each key has a bucket per limited resource: requests, input tokens, output tokens,
//! and input and output tokens together (OpenAI's TPM), any subset, each holding a
//! minute's limit and refilling continuously (not in fixed windows), so bursts are
//! smooth.
//!
//! - **Input tokens are estimated before sending**, from the request body buffered
//!   once for the stack. OpenAI models are counted exactly with their BPE encoding
//!   (`o200k_base`, `cl100k_base`) through the `bpe-openai` crate, which ships the
//!   ranks and compiles them in (nothing is downloaded at run time), tested equal to
//!   `tiktoken-rs`; the counts of long texts are remembered, since a conversation is
//!   sent again on each turn. Claude models have no public
//!   tokenizer: the estimate is bytes of text over
//!   [`bytes_per_token`](EstimateConfig::bytes_per_token), corrected by a running
//!   ratio per model of the `usage` the responses report to the estimate, plus a
//!   small [`margin`](EstimateConfig::margin); [`LimitHandle::estimate_error`] says how
//!   far off it was. System prompts, tool definitions, tool calls and results, and
//!   images (a fixed cost each) are counted.
//! - **Output tokens are reserved, then settled**: `max_tokens` (or
//!   [`default_max_tokens`](RateLimitConfig::default_max_tokens)) is taken when the
//!   request is sent, and the difference with the response's `usage` is given back as
//!   its body passes: a JSON body's `usage`, an Anthropic stream's final
//!   `message_delta`, OpenAI's usage chunk (which the layer asks for with
//!   `stream_options.include_usage` when the caller did not set `stream_options`
//!   itself; the caller then receives that final chunk, with empty `choices`). A
//!   response without usage keeps its reservation; an error answer gives its tokens
//!   back.
//! - **It learns from the provider**: `anthropic-ratelimit-*-{limit,remaining}` and
//!   OpenAI's `x-ratelimit-{limit,remaining}-*` tighten the buckets, never above the
//!   configured limits; with no configured limit, the learned one is used. A 429's
//!   `retry-after` pauses the key until then.
//!
//! # Over the limit
//!
//! A request that finds no room takes it anyway, leaving the bucket in debt, and
//! waits until the debt is refilled; waiting requests are served in order and never
//! wait longer than their debt says. This is the layer's own bounded waiting (it does
//! not use `brownout-queue`, which was written at the same time): bounded by
//! [`max_wait`](RateLimitConfig::max_wait) and by the caller's [`Deadline`] (or the
//! SDKs' `x-stainless-timeout`). A request that would wait longer is answered at once
//! with a `429` `rate_limit_error` in the provider's shape, with `retry-after` set to
//! when the bucket will have room and `x-should-retry: true`, or, with
//! [`OnLimit::Error`], fails with [`RateLimited`]. A request that needs more than a
//! whole minute's limit is refused at once with [`TooManyTokens`] (a 429 with
//! `x-should-retry: false`), never queued. A wait the caller gives up on (the future is
//! dropped) gives its tokens back.
//!
//! # Where it goes in a stack
//!
//! Innermost, right over the HTTP client (under a `ClassifyLayer` if you have one):
//! then every attempt of a retry and every model of a fallback is counted against the
//! model it really goes to. Its 429s are recorded as
//! [`Rejected`](brownout_core::OutcomeKind::Rejected) outcomes, so a breaker outside
//! does not count them against the upstream, and a retry outside waits for
//! `retry-after`.
//!
//! # Cost
//!
//! On the success path, beyond the token estimate: one key lookup (a concurrent map,
//! no global lock, no allocation), two short locks on the key's buckets (admission,
//! settlement), and a scan of the response body for `"usage"` at memchr speed, in a
//! hand-written future that allocates nothing of its own but the response body's
//! wrapper. When no layer further out read the request's facts (model, `max_tokens`,
//! `stream`), the layer reads them in the same serde pass as its estimate instead of
//! a second scan of the body. Measured with callgrind (`benches/limit.rs`, 2 KB body,
//! an upstream answering at once), instructions per call: a bare call 4,898; through
//! the layer 19,722, of which the Claude estimate (with the facts it reads) is 9,988,
//! so 9,734 beyond it: 1.99× a bare call (2.9× before the hand-written future, the
//! one-pass facts and the cheaper key; 23,703 in all). OpenAI, with the exact count
//! remembered: 21,972 through the layer, 12,220 for the estimate, 1.99×. Wall time on
//! a loaded 2-core machine: bare 1.06 µs, through the layer 3.6 µs. Estimates:
//! Claude 1.06 µs at 2 KB, 7.9 µs at 20 KB, 53 µs at 200 KB (0.7–1.1 × 10⁹ tokens a
//! second); OpenAI's exact count 44 µs, 0.78 ms, 6.0 ms (6–10 million tokens a
//! second) the first time a text is seen, and 1.4 µs, 8.4 µs, 82 µs once its count is
//! remembered.
//!
//! # Shared by replicas
//!
//! The buckets live in a [`LimitStore`]: by default [`LocalLimitStore`], this
//! process's memory, exactly as above. A fleet of replicas that must stay under one
//! provider limit together gives each its own `RedisLimitStore` (crate
//! `brownout-redis`) on the same Redis, with
//! [`RateLimitConfig::store`]: every admission is then one atomic script call in
//! Redis (at most one round trip per request; settlements, learned limits and pauses
//! are sent in batches), and while Redis is away the store either decides from the
//! local buckets (fail-open, its default) or refuses with the 429 above (fail-closed).
//! [`LimitStore`] says what a store must do and the round trips it may make.
//!
//! # Events and the handle
//!
//! Every wait, refusal, learned limit and pause is a [`LimitEvent`]; the
//! [`LimitHandle`] shows each key's remaining budget, waits and sheds, and each
//! model's estimate error.

mod bucket;
mod config;
mod error;
mod event;
mod future;
mod handle;
mod layer;
mod refusal;
mod service;
mod shared;
mod store;
mod tokens;
mod usage;

pub use bucket::{Admit, Amounts, Remaining, Resource};
pub use config::{
    Deadline, EstimateConfig, Limits, OnLimit, RateLimitConfig, DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_WAIT,
};
pub use error::{RateLimited, TooManyTokens};
pub use event::LimitEvent;
pub use future::ResponseFuture;
pub use handle::{KeySnapshot, LimitHandle};
pub use layer::RateLimitLayer;
pub use service::RateLimit;
pub use store::{Admission, LimitKey, LimitStore, LocalBuckets, LocalLimitStore};
pub use tokens::{estimate_input_tokens, EstimateError, TokenEstimate};
pub use usage::{Scanner as UsageScanner, Usage};

/// A setting that was refused, naming it and why.
pub use brownout_core::error::InvalidConfig;
