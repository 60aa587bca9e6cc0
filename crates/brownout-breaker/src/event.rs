//! The breaker's events, and the states and reasons they name.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::event::{EventData, Value};

/// What a circuit breaker decided: the data of the [`Event`](brownout_core::event::Event)s
/// the breaker layer emits, with layer `"breaker"`.
///
/// Every state change is a [`CircuitStateChanged`](BreakerEvent::CircuitStateChanged)
/// (key, from, to and why), every refused request a
/// [`CircuitRejected`](BreakerEvent::CircuitRejected). A listener reads them with
/// [`Event::data`](brownout_core::event::Event::data):
///
/// ```
/// use brownout_breaker::{BreakerEvent, CircuitState};
/// use brownout_core::event::Event;
///
/// fn opened(event: &Event) -> Option<&str> {
///     match event.data::<BreakerEvent>()? {
///         BreakerEvent::CircuitStateChanged { key, to: CircuitState::Open, .. } => Some(key),
///         _ => None,
///     }
/// }
/// # let _ = opened;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerEvent {
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
    /// A circuit breaker refused a request without sending it.
    CircuitRejected {
        /// The breaker's key.
        key: Arc<str>,
        /// When it admits a request again, if known.
        retry_after: Option<Duration>,
    },
}

impl fmt::Display for BreakerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerEvent::CircuitStateChanged {
                key, to, reason, ..
            } => write!(f, "circuit {key} {to}: {reason}"),
            BreakerEvent::CircuitRejected { key, .. } => {
                write!(f, "circuit {key} open: request refused")
            }
        }
    }
}

impl EventData for BreakerEvent {
    fn name(&self) -> &'static str {
        match self {
            BreakerEvent::CircuitStateChanged { .. } => "circuit_state_changed",
            BreakerEvent::CircuitRejected { .. } => "circuit_rejected",
        }
    }

    /// `WARN` when a breaker opens (or is forced open), `INFO` for the other state
    /// changes, `DEBUG` for a refused request.
    fn level(&self) -> tracing::Level {
        match self {
            BreakerEvent::CircuitStateChanged {
                to: CircuitState::Open | CircuitState::ForcedOpen,
                ..
            } => tracing::Level::WARN,
            BreakerEvent::CircuitStateChanged { .. } => tracing::Level::INFO,
            BreakerEvent::CircuitRejected { .. } => tracing::Level::DEBUG,
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            BreakerEvent::CircuitStateChanged {
                key,
                from,
                to,
                reason,
            } => {
                field("key", Value::Str(key));
                field("from", Value::Str(from.as_str()));
                field("to", Value::Str(to.as_str()));
                field("reason", Value::Str(reason.as_str()));
            }
            BreakerEvent::CircuitRejected { key, retry_after } => {
                field("key", Value::Str(key));
                if let Some(delay) = retry_after {
                    field("delay_ms", Value::Duration(*delay));
                }
            }
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

#[cfg(test)]
mod tests {
    use brownout_core::event::Event;

    use super::*;

    #[test]
    fn a_state_change_logs_its_key_states_and_reason() {
        let event = Event::detached(
            "breaker",
            BreakerEvent::CircuitStateChanged {
                key: "claude-opus-4-1".into(),
                from: CircuitState::Closed,
                to: CircuitState::Open,
                reason: TransitionReason::ConsecutiveFailures(3),
            },
        );
        assert_eq!(event.name(), "circuit_state_changed");
        assert_eq!(event.kind().level(), tracing::Level::WARN);
        assert!(event.outcome().is_none());
        assert_eq!(
            event.fields_text(),
            "key=claude-opus-4-1 from=closed to=open reason=consecutive_failures"
        );
        assert_eq!(
            event.kind().to_string(),
            "circuit claude-opus-4-1 open: 3 failures in a row"
        );
        let closing = BreakerEvent::CircuitStateChanged {
            key: "m".into(),
            from: CircuitState::HalfOpen,
            to: CircuitState::Closed,
            reason: TransitionReason::ProbesSucceeded,
        };
        assert_eq!(closing.level(), tracing::Level::INFO);
    }

    #[test]
    fn a_refusal_logs_its_key_and_delay() {
        let refused = BreakerEvent::CircuitRejected {
            key: "m".into(),
            retry_after: Some(Duration::from_millis(1500)),
        };
        let event = Event::new(
            "breaker",
            &http::Method::POST,
            &"/v1/messages?key=sk-secret".parse().unwrap(),
            refused.clone(),
        );
        assert_eq!(event.name(), "circuit_rejected");
        assert_eq!(event.kind().level(), tracing::Level::DEBUG);
        assert_eq!(event.fields_text(), "key=m delay_ms=1500");
        assert_eq!(event.data::<BreakerEvent>(), Some(&refused));
        assert_eq!(refused.to_string(), "circuit m open: request refused");
        let unknown = BreakerEvent::CircuitRejected {
            key: "m".into(),
            retry_after: None,
        };
        assert_eq!(Event::detached("breaker", unknown).fields_text(), "key=m");
    }
}
