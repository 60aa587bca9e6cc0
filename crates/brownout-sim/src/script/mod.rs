//! What the simulated upstream does: per model, its latency and its scripted faults.
//!
//! A [`Script`] is built in code or loaded from TOML ([`Script::from_toml_str`],
//! [`Script::from_file`]). Each model named in it has a [`ModelScript`]; a request for a
//! model the script does not name gets the script's default model (healthy, no
//! latency, unless set with [`Script::default_model`]).
//!
//! # How a fault is chosen
//!
//! For each request the simulator draws one number `u` in `[0, 1)` and walks the
//! model's faults in order, skipping those whose time window does not contain the
//! request's arrival (measured from the moment the [`Sim`](crate::Sim) was created)
//! and stream errors for requests that do not stream. Rates accumulate: with faults of
//! rates 0.3 and 0.05, `u < 0.3` picks the first and `0.3 ≤ u < 0.35` the second, so
//! each happens at its own rate. When the active rates add up to more than 1, the
//! later faults get what is left. No fault picked: the request succeeds.
//!
//! Every draw for a request (the fault, its latency, ids, the answer's words) comes
//! from a generator seeded with the script's seed and the request's arrival number,
//! so the same seed and script give the same outcome to the n-th request, however
//! the requests are spread over clones and connections.
//!
//! # The TOML format
//!
//! Every key is optional except a fault's `kind`; unknown keys are refused. Durations
//! are strings such as `"800ms"`, `"2s"`, `"1.5s"`, `"1m30s"`; times count from the
//! simulator's start.
//!
//! ```
//! let script = brownout_sim::Script::from_toml_str(r#"
//! seed = 7
//!
//! [run]                      # how the runner drives the script (its defaults)
//! model = "claude-sonnet-4-5"
//! endpoint = "anthropic"     # the API: "anthropic" (Messages) or "openai" (Chat Completions)
//! requests = 600
//! concurrency = 8
//! over = "10m"               # spread request starts over ten minutes
//! timeout = "60s"            # the caller's patience per request
//! stream = false
//!
//! [default]                  # models the script does not name
//! latency = { fixed = "500ms" }
//!
//! [models."claude-sonnet-4-5"]
//! latency = { lognormal = { median = "1.2s", sigma = 0.5, max = "30s" } }
//! ## or { uniform = { min = "200ms", max = "2s" } }, { pareto = { scale = "300ms", shape = 1.5 } }
//! stream_interval = "30ms"   # between server-sent events
//! output_tokens = 48
//! requests_per_minute = 4000 # advertised in the rate-limit headers
//! ## enforced limits: a 429 past them (see `Enforced`)
//! enforce = { requests_per_minute = 4000, input_tokens_per_minute = 400000 }
//!
//! [[models."claude-sonnet-4-5".faults]]
//! kind = "overloaded"        # see FaultKind for every kind
//! rate = 0.7                 # share of requests while active (default 1)
//! from = "0s"
//! until = "2m"               # recovered from then on
//! latency = { fixed = "80ms" }
//!
//! [[models."claude-sonnet-4-5".faults]]
//! kind = "rate_limited"
//! rate = 0.05
//! retry_after = "5s"
//!
//! [[models."claude-sonnet-4-5".faults]]
//! kind = "stream_error"
//! rate = 0.05
//! after_deltas = 8
//! "#)?;
//! # let _ = script;
//! # Ok::<(), brownout_sim::ScriptError>(())
//! ```
//!
//! A mistake is reported with its key and line:
//!
//! ```
//! let error = brownout_sim::Script::from_toml_str("[models.m]\noutput_tokens = 3\nlatncy = { fixed = \"1s\" }\n")
//!     .unwrap_err();
//! assert_eq!(error.line(), Some(3));
//! assert_eq!(error.key(), Some("models.m.latncy"));
//! assert!(error.to_string().starts_with("line 3, column 1, key models.m.latncy: unknown field `latncy`"));
//! ```

mod de;

use std::{fmt, path::Path, time::Duration};

use brownout_core::provider::Api;

pub use self::de::ScriptError;

/// The shipped outage script, as TOML: a bad hour at a provider compressed into ten
/// minutes. See [`Script::outage`].
pub const OUTAGE_TOML: &str = include_str!("../../scripts/outage.toml");

/// The shipped burst script, as TOML: one minute of short, irregular overload bursts
/// (a few hundred milliseconds each). See [`Script::bursts`].
pub const BURSTS_TOML: &str = include_str!("../../scripts/bursts.toml");

/// The shipped streaming outage script, as TOML: streams that fail after their `200`
/// (error events, stalls and cuts, before and after the first content). See
/// [`Script::streaming_outage`].
pub const STREAMS_TOML: &str = include_str!("../../scripts/streams.toml");

/// The longest a long-tailed [`Latency`] draws unless told otherwise with
/// [`Latency::max`]: five minutes.
pub const DEFAULT_LATENCY_CAP: Duration = Duration::from_secs(300);

/// The request path of `api`, as the runner sends it: `/v1/messages`,
/// `/v1/chat/completions`, `/v1/responses`, and `/` for an API brownout does not know.
pub(crate) fn api_path(api: Api) -> &'static str {
    match api {
        Api::AnthropicMessages => "/v1/messages",
        Api::OpenAiChat => "/v1/chat/completions",
        Api::OpenAiResponses => "/v1/responses",
        _ => "/",
    }
}

/// The name of `api` in scripts (`endpoint = "anthropic"`), on the binary's command
/// line and in reports: `"anthropic"` and `"openai"` for the two APIs the simulator
/// serves, else [`Api::as_str`].
pub(crate) fn api_name(api: Api) -> &'static str {
    match api {
        Api::AnthropicMessages => "anthropic",
        Api::OpenAiChat => "openai",
        other => other.as_str(),
    }
}

/// The API the simulator serves at `path`, exactly there: Anthropic Messages at
/// `/v1/messages` and OpenAI Chat Completions at `/v1/chat/completions`.
pub(crate) fn served_api(path: &str) -> Option<Api> {
    let api = Api::from_path(path);
    (matches!(api, Api::AnthropicMessages | Api::OpenAiChat) && path == api_path(api))
        .then_some(api)
}

/// A whole scenario: a seed, per-model behaviour, and optionally how the
/// [`Runner`](crate::Runner) drives it.
///
/// ```
/// use std::time::Duration;
/// use brownout_sim::{Fault, Latency, ModelScript, Script};
///
/// let script = Script::new()
///     .seed(7)
///     .model(
///         "claude-sonnet-4-5",
///         ModelScript::new()
///             .latency(Latency::lognormal(Duration::from_millis(900), 0.5)?)
///             // 70 % overloaded for the first minute, then recovered.
///             .fault(Fault::overloaded().rate(0.7).until(Duration::from_secs(60)))
///             .fault(Fault::rate_limited(Duration::from_secs(2)).rate(0.05)),
///     )
///     .model("claude-haiku-4-5", ModelScript::new().latency(Latency::fixed(Duration::from_millis(300))));
/// # let _ = script;
/// # Ok::<(), brownout_sim::ScriptError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub(crate) seed: u64,
    pub(crate) default: ModelScript,
    pub(crate) models: Vec<(String, ModelScript)>,
    pub(crate) plan: RunPlan,
}

/// How the runner drives a script unless told otherwise: the `[run]` table of a
/// script file. Every field is optional.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunPlan {
    pub(crate) model: Option<String>,
    pub(crate) api: Option<Api>,
    pub(crate) requests: Option<u64>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) over: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream: Option<bool>,
}

impl Script {
    /// An empty script: seed 0, every model healthy with no latency.
    pub fn new() -> Self {
        Script::default()
    }

    /// The shipped outage script ([`OUTAGE_TOML`]).
    ///
    /// Ten minutes of a bad hour: the first-choice model `claude-sonnet-4-5` answers
    /// 529 `overloaded_error` in three bursts and at a low rate between them (about 40 %
    /// of its requests over the run), 429 with `retry-after` now and then, and a mid-
    /// stream overload on some streams; the lighter `claude-haiku-4-5` stays healthy.
    /// `gpt-4.1` and `gpt-4.1-mini` play the same parts on the OpenAI API.
    pub fn outage() -> Script {
        Script::from_toml_str(OUTAGE_TOML).expect("the shipped outage script is valid")
    }

    /// The shipped burst script ([`BURSTS_TOML`]).
    ///
    /// One minute in which `claude-sonnet-4-5` answers 529 `overloaded_error` (with
    /// `retry-after: 1`) to 95 % of its requests in 47 bursts of 200 to 700 ms, 250 ms
    /// to 1 s apart (35 % of the time), and to 2 % between them; `claude-haiku-4-5`
    /// stays healthy. `gpt-4.1` and `gpt-4.1-mini` play the same parts on the OpenAI
    /// API.
    ///
    /// ```
    /// let script = brownout_sim::Script::bursts();
    /// let sonnet = script.model_script("claude-sonnet-4-5");
    /// assert_eq!(sonnet.faults().len(), 48); // 47 bursts and the background
    /// ```
    pub fn bursts() -> Script {
        Script::from_toml_str(BURSTS_TOML).expect("the shipped burst script is valid")
    }

    /// The shipped streaming outage script ([`STREAMS_TOML`]).
    ///
    /// Ten minutes in which every request streams: `claude-sonnet-4-5` answers some
    /// requests 529 up front (60 % from 2:00 to 4:00, 3 % all run long) and breaks
    /// about a third of its streams after their `200` — an `overloaded_error` event,
    /// a stall or a cut, 16 % before the first content delta and 15 % after content
    /// reached the caller; `claude-haiku-4-5` stays healthy. `gpt-4.1` and
    /// `gpt-4.1-mini` play the same parts on the OpenAI API.
    ///
    /// ```
    /// use brownout_sim::FaultKind;
    /// let script = brownout_sim::Script::streaming_outage();
    /// let sonnet = script.model_script("claude-sonnet-4-5");
    /// assert_eq!(sonnet.faults().iter().filter(|f| f.kind().is_stream()).count(), 6);
    /// ```
    pub fn streaming_outage() -> Script {
        Script::from_toml_str(STREAMS_TOML).expect("the shipped streaming script is valid")
    }

    /// Parses a script from TOML (the format is in the [module docs](self)). The
    /// error names the key and the line of the first problem.
    pub fn from_toml_str(toml: &str) -> Result<Script, ScriptError> {
        de::parse(toml)
    }

    /// Reads and parses a script file; errors also name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Script, ScriptError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ScriptError::io(path, e))?;
        Script::from_toml_str(&text).map_err(|e| e.in_file(path))
    }

    /// Sets the seed of every random draw.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// How models the script does not name behave.
    pub fn default_model(mut self, model: ModelScript) -> Self {
        self.default = model;
        self
    }

    /// How the model `name` behaves. Naming a model twice replaces the first.
    pub fn model(mut self, name: impl Into<String>, model: ModelScript) -> Self {
        let name = name.into();
        match self.models.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = model,
            None => self.models.push((name, model)),
        }
        self
    }

    /// The seed.
    pub fn seed_value(&self) -> u64 {
        self.seed
    }

    /// The models the script names, in the order they were added (alphabetical for a
    /// script read from TOML).
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|(n, _)| n.as_str())
    }

    /// How the model `name` behaves: its own script, or the default one.
    pub fn model_script(&self, name: &str) -> &ModelScript {
        self.models
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&self.default, |(_, m)| m)
    }
}

/// How one model behaves: latency, answer size, advertised rate limit, and faults.
///
/// | setting | default |
/// |---|---|
/// | [`latency`](Self::latency) | none ([`Latency::fixed`] zero) |
/// | [`stream_interval`](Self::stream_interval) | zero |
/// | [`output_tokens`](Self::output_tokens) | 16 |
/// | [`requests_per_minute`](Self::requests_per_minute) | 4000 |
/// | [`fault`](Self::fault) | none: always healthy |
#[derive(Debug, Clone)]
pub struct ModelScript {
    pub(crate) latency: Latency,
    pub(crate) stream_interval: Duration,
    pub(crate) output_tokens: u32,
    pub(crate) requests_per_minute: u32,
    pub(crate) enforced: Option<Enforced>,
    pub(crate) faults: Vec<Fault>,
}

/// Rate limits a model enforces, as the providers do: per minute, in token buckets
/// that hold a minute's limit and refill continuously. A request that finds a bucket
/// short gets a 429 `rate_limit_error` with `retry-after` (the time until there is
/// room) and counts as `"over_limit"`. Input tokens are the simulator's count (a
/// token per four request bytes), output tokens the words of the answer. Set with
/// [`ModelScript::enforce`], or `[models.NAME.enforce]` in TOML with the same keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforced {
    pub(crate) per_minute: [Option<u64>; 4],
}

impl Enforced {
    /// No limit.
    pub fn new() -> Self {
        Enforced::default()
    }

    /// Requests per minute.
    pub fn requests_per_minute(mut self, n: u64) -> Self {
        self.per_minute[0] = Some(n);
        self
    }

    /// Input tokens per minute.
    pub fn input_tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[1] = Some(n);
        self
    }

    /// Output tokens per minute.
    pub fn output_tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[2] = Some(n);
        self
    }

    /// Input and output tokens together per minute.
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[3] = Some(n);
        self
    }
}

impl Default for ModelScript {
    fn default() -> Self {
        ModelScript {
            latency: Latency::fixed(Duration::ZERO),
            stream_interval: Duration::ZERO,
            output_tokens: 16,
            requests_per_minute: 4000,
            enforced: None,
            faults: Vec::new(),
        }
    }
}

impl ModelScript {
    /// A healthy model with the defaults in the table above.
    pub fn new() -> Self {
        ModelScript::default()
    }

    /// How long a successful answer takes to start: the whole answer when it does not
    /// stream, the first event when it does.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// The pause between two events of a streamed answer.
    pub fn stream_interval(mut self, interval: Duration) -> Self {
        self.stream_interval = interval;
        self
    }

    /// How many tokens (words) an answer has, unless the request's `max_tokens` is
    /// lower.
    pub fn output_tokens(mut self, tokens: u32) -> Self {
        self.output_tokens = tokens;
        self
    }

    /// The request rate limit advertised in the rate-limit headers. It is not
    /// enforced: script [`Fault::rate_limited`] for 429s.
    pub fn requests_per_minute(mut self, limit: u32) -> Self {
        self.requests_per_minute = limit;
        self
    }

    /// Enforces these limits (see [`Enforced`]); the rate-limit headers then advertise
    /// them.
    pub fn enforce(mut self, limits: Enforced) -> Self {
        self.enforced = Some(limits);
        self
    }

    /// Adds a fault, after those already added (see the [module docs](self) for how
    /// faults combine).
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// The model's faults, in order.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }
}

/// What a fault does to a request. The status and body depend on the API; each body
/// is the provider's own JSON error shape.
///
/// | kind | `/v1/messages` (Anthropic) | `/v1/chat/completions` (OpenAI) |
/// |---|---|---|
/// | `overloaded` | 529 `overloaded_error` | 503 `server_error` |
/// | `unavailable` | 503 `api_error` | 503 `server_error` |
/// | `server_error` | 500 `api_error` | 500 `server_error` |
/// | `bad_gateway` | 502 `api_error` | 502 `server_error` |
/// | `rate_limited` | 429 `rate_limit_error` | 429 `rate_limit_exceeded` |
/// | `quota_exceeded` | 400 `invalid_request_error` (credit balance) | 429 `insufficient_quota` |
/// | `bad_request` | 400 `invalid_request_error` | 400 `invalid_request_error` |
/// | `unauthorized` | 401 `authentication_error` | 401 `invalid_api_key` |
/// | `hang` | no answer, ever | same |
/// | `reset` | the connection is dropped | same |
/// | `stream_error` | 200, then `event: error` `overloaded_error` mid-stream | 200, then a `data: {"error":…}` event |
/// | `stream_stall` | 200, then silence mid-stream: no event, no end | same |
/// | `stream_cut` | 200, then the connection is cut mid-stream | same |
///
/// The three stream faults fail after `after_deltas` content deltas (default 3); with
/// `after_deltas = 0` they fail before the first content delta, after the stream's
/// opening events (`message_start`, `content_block_start`, `ping`; OpenAI's role
/// chunk). Requests that do not stream skip them.
///
/// Error answers carry `x-should-retry: true` when the provider's would (429 and 5xx),
/// and the rate-limit headers; 429s also `retry-after` and a reset header that
/// matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// The provider is overloaded (529 on Anthropic's API, 503 on OpenAI's).
    Overloaded,
    /// 503.
    Unavailable,
    /// 500.
    ServerError,
    /// 502.
    BadGateway,
    /// 429 with `retry-after`.
    RateLimited,
    /// The account's quota or credit is spent: never worth retrying.
    QuotaExceeded,
    /// 400: the request is malformed.
    BadRequest,
    /// 401: the key is wrong.
    Unauthorized,
    /// No answer at all, until the client gives up.
    Hang,
    /// The connection is dropped without an answer. In process, the service returns
    /// an [`io::Error`](std::io::Error) of kind `ConnectionReset`.
    Reset,
    /// A streamed answer starts with 200 and fails with an overload after some deltas.
    /// Requests that do not stream skip this fault.
    StreamError,
    /// A streamed answer starts with 200 and goes silent after some deltas, never
    /// ending. Requests that do not stream skip this fault.
    StreamStall,
    /// A streamed answer starts with 200 and its connection is cut after some deltas.
    /// Requests that do not stream skip this fault.
    StreamCut,
}

impl FaultKind {
    /// The kind's name, as TOML takes it (`"rate_limited"`).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Overloaded => "overloaded",
            FaultKind::Unavailable => "unavailable",
            FaultKind::ServerError => "server_error",
            FaultKind::BadGateway => "bad_gateway",
            FaultKind::RateLimited => "rate_limited",
            FaultKind::QuotaExceeded => "quota_exceeded",
            FaultKind::BadRequest => "bad_request",
            FaultKind::Unauthorized => "unauthorized",
            FaultKind::Hang => "hang",
            FaultKind::Reset => "reset",
            FaultKind::StreamError => "stream_error",
            FaultKind::StreamStall => "stream_stall",
            FaultKind::StreamCut => "stream_cut",
        }
    }

    /// Whether the fault answers with an HTTP error status.
    pub fn is_http_error(self) -> bool {
        !matches!(self, FaultKind::Hang | FaultKind::Reset) && !self.is_stream()
    }

    /// Whether the fault breaks a streamed answer after its `200` (`stream_error`,
    /// `stream_stall`, `stream_cut`): requests that do not stream skip it.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            FaultKind::StreamError | FaultKind::StreamStall | FaultKind::StreamCut
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scripted fault: what, how often, when, and how fast.
///
/// By default a fault hits every request (rate 1) for the whole run, answers at once
/// (no latency), and a stream error comes after 3 deltas.
///
/// ```
/// use std::time::Duration;
/// use brownout_sim::Fault;
///
/// // 80 % of requests between 30 s and 2 min answer 529 after 50 ms.
/// let burst = Fault::overloaded()
///     .rate(0.8)
///     .between(Duration::from_secs(30), Duration::from_secs(120))
///     .latency(brownout_sim::Latency::fixed(Duration::from_millis(50)));
/// assert!(burst.is_active_at(Duration::from_secs(30)));
/// assert!(!burst.is_active_at(Duration::from_secs(120)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) rate: f64,
    pub(crate) from: Duration,
    pub(crate) until: Option<Duration>,
    pub(crate) latency: Latency,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) after_deltas: u32,
}

impl Fault {
    /// A fault of this kind, on every request, for the whole run.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            rate: 1.0,
            from: Duration::ZERO,
            until: None,
            latency: Latency::fixed(Duration::ZERO),
            retry_after: (kind == FaultKind::RateLimited).then_some(Duration::from_secs(1)),
            after_deltas: 3,
        }
    }

    /// 529 `overloaded_error` (503 on the OpenAI API).
    pub fn overloaded() -> Self {
        Fault::new(FaultKind::Overloaded)
    }

    /// 503.
    pub fn unavailable() -> Self {
        Fault::new(FaultKind::Unavailable)
    }

    /// 500.
    pub fn server_error() -> Self {
        Fault::new(FaultKind::ServerError)
    }

    /// 502.
    pub fn bad_gateway() -> Self {
        Fault::new(FaultKind::BadGateway)
    }

    /// 429, asking the client to come back after `retry_after` (rounded up to whole
    /// seconds in `retry-after`; exact in the reset headers).
    pub fn rate_limited(retry_after: Duration) -> Self {
        Fault::new(FaultKind::RateLimited).retry_after(retry_after)
    }

    /// The quota is spent (OpenAI 429 `insufficient_quota`, Anthropic 400).
    pub fn quota_exceeded() -> Self {
        Fault::new(FaultKind::QuotaExceeded)
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request() -> Self {
        Fault::new(FaultKind::BadRequest)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Fault::new(FaultKind::Unauthorized)
    }

    /// Never answers.
    pub fn hang() -> Self {
        Fault::new(FaultKind::Hang)
    }

    /// Drops the connection.
    pub fn reset() -> Self {
        Fault::new(FaultKind::Reset)
    }

    /// A 200 stream that fails with an overload after `after_deltas` content deltas.
    pub fn stream_error(after_deltas: u32) -> Self {
        let mut fault = Fault::new(FaultKind::StreamError);
        fault.after_deltas = after_deltas;
        fault
    }

    /// A 200 stream that goes silent, for ever, after `after_deltas` content deltas.
    pub fn stream_stall(after_deltas: u32) -> Self {
        let mut fault = Fault::new(FaultKind::StreamStall);
        fault.after_deltas = after_deltas;
        fault
    }

    /// A 200 stream whose connection is cut after `after_deltas` content deltas.
    pub fn stream_cut(after_deltas: u32) -> Self {
        let mut fault = Fault::new(FaultKind::StreamCut);
        fault.after_deltas = after_deltas;
        fault
    }

    /// The share of requests it hits while active, clamped to `[0, 1]` (NaN is 0).
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self
    }

    /// Active from this long after the simulator starts.
    pub fn from(mut self, start: Duration) -> Self {
        self.from = start;
        self
    }

    /// Active until this long after the simulator starts (excluded): the model
    /// recovers then.
    pub fn until(mut self, end: Duration) -> Self {
        self.until = Some(end);
        self
    }

    /// Active from `start` until `end`.
    pub fn between(self, start: Duration, end: Duration) -> Self {
        self.from(start).until(end)
    }

    /// How long the fault takes to show: the error answer's latency, or how long a
    /// reset waits before dropping the connection. Not used by hangs; the stream
    /// faults use the model's latency and stream interval.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// Adds `retry-after` (and a matching reset header) to the error answer. Rate
    /// limits have one by default (1 s).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// What the fault does.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }

    /// Whether the fault's window contains `elapsed` (time since the simulator
    /// started).
    pub fn is_active_at(&self, elapsed: Duration) -> bool {
        elapsed >= self.from && self.until.is_none_or(|until| elapsed < until)
    }
}

/// A latency distribution, drawn from the simulator's seeded generator.
///
/// ```
/// use std::time::Duration;
/// use brownout_sim::Latency;
///
/// let tail = Latency::pareto(Duration::from_millis(200), 1.5)?.max(Duration::from_secs(30));
/// let mut rng = fastrand::Rng::with_seed(1);
/// let draw = tail.sample(&mut rng);
/// assert!(draw >= Duration::from_millis(200) && draw <= Duration::from_secs(30));
///
/// assert!(Latency::uniform(Duration::from_secs(2), Duration::from_secs(1)).is_err());
/// # Ok::<(), brownout_sim::ScriptError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    dist: Dist,
    cap: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dist {
    Fixed(Duration),
    Uniform { min: Duration, max: Duration },
    LogNormal { median: f64, sigma: f64 },
    Pareto { scale: f64, shape: f64 },
}

impl Latency {
    /// Always `delay`.
    pub fn fixed(delay: Duration) -> Self {
        Latency {
            dist: Dist::Fixed(delay),
            cap: Duration::MAX,
        }
    }

    /// Uniform between `min` and `max`. Fails when `min > max`.
    pub fn uniform(min: Duration, max: Duration) -> Result<Self, ScriptError> {
        if min > max {
            return Err(ScriptError::invalid(format!(
                "uniform latency: min ({min:?}) is greater than max ({max:?})"
            )));
        }
        Ok(Latency {
            dist: Dist::Uniform { min, max },
            cap: Duration::MAX,
        })
    }

    /// Log-normal around `median`, with `sigma` the standard deviation of the log
    /// (0.5 puts the 99th percentile at about 3.2 × the median). Capped at
    /// [`DEFAULT_LATENCY_CAP`] unless [`max`](Self::max) says otherwise. Fails
    /// when `sigma` is negative or not finite.
    pub fn lognormal(median: Duration, sigma: f64) -> Result<Self, ScriptError> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(ScriptError::invalid(format!(
                "lognormal latency: sigma must be a finite number >= 0, got {sigma}"
            )));
        }
        Ok(Latency {
            dist: Dist::LogNormal {
                median: median.as_secs_f64(),
                sigma,
            },
            cap: DEFAULT_LATENCY_CAP,
        })
    }

    /// Pareto from `scale` up, with tail index `shape` (smaller is heavier: 1.5 puts
    /// the 99th percentile at about 21 × `scale`). Capped at [`DEFAULT_LATENCY_CAP`]
    /// unless [`max`](Self::max) says otherwise. Fails when `shape` is not a
    /// finite number above zero.
    pub fn pareto(scale: Duration, shape: f64) -> Result<Self, ScriptError> {
        if !(shape.is_finite() && shape > 0.0) {
            return Err(ScriptError::invalid(format!(
                "pareto latency: shape must be a finite number > 0, got {shape}"
            )));
        }
        Ok(Latency {
            dist: Dist::Pareto {
                scale: scale.as_secs_f64(),
                shape,
            },
            cap: DEFAULT_LATENCY_CAP,
        })
    }

    /// Caps every draw at `max`.
    pub fn max(mut self, max: Duration) -> Self {
        self.cap = max;
        self
    }

    /// One draw.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        let drawn = match self.dist {
            Dist::Fixed(delay) => delay,
            Dist::Uniform { min, max } => min + (max - min).mul_f64(rng.f64()),
            Dist::LogNormal { median, sigma } => {
                secs(median * (sigma * standard_normal(rng)).exp())
            }
            Dist::Pareto { scale, shape } => {
                // 1 - f64() is in (0, 1], so the power is finite.
                secs(scale * (1.0 - rng.f64()).powf(-1.0 / shape))
            }
        };
        drawn.min(self.cap)
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantile(latency: Latency, q: f64) -> Duration {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut draws: Vec<Duration> = (0..20_000).map(|_| latency.sample(&mut rng)).collect();
        draws.sort();
        draws[((draws.len() as f64) * q) as usize]
    }

    #[test]
    fn distributions_have_their_stated_shape() {
        let fixed = Latency::fixed(Duration::from_millis(250));
        assert_eq!(quantile(fixed, 0.99), Duration::from_millis(250));

        let uniform =
            Latency::uniform(Duration::from_millis(100), Duration::from_millis(300)).unwrap();
        let median = quantile(uniform, 0.5).as_secs_f64();
        assert!((0.19..0.21).contains(&median), "{median}");
        assert!(quantile(uniform, 0.999) <= Duration::from_millis(300));

        let lognormal = Latency::lognormal(Duration::from_secs(1), 0.5).unwrap();
        let median = quantile(lognormal, 0.5).as_secs_f64();
        assert!((0.95..1.05).contains(&median), "{median}");
        let p99 = quantile(lognormal, 0.99).as_secs_f64();
        assert!((2.9..3.6).contains(&p99), "{p99}");

        let pareto = Latency::pareto(Duration::from_millis(100), 1.5).unwrap();
        assert!(quantile(pareto, 0.0) >= Duration::from_millis(100));
        let p99 = quantile(pareto, 0.99).as_secs_f64();
        assert!((1.8..2.6).contains(&p99), "{p99}");
        let capped = pareto.max(Duration::from_millis(500));
        assert_eq!(quantile(capped, 0.99), Duration::from_millis(500));
    }

    #[test]
    fn invalid_distributions_are_refused() {
        assert!(Latency::lognormal(Duration::from_secs(1), -0.1).is_err());
        assert!(Latency::lognormal(Duration::from_secs(1), f64::NAN).is_err());
        assert!(Latency::pareto(Duration::from_secs(1), 0.0).is_err());
        assert!(Latency::pareto(Duration::from_secs(1), f64::INFINITY).is_err());
    }

    #[test]
    fn windows_and_rates() {
        let fault = Fault::overloaded()
            .rate(1.7)
            .between(Duration::from_secs(10), Duration::from_secs(20));
        assert_eq!(fault.rate, 1.0);
        assert!(!fault.is_active_at(Duration::from_secs(9)));
        assert!(fault.is_active_at(Duration::from_secs(10)));
        assert!(!fault.is_active_at(Duration::from_secs(20)));
        assert_eq!(Fault::reset().rate(f64::NAN).rate, 0.0);
        assert_eq!(
            Fault::rate_limited(Duration::from_secs(3)).retry_after,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn naming_a_model_twice_replaces_it() {
        let script = Script::new()
            .model("a", ModelScript::new().output_tokens(1))
            .model("b", ModelScript::new())
            .model("a", ModelScript::new().output_tokens(2));
        assert_eq!(script.model_names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(script.model_script("a").output_tokens, 2);
        assert_eq!(script.model_script("unknown").output_tokens, 16);
    }

    #[test]
    fn apis_by_path() {
        assert_eq!(served_api("/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(served_api("/v1/chat/completions"), Some(Api::OpenAiChat));
        for path in [
            "/v1/responses",
            "/v1/complete",
            "/anthropic/v1/messages",
            "/",
        ] {
            assert_eq!(served_api(path), None, "{path}");
        }
        for api in [Api::AnthropicMessages, Api::OpenAiChat] {
            assert_eq!(served_api(api_path(api)), Some(api));
        }
        assert_eq!(api_name(Api::OpenAiChat), "openai");
        assert_eq!(api_name(Api::OpenAiResponses), "openai_responses");
    }

    #[test]
    fn the_shipped_script_parses() {
        let script = Script::outage();
        assert!(script.model_names().any(|m| m == "claude-sonnet-4-5"));
        assert_eq!(script.plan.model.as_deref(), Some("claude-sonnet-4-5"));
        let streams = Script::streaming_outage();
        assert_eq!(streams.plan.stream, Some(true));
    }
}
