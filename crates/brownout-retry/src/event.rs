//! What the retry layer decides, as [`Event`](brownout_core::event::Event) data.

use std::{fmt, time::Duration};

use brownout_core::{
    event::{EventData, NotReplayable, Value},
    Outcome,
};

/// What the retry layer decided about a request: the data of its
/// [`Event`](brownout_core::event::Event)s, read with
/// [`Event::data`](brownout_core::event::Event::data).
///
/// ```
/// use brownout_core::event::Event;
/// use brownout_retry::RetryEvent;
///
/// fn is_retry_wait(event: &Event) -> bool {
///     matches!(event.data::<RetryEvent>(), Some(RetryEvent::Retrying { .. }))
/// }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RetryEvent {
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
}

impl fmt::Display for RetryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryEvent::AttemptFailed { .. } => f.write_str("attempt failed"),
            RetryEvent::Retrying { delay, .. } => write!(f, "retrying after {delay:?}"),
            RetryEvent::GaveUp { reason, .. } => write!(f, "not retrying: {reason}"),
            RetryEvent::NotReplayable { reason } => write!(f, "request sent once: {reason}"),
        }
    }
}

impl EventData for RetryEvent {
    fn name(&self) -> &'static str {
        match self {
            RetryEvent::AttemptFailed { .. } => "attempt_failed",
            RetryEvent::Retrying { .. } => "retrying",
            RetryEvent::GaveUp { .. } => "gave_up",
            RetryEvent::NotReplayable { .. } => "not_replayable",
        }
    }

    fn level(&self) -> tracing::Level {
        match self {
            RetryEvent::AttemptFailed { .. } => tracing::Level::DEBUG,
            // A retry is routine: the request's span and the metrics count them.
            RetryEvent::Retrying { .. } => tracing::Level::DEBUG,
            RetryEvent::GaveUp {
                reason: GiveUpReason::NotRetryable,
                ..
            } => tracing::Level::DEBUG,
            // The budget protects the upstream from a retry storm: worth an operator's eye.
            RetryEvent::GaveUp {
                reason: GiveUpReason::BudgetExhausted,
                ..
            } => tracing::Level::WARN,
            RetryEvent::GaveUp { .. } | RetryEvent::NotReplayable { .. } => tracing::Level::INFO,
        }
    }

    fn outcome(&self) -> Option<&Outcome> {
        match self {
            RetryEvent::AttemptFailed { outcome, .. }
            | RetryEvent::Retrying { outcome, .. }
            | RetryEvent::GaveUp { outcome, .. } => Some(outcome),
            RetryEvent::NotReplayable { .. } => None,
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            RetryEvent::AttemptFailed { attempt, .. } => {
                field("attempt", Value::U64(u64::from(*attempt)));
            }
            RetryEvent::Retrying { attempt, delay, .. } => {
                field("attempt", Value::U64(u64::from(*attempt)));
                field("delay_ms", Value::Duration(*delay));
            }
            RetryEvent::GaveUp {
                attempts, reason, ..
            } => {
                field("attempt", Value::U64(u64::from(*attempts)));
                field("reason", Value::Str(reason.as_str()));
            }
            RetryEvent::NotReplayable { reason } => {
                field("reason", Value::Str(reason.as_str()));
            }
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
    /// The request is a probe ([`Probe`](brownout_core::request::Probe)): its answer
    /// is the measurement, so it is sent once.
    Probe,
    /// A layer outside holds the target and said no to another attempt
    /// ([`AttemptGate`](brownout_core::request::AttemptGate)): it decides.
    Held,
    /// An overload answer with no server delay, handed back for the cascade outside
    /// ([`RetryConfig::move_on_overload`](crate::RetryConfig::move_on_overload)).
    Overloaded,
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
            GiveUpReason::Probe => "probe",
            GiveUpReason::Held => "held",
            GiveUpReason::Overloaded => "overloaded",
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
            GiveUpReason::Probe => f.write_str("a probe is sent once"),
            GiveUpReason::Held => f.write_str("a layer outside holds the target"),
            GiveUpReason::Overloaded => {
                f.write_str("overloaded, with no server delay: handed to the cascade")
            }
        }
    }
}
