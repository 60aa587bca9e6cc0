//! What the fallback layer decides, as [`Event`](brownout_core::event::Event) data.

use std::{fmt, sync::Arc};

use brownout_core::{
    event::{EventData, NotReplayable, Value},
    Outcome,
};

/// What the fallback layer decided about a request: the data of its
/// [`Event`](brownout_core::event::Event)s, read with
/// [`Event::data`](brownout_core::event::Event::data).
///
/// ```
/// use brownout_core::event::Event;
/// use brownout_fallback::FallbackEvent;
///
/// fn moved_to(event: &Event) -> Option<&str> {
///     match event.data::<FallbackEvent>() {
///         Some(FallbackEvent::FallingBack { to, .. }) => Some(to),
///         _ => None,
///     }
/// }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FallbackEvent {
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
}

impl fmt::Display for FallbackEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackEvent::FallingBack { from, to, reason } => {
                write!(f, "fallback from {from} to {to} because {reason}")
            }
            FallbackEvent::NoCascade { reason } => write!(f, "no fallback cascade: {reason}"),
        }
    }
}

impl EventData for FallbackEvent {
    fn name(&self) -> &'static str {
        match self {
            FallbackEvent::FallingBack { .. } => "falling_back",
            FallbackEvent::NoCascade { .. } => "no_cascade",
        }
    }

    fn level(&self) -> tracing::Level {
        match self {
            // Routine during an outage: the answer still came; WARN is for no answer.
            FallbackEvent::FallingBack { .. } => tracing::Level::INFO,
            FallbackEvent::NoCascade { .. } => tracing::Level::INFO,
        }
    }

    fn outcome(&self) -> Option<&Outcome> {
        match self {
            FallbackEvent::FallingBack {
                reason: FallbackReason::Failed(outcome),
                ..
            } => Some(outcome),
            _ => None,
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            FallbackEvent::FallingBack { from, to, reason } => {
                field("from", Value::Str(from));
                field("to", Value::Str(to));
                field("reason", Value::Str(reason.as_str()));
            }
            FallbackEvent::NoCascade { reason } => {
                field("reason", Value::Str(reason.as_str()));
            }
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

impl FallbackReason {
    /// A short lowercase name, as logged in the `reason` field (`"failed"`,
    /// `"unavailable"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            FallbackReason::Failed(_) => "failed",
            FallbackReason::Unavailable => "unavailable",
        }
    }
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
