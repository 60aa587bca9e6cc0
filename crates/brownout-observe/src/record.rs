//! The two records every sink reads: one per request ([`Exchange`]) and one per upstream
//! call ([`Attempt`]).

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use brownout_core::{classify::OutcomeKind, event::Event};

/// Milliseconds since the Unix epoch (0 for a time before it).
#[allow(dead_code)] // used by the `sqlite` and `alert` features
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How a request was answered, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Answer {
    /// The requested (first-choice) model answered.
    Live,
    /// A later target of the cascade answered.
    Fallback,
    /// A fresh cached answer.
    Cached,
    /// A stale cached answer, served because the live call failed.
    Stale,
    /// A canned answer from the degrade layer.
    Degraded,
    /// Shed by the queue or refused by a breaker or the rate limiter, without a live call.
    Shed,
    /// The upstream's failure reached the caller.
    Failed,
    /// The caller's own request was bad or broken (4xx other than 408/429 from upstream,
    /// a malformed or cut body). Never counted against availability.
    CallerError,
}

impl Answer {
    /// The label used in metrics, logs and reports (`"live"`, `"fallback"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Live => "live",
            Answer::Fallback => "fallback",
            Answer::Cached => "cached",
            Answer::Stale => "stale",
            Answer::Degraded => "degraded",
            Answer::Shed => "shed",
            Answer::Failed => "failed",
            Answer::CallerError => "caller_error",
        }
    }

    /// Whether the caller got a usable answer (live, fallback, cached, stale or degraded).
    pub fn is_answered(self) -> bool {
        matches!(
            self,
            Answer::Live | Answer::Fallback | Answer::Cached | Answer::Stale | Answer::Degraded
        )
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request's final answer, as the caller saw it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Exchange {
    /// When the request arrived (wall clock).
    pub at: SystemTime,
    /// The route (`"anthropic.messages"`, `"openai.chat"`, or the path for other APIs).
    pub route: Arc<str>,
    /// The model the caller asked for, when the request named one.
    pub requested_model: Option<Arc<str>>,
    /// The model that answered, when one did.
    pub served_by: Option<Arc<str>>,
    /// How it was answered.
    pub answer: Answer,
    /// The status the caller got.
    pub status: u16,
    /// From arrival to the response head.
    pub latency: Duration,
    /// Upstream calls made for it (0 for a cache hit or a shed).
    pub attempts: u32,
    /// The degrade rule that answered, for a [`Answer::Degraded`] answer from a named
    /// rule (`None` for the generic answer and every other answer).
    pub degraded_rule: Option<Arc<str>>,
    /// Input tokens, from the response's `usage` when it had one.
    pub input_tokens: Option<u64>,
    /// Output tokens, from the response's `usage` when it had one.
    pub output_tokens: Option<u64>,
    /// The request's first upstream call, carried here when the same sink also got it
    /// as an [`Attempt`] marked [`in_exchange`](Attempt::in_exchange): a sink that
    /// writes both (the SQLite log) writes the two as one row.
    pub first_attempt: Option<Attempt>,
}

impl Exchange {
    /// A record with the given essentials; the optional parts are empty.
    pub fn new(route: Arc<str>, answer: Answer, status: u16, latency: Duration) -> Self {
        Exchange::at(SystemTime::now(), route, answer, status, latency)
    }

    /// [`new`](Self::new) with its arrival given: the layer knows it and spares a
    /// clock read.
    pub(crate) fn at(
        at: SystemTime,
        route: Arc<str>,
        answer: Answer,
        status: u16,
        latency: Duration,
    ) -> Self {
        Exchange {
            at,
            route,
            requested_model: None,
            served_by: None,
            answer,
            status,
            latency,
            attempts: 0,
            degraded_rule: None,
            input_tokens: None,
            output_tokens: None,
            first_attempt: None,
        }
    }
}

/// One call the stack sent upstream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attempt {
    /// When it was sent (wall clock).
    pub at: SystemTime,
    /// The route of the request it belongs to.
    pub route: Arc<str>,
    /// The model it was sent to, when the request named one.
    pub model: Option<Arc<str>>,
    /// 1 for the first call of a request, 2 for its first retry or fallback, …
    pub attempt: u32,
    /// The classified outcome.
    pub outcome: OutcomeKind,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    /// From sending to the response head or the error.
    pub latency: Duration,
    /// Whether the request's [`Exchange`], recorded later into the same sink, carries
    /// this attempt as its [`first_attempt`](Exchange::first_attempt). Counting sinks
    /// ignore it; a sink that stores both records stores this one with the exchange.
    pub in_exchange: bool,
}

impl Attempt {
    /// A record with the given essentials; the optional parts are empty.
    pub fn new(route: Arc<str>, attempt: u32, outcome: OutcomeKind, latency: Duration) -> Self {
        Attempt::at(SystemTime::now(), route, attempt, outcome, latency)
    }

    /// [`new`](Self::new) with its sending time given (no clock read).
    pub(crate) fn at(
        at: SystemTime,
        route: Arc<str>,
        attempt: u32,
        outcome: OutcomeKind,
        latency: Duration,
    ) -> Self {
        Attempt {
            at,
            route,
            model: None,
            attempt,
            outcome,
            status: None,
            latency,
            in_exchange: false,
        }
    }
}

/// Something that turns records into what an operator reads.
///
/// Called on the request's path: an implementation does constant work (update a
/// counter, push into a bounded channel) and never blocks or awaits.
pub trait Sink: Send + Sync + 'static {
    /// One request's final answer.
    fn exchange(&self, exchange: &Exchange);

    /// One upstream call.
    fn attempt(&self, attempt: &Attempt) {
        let _ = attempt;
    }

    /// A layer's decision (a breaker opened, a budget was exhausted, …).
    fn event(&self, event: &Event) {
        let _ = event;
    }
}

/// Several sinks fed as one.
#[derive(Clone, Default)]
pub struct Sinks(Vec<Arc<dyn Sink>>);

impl Sinks {
    /// No sinks.
    pub fn new() -> Self {
        Sinks::default()
    }

    /// Adds `sink`.
    pub fn with(mut self, sink: Arc<dyn Sink>) -> Self {
        self.0.push(sink);
        self
    }

    /// Whether there is no sink.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Sinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sinks").field("len", &self.0.len()).finish()
    }
}

impl Sink for Sinks {
    fn exchange(&self, exchange: &Exchange) {
        for sink in &self.0 {
            sink.exchange(exchange);
        }
    }

    fn attempt(&self, attempt: &Attempt) {
        for sink in &self.0 {
            sink.attempt(attempt);
        }
    }

    fn event(&self, event: &Event) {
        for sink in &self.0 {
            sink.event(event);
        }
    }
}

/// One alert sent (or its resolution), as the status page lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AlertNotice {
    /// When it fired or resolved (wall clock).
    pub at: SystemTime,
    /// The rule's name, from the configuration.
    pub rule: Arc<str>,
    /// What it is about (a model, a breaker key).
    pub key: Arc<str>,
    /// Whether this notice says the condition cleared.
    pub resolved: bool,
    /// One line for a human.
    pub message: String,
}

impl AlertNotice {
    /// A notice that `rule` fired (or, with `resolved`, cleared) for `key`.
    pub fn new(rule: Arc<str>, key: Arc<str>, resolved: bool, message: String) -> Self {
        AlertNotice {
            at: SystemTime::now(),
            rule,
            key,
            resolved,
            message,
        }
    }
}

/// Where the status page reads recent alerts from (the alert rules implement it).
pub trait AlertFeed: Send + Sync + 'static {
    /// Appends the most recent notices to `out`, newest last, at most `limit` of them.
    fn recent(&self, limit: usize, out: &mut Vec<AlertNotice>);
}
