//! A config-driven proxy for LLM provider APIs that keeps answering through an outage,
//! built only from brownout's layers; and the outage demo.
//!
//! Point an Anthropic or OpenAI SDK at the gateway (by changing its base URL) and its
//! requests go through degrade → cache → fallback → circuit breaker → queue (when
//! `[queue]` is on) → retry → rate limits (when `[limits]` has an entry) → the
//! provider, as a TOML file says. The gateway adds no
//! resilience logic of its own: it
//! reads the file into the layers' own config types, stacks them
//! ([`pipeline`]), routes requests into them ([`router`]) and serves them over HTTP/1.1
//! with a graceful stop ([`Gateway`]).
//!
//! ```
//! use brownout_gateway::{Config, Router};
//! use brownout_sim::{Fault, ModelScript, Script, Sim};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config = Config::from_toml_str(r#"
//!     [[provider]]
//!     name = "anthropic"
//!     api = "anthropic"
//!     base_url = "http://127.0.0.1:8787"
//!     pass_through_key = true
//!
//!     [routes."/v1/messages"]
//!     provider = "anthropic"
//!     cascade = [{ model = "claude-sonnet-4-5" }, { model = "claude-haiku-4-5" }]
//! "#)?;
//!
//! // In place of the network, a simulated provider whose first choice is overloaded.
//! let sim = Sim::new(Script::new().model("claude-sonnet-4-5", ModelScript::new().fault(Fault::overloaded())));
//! let gateway = Router::new(&config, sim.clone(), sim);
//!
//! let request = http::Request::post("/v1/messages").body(Full::new(Bytes::from(
//!     r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#,
//! )))?;
//! let response = gateway.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["x-brownout-model"], "claude-haiku-4-5");
//! let body = response.into_body().collect().await?.to_bytes();
//! assert!(std::str::from_utf8(&body)?.contains("claude-haiku-4-5"));
//! # Ok(()) }
//! ```
//!
//! # The binary
//!
//! ```text
//! brownout-gateway [demo]           the outage demo (the default): naive, retry-only and
//!     [--script FILE] [--config FILE] [--requests N] [--stream] [--json]
//! brownout-gateway serve --config FILE [--listen ADDR] [--log-level LEVEL]
//!                                   run the proxy until SIGTERM or ctrl-c
//! brownout-gateway check --config FILE
//!                                   check a configuration (environment variables included)
//! brownout-gateway report --db FILE [--window 5m|all] [--json]
//!                                   availability per model from an [observe] sqlite log
//! ```
//!
//! `--config FILE` without a subcommand also serves. Configuration errors name the
//! key and the line, and exit with status 2; see [`config`] for the format and
//! `gateway.example.toml` for a commented example.
//!
//! # What it proxies
//!
//! Each request goes to the provider whose API it speaks (see [`router`]): by an
//! explicit `/anthropic/` or `/openai/` prefix, else by its path, else (for paths
//! both providers have, such as `GET /v1/models`) by its credential style; one that
//! cannot be placed gets `400` naming why, and a caller's key never reaches the other
//! provider's host. `POST /v1/messages`, `POST /v1/chat/completions` and `POST
//! /v1/responses` go through their route's pipeline; every other request is
//! forwarded unchanged to a provider of its API. `GET /healthz` (up) and `GET
//! /readyz` (each route has a model whose breaker admits calls) are answered by the
//! gateway. On a route with a cascade, a request for one of its models starts there
//! (never an upgrade), and a request for any other model is sent as the cascade's
//! first model: that is the fallback layer's rule, and the `x-brownout-model` header
//! says which answered. Answers are streamed as they arrive: the layers judge a
//! response on its head (and the start of an error body), and hand hyper's body on;
//! only the cache reads a success body, to store it (up to its per-entry limit), and
//! streams it to the caller as it reads. A stream that sends nothing for `[streams]
//! idle_timeout` (60 s) is ended with an error event in the provider's shape.
//!
//! The gateway's own final answers tell an SDK what happened and not to retry on top:
//! every breaker open is `529 overloaded_error` (Anthropic routes) or `503` (OpenAI
//! routes) with `retry-after` the earliest moment a target may be tried; every target
//! timed out `504`; a failed answer the gateway already retried or fell back on keeps
//! its status and gets `x-should-retry: false` (`[headers] should_retry = false` turns
//! that off).
//!
//! Request bodies are buffered once, up to the `body.replay_limit` of the config
//! (4 MiB by default), so that retry and fallback can send them again; a longer one is
//! sent once. A caller's body that breaks off is answered `400`, one that stalls for
//! `body.idle_timeout` or is not whole within `body_timeout` (30 s) `408`; a body
//! naming `model` twice `400`. None of them counts against a breaker or a budget.
//! Methods no route accepts get `405`, paths with dot segments or encoded slashes
//! `400`; connections beyond `[connections]` `per_client` (256) or `total` (4096) get
//! `503` with `retry-after`. When the shutdown grace cuts requests off, the binary
//! exits with status 1 and says how many.
//!
//! # Upstreams and limits
//!
//! Upstreams are reached with brownout's HTTPS client ([`UpstreamClient`]):
//! `https://` base URLs over rustls, HTTP/2 by ALPN with HTTP/1.1 as the fallback, the
//! platform's certificate authorities plus a provider's `ca_file`; `http2 = false`
//! offers HTTP/1.1 only. Plain `http://` stays for local upstreams. A connection
//! that cannot be made is answered `502` with the reason (`tls handshake with
//! api.anthropic.com failed: invalid peer certificate: UnknownIssuer`), logged the
//! same. The gateway itself listens on plain HTTP/1.1.

pub mod config;
mod credentials;
#[cfg(feature = "demo")]
pub mod demo;
mod drain;
mod limits;
pub mod observe;
pub mod observe_log;
pub mod pipeline;
pub mod router;
mod server;
mod state;
mod timeout;
mod upstream;

pub use config::{Config, ConfigError, EXAMPLE_CONFIG};
pub use credentials::Credentials;
pub use observe_log::Observers;
pub use pipeline::{Layers, Pipeline};
pub use router::{Router, RouterFuture};
pub use server::{http_client, shutdown_signal, Gateway, HttpClient, Stopped};
pub use state::SharedStores;
pub use timeout::BodyTimedOut;
pub use upstream::{Sending, UpstreamClient};
