//! A retry budget shared by every clone of a service.

use std::{fmt, sync::Arc, time::Duration};

use tower::retry::budget::{Budget, TpsBudget};

/// Caps retries at a share of recent traffic, plus a small floor per second.
///
/// Every first attempt deposits into the budget; every retry withdraws from it. When
/// an upstream is down, a fleet of clients without a budget multiplies the load by the
/// number of attempts exactly when the upstream can least take it; with a budget of
/// 20 %, it adds at most a fifth.
///
/// All clones of a [`Retry`](crate::Retry) service, and all services built from one
/// [`RetryConfig`](crate::RetryConfig), share one budget. The accounting is tower's
/// [`TpsBudget`] (Finagle's algorithm), which keeps time with `tokio::time`.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<TpsBudget>,
    ttl: Duration,
    min_per_sec: u32,
    retry_ratio: f32,
}

impl RetryBudget {
    /// A budget that allows, over the last `ttl`, retries of `retry_ratio` of the
    /// requests (0.2 for 20 %), plus `min_per_sec` retries per second whatever the
    /// traffic.
    ///
    /// Fails unless `ttl` is between 1 and 60 seconds, `retry_ratio` between 0 and
    /// 1000, and `min_per_sec` below `i32::MAX`.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f32) -> Result<Self, InvalidBudget> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(InvalidBudget(format!(
                "retry budget ttl must be between 1s and 60s, not {ttl:?}"
            )));
        }
        if !(0.0..=1000.0).contains(&retry_ratio) {
            return Err(InvalidBudget(format!(
                "retry budget ratio must be between 0 and 1000, not {retry_ratio}"
            )));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(InvalidBudget(format!(
                "retry budget floor must be below {}, not {min_per_sec}",
                i32::MAX
            )));
        }
        Ok(RetryBudget {
            inner: Arc::new(TpsBudget::new(ttl, min_per_sec, retry_ratio)),
            ttl,
            min_per_sec,
            retry_ratio,
        })
    }

    /// Records a first attempt.
    pub(crate) fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

impl Default for RetryBudget {
    /// 20 % of the last 10 seconds' requests, plus 10 retries a second.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2).expect("valid default budget")
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl)
            .field("min_per_sec", &self.min_per_sec)
            .field("retry_ratio", &self.retry_ratio)
            .finish()
    }
}

/// A retry budget that was given nonsense: its Display says which value and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBudget(String);

impl fmt::Display for InvalidBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidBudget {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(RetryBudget::new(Duration::from_millis(500), 1, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(61), 1, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 1, -0.1).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 1, f32::NAN).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), u32::MAX, 0.2).is_err());
        let err = RetryBudget::new(Duration::ZERO, 1, 0.2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "retry budget ttl must be between 1s and 60s, not 0ns"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_deposits_can_be_withdrawn() {
        let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.5).unwrap();
        assert!(!budget.withdraw(), "nothing deposited yet");
        for _ in 0..10 {
            budget.deposit();
        }
        let allowed = (0..10).take_while(|_| budget.withdraw()).count();
        assert_eq!(allowed, 5);
    }
}
