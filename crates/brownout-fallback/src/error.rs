use std::{fmt, sync::Arc};

use crate::FallbackReason;

/// Every target of the cascade failed or was skipped: which, and why.
///
/// Returned as an error with [`Exhausted::Error`](crate::Exhausted::Error) (or when the
/// last target gave no response), and put in the extensions of the last response
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllTargetsFailed {
    failures: Vec<(Arc<str>, FallbackReason)>,
    /// For each failure, the message of the error it ended in (a connection or TLS
    /// failure, say), when it ended in an error rather than a response.
    details: Vec<Option<Arc<str>>>,
}

impl AllTargetsFailed {
    pub(crate) fn with_details(
        failures: Vec<(Arc<str>, FallbackReason)>,
        details: Vec<Option<Arc<str>>>,
    ) -> Self {
        debug_assert_eq!(failures.len(), details.len());
        AllTargetsFailed { failures, details }
    }

    /// Each target, in the order tried, and what happened to it.
    pub fn failures(&self) -> &[(Arc<str>, FallbackReason)] {
        &self.failures
    }

    /// The message of the error the `i`-th failure ended in, with its causes
    /// ("tls handshake with api.anthropic.com failed: invalid peer certificate:
    /// UnknownIssuer"), when it ended in an error rather than a response: what an
    /// operator needs to see beside the [`Outcome`](brownout_core::Outcome).
    pub fn detail(&self, i: usize) -> Option<&str> {
        self.details.get(i).and_then(|d| d.as_deref())
    }
}

impl fmt::Display for AllTargetsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("every fallback target failed")?;
        for (i, (model, reason)) in self.failures.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            match reason {
                FallbackReason::Failed(outcome) => match self.detail(i) {
                    Some(detail) => write!(f, "{sep}{model} ({outcome}: {detail})")?,
                    None => write!(f, "{sep}{model} ({outcome})")?,
                },
                FallbackReason::Unavailable => write!(f, "{sep}{model} (circuit open)")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for AllTargetsFailed {}
