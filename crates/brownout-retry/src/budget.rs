//! A retry budget shared by every clone of a service, and the store it keeps its
//! accounts in.

use brownout_core::error::InvalidConfig;
use std::{fmt, sync::Arc, time::Duration};

use tower::retry::budget::{Budget, TpsBudget};

/// Where a [`RetryBudget`] keeps its accounts: give one to
/// [`RetryBudget::store`]. Without one the budget is tower's [`TpsBudget`] in this
/// process, called directly.
///
/// Both methods are on the request path (a deposit on every first attempt, a
/// withdrawal before every retry) and synchronous: a store shared between processes
/// counts locally and settles with the others in the background (as
/// `brownout_redis::RedisRetryBudget` does), never waiting on the network here.
pub trait BudgetStore: fmt::Debug + Send + Sync + 'static {
    /// Records a first attempt.
    fn deposit(&self);

    /// Takes one retry from the budget; `false` when it is spent.
    fn withdraw(&self) -> bool;
}

/// The accounts: tower's budget, called directly, or a store of the user's.
#[derive(Clone)]
enum Accounts {
    Local(Arc<TpsBudget>),
    Store(Arc<dyn BudgetStore>),
}

/// Caps retries at a share of recent traffic, plus a small floor per second.
///
/// Every first attempt deposits into the budget; every retry withdraws from it. When
/// an upstream is down, a fleet of clients without a budget multiplies the load by the
/// number of attempts exactly when the upstream can least take it; with a budget of
/// 20 %, it adds at most a fifth.
///
/// All clones of a [`Retry`](crate::Retry) service, and all services built from one
/// [`RetryConfig`](crate::RetryConfig), share one budget. The accounting is tower's
/// [`TpsBudget`] (Finagle's algorithm), which keeps time with `tokio::time`, unless a
/// [`BudgetStore`] is given to [`store`](Self::store) (one shared by a fleet of
/// replicas, say).
#[derive(Clone)]
pub struct RetryBudget {
    accounts: Accounts,
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
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f32) -> Result<Self, InvalidConfig> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(InvalidConfig::new(
                "retry",
                "budget.ttl",
                format!("the ttl must be between 1s and 60s, not {ttl:?}"),
            ));
        }
        if !(0.0..=1000.0).contains(&retry_ratio) {
            return Err(InvalidConfig::new(
                "retry",
                "budget.ratio",
                format!("the ratio must be between 0 and 1000, not {retry_ratio}"),
            ));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(InvalidConfig::new(
                "retry",
                "budget.min_per_sec",
                format!("the floor must be below {}, not {min_per_sec}", i32::MAX),
            ));
        }
        Ok(RetryBudget {
            accounts: Accounts::Local(Arc::new(TpsBudget::new(ttl, min_per_sec, retry_ratio))),
            ttl,
            min_per_sec,
            retry_ratio,
        })
    }

    /// Keeps the accounts in `store` instead of this process's own. The settings
    /// ([`ttl`](Self::ttl), [`min_per_sec`](Self::min_per_sec),
    /// [`retry_ratio`](Self::retry_ratio)) are then the store's to apply; build it
    /// from this budget.
    pub fn store(mut self, store: impl BudgetStore) -> Self {
        self.accounts = Accounts::Store(Arc::new(store));
        self
    }

    /// The window the ratio is counted over.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Retries allowed each second whatever the traffic.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// Retries allowed per first attempt in the window (0.2 for 20 %).
    pub fn retry_ratio(&self) -> f32 {
        self.retry_ratio
    }

    /// Records a first attempt.
    pub(crate) fn deposit(&self) {
        match &self.accounts {
            Accounts::Local(budget) => budget.deposit(),
            Accounts::Store(store) => store.deposit(),
        }
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        match &self.accounts {
            Accounts::Local(budget) => budget.withdraw(),
            Accounts::Store(store) => store.withdraw(),
        }
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
            .field(
                "store",
                &match &self.accounts {
                    Accounts::Local(_) => None,
                    Accounts::Store(store) => Some(store),
                },
            )
            .finish()
    }
}

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
            "invalid retry setting `budget.ttl`: the ttl must be between 1s and 60s, not 0ns"
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

    #[derive(Debug, Default)]
    struct Counting {
        deposits: std::sync::atomic::AtomicU32,
        withdrawals: std::sync::atomic::AtomicU32,
    }

    impl BudgetStore for Arc<Counting> {
        fn deposit(&self) {
            self.deposits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn withdraw(&self) -> bool {
            // One retry in all.
            self.withdrawals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                == 0
        }
    }

    #[test]
    fn a_store_keeps_the_accounts() {
        let counting = Arc::new(Counting::default());
        let budget = RetryBudget::default().store(counting.clone());
        assert_eq!(
            (budget.ttl(), budget.min_per_sec()),
            (Duration::from_secs(10), 10)
        );
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw());
        assert!(!budget.withdraw(), "the store said no");
        assert_eq!(
            counting.deposits.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert!(format!("{budget:?}").contains("Counting"));
    }
}
