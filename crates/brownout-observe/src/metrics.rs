//! [`MetricsSink`]: the records as counters, gauges and histograms of the `metrics`
//! facade crate.

use std::{collections::HashMap, fmt, sync::Arc, sync::Mutex};

use brownout_breaker::{BreakerEvent, BreakerHandle, CircuitState};
use brownout_core::{classify::OutcomeKind, event::Event};
use brownout_limit::LimitHandle;
use brownout_queue::QueueHandle;
use metrics::{Counter, Gauge, Histogram, Recorder, Unit};

use crate::record::{Answer, Attempt, Exchange, Sink};

/// The label value of every model, rule or key outside the configured set.
pub const OTHER: &str = "other";

/// The routes, as the `route` label has them.
const ROUTES: [&str; 4] = [
    crate::ROUTE_MESSAGES,
    crate::ROUTE_CHAT,
    crate::ROUTE_RESPONSES,
    OTHER,
];

const ANSWERS: [Answer; 8] = [
    Answer::Live,
    Answer::Fallback,
    Answer::Cached,
    Answer::Stale,
    Answer::Degraded,
    Answer::Shed,
    Answer::Failed,
    Answer::CallerError,
];

const OUTCOMES: [&str; 8] = [
    "success",
    "client_error",
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection_failed",
    "rejected",
];

fn answer_index(answer: Answer) -> usize {
    match answer {
        Answer::Live => 0,
        Answer::Fallback => 1,
        Answer::Cached => 2,
        Answer::Stale => 3,
        Answer::Degraded => 4,
        Answer::Shed => 5,
        Answer::Failed => 6,
        Answer::CallerError => 7,
    }
}

fn outcome_index(kind: OutcomeKind) -> usize {
    match kind {
        OutcomeKind::Success => 0,
        OutcomeKind::ClientError => 1,
        OutcomeKind::RateLimited => 2,
        OutcomeKind::Overloaded => 3,
        OutcomeKind::ServerError => 4,
        OutcomeKind::Timeout => 5,
        OutcomeKind::ConnectionFailed => 6,
        _ => 7,
    }
}

fn route_index(route: &str) -> usize {
    ROUTES[..3].iter().position(|r| *r == route).unwrap_or(3)
}

/// Sets of at most this many names are searched in order rather than hashed: a
/// gateway's few models compare (length first) for less than a hash of the name costs.
pub(crate) const SCAN_NAMES: usize = 16;

/// A bounded set of label values: the configured ones, and [`OTHER`] for the rest.
#[derive(Debug, Clone)]
struct Bounded {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
}

impl Bounded {
    fn new(names: &[Arc<str>]) -> Self {
        let mut unique: Vec<Arc<str>> = Vec::new();
        for name in names {
            if &**name != OTHER && !unique.contains(name) {
                unique.push(name.clone());
            }
        }
        unique.push(Arc::from(OTHER));
        let index = unique
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Bounded {
            names: unique,
            index,
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn other(&self) -> usize {
        self.names.len() - 1
    }

    fn of(&self, name: Option<&str>) -> usize {
        match name {
            Some(n) if self.names.len() <= SCAN_NAMES => self
                .names
                .iter()
                .position(|m| **m == *n)
                .unwrap_or(self.other()),
            Some(n) => self.index.get(n).copied().unwrap_or(self.other()),
            None => self.other(),
        }
    }

    fn label(&self, i: usize) -> &str {
        &self.names[i]
    }
}

/// Which label values [`MetricsSink`] keeps apart: everything else is `other`, so a
/// caller naming 10,000 models adds no series.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    models: Vec<Arc<str>>,
    rules: Vec<Arc<str>>,
    keys: Vec<Arc<str>>,
}

impl MetricsConfig {
    /// No known model, rule or key yet: every label value is `other`.
    pub fn new() -> Self {
        MetricsConfig::default()
    }

    /// The models kept apart (the gateway's cascades' models).
    pub fn models<I, M>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Arc<str>>,
    {
        self.models.extend(models.into_iter().map(Into::into));
        self
    }

    /// The degrade rules kept apart (`brownout_degraded_total{rule}`; the generic
    /// answer is `generic`).
    pub fn rules<I, M>(mut self, rules: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Arc<str>>,
    {
        self.rules.extend(rules.into_iter().map(Into::into));
        self
    }

    /// Breaker, queue and limiter keys kept apart besides the models (a host, a
    /// provider's name).
    pub fn keys<I, M>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Arc<str>>,
    {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }
}

/// Handles the gauges are refreshed from, on [`MetricsSink::refresh`].
#[derive(Default)]
struct Watched {
    breakers: Option<BreakerHandle>,
    queue: Option<QueueHandle>,
    limits: Vec<(Arc<str>, LimitHandle)>,
    /// The limiter gauges registered so far, by (key index, resource).
    remaining: HashMap<(usize, &'static str), Gauge>,
}

/// Records as metrics, through the [`metrics`] facade: whichever recorder the
/// application installed (Prometheus, StatsD, OpenTelemetry, …) exports them.
///
/// | metric | kind | labels |
/// |---|---|---|
/// | `brownout_requests_total` | counter | `route`, `model` (requested), `outcome` (the [`Answer`]) |
/// | `brownout_request_duration_seconds` | histogram | `route`, `model`: arrival to response head |
/// | `brownout_attempts_total` | counter | `model` (sent to), `outcome` (the classified kind) |
/// | `brownout_fallbacks_total` | counter | `from` (requested), `to` (served) |
/// | `brownout_cache_total` | counter | `result` (`hit`, `stale`) |
/// | `brownout_degraded_total` | counter | `rule` (`generic` for the generic answer) |
/// | `brownout_tokens_total` | counter | `model`, `direction` (`input`, `output`), when the exchange has them |
/// | `brownout_breaker_state` | gauge | `key`: 0 closed, 1 half-open, 2 open |
/// | `brownout_queue_depth` | gauge | `model` |
/// | `brownout_limit_remaining` | gauge | `key`, `resource` (requests or tokens left this minute) |
/// | `brownout_events_total` | counter | `layer`, `event` |
///
/// Every label value comes from a bounded set: the routes, the answers and outcome
/// kinds, and the models, rules and keys of the [`MetricsConfig`]; anything else is
/// `other`. Every series of the request path is registered when the sink is made, so
/// recording a request looks up two indexes and bumps a handle: no allocation, no
/// lock. The gauges of the queue, the limiter and the breakers are read from their
/// handles on [`refresh`](Self::refresh) (call it before an export: the gateway does
/// on each `GET /metrics`); breaker changes also update their gauge as they happen.
///
/// Make it inside the scope of the recorder it should record to: its handles are
/// registered then.
///
/// ```
/// use std::sync::Arc;
/// use brownout_observe::{Answer, Exchange, MetricsConfig, MetricsSink, Sink};
///
/// let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
/// let handle = recorder.handle();
/// let sink = metrics::with_local_recorder(&recorder, || {
///     MetricsSink::new(MetricsConfig::new().models(["claude-haiku-4-5"]))
/// });
/// let mut exchange = Exchange::new(Arc::from("anthropic.messages"), Answer::Live, 200, Default::default());
/// exchange.requested_model = Some(Arc::from("claude-haiku-4-5"));
/// sink.exchange(&exchange);
/// let text = handle.render();
/// assert!(text.contains(
///     r#"brownout_requests_total{route="anthropic.messages",model="claude-haiku-4-5",outcome="live"} 1"#
/// ));
/// ```
pub struct MetricsSink {
    models: Bounded,
    rules: Bounded,
    keys: Bounded,
    /// `[route][model][answer]`.
    requests: Vec<Counter>,
    /// `[route][model]`.
    durations: Vec<Histogram>,
    /// `[model][outcome]`.
    attempts: Vec<Counter>,
    /// `[from][to]`.
    fallbacks: Vec<Counter>,
    /// hit, stale.
    cache: [Counter; 2],
    /// `[rule]`, the generic answer last.
    degraded: Vec<Counter>,
    /// `[model][input, output]`.
    tokens: Vec<Counter>,
    /// `[key]`.
    breaker_state: Vec<Gauge>,
    /// `[model]`.
    queue_depth: Vec<Gauge>,
    watched: Mutex<Watched>,
    /// The recorder of [`with_recorder`](Self::with_recorder), for the series
    /// registered after the sink is made.
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl fmt::Debug for MetricsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsSink")
            .field("models", &self.models.names)
            .field("rules", &self.rules.names)
            .field("keys", &self.keys.names)
            .finish_non_exhaustive()
    }
}

impl MetricsSink {
    /// A sink keeping apart the label values of `config`, its series registered with
    /// the current recorder.
    pub fn new(config: MetricsConfig) -> Self {
        Self::build(config, None)
    }

    /// A sink recording to `recorder` rather than to the global one: for a process
    /// that serves several gateways, or a test, each with its own exporter.
    pub fn with_recorder(config: MetricsConfig, recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        let scope = recorder.clone();
        metrics::with_local_recorder(&*scope, || Self::build(config, Some(recorder)))
    }

    /// Runs `f` with the sink's own recorder, if it has one, as the current one.
    fn scoped<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.recorder {
            Some(recorder) => metrics::with_local_recorder(&**recorder, f),
            None => f(),
        }
    }

    fn build(config: MetricsConfig, recorder: Option<Arc<dyn Recorder + Send + Sync>>) -> Self {
        describe();
        let models = Bounded::new(&config.models);
        let rules = Bounded::new(&config.rules);
        let mut keys: Vec<Arc<str>> = config.models.clone();
        keys.extend(config.keys.iter().cloned());
        let keys = Bounded::new(&keys);
        let m = models.len();

        let mut requests = Vec::with_capacity(ROUTES.len() * m * ANSWERS.len());
        let mut durations = Vec::with_capacity(ROUTES.len() * m);
        for route in ROUTES {
            for i in 0..m {
                let model = models.label(i).to_owned();
                for answer in ANSWERS {
                    requests.push(metrics::counter!(
                        "brownout_requests_total",
                        "route" => route,
                        "model" => model.clone(),
                        "outcome" => answer.as_str(),
                    ));
                }
                durations.push(metrics::histogram!(
                    "brownout_request_duration_seconds",
                    "route" => route,
                    "model" => model,
                ));
            }
        }
        let mut attempts = Vec::with_capacity(m * OUTCOMES.len());
        let mut tokens = Vec::with_capacity(m * 2);
        let mut queue_depth = Vec::with_capacity(m);
        for i in 0..m {
            let model = models.label(i).to_owned();
            for outcome in OUTCOMES {
                attempts.push(metrics::counter!(
                    "brownout_attempts_total",
                    "model" => model.clone(),
                    "outcome" => outcome,
                ));
            }
            for direction in ["input", "output"] {
                tokens.push(metrics::counter!(
                    "brownout_tokens_total",
                    "model" => model.clone(),
                    "direction" => direction,
                ));
            }
            queue_depth.push(metrics::gauge!("brownout_queue_depth", "model" => model));
        }
        let mut fallbacks = Vec::with_capacity(m * m);
        for from in 0..m {
            for to in 0..m {
                fallbacks.push(metrics::counter!(
                    "brownout_fallbacks_total",
                    "from" => models.label(from).to_owned(),
                    "to" => models.label(to).to_owned(),
                ));
            }
        }
        let cache =
            ["hit", "stale"].map(|r| metrics::counter!("brownout_cache_total", "result" => r));
        let mut degraded: Vec<Counter> = (0..rules.len())
            .map(|i| {
                metrics::counter!("brownout_degraded_total", "rule" => rules.label(i).to_owned())
            })
            .collect();
        degraded.push(metrics::counter!("brownout_degraded_total", "rule" => "generic"));
        let breaker_state = (0..keys.len())
            .map(|i| metrics::gauge!("brownout_breaker_state", "key" => keys.label(i).to_owned()))
            .collect();
        MetricsSink {
            models,
            rules,
            keys,
            requests,
            durations,
            attempts,
            fallbacks,
            cache,
            degraded,
            tokens,
            breaker_state,
            queue_depth,
            watched: Mutex::new(Watched::default()),
            recorder,
        }
    }

    /// Reads the breakers' states from `handle` on [`refresh`](Self::refresh). (Takes
    /// `&self`: a sink is made before the layers whose handles it reads, since they
    /// send it events.)
    pub fn watch_breakers(&self, handle: BreakerHandle) {
        self.watch(|w| w.breakers = Some(handle));
    }

    /// Reads each model's queue depth from `handle` on [`refresh`](Self::refresh).
    pub fn watch_queue(&self, handle: QueueHandle) {
        self.watch(|w| w.queue = Some(handle));
    }

    /// Reads the remaining budget of each key of the limiter `name` from `handle` on
    /// [`refresh`](Self::refresh).
    pub fn watch_limits(&self, name: impl Into<Arc<str>>, handle: LimitHandle) {
        let name = name.into();
        self.watch(|w| w.limits.push((name, handle)));
    }

    fn watch(&self, f: impl FnOnce(&mut Watched)) {
        if let Ok(mut watched) = self.watched.lock() {
            f(&mut watched);
        }
    }

    /// Sets the gauges from the watched handles: breaker states, queue depths, the
    /// limiters' remaining budgets. Not on the request path: call it before an export.
    /// Keys outside the configured set are summed (queue depth) or take the smallest
    /// value (remaining budget) under `other`.
    pub fn refresh(&self) {
        self.scoped(|| self.refresh_gauges());
    }

    fn refresh_gauges(&self) {
        let Ok(mut watched) = self.watched.lock() else {
            return;
        };
        if let Some(breakers) = &watched.breakers {
            let mut worst = vec![None::<f64>; self.keys.len()];
            for snapshot in breakers.snapshots() {
                let i = self.keys.of(Some(&snapshot.key));
                let value = breaker_value(snapshot.state);
                worst[i] = Some(worst[i].map_or(value, |w: f64| w.max(value)));
            }
            for (i, value) in worst.into_iter().enumerate() {
                self.breaker_state[i].set(value.unwrap_or(0.0));
            }
        }
        if let Some(queue) = &watched.queue {
            let mut depth = vec![0usize; self.models.len()];
            for (key, n, _) in queue.keys() {
                depth[self.models.of(Some(&key))] += n;
            }
            for (i, n) in depth.into_iter().enumerate() {
                self.queue_depth[i].set(n as f64);
            }
        }
        let mut lowest: HashMap<(usize, &'static str), f64> = HashMap::new();
        for (_, handle) in &watched.limits {
            for key in handle.keys() {
                let i = self.keys.of(Some(&key.key));
                for remaining in &key.remaining {
                    let entry = lowest
                        .entry((i, remaining.resource.as_str()))
                        .or_insert(f64::INFINITY);
                    *entry = entry.min(remaining.remaining);
                }
            }
        }
        for ((i, resource), value) in lowest {
            let gauge = watched.remaining.entry((i, resource)).or_insert_with(|| {
                metrics::gauge!(
                    "brownout_limit_remaining",
                    "key" => self.keys.label(i).to_owned(),
                    "resource" => resource,
                )
            });
            gauge.set(value);
        }
    }
}

fn breaker_value(state: CircuitState) -> f64 {
    match state {
        CircuitState::Closed | CircuitState::ForcedClosed => 0.0,
        CircuitState::HalfOpen => 1.0,
        _ => 2.0,
    }
}

fn describe() {
    metrics::describe_counter!(
        "brownout_requests_total",
        "Requests by route, requested model and how they were answered."
    );
    metrics::describe_histogram!(
        "brownout_request_duration_seconds",
        Unit::Seconds,
        "From a request's arrival to its response head."
    );
    metrics::describe_counter!(
        "brownout_attempts_total",
        "Calls sent upstream, by model and classified outcome."
    );
    metrics::describe_counter!(
        "brownout_fallbacks_total",
        "Requests answered by a later model of the cascade, by requested and serving model."
    );
    metrics::describe_counter!("brownout_cache_total", "Requests answered from the cache.");
    metrics::describe_counter!(
        "brownout_degraded_total",
        "Requests answered with a canned answer, by rule."
    );
    metrics::describe_counter!("brownout_tokens_total", "Tokens by model and direction.");
    metrics::describe_gauge!(
        "brownout_breaker_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    metrics::describe_gauge!("brownout_queue_depth", "Requests held by the queue.");
    metrics::describe_gauge!(
        "brownout_limit_remaining",
        "Requests or tokens left in the client-side rate limit."
    );
    metrics::describe_counter!("brownout_events_total", "Decisions of the layers.");
}

impl Sink for MetricsSink {
    fn exchange(&self, exchange: &Exchange) {
        let m = self.models.len();
        let route = route_index(&exchange.route);
        let model = self.models.of(exchange.requested_model.as_deref());
        let answer = answer_index(exchange.answer);
        self.requests[(route * m + model) * ANSWERS.len() + answer].increment(1);
        self.durations[route * m + model].record(exchange.latency.as_secs_f64());
        match exchange.answer {
            Answer::Fallback => {
                let to = self.models.of(exchange.served_by.as_deref());
                self.fallbacks[model * m + to].increment(1);
            }
            Answer::Cached => self.cache[0].increment(1),
            Answer::Stale => self.cache[1].increment(1),
            Answer::Degraded => {
                let rule = match exchange.degraded_rule.as_deref() {
                    Some(rule) => self.rules.of(Some(rule)),
                    None => self.rules.len(),
                };
                self.degraded[rule].increment(1);
            }
            _ => {}
        }
        if exchange.input_tokens.is_some() || exchange.output_tokens.is_some() {
            let served = self.models.of(exchange
                .served_by
                .as_deref()
                .or(exchange.requested_model.as_deref()));
            if let Some(n) = exchange.input_tokens {
                self.tokens[served * 2].increment(n);
            }
            if let Some(n) = exchange.output_tokens {
                self.tokens[served * 2 + 1].increment(n);
            }
        }
    }

    fn attempt(&self, attempt: &Attempt) {
        let model = self.models.of(attempt.model.as_deref());
        self.attempts[model * OUTCOMES.len() + outcome_index(attempt.outcome)].increment(1);
    }

    fn event(&self, event: &Event) {
        self.scoped(|| {
            metrics::counter!(
                "brownout_events_total",
                "layer" => event.layer,
                "event" => event.name(),
            )
            .increment(1);
        });
        if let Some(BreakerEvent::CircuitStateChanged { key, to, .. }) =
            event.data::<BreakerEvent>()
        {
            let i = self.keys.of(Some(key));
            if i != self.keys.other() {
                self.breaker_state[i].set(breaker_value(*to));
            }
        }
    }
}
