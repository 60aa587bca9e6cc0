//! The breaker's refusal.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::error::Rejected;

/// A circuit breaker refused the request: the upstream was not asked.
///
/// Returned by the layer (as a [`BoxError`](brownout_core::BoxError) to
/// `downcast_ref`) when a breaker is open, or half-open with its probes busy. Its
/// [`source`](std::error::Error::source) is a [`Rejected`], so brownout-core's
/// default classifier reads it as [`Rejected`](brownout_core::OutcomeKind::Rejected),
/// with [`retry_after`](Self::retry_after) as the server-given delay: a retry layer
/// outside waits for the breaker, and a fallback moves on to its next target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    key: Arc<str>,
    rejected: Rejected,
}

impl CircuitOpen {
    /// The breaker of `key` refused the request; it admits requests again after
    /// `retry_after`, when that is known.
    pub fn new(key: Arc<str>, retry_after: Option<Duration>) -> Self {
        CircuitOpen {
            key,
            rejected: Rejected::new(retry_after),
        }
    }

    /// The breaker's key (a model name, a host…).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How long until the breaker admits a probe again: `None` while it is half-open
    /// with its probes busy, or forced open.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rejected.retry_after()
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit open for {}", self.key)?;
        match self.retry_after() {
            Some(d) => write!(f, "; retry after {:.3}s", d.as_secs_f64()),
            None => Ok(()),
        }
    }
}

impl std::error::Error for CircuitOpen {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brownout_core::classify::{classify_error, DefaultClassifier, OutcomeKind};

    #[test]
    fn the_default_classifier_reads_a_refusal() {
        let error: brownout_core::BoxError = Box::new(CircuitOpen::new(
            "claude-opus-4-1".into(),
            Some(Duration::from_secs(20)),
        ));
        let outcome = classify_error(&DefaultClassifier::new(), error.as_ref());
        assert_eq!(outcome.kind(), OutcomeKind::Rejected);
        assert_eq!(outcome.server_delay(), Some(Duration::from_secs(20)));
    }
}
