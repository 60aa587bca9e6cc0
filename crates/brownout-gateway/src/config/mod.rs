//! The gateway's configuration: a TOML file, checked whole before anything starts.
//!
//! Every key is optional but the providers and at least one route; unknown keys are
//! refused. Durations are strings such as `"800ms"`, `"30s"`, `"2m"`. A mistake is
//! reported with its key and line ([`ConfigError`]); an API key's environment
//! variable is read when the file is loaded, so a missing one is named before the
//! gateway listens.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! shutdown_grace = "30s"      # how long in-flight requests may finish after SIGTERM
//! forward_to = "anthropic"    # who gets the other paths (GET /v1/models …); default: the first provider
//! seed = 7                    # optional: fixes jitter and ids, for reproducible runs
//!
//! [[provider]]
//! name = "anthropic"
//! api = "anthropic"           # anthropic: key in x-api-key; openai: authorization: Bearer
//! base_url = "https://api.anthropic.com"   # or http://127.0.0.1:8787 for a local upstream
//! api_key_env = "ANTHROPIC_API_KEY"   # the gateway holds the key…
//! # pass_through_key = true           # …or callers send their own
//! # ca_file = "corporate-ca.pem"      # also trust this CA (PEM; relative to this file)
//! # http2 = false                     # HTTP/2 is offered by ALPN unless false
//!
//! [routes."/v1/messages"]     # and/or [routes."/v1/chat/completions"], [routes."/v1/responses"]
//! provider = "anthropic"
//! cascade = [                 # optional: the fallback layer's targets, preferred first
//!   { model = "claude-sonnet-4-5" },
//!   { model = "claude-haiku-4-5", max_tokens = 8192 },   # provider = "…" to use another one
//! ]
//!
//! [retry]                     # enabled = false to leave a layer out
//! max_attempts = 3
//! backoff = { base = "500ms", cap = "8s" }              # jitter = "full" | "decorrelated" | "none"
//! budget = { ratio = 0.2, min_per_sec = 10, ttl = "10s" }
//! max_server_delay = "20s"
//! attempt_timeout = "30s"
//! deadline = "60s"
//!
//! [breaker]
//! failure_rate = 0.5          # or consecutive_failures = 5
//! window = 20                 # the last 20 calls, or a duration such as "30s"
//! minimum_calls = 10
//! open_for = "10s"
//! open_for_max = "2m"         # open time doubles on repeated trips, up to this
//! half_open_probes = 1
//!
//! [fallback]
//! deadline = "90s"
//!
//! [queue]                     # off unless the section is there
//! prefer_wait = "500ms"       # wait for the preferred model up to this, else move on
//! max_wait = "800ms"          # no request waits longer (at least prefer_wait)
//! max_queue = 64              # requests waiting per model
//! caller_share = 0.5          # of a model's queue one credential may hold
//! probe_after = "100ms"       # probe a held model after this, even if retry-after is longer
//! early_ack = "120ms"         # an admitted call not failed by then counts for slow start
//! recovery_limit = 32         # in flight before a recovering model is back to normal
//! priority_header = "x-brownout-priority"   # high | normal | low | 0-255
//!
//! [limits]                    # client-side rate limits: off unless an entry is there
//! max_wait = "30s"            # wait for room up to this (and the deadline), else 429
//! default_max_tokens = 4096   # output tokens reserved when a request names no max_tokens
//! on_limit = "respond"        # or "error": the gateway's own final 429
//! estimate = { bytes_per_token = 3.5, margin = 0.03 }
//! [[limits.model]]
//! provider = "anthropic"      # optional: every provider
//! model = "claude-sonnet-4-5" # or "claude-sonnet-4*", "*"
//! requests_per_minute = 50    # and/or input_tokens_per_minute, output_tokens_per_minute,
//! output_tokens_per_minute = 8000   # tokens_per_minute (input and output together)
//!
//! [cache]
//! mode = "stale-if-error"     # or "fresh-hit"
//! ttl = "5m"
//! stale_window = "1h"
//!
//! [degrade]
//! generic = "The assistant is briefly unavailable. Please try again in a few minutes."
//! # rules_file = "degrade.toml"   # instead of inline rules; relative to this file
//! [[degrade.rule]]
//! name = "refunds"
//! pattern = "(?i)refund"
//! answer = "You can request a refund from Settings › Billing."
//!
//! [observe]                   # each page off unless set
//! metrics = true              # GET /metrics (Prometheus text)
//! status = true               # GET /brownout/status (HTML), /brownout/status.json
//!
//! [headers]                   # metadata headers on responses (all on by default)
//! model = true                # x-brownout-model
//! cache = true                # x-brownout-cache
//! degraded = true             # x-brownout-degraded, x-brownout-degraded-rule
//! attempts = true             # x-brownout-attempts
//!
//! should_retry = true         # x-should-retry: false on answers the gateway already retried
//!
//! [body]                      # how far the layers read a caller's body
//! replay_limit = 4194304      # bytes buffered once for retry and fallback; longer bodies go once
//! idle_timeout = "30s"        # a body silent this long is answered 408
//!
//! [streams]
//! idle_timeout = "60s"        # a streamed answer silent this long is ended with an error event
//! first_event_timeout = "5s"  # a stream with no content this long after its head is a failed attempt
//! after_first_byte = "end"    # a stream failing after content: "end" it well-formed, or "resume" it on the next model
//!
//! [connections]               # beyond either cap a new connection is answered 503
//! per_client = 256            # open connections per client IP address
//! total = 4096                # open connections in all
//!
//! [observe]                   # the SQLite availability log: off unless `sqlite` is set
//! sqlite = "brownout.db"      # relative to this file; retain_for = "168h", retain_rows, log_buffer
//! [[observe.alert]]           # alert rules; see ObserveLog for every key
//! name = "breaker"
//! when = "breaker_open"       # or consecutive_failures (count), availability_below, degraded_above
//! webhook = "https://hooks.example.com/brownout"   # and/or command = ["prog", "arg"]
//! ```
//!
//! # The queue, and wait or move
//!
//! With `[queue]` on, the pipeline is fallback > breaker > queue > retry. A model that
//! answered an overload or rate limit with a server delay holds its next requests for
//! up to `max_wait` (probing after `probe_after`), and drains them with slow start.
//! One rule, `prefer_wait`, decides between waiting for the preferred model and moving
//! to the next model of the cascade: the fallback skips a model only when its expected
//! wait is longer than `prefer_wait` (or unknown) or its breaker is open, and the retry
//! layer sleeps a `retry-after` only up to `prefer_wait` (its `max_server_delay` is
//! `prefer_wait`; writing `retry.max_server_delay` too is refused), handing a longer
//! one to the cascade; an overload that names no delay at all is handed to the cascade
//! at once rather than retried after a backoff (`RetryConfig::move_on_overload`: a
//! backoff into an overload is a wait of unknown length). On shutdown every queued request is answered at once (a shed
//! answer in the provider's shape, `529`/`503` with `x-should-retry: false`).
//!
//! The top-level `body_timeout = "30s"` bounds the whole request body (a body still
//! arriving then is answered 408). `[limits]` no longer holds the body settings: an
//! old `limits.replay_limit` or `limits.body_idle_timeout` is refused with its new key.
//!
//! # The rate limits
//!
//! `[limits]` puts a brownout-limit layer per provider with an entry innermost, under
//! the provider's key, so that every attempt and every model of a cascade counts
//! against the provider and model it is sent to, with the key it is sent with (one
//! budget for all callers of a provider whose key the gateway holds). A wait for room
//! is bounded by `max_wait` and the gateway's deadline (the shorter of
//! `retry.deadline` and `fallback.deadline`). See [`RateLimits`] for what callers get.
//!
//! # Shared state
//!
//! `[state]` (off by default; `redis_url`, `deployment`, `timeout`, `poll_interval`,
//! `limits`) keeps the breakers' and the cache's state in Redis, shared by every
//! replica of the deployment; see [`SharedState`] and `gateway.example.toml`.

mod error;
mod raw;

/// The example configuration shipped with the crate (`gateway.example.toml`): the
/// demo's pipeline, and a commented starting point.
pub const EXAMPLE_CONFIG: &str = include_str!("../../gateway.example.toml");

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use brownout::breaker::BreakerConfig;
use brownout::cache::CacheConfig;
use brownout::degrade::DegradeConfig;
use brownout::fallback::FallbackConfig;
use brownout::provider::Family;
use brownout::queue::QueueConfig;
use brownout::retry::RetryConfig;
use http::{HeaderName, HeaderValue, Uri};

pub use error::ConfigError;
pub use raw::limits::{LimitEntry, RateLimits};
pub use raw::observe_log::ObserveLog;
pub use raw::state::{OnRedisError, SharedState};

/// The path of the Anthropic Messages API.
pub const MESSAGES_PATH: &str = "/v1/messages";
/// The path of the OpenAI Chat Completions API.
pub const CHAT_COMPLETIONS_PATH: &str = "/v1/chat/completions";
/// The path of the OpenAI Responses API.
pub const RESPONSES_PATH: &str = "/v1/responses";

/// The default of `body_timeout`: how long a caller may take to send a whole body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of `[streams] idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default of `[connections] per_client`.
pub const DEFAULT_PER_CLIENT: usize = 256;
/// The default of `[connections] total`.
pub const DEFAULT_TOTAL: usize = 4096;

/// The caps on client connections (`[connections]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Open connections per client IP address.
    pub per_client: usize,
    /// Open connections in all.
    pub total: usize,
}

/// Which layer sections the file wrote (else their defaults apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Set {
    pub(crate) retry: bool,
    pub(crate) breaker: bool,
    pub(crate) fallback: bool,
    pub(crate) cache: bool,
    pub(crate) degrade: bool,
    pub(crate) queue: bool,
    pub(crate) limits: bool,
}

/// One layer as `check` lists it: its name, whether it is on, and whether the file
/// set its section (else it runs with its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerState {
    /// `"degrade"`, `"cache"`, `"fallback"`, `"breaker"`, `"queue"`, `"retry"` or `"limit"`.
    pub name: &'static str,
    /// Whether the layer is in the pipelines.
    pub on: bool,
    /// Whether the file has the layer's section (`false`: the defaults).
    pub set: bool,
}

/// Where a provider's API key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The gateway sends this key (read from the named environment variable) and
    /// drops the caller's `x-api-key`, `authorization` and `api-key`.
    Env {
        /// The variable's name.
        variable: String,
        /// The header that carries the key, marked sensitive.
        header: (HeaderName, HeaderValue),
    },
    /// The caller's own credential headers go upstream unchanged.
    PassThrough,
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key itself is never printed: only where it comes from.
        match self {
            KeySource::Env { variable, header } => f
                .debug_struct("Env")
                .field("variable", variable)
                .field("header", &header.0)
                .finish_non_exhaustive(),
            KeySource::PassThrough => f.write_str("PassThrough"),
        }
    }
}

/// An upstream the gateway sends requests to.
#[derive(Debug, Clone)]
pub struct Provider {
    pub(crate) name: String,
    pub(crate) family: Family,
    pub(crate) base_url: Uri,
    pub(crate) key: KeySource,
    pub(crate) ca: Option<CaFile>,
    pub(crate) http2: bool,
}

/// A provider's `ca_file`: its path and the certificates it held when the
/// configuration was read.
#[derive(Debug, Clone)]
pub struct CaFile {
    pub(crate) path: std::path::PathBuf,
    pub(crate) pem: std::sync::Arc<[u8]>,
}

impl CaFile {
    /// The file, as the configuration names it (relative to the configuration's
    /// directory).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Its PEM text, read when the configuration was loaded.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl Provider {
    /// Its name in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whose API it speaks (its `api` key in the file): which routes it can serve
    /// and which header carries its key ([`Family::key_header`]).
    pub fn family(&self) -> Family {
        self.family
    }

    /// Its base URL: scheme, host and an optional path prefix.
    pub fn base_url(&self) -> &Uri {
        &self.base_url
    }

    /// Where its key comes from.
    pub fn key(&self) -> &KeySource {
        &self.key
    }

    /// The certificate authority it trusts besides the platform's (`ca_file`): a
    /// TLS-inspecting proxy's, or a test CA.
    pub fn ca_file(&self) -> Option<&CaFile> {
        self.ca.as_ref()
    }

    /// Whether HTTP/2 is offered to it by ALPN (`http2`, true by default).
    pub fn http2(&self) -> bool {
        self.http2
    }
}

/// One of the two proxied APIs: its default provider and its model cascade.
#[derive(Debug, Clone)]
pub struct Route {
    pub(crate) provider: usize,
    pub(crate) cascade: Option<FallbackConfig>,
}

impl Route {
    /// The index of its provider in [`Config::providers`].
    pub fn provider(&self) -> usize {
        self.provider
    }

    /// The fallback settings built from its cascade, if it has one.
    pub fn cascade(&self) -> Option<&FallbackConfig> {
        self.cascade.as_ref()
    }
}

/// Which metadata headers the gateway puts on responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// `x-brownout-model`: the model that answered, on routes with a cascade.
    pub model: bool,
    /// `x-brownout-cache`: `hit` or `stale`, on answers from the cache.
    pub cache: bool,
    /// `x-brownout-degraded` and `x-brownout-degraded-rule`, on canned answers.
    pub degraded: bool,
    /// `x-brownout-attempts`: how many times the model that answered was tried, when
    /// more than once.
    pub attempts: bool,
    /// `x-should-retry: false` on failed answers the gateway already retried or fell
    /// back on, and on its own error answers, so that SDKs do not retry on top.
    pub should_retry: bool,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            model: true,
            cache: true,
            degraded: true,
            attempts: true,
            should_retry: true,
        }
    }
}

/// A checked gateway configuration. Read it with [`Config::from_file`] or
/// [`Config::from_toml_str`]; see the [module docs](self) for the format.
///
/// The layer settings it holds are brownout's own config types, built and checked
/// when the file is read.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) shutdown_grace: Duration,
    pub(crate) providers: Vec<Provider>,
    pub(crate) messages: Option<Route>,
    pub(crate) chat_completions: Option<Route>,
    pub(crate) responses: Option<Route>,
    pub(crate) forward_to: usize,
    pub(crate) retry: Option<RetryConfig>,
    pub(crate) breaker: Option<BreakerConfig>,
    pub(crate) cache: Option<CacheConfig>,
    pub(crate) degrade: Option<DegradeConfig>,
    pub(crate) queue: Option<QueueConfig>,
    pub(crate) rate_limits: Option<RateLimits>,
    pub(crate) headers: Headers,
    pub(crate) limits: brownout::body::BodyLimits,
    pub(crate) body_timeout: Duration,
    pub(crate) stream_idle_timeout: Duration,
    pub(crate) stream_first_event_timeout: Duration,
    pub(crate) stream_after_first_byte: brownout::fallback::stream::AfterFirstByte,
    pub(crate) connections: Connections,
    pub(crate) observe_log: ObserveLog,
    pub(crate) observe: Observe,
    /// The availability log's and the alerts' sinks, attached by `serve` once they run.
    pub(crate) observers: Option<Attached>,
    pub(crate) state: Option<SharedState>,
    pub(crate) set: Set,
}

/// The sinks of [`Observers`](crate::Observers), attached to a configuration with
/// [`Config::with_observers`].
#[derive(Clone)]
pub(crate) struct Attached {
    pub(crate) sinks: brownout::observe::Sinks,
    pub(crate) alerts: Option<std::sync::Arc<dyn brownout::observe::AlertFeed>>,
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attached")
            .field("sinks", &self.sinks)
            .field("alerts", &self.alerts.is_some())
            .finish()
    }
}

/// `[observe]`: which of the gateway's own pages are served (`metrics`, `status`,
/// both off unless set), and whether the availability log or alert rules record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Observe {
    /// `GET /metrics`, Prometheus text.
    pub metrics: bool,
    /// `GET /brownout/status` and `GET /brownout/status.json`.
    pub status: bool,
    /// `sqlite` or an alert rule is set: the pipeline records for them.
    pub log: bool,
}

impl Observe {
    /// Whether anything is observed (then the pipeline records every request).
    pub fn is_on(&self) -> bool {
        self.metrics || self.status || self.log
    }
}

impl Config {
    /// `[observe]`: metrics and the status page.
    pub fn observe(&self) -> Observe {
        self.observe
    }

    /// With the sinks of `observers` (the availability log, the alert rules) fed by the
    /// pipeline, and their notices on the status page. `serve` attaches them.
    pub fn with_observers(mut self, observers: &crate::Observers) -> Self {
        self.observers = Some(Attached {
            sinks: observers.sinks(),
            alerts: observers.alert_feed(),
        });
        self
    }

    /// With `[observe]` set to `observe` (for tests and benchmarks).
    pub fn with_observe(mut self, observe: Observe) -> Self {
        self.observe = observe;
        self
    }

    /// Reads and checks a configuration; API keys come from the process environment.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_env(text, |name| std::env::var(name).ok())
    }

    /// Reads and checks a configuration, looking API keys' variables up with `env`
    /// (for tests, and for embedding the gateway in a process with its own secrets).
    pub fn from_toml_str_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        raw::parse(text, &env, None)
    }

    /// Reads and checks a configuration file. A degrade `rules_file` is found relative
    /// to it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("cannot read the configuration: {e}")).in_file(path)
        })?;
        let dir: PathBuf = path.parent().map(Path::to_owned).unwrap_or_default();
        raw::parse(&text, &|name: &str| std::env::var(name).ok(), Some(&dir))
            .map_err(|e| e.in_file(path))
    }

    /// Fixes the seed of every random draw the layers make (retry jitter, breaker
    /// open times, degraded answers' ids), as the file's `seed` does.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.retry = self.retry.map(|c| c.seed(seed));
        self.breaker = self.breaker.map(|c| c.seed(seed));
        self.degrade = self.degrade.map(|c| c.seed(seed));
        self.queue = self.queue.map(|c| c.seed(seed));
        self
    }

    /// The address to listen on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Listens on `addr` instead.
    pub fn with_listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How long in-flight requests may take to finish after a shutdown signal.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// The providers, in the order of the file.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// The route of `POST /v1/messages`, if configured.
    pub fn messages(&self) -> Option<&Route> {
        self.messages.as_ref()
    }

    /// The route of `POST /v1/chat/completions`, if configured.
    pub fn chat_completions(&self) -> Option<&Route> {
        self.chat_completions.as_ref()
    }

    /// The route of `POST /v1/responses`, if configured.
    pub fn responses(&self) -> Option<&Route> {
        self.responses.as_ref()
    }

    /// The provider that receives the other paths of its API (`forward_to`, the first
    /// provider by default); the other API's paths go to the first provider speaking it.
    pub fn forward_to(&self) -> &Provider {
        &self.providers[self.forward_to]
    }

    /// The metadata headers put on responses.
    pub fn headers(&self) -> Headers {
        self.headers
    }

    /// How far the layers read a caller's body (`[body]`): the replay limit and the
    /// idle timeout, one setting for the whole pipeline.
    pub fn limits(&self) -> brownout::body::BodyLimits {
        self.limits
    }

    /// How long a caller may take to send a whole request body (`body_timeout`).
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    /// How long a streamed answer may go without an event (`[streams] idle_timeout`).
    pub fn stream_idle_timeout(&self) -> Duration {
        self.stream_idle_timeout
    }

    /// How long a streamed answer may take, from its head, to show its first content
    /// before the attempt counts as failed (`[streams] first_event_timeout`).
    pub fn stream_first_event_timeout(&self) -> Duration {
        self.stream_first_event_timeout
    }

    /// What happens to a streamed answer that fails after content reached the caller
    /// (`[streams] after_first_byte`).
    pub fn stream_after_first_byte(&self) -> brownout::fallback::stream::AfterFirstByte {
        self.stream_after_first_byte
    }

    /// The caps on client connections (`[connections]`).
    pub fn connections(&self) -> Connections {
        self.connections
    }

    /// Whether each layer is on: retry, breaker, cache, degrade.
    pub fn layers_enabled(&self) -> [(&'static str, bool); 4] {
        [
            ("retry", self.retry.is_some()),
            ("breaker", self.breaker.is_some()),
            ("cache", self.cache.is_some()),
            ("degrade", self.degrade.is_some()),
        ]
    }

    /// The queue layer's settings (`[queue]`), when it is on.
    pub fn queue(&self) -> Option<&QueueConfig> {
        self.queue.as_ref()
    }

    /// The state shared with the other replicas through Redis (`[state]`), when it
    /// is on.
    pub fn state(&self) -> Option<&SharedState> {
        self.state.as_ref()
    }

    /// The rate limits (`[limits]`), when they are on.
    pub fn rate_limits(&self) -> Option<&RateLimits> {
        self.rate_limits.as_ref()
    }

    /// The availability log and the alert rules (`[observe]`).
    pub fn observe_log(&self) -> &ObserveLog {
        &self.observe_log
    }

    /// Every layer, outermost first, with whether it is on and whether the file set
    /// it. The fallback layer is on when a route has a cascade; the queue layer only
    /// when the file has a `[queue]` section; the rate limits (`"limit"`, innermost)
    /// only when `[limits]` has an entry.
    pub fn layers(&self) -> [LayerState; 7] {
        let cascade = [&self.messages, &self.chat_completions, &self.responses]
            .iter()
            .any(|r| r.as_ref().is_some_and(|r| r.cascade.is_some()));
        let layer = |name, on, set| LayerState { name, on, set };
        [
            layer("degrade", self.degrade.is_some(), self.set.degrade),
            layer("cache", self.cache.is_some(), self.set.cache),
            layer("fallback", cascade, self.set.fallback || cascade),
            layer("breaker", self.breaker.is_some(), self.set.breaker),
            layer("queue", self.queue.is_some(), self.set.queue),
            layer("retry", self.retry.is_some(), self.set.retry),
            layer("limit", self.rate_limits.is_some(), self.set.limits),
        ]
    }
}

#[cfg(test)]
mod tests;
