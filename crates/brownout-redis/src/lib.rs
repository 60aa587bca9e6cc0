//! Redis-backed stores for brownout's layers: circuit breakers, rate limits, the
//! response cache and the retry budget, shared by every replica of a deployment.
//!
//! A fleet of replicas that each learn an outage on their own sends N times the
//! probes to a failing model. With a [`RedisBreakerStore`] given to
//! [`BreakerConfig::store`](brownout_breaker::BreakerConfig::store), a model's breaker
//! opened by one replica is skipped by every replica within a second, and only one
//! replica probes it when the open time has passed.
//!
//! ```no_run
//! use std::time::Duration;
//! use brownout_breaker::{BreakerConfig, CircuitBreakerLayer};
//! use brownout_redis::{RedisBreakerStore, RedisConfig};
//!
//! # async fn run() -> Result<(), brownout_core::error::InvalidConfig> {
//! let breaker = BreakerConfig::new();
//! let redis = RedisConfig::new("redis://127.0.0.1:6379", "prod")?
//!     .timeout(Duration::from_millis(50));
//! let store = RedisBreakerStore::new(redis, &breaker)?;
//! let layer = CircuitBreakerLayer::new(breaker.store(store));
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! # When to use it
//!
//! When several processes call the same provider and should agree on which models are
//! down. One process needs no Redis: the breaker's own [`LocalStore`] is the
//! default, and this crate is behind the facade's `redis` feature, off by default.
//!
//! # What it does
//!
//! - **A local view in front.** Each key has a local breaker (a
//!   [`LocalStore`] built from the same [`BreakerConfig`](brownout_breaker::BreakerConfig))
//!   and the fleet's view of it (a few atomics). A call on a closed key reads one atomic
//!   more than the local store does and never waits on Redis: the store's methods are
//!   synchronous, and everything that talks to Redis runs in one background task.
//! - **Outcomes in batches.** Calls and failures are counted in atomics and sent every
//!   [`flush_interval`](RedisConfig::flush_interval), one pipeline of `EVALSHA` per
//!   flush: a Lua script adds them to the key's window in Redis (two buckets on
//!   Redis's clock) and opens the key for the fleet when the fleet's failure rate
//!   reaches [`shared_failure_rate`](RedisConfig::shared_failure_rate). A replica
//!   whose own breaker trips tells the fleet too.
//! - **State changes published.** An open is written as keys with expirations
//!   (`brownout:{deployment}:breaker:{key}` for the open time,
//!   `…:{key}:tripped` until a probe closes it) and published on the channel
//!   `brownout:{deployment}:breaker`; the others apply it as the message arrives (RESP3
//!   pushes on the same connection, subscribed again after a reconnect), and read the
//!   keys every [`poll_interval`](RedisConfig::poll_interval) in case a message was
//!   lost.
//! - **One probe per half-open key.** When the open time has passed, a replica that
//!   gets a request takes the lease `…:{key}:probe` with `SET NX PX`; only the one
//!   holding it sends a probe, the others refuse until the probe's verdict is
//!   published (closed, or open again). A lease outlives a lost replica by
//!   [`probe_lease`](RedisConfig::probe_lease) at most.
//! - **No credential in Redis.** Model and host names are kept as they are; any other
//!   key (one that may carry a credential) is stored as a keyed BLAKE3 fingerprint.
//!   The URL's password is never logged nor put in an event.
//!
//! # What it does on failure
//!
//! Redis down or slow is not an outage: every Redis call has a short
//! [`timeout`](RedisConfig::timeout) (100 ms by default). When one fails, the store
//! emits [`RedisEvent::SharedStateLost`] and goes on with its local breakers (a
//! fleet-open key stays refused until its open time passes, then the local breaker
//! decides, with no lease to take). When Redis answers again it emits
//! [`RedisEvent::SharedStateResumed`] and is back on the shared state. No request
//! fails because Redis did.
//!
//! # Why redis-rs, and not fred
//!
//! Both are well kept async clients with pipelining, Lua scripts and pub/sub.
//! redis-rs is the ecosystem's reference client (the `redis` crate), its
//! `ConnectionManager` reconnects on its own and re-subscribes after a reconnect, and
//! its RESP3 push channel lets one connection carry commands and pub/sub; with only
//! the `tokio-comp`, `connection-manager` and `script` features it adds little to the
//! build. fred brings its own pool, router and many features a store of a few
//! commands does not use.
//!
//! # Costs
//!
//! The closed success path (`entry`, `acquire`, `record`) makes no Redis round trip;
//! Redis sees one pipeline per [`flush_interval`](RedisConfig::flush_interval) and one
//! per [`poll_interval`](RedisConfig::poll_interval), whatever the traffic. Figures
//! and how to reproduce them: `BENCHMARKS.md` beside this crate's `Cargo.toml`.
//!
//! # Shared rate limits
//!
//! N replicas that each keep their own buckets together send N times the provider's
//! limit. With a [`RedisLimitStore`] given to `RateLimitConfig::store` (crate
//! `brownout-limit`), every replica takes from the same buckets:
//!
//! ```no_run
//! use std::time::Duration;
//! use brownout_limit::{Limits, RateLimitConfig, RateLimitLayer};
//! use brownout_redis::{FailMode, RedisConfig, RedisLimitStore};
//!
//! # async fn run() -> Result<(), brownout_core::error::InvalidConfig> {
//! let redis = RedisConfig::new("redis://127.0.0.1:6379", "prod")?
//!     .timeout(Duration::from_millis(50));
//! let store = RedisLimitStore::new(redis, FailMode::Open)?;
//! let limits = RateLimitLayer::new(
//!     RateLimitConfig::new()
//!         .model("claude-sonnet-4-5", Limits::new().requests_per_minute(50))
//!         .store(store),
//! )?;
//! # let _ = limits;
//! # Ok(())
//! # }
//! ```
//!
//! - **Buckets in Redis, taken from atomically.** Each key is a hash
//!   `brownout:{deployment}:limit:{key}` holding a token bucket per limited resource
//!   (requests, input tokens, output tokens, tokens), refilling continuously on
//!   Redis's clock (`TIME`), as redis-cell and the `limits` library do. One Lua script,
//!   loaded once and called with `EVALSHA`, refills the buckets, checks all of them and
//!   takes from all of them in one step, so two replicas never both take the last
//!   room. A request that may wait takes its room in debt and waits locally, as with
//!   the local store; the capacities are sent with each call (the configured limits,
//!   tightened by what this replica learned from the provider's headers).
//! - **The round-trip budget: one per admitted request, at most.** The admission is
//!   the only Redis call a request waits on. Settlements from `usage`, refunds,
//!   learned `remaining` counts and a 429's pause are applied to the key's local
//!   buckets at once and sent every [`flush_interval`](RedisConfig::flush_interval),
//!   one pipeline, the settlements of a key added into one script call (measured:
//!   1.0005 round trips per call; `BENCHMARKS.md`).
//! - **No credential in Redis.** The key names the model as it is (when it is a plain
//!   name) and the caller by a BLAKE3 fingerprint, keyed by the deployment, of the
//!   limiter's credential fingerprint; a key of your own is fingerprinted unless it is
//!   a plain name.
//! - **Each admission mirrored locally.** What Redis admitted is also taken from the
//!   key's local buckets, so that they know this replica's recent use when they must
//!   take over.
//!
//! ## Redis down or slow: fail-open or fail-closed
//!
//! Every Redis call has the [`timeout`](RedisConfig::timeout) (100 ms by default).
//! When an admission fails or is late, the store emits
//! [`RedisEvent::SharedStateLost`] and, until Redis answers again, decides without
//! it, as its [`FailMode`] says:
//!
//! - [`FailMode::Open`] (the default): from the key's local buckets. No request fails
//!   because Redis did, but each replica then holds to the whole limit by itself, so
//!   a fleet may exceed it together while Redis is away. For limits that are a
//!   provider's, whose own 429s (learned as pauses) are the backstop.
//! - [`FailMode::Closed`]: every request is refused with the limiter's 429
//!   `rate_limit_error` in the provider's shape (`retry-after` as configured), or its
//!   `RateLimited` error. For limits that must hold, such as a budget shared by
//!   tenants.
//!
//! While away the store makes no Redis call on a request's path; its background task
//! checks Redis every [`poll_interval`](RedisConfig::poll_interval) (loading the
//! script again, which a restarted Redis has forgotten), and when Redis answers it
//! emits [`RedisEvent::SharedStateResumed`] and admissions go to Redis again. The
//! buckets in Redis are then as Redis kept them (a restarted one starts full);
//! settlements made while away stay local.
//!
//! # The response cache and the retry budget
//!
//! [`RedisCacheStore`] (give it to
//! [`CacheConfig::store`](brownout_cache::CacheConfig::store)) keeps the cache's
//! stale-if-error entries in Redis, with their lifetimes as Redis expirations, the
//! per-caller partition in the key, a bound on entries for the fleet, and a local
//! tier in front; writes go out in the background. [`RedisRetryBudget`] (give it to
//! [`RetryBudget::store`](brownout_retry::RetryBudget::store)) keeps a fleet's retries
//! within one budget, counted locally and settled every flush interval. Both fall back
//! to local state when Redis does not answer, as the breakers do; their events carry
//! the layers `"redis-cache"` and `"redis-budget"`.

mod breaker;
mod budget;
mod cache;
mod config;
mod event;
mod keys;
mod limit;
mod link;
mod worker;

pub use breaker::RedisBreakerStore;
pub use budget::RedisRetryBudget;
pub use cache::RedisCacheStore;
pub use config::RedisConfig;
pub use event::RedisEvent;
pub use limit::{FailMode, RedisLimitStore, RoundTrips};

pub use brownout_breaker::LocalStore;
