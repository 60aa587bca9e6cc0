//! The retry budget's store: counted locally, settled with the fleet in Redis.

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::*},
        Arc, Mutex, PoisonError, Weak,
    },
    time::Duration,
};

use brownout_core::error::InvalidConfig;
use brownout_retry::{BudgetStore, RetryBudget};
use redis::aio::ConnectionManager;
use tokio::time::{interval, sleep, Instant, MissedTickBehavior};
use tower::retry::budget::{Budget, TpsBudget};

use crate::{
    link::{connect, Link},
    RedisConfig,
};

const LAYER: &str = "redis-budget";

/// Adds a replica's deposits and withdrawals to this second's bucket (on Redis's
/// clock), marks the replica seen, and returns the fleet's sums over the last `ttl`
/// seconds and how many replicas settled in that time.
///
/// KEYS[1] the buckets' prefix, KEYS[2] the replicas seen. ARGV: deposits,
/// withdrawals, ttl in seconds, the replica's id.
const SETTLE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1])
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
redis.call('EXPIRE', KEYS[2], ttl + 2)
local n = redis.call('ZCARD', KEYS[2])
local key = KEYS[1] .. ':' .. now
redis.call('HINCRBY', key, 'd', ARGV[1])
redis.call('HINCRBY', key, 'w', ARGV[2])
redis.call('EXPIRE', key, ttl + 2)
local d, w = 0, 0
for s = now - ttl + 1, now do
  local v = redis.call('HMGET', KEYS[1] .. ':' .. s, 'd', 'w')
  d = d + (tonumber(v[1]) or 0)
  w = w + (tonumber(v[2]) or 0)
end
return {d, w, n}
";

/// A retry budget kept by the whole fleet as one: give it to
/// [`RetryBudget::store`](brownout_retry::RetryBudget::store).
///
/// ```no_run
/// use brownout_redis::{RedisConfig, RedisRetryBudget};
/// use brownout_retry::{RetryBudget, RetryConfig};
///
/// # async fn run() -> Result<(), brownout_core::error::InvalidConfig> {
/// let budget = RetryBudget::default();
/// let shared = RedisRetryBudget::new(RedisConfig::new("redis://127.0.0.1:6379", "prod")?, &budget)?;
/// let retry = RetryConfig::new().budget(budget.store(shared));
/// # let _ = retry;
/// # Ok(())
/// # }
/// ```
///
/// # How, and the approximation
///
/// No request waits on Redis: a deposit (every first attempt) and a withdrawal (every
/// retry) are an atomic add here. Every
/// [`flush_interval`](RedisConfig::flush_interval) (100 ms) the background task adds
/// this replica's counts to the fleet's (one `EVALSHA`: `HINCRBY` into a bucket per
/// second on Redis's clock, `brownout:{deployment}:budget:{second}`) and reads back
/// the fleet's deposits `D` and withdrawals `W` over the budget's
/// [`ttl`](brownout_retry::RetryBudget::ttl). The fleet's balance is
/// `min_per_sec × ttl + retry_ratio × D − W`, the same rule as tower's
/// [`TpsBudget`] for one process, with the floor counted once for the fleet rather
/// than once per replica. This replica may then take, until the next settlement, its
/// share of that balance: the balance times its own part of `D`, or, while the fleet
/// deposited nothing, divided by the replicas that settled within the `ttl` (a
/// sorted set `brownout:{deployment}:budget:replicas`).
///
/// So the fleet stays within its budget up to what the replicas take between two
/// settlements from a balance they each saw before the others' withdrawals: at most
/// one flush interval's worth of retries beyond it, shared out by traffic, and a
/// replica with no traffic of its own is allowed no retry beyond the floor's share.
///
/// # On failure
///
/// A local [`TpsBudget`] with the same settings is fed every deposit and retry too. While Redis does not answer (each call has the
/// [`timeout`](RedisConfig::timeout)), that budget decides, as without Redis, and
/// [`RedisEvent::SharedStateLost`](crate::RedisEvent) is emitted (layer
/// `"redis-budget"`); counts not settled are sent once Redis answers, with
/// [`SharedStateResumed`](crate::RedisEvent::SharedStateResumed).
#[derive(Clone)]
pub struct RedisRetryBudget {
    shared: Arc<Shared>,
}

struct Shared {
    local: TpsBudget,
    link: Link,
    config: RedisConfig,
    prefix: String,
    replicas: String,
    replica: u64,
    ttl_secs: u64,
    floor: f64,
    ratio: f64,
    /// Counts not yet settled with the fleet.
    deposits: AtomicU64,
    withdrawals: AtomicU64,
    /// What this replica may still withdraw until the next settlement.
    allowance: AtomicI64,
    /// This replica's deposits of the last `ttl` seconds, by settlement.
    own: Mutex<VecDeque<(Instant, u64)>>,
}

impl RedisRetryBudget {
    /// A store for `budget` (its ttl, floor and ratio, applied to the fleet) shared
    /// through the Redis of `redis`.
    ///
    /// Must be called inside a Tokio runtime: it starts the background task that
    /// settles with Redis, which ends when the last clone is dropped. Until Redis
    /// answers, the local budget decides.
    pub fn new(redis: RedisConfig, budget: &RetryBudget) -> Result<Self, InvalidConfig> {
        redis.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            InvalidConfig::new("redis", "runtime", "must be created inside a Tokio runtime")
        })?;
        let deployment = redis.deployment.clone();
        let ttl_secs = budget.ttl().as_secs().max(1);
        let shared = Arc::new(Shared {
            local: TpsBudget::new(budget.ttl(), budget.min_per_sec(), budget.retry_ratio()),
            link: Link::new(redis.events.clone(), LAYER),
            config: redis,
            prefix: format!("brownout:{deployment}:budget"),
            replicas: format!("brownout:{deployment}:budget:replicas"),
            replica: fastrand::u64(..),
            ttl_secs,
            floor: f64::from(budget.min_per_sec()) * ttl_secs as f64,
            ratio: f64::from(budget.retry_ratio()),
            deposits: AtomicU64::new(0),
            withdrawals: AtomicU64::new(0),
            allowance: AtomicI64::new(0),
            own: Mutex::new(VecDeque::new()),
        });
        runtime.spawn(run(Arc::downgrade(&shared)));
        Ok(RedisRetryBudget { shared })
    }

    /// Whether Redis answered the last settlement: `false` while the local budget
    /// decides.
    pub fn is_shared(&self) -> bool {
        self.shared.link.is_up()
    }
}

impl fmt::Debug for RedisRetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRetryBudget")
            .field("redis", &self.shared.config)
            .field("allowance", &self.shared.allowance.load(Relaxed))
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl BudgetStore for RedisRetryBudget {
    fn deposit(&self) {
        self.shared.deposits.fetch_add(1, Relaxed);
        self.shared.local.deposit();
    }

    fn withdraw(&self) -> bool {
        let shared = &self.shared;
        let allowed = if shared.link.is_up() {
            let allowed = shared.allowance.fetch_sub(1, AcqRel) > 0;
            if allowed {
                // Kept in step, for when Redis goes away.
                let _ = shared.local.withdraw();
            }
            allowed
        } else {
            shared.local.withdraw()
        };
        if allowed {
            shared.withdrawals.fetch_add(1, Relaxed);
        }
        allowed
    }
}

async fn run(shared: Weak<Shared>) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    let config = strong.config.clone();
    drop(strong);
    let script = redis::Script::new(SETTLE_LUA);
    let mut tick = interval(config.flush_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<ConnectionManager> = None;
    loop {
        if conn.is_none() {
            match connect(&config).await {
                Ok(c) => conn = Some(c),
                Err(reason) => {
                    let Some(strong) = shared.upgrade() else {
                        return;
                    };
                    strong.link.down(reason);
                    drop(strong);
                    sleep(config.poll_interval).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        tick.tick().await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        strong.settle(&script, c).await;
    }
}

impl Shared {
    async fn settle(&self, script: &redis::Script, c: &mut ConnectionManager) {
        let deposits = self.deposits.swap(0, AcqRel);
        let withdrawals = self.withdrawals.swap(0, AcqRel);
        let mut invocation = script.key(&self.prefix);
        invocation
            .key(&self.replicas)
            .arg(deposits)
            .arg(withdrawals)
            .arg(self.ttl_secs)
            .arg(self.replica);
        let answer = self
            .link
            .call(
                self.config.timeout,
                invocation.invoke_async::<(u64, u64, u64)>(c),
            )
            .await;
        let Some((fleet_deposits, fleet_withdrawals, replicas)) = answer else {
            // Sent with the next settlement.
            self.deposits.fetch_add(deposits, AcqRel);
            self.withdrawals.fetch_add(withdrawals, AcqRel);
            return;
        };
        let own = {
            let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            own.push_back((now, deposits));
            let window = Duration::from_secs(self.ttl_secs);
            while own
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= window)
            {
                own.pop_front();
            }
            own.iter().map(|(_, d)| d).sum::<u64>()
        };
        let balance = self.floor + self.ratio * fleet_deposits as f64 - fleet_withdrawals as f64;
        let share = if fleet_deposits == 0 {
            1.0 / replicas.max(1) as f64
        } else {
            (own as f64 / fleet_deposits as f64).min(1.0)
        };
        // Retries taken since the counts were swapped out are this replica's too.
        let taken = self.withdrawals.load(Acquire) as f64;
        let allowance = (balance * share - taken).max(0.0).floor();
        self.allowance.store(allowance as i64, Release);
    }
}
