//! The decisions layers take, as `tracing` events and for an optional listener.
//!
//! Every decision a layer takes on the failure path (an attempt failed, retrying after
//! a delay, giving up, a body too large to replay) is an [`Event`]. It is logged
//! through `tracing` with one field vocabulary across layers, and handed to the
//! [`Listener`] configured on the layer, so that metrics and reports can be built
//! without parsing logs. The success path emits nothing.
//!
//! | field | meaning |
//! |---|---|
//! | `layer` | the layer that decided (`"retry"`) |
//! | `event` | what it decided ([`EventKind::name`]) |
//! | `method`, `path` | the request, when there is one; never its query, headers or body |
//! | `attempt` | the attempt the decision is about, from 1 |
//! | `outcome`, `status`, `error_type` | the [`Outcome`] that led to it |
//! | `delay_ms` | how long the layer waits before it acts |
//! | `reason` | why a layer stopped or a breaker changed state ([`GiveUpReason`], [`NotReplayable`], [`TransitionReason`]) |
//! | `key`, `from`, `to` | a circuit breaker's key and states ([`CircuitState`]) |
//!
//! Events never carry credentials: no header of the request is recorded, and the path
//! is recorded without its query string, where some APIs take keys.

use std::{fmt, sync::Arc, time::Duration};

use http::Method;

use crate::classify::Outcome;

/// One decision of one layer about one request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// The layer that decided (`"retry"`).
    pub layer: &'static str,
    /// The request's method, when the decision is about a request.
    pub method: Option<Method>,
    /// The request's path, without its query, when the decision is about a request.
    pub path: Option<Box<str>>,
    /// What was decided.
    pub kind: EventKind,
}

impl Event {
    /// An event of `layer` about the request `method path`. The query is dropped from
    /// the path.
    pub fn new(layer: &'static str, method: &Method, uri: &http::Uri, kind: EventKind) -> Self {
        Event {
            layer,
            method: Some(method.clone()),
            path: Some(uri.path().into()),
            kind,
        }
    }

    /// An event of `layer` that is not about one request (an operator forced a
    /// breaker open, say).
    pub fn detached(layer: &'static str, kind: EventKind) -> Self {
        Event {
            layer,
            method: None,
            path: None,
            kind,
        }
    }
}

/// What a layer decided.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EventKind {
    /// An attempt failed; what happens next is another event.
    AttemptFailed {
        /// The attempt, from 1.
        attempt: u32,
        /// What happened to it.
        outcome: Outcome,
    },
    /// The layer will send the request again after `delay`.
    Retrying {
        /// The attempt that failed, from 1.
        attempt: u32,
        /// How long the layer waits before the next attempt.
        delay: Duration,
        /// What happened to the failed attempt.
        outcome: Outcome,
    },
    /// The layer stopped retrying and hands the last result to the caller.
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// Why it stopped.
        reason: GiveUpReason,
        /// What happened to the last attempt.
        outcome: Outcome,
    },
    /// The request cannot be sent more than once.
    NotReplayable {
        /// Why.
        reason: NotReplayable,
    },
    /// A circuit breaker changed state.
    CircuitStateChanged {
        /// The breaker's key (a model name, a host…).
        key: Arc<str>,
        /// The state it left.
        from: CircuitState,
        /// The state it entered.
        to: CircuitState,
        /// Why.
        reason: TransitionReason,
    },
    /// A fallback cascade moves from one target to the next.
    FallingBack {
        /// The target that failed or was skipped.
        from: Arc<str>,
        /// The target tried next.
        to: Arc<str>,
        /// Why: what happened at `from`.
        reason: FallbackReason,
    },
    /// A fallback layer sent the request as it was, without a cascade.
    NoCascade {
        /// Why.
        reason: NoCascadeReason,
    },
    /// A cache answered instead of the upstream.
    ServedFromCache {
        /// `true` for an entry past its freshness, served because the live path
        /// failed (stale-if-error); `false` for a fresh hit.
        stale: bool,
        /// The entry's age.
        age: Duration,
        /// What the live path did, when it was tried.
        outcome: Option<Outcome>,
    },
    /// A canned answer was served because nothing live could answer.
    Degraded {
        /// The name of the rule that matched; `None` for the generic answer.
        rule: Option<Arc<str>>,
        /// What the live path did, when it answered with an outcome.
        outcome: Option<Outcome>,
    },
    /// A circuit breaker refused a request without sending it.
    CircuitRejected {
        /// The breaker's key.
        key: Arc<str>,
        /// When it admits a request again, if known.
        retry_after: Option<Duration>,
    },
}

impl EventKind {
    /// The event's name, as logged in the `event` field (`"retrying"`).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::AttemptFailed { .. } => "attempt_failed",
            EventKind::Retrying { .. } => "retrying",
            EventKind::GaveUp { .. } => "gave_up",
            EventKind::NotReplayable { .. } => "not_replayable",
            EventKind::FallingBack { .. } => "falling_back",
            EventKind::ServedFromCache { .. } => "served_from_cache",
            EventKind::Degraded { .. } => "degraded",
            EventKind::NoCascade { .. } => "no_cascade",
            EventKind::CircuitStateChanged { .. } => "circuit_state_changed",
            EventKind::CircuitRejected { .. } => "circuit_rejected",
        }
    }
}

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Requests pass; outcomes are counted.
    Closed,
    /// Requests are refused until the open time has passed.
    Open,
    /// A few probe requests pass; their outcomes close or re-open the breaker.
    HalfOpen,
    /// Refused until an operator resets it.
    ForcedOpen,
    /// Everything passes and nothing is counted, until an operator resets it.
    ForcedClosed,
}

impl CircuitState {
    /// A short lowercase name, as logged (`"half_open"`).
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::ForcedClosed => "forced_closed",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a circuit breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionReason {
    /// This many failures in a row.
    ConsecutiveFailures(u32),
    /// The failure rate over the window reached the threshold.
    FailureRate {
        /// Failures in the window.
        failures: u32,
        /// Calls in the window.
        calls: u32,
    },
    /// The open time passed; probes may go.
    OpenElapsed,
    /// The configured number of probes succeeded.
    ProbesSucceeded,
    /// A probe failed.
    ProbeFailed,
    /// An operator forced the state through the handle.
    Forced,
    /// An operator reset the breaker through the handle.
    Reset,
}

impl TransitionReason {
    /// A short lowercase name, as logged in the `reason` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransitionReason::ConsecutiveFailures(_) => "consecutive_failures",
            TransitionReason::FailureRate { .. } => "failure_rate",
            TransitionReason::OpenElapsed => "open_elapsed",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
            TransitionReason::ProbeFailed => "probe_failed",
            TransitionReason::Forced => "forced",
            TransitionReason::Reset => "reset",
        }
    }
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransitionReason::ConsecutiveFailures(n) => write!(f, "{n} failures in a row"),
            TransitionReason::FailureRate { failures, calls } => {
                write!(f, "{failures} of the last {calls} calls failed")
            }
            TransitionReason::OpenElapsed => f.write_str("the open time passed"),
            TransitionReason::ProbesSucceeded => f.write_str("the probes succeeded"),
            TransitionReason::ProbeFailed => f.write_str("a probe failed"),
            TransitionReason::Forced => f.write_str("forced through the handle"),
            TransitionReason::Reset => f.write_str("reset through the handle"),
        }
    }
}

/// Why a fallback cascade left a target.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The target was tried and this happened.
    Failed(Outcome),
    /// The target's health view (its circuit breaker) said it would refuse: nothing
    /// was sent to it.
    Unavailable,
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackReason::Failed(outcome) => write!(f, "it failed: {outcome}"),
            FallbackReason::Unavailable => f.write_str("its circuit is open"),
        }
    }
}

/// Why a fallback layer sent a request unchanged to its first target only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoCascadeReason {
    /// The body is not a JSON object, or has no string `model` at its top level.
    NoModel,
    /// The requested model is not one of the cascade's targets, and such requests
    /// pass through.
    NotATarget,
    /// The body is longer than the replay buffer (or failed while it was read).
    NotReplayable(NotReplayable),
}

impl NoCascadeReason {
    /// A short lowercase name, as logged in the `reason` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            NoCascadeReason::NoModel => "no_model",
            NoCascadeReason::NotATarget => "not_a_target",
            NoCascadeReason::NotReplayable(reason) => reason.as_str(),
        }
    }
}

impl fmt::Display for NoCascadeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoCascadeReason::NoModel => f.write_str("the body has no top-level JSON `model`"),
            NoCascadeReason::NotATarget => f.write_str("the requested model is not a target"),
            NoCascadeReason::NotReplayable(reason) => fmt::Display::fmt(reason, f),
        }
    }
}

/// Why a retrying layer stopped before the request succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The outcome is not retryable (a client error, or `x-should-retry: false`).
    NotRetryable,
    /// The configured number of attempts was made.
    AttemptsExhausted,
    /// The retry budget shared by the service's clones is spent.
    BudgetExhausted,
    /// The next attempt could not finish before the call's deadline.
    DeadlineReached,
    /// The server asked to wait longer than the configured maximum.
    ServerDelayTooLong {
        /// What the server asked for.
        delay: Duration,
    },
    /// The request's body cannot be sent again.
    NotReplayable(NotReplayable),
}

impl GiveUpReason {
    /// A short lowercase name, as logged in the `reason` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUpReason::NotRetryable => "not_retryable",
            GiveUpReason::AttemptsExhausted => "attempts_exhausted",
            GiveUpReason::BudgetExhausted => "budget_exhausted",
            GiveUpReason::DeadlineReached => "deadline_reached",
            GiveUpReason::ServerDelayTooLong { .. } => "server_delay_too_long",
            GiveUpReason::NotReplayable(reason) => reason.as_str(),
        }
    }
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::NotRetryable => f.write_str("the outcome is not retryable"),
            GiveUpReason::AttemptsExhausted => f.write_str("no attempts left"),
            GiveUpReason::BudgetExhausted => f.write_str("the retry budget is spent"),
            GiveUpReason::DeadlineReached => {
                f.write_str("the deadline leaves no time for another attempt")
            }
            GiveUpReason::ServerDelayTooLong { delay } => {
                write!(f, "the server asked to wait {delay:?}, longer than allowed")
            }
            GiveUpReason::NotReplayable(reason) => fmt::Display::fmt(reason, f),
        }
    }
}

/// Why a request can be sent only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReplayable {
    /// Its body is longer than the replay buffer.
    BodyTooLarge {
        /// The replay buffer's size, in bytes.
        limit: usize,
    },
    /// Its body failed while it was read.
    BodyFailed,
}

impl NotReplayable {
    /// A short lowercase name, as logged in the `reason` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotReplayable::BodyTooLarge { .. } => "body_too_large",
            NotReplayable::BodyFailed => "body_failed",
        }
    }
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReplayable::BodyTooLarge { limit } => {
                write!(
                    f,
                    "the request body is larger than the {limit}-byte replay buffer"
                )
            }
            NotReplayable::BodyFailed => f.write_str("the request body failed while it was read"),
        }
    }
}

/// Receives every [`Event`] of the layers it is given to.
///
/// Implemented for closures `Fn(&Event) + Send + Sync + 'static`. Called inline on the
/// request's task: keep it quick and never block.
pub trait Listener: Send + Sync + 'static {
    /// Called once per event.
    fn on_event(&self, event: &Event);
}

impl<F> Listener for F
where
    F: Fn(&Event) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// Where a layer sends its events: `tracing`, and the listener if there is one.
#[derive(Clone, Default)]
pub struct Events {
    listener: Option<Arc<dyn Listener>>,
}

impl Events {
    /// Events go to `tracing` only.
    pub fn new() -> Self {
        Events::default()
    }

    /// Events go to `tracing` and to `listener`.
    pub fn with_listener(listener: impl Listener) -> Self {
        Events {
            listener: Some(Arc::new(listener)),
        }
    }

    /// Logs the event and hands it to the listener.
    pub fn emit(&self, event: Event) {
        log(&event);
        if let Some(listener) = &self.listener {
            listener.on_event(&event);
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

fn log(event: &Event) {
    let layer = event.layer;
    let name = event.kind.name();
    let method = event.method.as_ref().map(Method::as_str);
    let path = event.path.as_deref();
    match &event.kind {
        EventKind::AttemptFailed { attempt, outcome } => tracing::debug!(
            layer,
            event = name,
            method,
            path,
            attempt,
            outcome = outcome.kind().as_str(),
            status = outcome.status().map(|s| s.as_u16()),
            error_type = outcome.error_type(),
            "attempt failed"
        ),
        EventKind::Retrying {
            attempt,
            delay,
            outcome,
        } => tracing::warn!(
            layer,
            event = name,
            method,
            path,
            attempt,
            delay_ms = delay.as_millis() as u64,
            outcome = outcome.kind().as_str(),
            status = outcome.status().map(|s| s.as_u16()),
            error_type = outcome.error_type(),
            "retrying after {delay:?}"
        ),
        EventKind::GaveUp {
            attempts,
            reason: reason @ GiveUpReason::NotRetryable,
            outcome,
        } => tracing::debug!(
            layer,
            event = name,
            method,
            path,
            attempt = attempts,
            reason = reason.as_str(),
            outcome = outcome.kind().as_str(),
            status = outcome.status().map(|s| s.as_u16()),
            error_type = outcome.error_type(),
            "not retrying: {reason}"
        ),
        EventKind::GaveUp {
            attempts,
            reason,
            outcome,
        } => tracing::info!(
            layer,
            event = name,
            method,
            path,
            attempt = attempts,
            reason = reason.as_str(),
            outcome = outcome.kind().as_str(),
            status = outcome.status().map(|s| s.as_u16()),
            error_type = outcome.error_type(),
            "not retrying: {reason}"
        ),
        EventKind::NotReplayable { reason } => tracing::info!(
            layer,
            event = name,
            method,
            path,
            reason = reason.as_str(),
            "request sent once: {reason}"
        ),
        EventKind::CircuitStateChanged {
            key,
            from,
            to,
            reason,
        } => {
            let key = &**key;
            let (from, to_name) = (from.as_str(), to.as_str());
            let reason_name = reason.as_str();
            if matches!(to, CircuitState::Open | CircuitState::ForcedOpen) {
                tracing::warn!(
                    layer,
                    event = name,
                    key,
                    from,
                    to = to_name,
                    reason = reason_name,
                    "circuit {key} {to}: {reason}"
                );
            } else {
                tracing::info!(
                    layer,
                    event = name,
                    key,
                    from,
                    to = to_name,
                    reason = reason_name,
                    "circuit {key} {to}: {reason}"
                );
            }
        }
        EventKind::FallingBack { from, to, reason } => {
            let (from, to) = (&**from, &**to);
            match reason {
                FallbackReason::Failed(outcome) => tracing::warn!(
                    layer,
                    event = name,
                    method,
                    path,
                    from,
                    to,
                    reason = "failed",
                    outcome = outcome.kind().as_str(),
                    status = outcome.status().map(|s| s.as_u16()),
                    error_type = outcome.error_type(),
                    "fallback from {from} to {to} because {reason}"
                ),
                FallbackReason::Unavailable => tracing::warn!(
                    layer,
                    event = name,
                    method,
                    path,
                    from,
                    to,
                    reason = "unavailable",
                    "fallback from {from} to {to} because {reason}"
                ),
            }
        }
        EventKind::ServedFromCache {
            stale,
            age,
            outcome,
        } => {
            let outcome_name = outcome.as_ref().map(|o| o.kind().as_str());
            let age_ms = age.as_millis() as u64;
            if *stale {
                tracing::warn!(
                    layer,
                    event = name,
                    method,
                    path,
                    stale,
                    age_ms,
                    outcome = outcome_name,
                    "served a stale cached answer ({age:?} old)"
                );
            } else {
                tracing::debug!(
                    layer,
                    event = name,
                    method,
                    path,
                    stale,
                    age_ms,
                    "served a fresh cached answer"
                );
            }
        }
        EventKind::Degraded { rule, outcome } => {
            let rule = rule.as_deref();
            let outcome_name = outcome.as_ref().map(|o| o.kind().as_str());
            tracing::warn!(
                layer,
                event = name,
                method,
                path,
                rule,
                outcome = outcome_name,
                "served a degraded answer"
            );
        }
        EventKind::NoCascade { reason } => tracing::info!(
            layer,
            event = name,
            method,
            path,
            reason = reason.as_str(),
            "no fallback cascade: {reason}"
        ),
        EventKind::CircuitRejected { key, retry_after } => tracing::debug!(
            layer,
            event = name,
            method,
            path,
            key = &**key,
            delay_ms = retry_after.map(|d| d.as_millis() as u64),
            "circuit {key} open: request refused"
        ),
    }
}
