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
}

impl AllTargetsFailed {
    pub(crate) fn new(failures: Vec<(Arc<str>, FallbackReason)>) -> Self {
        AllTargetsFailed { failures }
    }

    /// Each target, in the order tried, and what happened to it.
    pub fn failures(&self) -> &[(Arc<str>, FallbackReason)] {
        &self.failures
    }
}

impl fmt::Display for AllTargetsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("every fallback target failed")?;
        for (i, (model, reason)) in self.failures.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            match reason {
                FallbackReason::Failed(outcome) => write!(f, "{sep}{model} ({outcome})")?,
                FallbackReason::Unavailable => write!(f, "{sep}{model} (circuit open)")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for AllTargetsFailed {}
