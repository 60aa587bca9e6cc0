//! The queue's refusal: a request it answered without sending.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::error::Rejected;

/// Why the queue answered a request itself instead of sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShedReason {
    /// The key's queue holds [`max_queue`](crate::QueueConfig::max_queue) requests.
    QueueFull,
    /// The caller's credential already holds its
    /// [`caller_share`](crate::QueueConfig::caller_share) of the queue.
    CallerShare,
    /// The expected wait is longer than `max_wait` or the time left before the
    /// caller's deadline: shed at once, not after waiting.
    WaitTooLong,
    /// The request waited `max_wait` (or until its deadline) and was still not
    /// admitted.
    WaitExpired,
    /// The queue was shut down ([`QueueHandle::shutdown`](crate::QueueHandle::shutdown)).
    Shutdown,
}

impl ShedReason {
    /// A short lowercase name, as logged in the `reason` field (`"queue_full"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::CallerShare => "caller_share",
            ShedReason::WaitTooLong => "wait_too_long",
            ShedReason::WaitExpired => "wait_expired",
            ShedReason::Shutdown => "shutdown",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "the queue is full",
            ShedReason::CallerShare => "the caller holds its share of the queue",
            ShedReason::WaitTooLong => "the expected wait is too long",
            ShedReason::WaitExpired => "the wait expired",
            ShedReason::Shutdown => "the queue is shutting down",
        }
    }
}

impl fmt::Display for ShedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The queue answered a request without sending it: the upstream was not asked.
///
/// With [`OnShed::Error`](crate::OnShed::Error) the layer returns it (as a
/// [`BoxError`](brownout_core::BoxError) to `downcast_ref`); with the default
/// [`OnShed::Respond`](crate::OnShed::Respond) it rides in the extensions of the
/// provider-shaped answer. Its [`source`](std::error::Error::source) is a
/// [`Rejected`], so the default classifier reads it as
/// [`Rejected`](brownout_core::OutcomeKind::Rejected) with
/// [`retry_after`](Self::retry_after) as the delay, and a fallback outside moves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shed {
    key: Arc<str>,
    reason: ShedReason,
    rejected: Rejected,
}

impl Shed {
    /// The queue of `key` shed a request because of `reason`; the key may admit it
    /// after `retry_after`, when that is known.
    pub fn new(key: Arc<str>, reason: ShedReason, retry_after: Option<Duration>) -> Self {
        Shed {
            key,
            reason,
            rejected: Rejected::new(retry_after),
        }
    }

    /// The queue's key (a model name, a host…).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why it was shed.
    pub fn reason(&self) -> ShedReason {
        self.reason
    }

    /// The expected wait, when the queue knew it.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rejected.retry_after()
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request for {} shed: {}",
            self.key,
            self.reason.describe()
        )
    }
}

impl std::error::Error for Shed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brownout_core::classify::{classify_error, DefaultClassifier};
    use brownout_core::OutcomeKind;

    #[test]
    fn the_default_classifier_reads_a_shed_as_rejected() {
        let error: brownout_core::BoxError = Box::new(Shed::new(
            "claude-opus-4-1".into(),
            ShedReason::QueueFull,
            Some(Duration::from_millis(700)),
        ));
        assert_eq!(
            error.to_string(),
            "request for claude-opus-4-1 shed: the queue is full"
        );
        let outcome = classify_error(&DefaultClassifier::new(), error.as_ref());
        assert_eq!(outcome.kind(), OutcomeKind::Rejected);
        assert_eq!(outcome.server_delay(), Some(Duration::from_millis(700)));
    }
}
