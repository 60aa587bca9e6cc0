//! An overloaded Anthropic/OpenAI-compatible upstream with scripted faults, in process
//! or on loopback, and an outage scenario runner to measure client stacks against it.
//!
//! ```
//! use std::time::Duration;
//! use brownout_sim::{Fault, Latency, ModelScript, Script, Sim};
//! use http_body_util::{BodyExt, Full};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Overloaded for the first minute, then healthy; answers take 800 ms.
//! let script = Script::new().seed(7).model(
//!     "claude-sonnet-4-5",
//!     ModelScript::new()
//!         .latency(Latency::fixed(Duration::from_millis(800)))
//!         .fault(Fault::overloaded().until(Duration::from_secs(60))),
//! );
//! let sim = Sim::new(script);
//! let request = || {
//!     http::Request::post("/v1/messages").body(Full::new(bytes::Bytes::from(
//!         r#"{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Hi"}]}"#,
//!     )))
//! };
//!
//! let response = sim.clone().oneshot(request()?).await?;
//! assert_eq!(response.status(), 529);
//!
//! tokio::time::sleep(Duration::from_secs(60)).await; // paused time: instant
//! let response = sim.clone().oneshot(request()?).await?;
//! assert_eq!(response.status(), 200);
//! assert!(response.headers().contains_key("anthropic-ratelimit-requests-remaining"));
//! let body: serde_json::Value =
//!     serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//! assert_eq!(body["model"], "claude-sonnet-4-5");
//! assert_eq!(body["stop_reason"], "end_turn");
//! # Ok(()) }
//! ```
//!
//! # The simulated upstream
//!
//! [`Sim`] is a `tower::Service<http::Request<B>>` that answers `POST /v1/messages`
//! (Anthropic Messages) and `POST /v1/chat/completions` (OpenAI Chat Completions) as
//! the providers do, JSON or server-sent events, with ids, `usage`, request ids and
//! rate-limit headers. [`SimServer`] serves the same over HTTP/1.1 on a socket, for
//! end-to-end tests and the gateway. Time comes from tokio, so a paused runtime
//! controls the clock, and every random draw from a generator seeded per request, so
//! the same seed and script give the same outcomes.
//!
//! # Scripts
//!
//! A [`Script`] says, per model, how long answers take ([`Latency`]: fixed, uniform,
//! log-normal, Pareto) and which [`Fault`]s hit which share of requests when: 529
//! overloads, 503, 500, 502, 429 with `retry-after`, exhausted quotas, 400, 401,
//! hangs, connection resets, and error events, stalls and cuts in the middle of a
//! stream. Scripts are
//! built in code or read from TOML ([`Script::from_toml_str`], [`Script::from_file`]);
//! a bad file is refused with the key and the line. [`Script::outage`] is a bad hour
//! at a provider in ten minutes ([`OUTAGE_TOML`]); [`Script::streaming_outage`] is
//! ten minutes of streams that fail after their `200` ([`STREAMS_TOML`]): error
//! events, stalls and cuts, before and after the first content. The [`script`] module docs say how
//! faults combine.
//!
//! # The runner
//!
//! [`Runner`] sends N requests at concurrency C through client stacks over a fresh
//! [`Sim`] each and reports who answered (first-choice model, fallback, cache,
//! degraded, or which error), how many upstream requests each client request cost,
//! and the latency the caller saw, as a table or JSON. The stacks are the caller's
//! ([`runner::Stack`]: a name and how to build the client over a simulator); the
//! simulator depends on no layer, and ships only the naive baseline,
//! [`Stack::naive`](runner::Stack::naive) (one attempt per request). See [`runner`].
//!
//! # APIs
//!
//! The simulator serves two APIs, named by brownout-core's
//! [`Api`] like everywhere in brownout:
//! [`Api::AnthropicMessages`] at
//! `POST /v1/messages` and [`Api::OpenAiChat`]
//! at `POST /v1/chat/completions`. Scripts (`[run] endpoint`) and the binary
//! (`--endpoint`) call them `anthropic` and `openai`.
//!
//! # The binary
//!
//! ```text
//! brownout-sim [--script FILE] [--listen 127.0.0.1:8787] [--seed N]
//!     serve a script (the shipped outage script by default) over HTTP/1.1
//! brownout-sim run [--script FILE] [--requests N] [--concurrency C] [--over 10m]
//!     [--model M] [--endpoint anthropic|openai] [--stream] [--seed N] [--timeout 60s]
//!     [--real-time] [--json]
//!     run the scenario runner on a script with the naive client (in virtual time
//!     unless --real-time); `brownout-gateway demo` compares it with a retry-only
//!     client and brownout's pipeline
//! brownout-sim script
//!     print the shipped outage script
//! ```

pub mod body;
mod provider;
pub mod runner;
pub mod script;
mod server;
mod sim;

pub use body::SimBody;
pub use brownout_core::provider::Api;
pub use runner::{Report, Runner, Stack};
pub use script::{
    Enforced, Fault, FaultKind, Latency, ModelScript, Script, ScriptError, BURSTS_TOML,
    OUTAGE_TOML, STREAMS_TOML,
};
pub use server::{SimServer, SimServerHandle, SimTls};
pub use sim::{ResponseFuture, Sim, SimStats, LATENCY_HEADER, MAX_REQUEST_BODY, OTHER_MODELS};
