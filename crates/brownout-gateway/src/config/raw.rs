//! The file as written, and its check into a [`Config`].
//!
//! The file is deserialized into mirror types that refuse unknown keys and check
//! single values as they are read, so toml knows their position and
//! `serde_path_to_error` the key; values that are checked together (a cascade's
//! providers, a breaker policy) keep their spans (`toml::Spanned`), so that their
//! errors name a line too.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
    ops::Range,
    path::Path,
    time::Duration,
};

use brownout::breaker::{BreakerConfig, FailurePolicy, OpenDuration, Window};
use brownout::cache::{CacheConfig, Mode};
use brownout::degrade::{DegradeConfig, Rule};
use brownout::fallback::{
    stream::{AfterFirstByte, DEFAULT_FIRST_EVENT_TIMEOUT},
    FallbackConfig, Target,
};
use brownout::provider::Family;
use brownout::queue::{PreferWait, QueueConfig};
use brownout::retry::{Backoff, RetryBudget, RetryConfig};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::{de, Deserialize, Deserializer};
use toml::Spanned;

use super::{
    CaFile, Config, ConfigError, Connections, Headers, KeySource, Provider, Route, Set,
    CHAT_COMPLETIONS_PATH, DEFAULT_BODY_TIMEOUT, DEFAULT_PER_CLIENT, DEFAULT_STREAM_IDLE_TIMEOUT,
    DEFAULT_TOTAL, MESSAGES_PATH, RESPONSES_PATH,
};

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) fn parse(text: &str, env: Env<'_>, dir: Option<&Path>) -> Result<Config, ConfigError> {
    let deserializer = toml::de::Deserializer::parse(text)
        .map_err(|e| ConfigError::at("", e.message(), text, e.span()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = key_of(e.path());
        let inner = e.into_inner();
        ConfigError::at(key, inner.message(), text, inner.span())
    })?;
    Check { text, env, dir }.config(raw)
}

/// A key path as the file writes it: `provider[0].base_url`,
/// `routes."/v1/messages".cascade[1].model`, without the fields `toml::Spanned` reads
/// through.
fn key_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if name.starts_with("$__serde_spanned_private") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                if name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    key.push_str(name);
                } else {
                    key.push_str(&format!("{name:?}"));
                }
            }
            Segment::Unknown => {}
        }
    }
    key
}

// ---------------------------------------------------------------------------------
// The mirror of the file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    shutdown_grace: Option<Dur>,
    seed: Option<u64>,
    forward_to: Option<Spanned<String>>,
    #[serde(default, rename = "provider")]
    providers: Vec<Spanned<RawProvider>>,
    #[serde(default)]
    routes: RawRoutes,
    retry: Option<RawRetry>,
    breaker: Option<Spanned<RawBreaker>>,
    fallback: Option<RawFallback>,
    cache: Option<RawCache>,
    degrade: Option<Spanned<RawDegrade>>,
    queue: Option<RawQueue>,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    limits: RawLimits,
    /// The whole request body must arrive within this, else 408.
    body_timeout: Option<Positive>,
    #[serde(default)]
    body: RawBody,
    #[serde(default)]
    streams: RawStreams,
    #[serde(default)]
    connections: RawConnections,
    /// `[observe]`: the pages, the availability log and the alerts (see
    /// `observe_log.rs`).
    #[serde(default)]
    observe: RawObserveLog,
    state: Option<Spanned<RawState>>,
}

// `[limits]`: the rate limits (see `limits.rs`). The body settings it held have moved;
// an old file that still sets them is refused with the key's new place.
pub(super) mod limits;
use limits::RawLimits;

pub(super) mod observe_log;
use observe_log::RawObserveLog;
// `[state]`: shared state in Redis (see `state.rs`).
pub(super) mod state;
use state::RawState;

/// `[body]`: how far the layers read a caller's request body, one setting for the
/// whole pipeline.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBody {
    /// Bytes buffered for replay; a longer body is sent once.
    replay_limit: Option<NonZero>,
    /// How long a caller's body may go without a byte before it is answered 408.
    idle_timeout: Option<Dur>,
}

/// `[streams]`: how long a streamed answer may go without an event, how long it may
/// take to show its first content, and what happens when it fails after that.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStreams {
    idle_timeout: Option<Positive>,
    first_event_timeout: Option<Positive>,
    after_first_byte: Option<RawAfterFirstByte>,
}

/// `[streams] after_first_byte`: `"end"` or `"resume"`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawAfterFirstByte {
    End,
    Resume,
}

/// `[connections]`: caps on open client connections.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    per_client: Option<NonZero>,
    total: Option<NonZero>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn yes() -> bool {
    true
}

/// A provider's `api`: whose API it speaks, as core's [`Family`].
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawApi {
    Anthropic,
    Openai,
}

impl From<RawApi> for Family {
    fn from(api: RawApi) -> Family {
        match api {
            RawApi::Anthropic => Family::Anthropic,
            RawApi::Openai => Family::OpenAi,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: Spanned<String>,
    api: RawApi,
    base_url: Spanned<String>,
    api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pass_through_key: bool,
    ca_file: Option<Spanned<String>>,
    #[serde(default = "yes")]
    http2: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(rename = "/v1/messages")]
    messages: Option<RawRoute>,
    #[serde(rename = "/v1/chat/completions")]
    chat_completions: Option<RawRoute>,
    #[serde(rename = "/v1/responses")]
    responses: Option<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    provider: Spanned<String>,
    cascade: Option<Spanned<Vec<Spanned<RawTarget>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    model: String,
    provider: Option<Spanned<String>>,
    max_tokens: Option<NonZero>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "yes")]
    enabled: bool,
    max_attempts: Option<NonZero>,
    backoff: Option<Spanned<RawBackoff>>,
    budget: Option<Spanned<RawBudget>>,
    max_server_delay: Option<Spanned<Dur>>,
    attempt_timeout: Option<Positive>,
    deadline: Option<Positive>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum JitterKind {
    #[default]
    Full,
    Decorrelated,
    None,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default)]
    jitter: JitterKind,
    base: Dur,
    cap: Dur,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    ratio: Option<f32>,
    min_per_sec: Option<u32>,
    ttl: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default = "yes")]
    enabled: bool,
    failure_rate: Option<Spanned<f64>>,
    window: Option<Spanned<WindowValue>>,
    minimum_calls: Option<Spanned<u32>>,
    consecutive_failures: Option<Spanned<u32>>,
    open_for: Option<Spanned<Dur>>,
    open_for_max: Option<Dur>,
    half_open_probes: Option<NonZero>,
    half_open_successes: Option<NonZero>,
    slow_call: Option<Positive>,
}

/// `[queue]`: off unless the section is there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default = "yes")]
    enabled: bool,
    prefer_wait: Option<Spanned<Dur>>,
    max_wait: Option<Spanned<Positive>>,
    max_queue: Option<NonZero>,
    caller_share: Option<Spanned<f64>>,
    probe_after: Option<Positive>,
    early_ack: Option<Positive>,
    recovery_limit: Option<NonZero>,
    priority_header: Option<Spanned<String>>,
}

/// The `[queue]` defaults (the gateway's, tuned for short overload bursts).
pub(super) const QUEUE_PREFER_WAIT: Duration = Duration::from_millis(500);
pub(super) const QUEUE_MAX_WAIT: Duration = Duration::from_millis(800);
const QUEUE_MAX_QUEUE: usize = 64;
const QUEUE_CALLER_SHARE: f64 = 0.5;
const QUEUE_PROBE_AFTER: Duration = Duration::from_millis(250);
const QUEUE_EARLY_ACK: Duration = Duration::from_millis(120);
const QUEUE_RECOVERY_LIMIT: u32 = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    deadline: Option<Positive>,
    min_time_left: Option<Dur>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum CacheMode {
    StaleIfError,
    FreshHit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "yes")]
    enabled: bool,
    mode: Option<CacheMode>,
    ttl: Option<Dur>,
    stale_window: Option<Dur>,
    max_entries: Option<NonZero>,
    max_bytes: Option<NonZero>,
    max_entry_bytes: Option<NonZero>,
    #[serde(default)]
    shared_between_callers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDegrade {
    #[serde(default = "yes")]
    enabled: bool,
    rules_file: Option<Spanned<String>>,
    generic: Option<Spanned<String>>,
    status: Option<Spanned<u16>>,
    retry_after: Option<Dur>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    pattern: String,
    answer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(default = "yes")]
    model: bool,
    #[serde(default = "yes")]
    cache: bool,
    #[serde(default = "yes")]
    degraded: bool,
    #[serde(default = "yes")]
    attempts: bool,
    #[serde(default = "yes")]
    should_retry: bool,
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders {
            model: true,
            cache: true,
            degraded: true,
            attempts: true,
            should_retry: true,
        }
    }
}

// ---------------------------------------------------------------------------------
// Values checked as they are read.

/// A duration written as a string with a unit: `"800ms"`, `"30s"`, `"1m30s"`.
#[derive(Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"800ms\", \"30s\" or \"2m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                brownout::classify::parse_go_duration(v)
                    .map(Dur)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "`{v}` is not a duration such as \"800ms\", \"30s\" or \"2m\""
                        ))
                    })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write \"{v}s\" or \"{v}ms\", not {v}"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write \"{v}s\", not {v}"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A duration above zero.
#[derive(Clone, Copy)]
struct Positive(Duration);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Dur(d) = Dur::deserialize(deserializer)?;
        if d.is_zero() {
            return Err(de::Error::custom("must be longer than zero"));
        }
        Ok(Positive(d))
    }
}

/// A whole number of at least 1.
#[derive(Clone, Copy)]
struct NonZero(u64);

impl<'de> Deserialize<'de> for NonZero {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        if n < 1 {
            return Err(de::Error::custom(format!("must be at least 1, not {n}")));
        }
        Ok(NonZero(n as u64))
    }
}

impl NonZero {
    fn u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }

    fn usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// A breaker window: a number of calls, or a stretch of time.
enum WindowValue {
    Calls(u32),
    Time(Duration),
}

impl<'de> Deserialize<'de> for WindowValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = WindowValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of calls (20) or a duration (\"30s\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WindowValue, E> {
                u32::try_from(v)
                    .ok()
                    .filter(|&n| n > 0)
                    .map(WindowValue::Calls)
                    .ok_or_else(|| E::custom(format!("a window of {v} calls cannot hold a call")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WindowValue, E> {
                Dur::deserialize(de::value::StrDeserializer::<E>::new(v))
                    .map(|Dur(d)| WindowValue::Time(d))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

// ---------------------------------------------------------------------------------
// The check.

struct Check<'a> {
    text: &'a str,
    env: Env<'a>,
    dir: Option<&'a Path>,
}

impl Check<'_> {
    fn error(
        &self,
        key: impl Into<String>,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(key, message, self.text, Some(span))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let seed = raw.seed;
        let headers = Headers {
            model: raw.headers.model,
            cache: raw.headers.cache,
            degraded: raw.headers.degraded,
            attempts: raw.headers.attempts,
            should_retry: raw.headers.should_retry,
        };
        self.moved_limits(&raw.limits)?;
        let providers = self.providers(&raw.providers)?;
        let route = |route: Option<&RawRoute>, family: Family, path: &str| {
            route
                .map(|r| {
                    self.route(
                        r,
                        family,
                        path,
                        &providers,
                        raw.fallback.as_ref(),
                        headers.model,
                    )
                })
                .transpose()
        };
        let messages = route(
            raw.routes.messages.as_ref(),
            Family::Anthropic,
            MESSAGES_PATH,
        )?;
        let chat_completions = route(
            raw.routes.chat_completions.as_ref(),
            Family::OpenAi,
            CHAT_COMPLETIONS_PATH,
        )?;
        let responses = route(
            raw.routes.responses.as_ref(),
            Family::OpenAi,
            RESPONSES_PATH,
        )?;
        if messages.is_none() && chat_completions.is_none() && responses.is_none() {
            return Err(ConfigError::at(
                "routes",
                "no route is configured: add [routes.\"/v1/messages\"], [routes.\"/v1/chat/completions\"] or [routes.\"/v1/responses\"] with a provider",
                self.text,
                None,
            ));
        }
        let forward_to = match &raw.forward_to {
            None => 0,
            Some(name) => self.provider_index(name, "forward_to", &providers)?,
        };
        let breaker = match &raw.breaker {
            None => Some(default_breaker(seed)),
            Some(b) => self.breaker(b, seed)?,
        };
        let queue = self.queue(raw.queue.as_ref(), seed)?;
        if let (Some(_), Some(d)) = (
            &queue,
            raw.retry.as_ref().and_then(|r| r.max_server_delay.as_ref()),
        ) {
            return Err(self.error(
                "retry.max_server_delay",
                d.span(),
                "with [queue] on, the retry layer sleeps a retry-after only up to queue.prefer_wait (wait or move): remove retry.max_server_delay and set queue.prefer_wait instead",
            ));
        }
        let rate_limits = self.rate_limits(
            &raw.limits,
            &providers,
            raw.retry.as_ref(),
            raw.fallback.as_ref(),
        )?;
        let mut retry = self.retry(raw.retry.as_ref(), seed)?;
        if let Some((_, prefer_wait)) = &queue {
            // Wait or move: the retry layer sleeps a `retry-after` only as long as the
            // queue would wait for the model; a longer one goes back to the cascade, and
            // so does an overload that names no delay (a wait of unknown length).
            retry = retry.map(|r| {
                r.max_server_delay(prefer_wait.limit())
                    .move_on_overload(true)
            });
        }
        Ok(Config {
            listen: raw.listen,
            shutdown_grace: raw.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
            providers,
            messages,
            chat_completions,
            responses,
            forward_to,
            retry,
            breaker,
            queue: queue.map(|(config, _)| config),
            rate_limits,
            cache: self.cache(raw.cache.as_ref(), headers),
            degrade: self.degrade(raw.degrade.as_ref(), seed)?,
            headers,
            limits: {
                let mut limits = brownout::body::BodyLimits::new();
                if let Some(bytes) = &raw.body.replay_limit {
                    limits = limits.replay_limit(usize::try_from(bytes.0).unwrap_or(usize::MAX));
                }
                if let Some(idle) = &raw.body.idle_timeout {
                    limits = limits.idle_timeout(Some(idle.0));
                }
                limits
            },
            observe: raw.observe.pages(),
            observers: None,
            body_timeout: raw.body_timeout.map_or(DEFAULT_BODY_TIMEOUT, |d| d.0),
            stream_idle_timeout: raw
                .streams
                .idle_timeout
                .map_or(DEFAULT_STREAM_IDLE_TIMEOUT, |d| d.0),
            stream_first_event_timeout: raw
                .streams
                .first_event_timeout
                .map_or(DEFAULT_FIRST_EVENT_TIMEOUT, |d| d.0),
            stream_after_first_byte: match raw.streams.after_first_byte {
                Some(RawAfterFirstByte::Resume) => AfterFirstByte::Resume,
                _ => AfterFirstByte::End,
            },
            state: self.state(raw.state.as_ref())?,
            connections: Connections {
                per_client: raw
                    .connections
                    .per_client
                    .map_or(DEFAULT_PER_CLIENT, NonZero::usize),
                total: raw.connections.total.map_or(DEFAULT_TOTAL, NonZero::usize),
            },
            observe_log: self.observe_log(&raw.observe)?,
            set: Set {
                retry: raw.retry.is_some(),
                breaker: raw.breaker.is_some(),
                fallback: raw.fallback.is_some(),
                cache: raw.cache.is_some(),
                degrade: raw.degrade.is_some(),
                queue: raw.queue.is_some(),
                limits: raw.limits.is_set(),
            },
        })
    }

    /// Refuses the body settings `[limits]` held before they moved, naming the new key.
    fn moved_limits(&self, raw: &RawLimits) -> Result<(), ConfigError> {
        let moved = [
            ("replay_limit", &raw.replay_limit, "body.replay_limit"),
            (
                "body_idle_timeout",
                &raw.body_idle_timeout,
                "body.idle_timeout",
            ),
        ];
        for (old, value, new) in moved {
            if let Some(value) = value {
                return Err(self.error(
                    format!("limits.{old}"),
                    value.span(),
                    format!("limits.{old} has moved: write it as {new} (in a [body] table)"),
                ));
            }
        }
        Ok(())
    }

    fn providers(&self, raw: &[Spanned<RawProvider>]) -> Result<Vec<Provider>, ConfigError> {
        if raw.is_empty() {
            return Err(ConfigError::at(
                "provider",
                "no provider is configured: add a [[provider]] with a name, an api and a base_url",
                self.text,
                None,
            ));
        }
        let mut names = HashSet::new();
        let mut bases: HashMap<String, bool> = HashMap::new();
        let mut providers = Vec::with_capacity(raw.len());
        for (i, spanned) in raw.iter().enumerate() {
            let p = spanned.get_ref();
            let key = |field: &str| format!("provider[{i}].{field}");
            if p.name.get_ref().trim().is_empty() {
                return Err(self.error(key("name"), p.name.span(), "a provider needs a name"));
            }
            if !names.insert(p.name.get_ref().clone()) {
                return Err(self.error(
                    key("name"),
                    p.name.span(),
                    format!("`{}` is the name of an earlier provider", p.name.get_ref()),
                ));
            }
            let base_url = self.base_url(&p.base_url, &key("base_url"))?;
            // Two providers may share an endpoint (a simulator, a compatible server
            // speaking both APIs), unless one of them holds a key: the gateway could
            // not tell whose key to send.
            let holds_key = p.api_key_env.is_some();
            match bases.get(&base_url.to_string()) {
                Some(&earlier_holds_key) if holds_key || earlier_holds_key => {
                    return Err(self.error(
                        key("base_url"),
                        p.base_url.span(),
                        "an earlier provider has the same base_url, and one of them holds an API key: the gateway could not tell whose key to send",
                    ))
                }
                _ => {
                    bases.insert(base_url.to_string(), holds_key);
                }
            }
            let keysource = match (&p.api_key_env, p.pass_through_key) {
                (Some(_), true) => {
                    return Err(self.error(
                        key("api_key_env"),
                        spanned.span(),
                        "api_key_env and pass_through_key = true exclude each other: choose one",
                    ))
                }
                (None, false) => {
                    return Err(self.error(
                        format!("provider[{i}]"),
                        spanned.span(),
                        format!(
                            "provider `{}` does not say where its API key comes from: set api_key_env = \"NAME\" (the gateway sends the key in that environment variable) or pass_through_key = true (callers send their own)",
                            p.name.get_ref()
                        ),
                    ))
                }
                (None, true) => KeySource::PassThrough,
                (Some(variable), false) => self.env_key(variable, p.api.into(), &key("api_key_env"))?,
            };
            let ca = match &p.ca_file {
                Some(file) => Some(self.ca_file(file, &key("ca_file"))?),
                None => None,
            };
            providers.push(Provider {
                name: p.name.get_ref().clone(),
                family: p.api.into(),
                base_url,
                key: keysource,
                ca,
                http2: p.http2,
            });
        }
        Ok(providers)
    }

    /// A provider's `ca_file`, relative to the configuration's directory, read now and
    /// checked to hold CA certificates.
    fn ca_file(&self, raw: &Spanned<String>, key: &str) -> Result<CaFile, ConfigError> {
        let path = match self.dir {
            Some(dir) => dir.join(raw.get_ref()),
            None => std::path::PathBuf::from(raw.get_ref()),
        };
        let pem = std::fs::read(&path)
            .map_err(|e| self.error(key, raw.span(), format!("`{}`: {e}", path.display())))?;
        // The client's own check, so that building the client cannot fail later.
        brownout::client::HttpsConfig::new()
            .roots(brownout::client::Roots::None)
            .ca_pem(&pem)
            .build()
            .map_err(|e| {
                self.error(
                    key,
                    raw.span(),
                    format!("`{}`: {}", path.display(), e.reason()),
                )
            })?;
        Ok(CaFile {
            path,
            pem: pem.into(),
        })
    }

    fn base_url(&self, raw: &Spanned<String>, key: &str) -> Result<Uri, ConfigError> {
        let text = raw.get_ref().trim();
        let fail = |message: String| self.error(key, raw.span(), message);
        // Before anything repeats the URL: user info in it is a secret.
        let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
        let authority = after_scheme
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if authority.contains('@') {
            return Err(fail(
                "the base URL holds a user name or password: credentials belong in api_key_env (or callers' own keys with pass_through_key = true), never in the URL".into(),
            )
            .without_source_line());
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| fail(format!("`{text}` is not a URL: {e}")))?;
        let scheme = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ => {
                return Err(fail(format!(
                    "`{text}` needs the scheme https:// (or http:// for a local upstream)"
                )))
            }
        };
        if uri.authority().is_none() {
            return Err(fail(format!("`{text}` needs a host")));
        }
        if uri.query().is_some() {
            return Err(fail(format!(
                "`{text}` has a query: a base URL is a scheme, a host and an optional path"
            )));
        }
        // The path is a prefix put in front of every request's path: keep it without
        // its trailing slash, so that `/proxy/` and `/proxy` mean the same.
        let prefix = uri.path().trim_end_matches('/');
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        format!("{scheme}://{authority}{prefix}")
            .parse()
            .map_err(|e| fail(format!("`{text}` is not a URL: {e}")))
    }

    fn env_key(
        &self,
        variable: &Spanned<String>,
        family: Family,
        key: &str,
    ) -> Result<KeySource, ConfigError> {
        let name = variable.get_ref().trim();
        let fail = |message: String| self.error(key, variable.span(), message);
        if name.is_empty() {
            return Err(fail("the name of the environment variable is empty".into()));
        }
        let Some(value) = (self.env)(name) else {
            return Err(fail(format!(
                "the environment variable {name} is not set (it should hold the provider's API key)"
            )));
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(fail(format!("the environment variable {name} is empty")));
        }
        let header = family.key_header(value);
        // The value is never shown, not even in this error.
        let mut value = HeaderValue::from_str(&header.1).map_err(|_| {
            fail(format!(
                "the environment variable {name} holds characters a header cannot carry"
            ))
        })?;
        value.set_sensitive(true);
        Ok(KeySource::Env {
            variable: name.to_owned(),
            header: (header.0, value),
        })
    }

    fn provider_index(
        &self,
        name: &Spanned<String>,
        key: &str,
        providers: &[Provider],
    ) -> Result<usize, ConfigError> {
        providers
            .iter()
            .position(|p| p.name == *name.get_ref())
            .ok_or_else(|| {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                self.error(
                    key,
                    name.span(),
                    format!(
                        "no provider is named `{}` (the providers are: {})",
                        name.get_ref(),
                        known.join(", ")
                    ),
                )
            })
    }

    fn route(
        &self,
        raw: &RawRoute,
        family: Family,
        path: &str,
        providers: &[Provider],
        fallback: Option<&RawFallback>,
        served_header: bool,
    ) -> Result<Route, ConfigError> {
        let route_key = format!("routes.\"{path}\"");
        let speaks = |index: usize, key: &str, span: Range<usize>| {
            let provider = &providers[index];
            if provider.family == family {
                Ok(())
            } else {
                Err(self.error(
                    key,
                    span,
                    format!(
                        "provider `{}` speaks the {} API; {path} needs an {} one",
                        provider.name,
                        provider.family.as_str(),
                        family.as_str()
                    ),
                ))
            }
        };
        let provider_key = format!("{route_key}.provider");
        let provider = self.provider_index(&raw.provider, &provider_key, providers)?;
        speaks(provider, &provider_key, raw.provider.span())?;
        let Some(cascade) = &raw.cascade else {
            return Ok(Route {
                provider,
                cascade: None,
            });
        };
        let cascade_key = format!("{route_key}.cascade");
        if cascade.get_ref().is_empty() {
            return Err(self.error(
                &cascade_key,
                cascade.span(),
                "an empty cascade: list at least one model, or leave the key out",
            ));
        }
        let mut targets = Vec::with_capacity(cascade.get_ref().len());
        for (i, spanned) in cascade.get_ref().iter().enumerate() {
            let t = spanned.get_ref();
            let key = format!("{cascade_key}[{i}]");
            let index = match &t.provider {
                None => provider,
                Some(name) => {
                    let k = format!("{key}.provider");
                    let index = self.provider_index(name, &k, providers)?;
                    speaks(index, &k, name.span())?;
                    index
                }
            };
            let mut target = Target::new(t.model.as_str())
                .base_url(&providers[index].base_url.to_string())
                .map_err(|e| self.error(&key, spanned.span(), e.reason().to_owned()))?;
            if let Some(limit) = t.max_tokens {
                target = target.max_tokens(limit.0);
            }
            // The credentials layer, innermost, sets each keyed provider's key on the
            // final endpoint and strips the caller's there; a pass-through provider
            // must receive the caller's key, so the cascade keeps it on the request.
            target = target.keep_caller_credentials();
            targets.push(target);
        }
        let mut config = FallbackConfig::new(targets)
            .map_err(|e| self.error(&cascade_key, cascade.span(), e.reason().to_owned()))?;
        if served_header {
            config = config.served_header_default();
        }
        if let Some(f) = fallback {
            if let Some(Positive(d)) = f.deadline {
                config = config.deadline(d);
            }
            if let Some(Dur(d)) = f.min_time_left {
                config = config.min_time_left(d);
            }
        }
        Ok(Route {
            provider,
            cascade: Some(config),
        })
    }

    fn retry(
        &self,
        raw: Option<&RawRetry>,
        seed: Option<u64>,
    ) -> Result<Option<RetryConfig>, ConfigError> {
        let mut config = RetryConfig::new();
        if let Some(seed) = seed {
            config = config.seed(seed);
        }
        let Some(raw) = raw else {
            return Ok(Some(config));
        };
        if !raw.enabled {
            return Ok(None);
        }
        if let Some(n) = raw.max_attempts {
            config = config.max_attempts(n.u32());
        }
        if let Some(b) = &raw.backoff {
            let RawBackoff { jitter, base, cap } = *b.get_ref();
            let backoff = match jitter {
                JitterKind::Full => Backoff::full_jitter(base.0, cap.0),
                JitterKind::Decorrelated => Backoff::decorrelated_jitter(base.0, cap.0),
                JitterKind::None => Backoff::exponential(base.0, cap.0),
            }
            .map_err(|e| self.error("retry.backoff", b.span(), e.reason().to_owned()))?;
            config = config.backoff(backoff);
        }
        if let Some(b) = &raw.budget {
            let RawBudget {
                ratio,
                min_per_sec,
                ttl,
            } = *b.get_ref();
            let budget = RetryBudget::new(
                ttl.map_or(Duration::from_secs(10), |d| d.0),
                min_per_sec.unwrap_or(10),
                ratio.unwrap_or(0.2),
            )
            .map_err(|e| self.error("retry.budget", b.span(), e.reason().to_owned()))?;
            config = config.budget(budget);
        }
        if let Some(d) = &raw.max_server_delay {
            config = config.max_server_delay(d.get_ref().0);
        }
        if let Some(Positive(d)) = raw.attempt_timeout {
            config = config.attempt_timeout(d);
        }
        if let Some(Positive(d)) = raw.deadline {
            config = config.deadline(d);
        }
        Ok(Some(config))
    }

    /// `[queue]`, with its wait-or-move limit (also the retry layer's
    /// `max_server_delay`).
    fn queue(
        &self,
        raw: Option<&RawQueue>,
        seed: Option<u64>,
    ) -> Result<Option<(QueueConfig, PreferWait)>, ConfigError> {
        let Some(q) = raw.filter(|q| q.enabled) else {
            return Ok(None);
        };
        let prefer_wait = q
            .prefer_wait
            .as_ref()
            .map_or(QUEUE_PREFER_WAIT, |d| d.get_ref().0);
        let max_wait = q
            .max_wait
            .as_ref()
            .map_or(QUEUE_MAX_WAIT, |d| d.get_ref().0);
        if prefer_wait > max_wait {
            let (key, span) = match (&q.prefer_wait, &q.max_wait) {
                (Some(p), _) => ("queue.prefer_wait", p.span()),
                (None, Some(m)) => ("queue.max_wait", m.span()),
                (None, None) => unreachable!("the defaults are in order"),
            };
            return Err(self.error(
                key,
                span,
                format!(
                    "prefer_wait ({prefer_wait:?}) must not be longer than max_wait ({max_wait:?}): the queue would send requests in to wait longer than it holds them"
                ),
            ));
        }
        let policy = PreferWait::up_to(prefer_wait);
        let mut config = QueueConfig::new()
            .prefer_wait(policy)
            .max_wait(max_wait)
            .max_queue(q.max_queue.map_or(QUEUE_MAX_QUEUE, NonZero::usize))
            .probe_after(q.probe_after.map_or(QUEUE_PROBE_AFTER, |d| d.0))
            .early_ack(q.early_ack.map_or(QUEUE_EARLY_ACK, |d| d.0))
            .recovery_limit(q.recovery_limit.map_or(QUEUE_RECOVERY_LIMIT, NonZero::u32));
        let share = q.caller_share.as_ref();
        config = config
            .caller_share(share.map_or(QUEUE_CALLER_SHARE, |s| *s.get_ref()))
            .map_err(|e| {
                let span = share.map_or(0..0, Spanned::span);
                self.error("queue.caller_share", span, e.reason().to_owned())
            })?;
        if let Some(name) = &q.priority_header {
            let header = HeaderName::from_bytes(name.get_ref().as_bytes()).map_err(|_| {
                self.error(
                    "queue.priority_header",
                    name.span(),
                    format!("{:?} is not a header name", name.get_ref()),
                )
            })?;
            if brownout::provider::is_credential(&header) {
                return Err(self.error(
                    "queue.priority_header",
                    name.span(),
                    format!("{header} carries a credential, not a priority"),
                ));
            }
            config = config.priority_header(header);
        }
        if let Some(seed) = seed {
            config = config.seed(seed);
        }
        Ok(Some((config, policy)))
    }

    fn breaker(
        &self,
        raw: &Spanned<RawBreaker>,
        seed: Option<u64>,
    ) -> Result<Option<BreakerConfig>, ConfigError> {
        let b = raw.get_ref();
        if !b.enabled {
            return Ok(None);
        }
        let mut config = default_breaker(seed);
        let rate_keys = b.failure_rate.is_some() || b.window.is_some() || b.minimum_calls.is_some();
        let policy = match &b.consecutive_failures {
            Some(n) if rate_keys => {
                return Err(self.error(
                    "breaker.consecutive_failures",
                    n.span(),
                    "consecutive_failures excludes failure_rate, window and minimum_calls: choose one policy",
                ))
            }
            Some(n) => FailurePolicy::consecutive(*n.get_ref())
                .map_err(|e| self.error("breaker.consecutive_failures", n.span(), e.reason().to_owned()))?,
            None => {
                let threshold = b.failure_rate.as_ref().map_or(0.5, |r| *r.get_ref());
                let window = match b.window.as_ref().map(Spanned::get_ref) {
                    None => Window::Count(20),
                    Some(WindowValue::Calls(n)) => Window::Count(*n),
                    Some(WindowValue::Time(d)) => Window::Time(*d),
                };
                let minimum = b.minimum_calls.as_ref().map_or(10, |m| *m.get_ref());
                FailurePolicy::failure_rate(threshold, window, minimum).map_err(|e| {
                    // Point at the value the breaker crate refused.
                    let (key, span) = match e.key() {
                        "failure_rate.threshold" => ("breaker.failure_rate", b.failure_rate.as_ref().map(Spanned::span)),
                        "failure_rate.window" => ("breaker.window", b.window.as_ref().map(Spanned::span)),
                        _ => ("breaker.minimum_calls", b.minimum_calls.as_ref().map(Spanned::span)),
                    };
                    let message = e.reason().to_owned();
                    ConfigError::at(key, message, self.text, Some(span.unwrap_or_else(|| raw.span())))
                })?
            }
        };
        config = config.policy(policy);
        if let Some(open) = &b.open_for {
            let base = open.get_ref().0;
            let duration = match b.open_for_max {
                None if base.is_zero() => {
                    return Err(self.error(
                        "breaker.open_for",
                        open.span(),
                        "must be longer than zero",
                    ))
                }
                None => OpenDuration::Fixed(base),
                Some(Dur(max)) => OpenDuration::growing(base, max).map_err(|e| {
                    self.error("breaker.open_for", open.span(), e.reason().to_owned())
                })?,
            };
            config = config.open_duration(duration);
        } else if let Some(Dur(max)) = b.open_for_max {
            config = config.open_duration(
                OpenDuration::growing(Duration::from_secs(30).min(max), max).map_err(|e| {
                    self.error("breaker.open_for_max", raw.span(), e.reason().to_owned())
                })?,
            );
        }
        if let Some(n) = b.half_open_probes {
            config = config.half_open_probes(n.u32());
        }
        if let Some(n) = b.half_open_successes {
            config = config.half_open_successes(n.u32());
        }
        if let Some(Positive(d)) = b.slow_call {
            config = config.slow_call(d);
        }
        Ok(Some(config))
    }

    fn cache(&self, raw: Option<&RawCache>, headers: Headers) -> Option<CacheConfig> {
        let mut config = CacheConfig::new();
        if !headers.cache {
            config = config.status_header(None);
        }
        let Some(c) = raw else {
            return Some(config);
        };
        if !c.enabled {
            return None;
        }
        if let Some(mode) = c.mode {
            config = config.mode(match mode {
                CacheMode::StaleIfError => Mode::StaleIfError,
                CacheMode::FreshHit => Mode::FreshHit,
            });
        }
        if let Some(Dur(d)) = c.ttl {
            config = config.ttl(d);
        }
        if let Some(Dur(d)) = c.stale_window {
            config = config.stale_window(d);
        }
        if let Some(n) = c.max_entries {
            config = config.max_entries(n.0);
        }
        if let Some(n) = c.max_bytes {
            config = config.max_bytes(n.0);
        }
        if let Some(n) = c.max_entry_bytes {
            config = config.max_entry_bytes(n.usize());
        }
        if c.shared_between_callers {
            config = config.no_credential_partitioning();
        }
        Some(config)
    }

    fn degrade(
        &self,
        raw: Option<&Spanned<RawDegrade>>,
        seed: Option<u64>,
    ) -> Result<Option<DegradeConfig>, ConfigError> {
        let Some(spanned) = raw else {
            return Ok(Some(seeded_degrade(DegradeConfig::default(), seed)));
        };
        let d = spanned.get_ref();
        if !d.enabled {
            return Ok(None);
        }
        if let Some(file) = &d.rules_file {
            let inline = d.generic.is_some()
                || d.status.is_some()
                || d.retry_after.is_some()
                || !d.rule.is_empty();
            if inline {
                return Err(self.error(
                    "degrade.rules_file",
                    file.span(),
                    "rules_file excludes inline settings (generic, status, retry_after, rule): put them all in the rules file",
                ));
            }
            let path = match self.dir {
                Some(dir) => dir.join(file.get_ref()),
                None => Path::new(file.get_ref()).to_owned(),
            };
            let config = DegradeConfig::from_file(&path).map_err(|e| {
                self.error(
                    "degrade.rules_file",
                    file.span(),
                    format!("in {}: {e}", path.display()),
                )
            })?;
            return Ok(Some(seeded_degrade(config, seed)));
        }
        let mut rules = Vec::with_capacity(d.rule.len());
        for (i, spanned) in d.rule.iter().enumerate() {
            let r = spanned.get_ref();
            let rule = Rule::new(&r.name, &r.pattern, &r.answer).map_err(|e| {
                let field = e.key().strip_prefix("rule.").unwrap_or("rule");
                self.error(
                    format!("degrade.rule[{i}].{field}"),
                    spanned.span(),
                    e.reason().to_owned(),
                )
            })?;
            rules.push(rule);
        }
        let mut config = DegradeConfig::new(rules).map_err(|e| {
            let i = e.item_index().map_or(0, |i| i.saturating_sub(1));
            let span = d.rule.get(i).map_or_else(|| spanned.span(), Spanned::span);
            self.error(
                format!("degrade.rule[{i}].name"),
                span,
                e.reason().to_owned(),
            )
        })?;
        if let Some(generic) = &d.generic {
            config = config.generic(generic.get_ref().as_str()).map_err(|e| {
                self.error("degrade.generic", generic.span(), e.reason().to_owned())
            })?;
        }
        if let Some(status) = &d.status {
            let code = StatusCode::from_u16(*status.get_ref()).map_err(|_| {
                self.error(
                    "degrade.status",
                    status.span(),
                    format!("{} is not an HTTP status", status.get_ref()),
                )
            })?;
            config = config
                .status(code)
                .map_err(|e| self.error("degrade.status", status.span(), e.reason().to_owned()))?;
        }
        if let Some(Dur(d)) = d.retry_after {
            config = config.retry_after(d);
        }
        Ok(Some(seeded_degrade(config, seed)))
    }
}

fn default_breaker(seed: Option<u64>) -> BreakerConfig {
    let config = BreakerConfig::new();
    match seed {
        Some(seed) => config.seed(seed),
        None => config,
    }
}

fn seeded_degrade(config: DegradeConfig, seed: Option<u64>) -> DegradeConfig {
    match seed {
        Some(seed) => config.seed(seed),
        None => config,
    }
}
