//! Errors that brownout layers create themselves.
//!
//! Each is a small struct with private fields and a lowercase Display, returned inside
//! a `BoxError`; find it with `downcast_ref`. The default classifier knows them, so a
//! layer further out classifies them like any other timeout.

use std::{fmt, time::Duration};

/// The error type the layers return when they add failures of their own, as tower does.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One attempt took longer than the per-attempt timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimedOut {
    timeout: Duration,
}

impl AttemptTimedOut {
    /// An attempt that outlived `timeout`.
    pub fn new(timeout: Duration) -> Self {
        AttemptTimedOut { timeout }
    }

    /// The timeout that was exceeded.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt timed out after {:?}", self.timeout)
    }
}

impl std::error::Error for AttemptTimedOut {}

/// The call's overall deadline passed before an answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded {
    deadline: Duration,
    attempts: u32,
}

impl DeadlineExceeded {
    /// The deadline `deadline` (measured from the call) passed after `attempts`
    /// attempts had started.
    pub fn new(deadline: Duration, attempts: u32) -> Self {
        DeadlineExceeded { deadline, attempts }
    }

    /// The deadline, measured from the start of the call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// How many attempts had started.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deadline of {:?} exceeded after {} attempt{}",
            self.deadline,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

/// A circuit breaker is open for this request's key: the request was not sent.
///
/// Returned by the circuit breaker layer (which re-exports it); the default classifier
/// reads it as [`Rejected`](crate::OutcomeKind::Rejected), with [`retry_after`](Self::retry_after)
/// as the server-given delay, so that a retry layer outside waits for the breaker and
/// a fallback moves on to its next target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    key: std::sync::Arc<str>,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    /// The breaker of `key` refused the request; it admits requests again after
    /// `retry_after`, when that is known.
    pub fn new(key: std::sync::Arc<str>, retry_after: Option<Duration>) -> Self {
        CircuitOpen { key, retry_after }
    }

    /// The breaker's key (a model name, a host…).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How long until the breaker admits a probe again: `None` while it is half-open
    /// with its probes busy, or forced open.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit open for {}", self.key)?;
        match self.retry_after {
            Some(d) => write!(f, "; retry after {:.3}s", d.as_secs_f64()),
            None => Ok(()),
        }
    }
}

impl std::error::Error for CircuitOpen {}

/// A layer's setting was given nonsense: names the layer, the setting and why.
///
/// Returned by the validating constructors of the layers' configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    layer: &'static str,
    key: &'static str,
    reason: String,
}

impl InvalidConfig {
    /// The `key` setting of `layer` (`"circuit breaker"`, `"fallback"`) is refused
    /// because of `reason`.
    pub fn new(layer: &'static str, key: &'static str, reason: impl Into<String>) -> Self {
        InvalidConfig {
            layer,
            key,
            reason: reason.into(),
        }
    }

    /// The setting at fault (`failure_rate.threshold`).
    pub fn key(&self) -> &str {
        self.key
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} setting `{}`: {}",
            self.layer, self.key, self.reason
        )
    }
}

impl std::error::Error for InvalidConfig {}
