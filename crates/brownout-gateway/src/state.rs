//! `[state]`: the layers' shared stores in Redis, when the configuration names one.
//!
//! The circuit breakers get a [`RedisBreakerStore`], the response cache a
//! [`RedisCacheStore`] and the retry budget a [`RedisRetryBudget`], each built from
//! the layer's own config (its local view has the same policy and bounds as the
//! local store it replaces). Without `[state]` the
//! layers keep their own in-process stores, exactly as before.
//!
//! The rate limits of `[limits]` get a `RedisLimitStore` per provider (see
//! `limits.rs`), failing open or closed while Redis is away as
//! [`SharedState::limits`](crate::config::SharedState::limits) says.

use brownout::{
    breaker::BreakerConfig,
    cache::CacheConfig,
    redis::{RedisBreakerStore, RedisCacheStore, RedisLimitStore, RedisRetryBudget},
    retry::RetryConfig,
};

use crate::config::SharedState;

/// The stores a pipeline shares with the other replicas: whether each reaches Redis.
#[derive(Debug, Clone)]
pub struct SharedStores {
    breaker: Option<RedisBreakerStore>,
    cache: Option<RedisCacheStore>,
    budget: Option<RedisRetryBudget>,
    /// The rate limiters' stores of `[limits]`, one per limited provider.
    limits: Vec<RedisLimitStore>,
}

impl SharedStores {
    /// The rate limiters' stores, added once `[limits]` made them.
    pub(crate) fn add_limits(&mut self, stores: Vec<RedisLimitStore>) {
        self.limits.extend(stores);
    }

    /// Whether every shared store's Redis answered its last call (the breakers', the
    /// cache's, the retry budget's and each rate limiter's): `false` while any of
    /// them is on local state only.
    pub fn is_shared(&self) -> bool {
        self.breaker
            .as_ref()
            .is_none_or(RedisBreakerStore::is_shared)
            && self.cache.as_ref().is_none_or(RedisCacheStore::is_shared)
            && self.budget.as_ref().is_none_or(RedisRetryBudget::is_shared)
            && self.limits.iter().all(RedisLimitStore::is_shared)
    }

    /// The retry budget's store, when the retry layer has a budget.
    pub fn budget(&self) -> Option<&RedisRetryBudget> {
        self.budget.as_ref()
    }

    /// The breakers' store, when the breaker layer is on.
    pub fn breaker(&self) -> Option<&RedisBreakerStore> {
        self.breaker.as_ref()
    }

    /// The cache's store, when the cache layer is on.
    pub fn cache(&self) -> Option<&RedisCacheStore> {
        self.cache.as_ref()
    }
}

/// The layers' configs, with their Redis stores.
pub(crate) struct Shared {
    pub(crate) breaker: Option<BreakerConfig>,
    pub(crate) cache: Option<CacheConfig>,
    pub(crate) retry: Option<RetryConfig>,
    pub(crate) stores: SharedStores,
}

/// The breaker, cache and retry configs with their Redis stores, and the stores. A
/// store that cannot start (only outside a Tokio runtime) leaves its layer local,
/// and says so in the log.
pub(crate) fn shared(
    state: &SharedState,
    breaker: Option<BreakerConfig>,
    cache: Option<CacheConfig>,
    retry: Option<RetryConfig>,
) -> Shared {
    let mut stores = SharedStores {
        breaker: None,
        cache: None,
        budget: None,
        limits: Vec::new(),
    };
    let breaker =
        breaker.map(
            |config| match RedisBreakerStore::new(state.redis().clone(), &config) {
                Ok(store) => {
                    stores.breaker = Some(store.clone());
                    config.store(store)
                }
                Err(e) => {
                    tracing::error!(error = %e, "[state]: the breakers stay local");
                    config
                }
            },
        );
    let cache = cache.map(
        |config| match RedisCacheStore::new(state.redis().clone(), &config) {
            Ok(store) => {
                stores.cache = Some(store.clone());
                config.store(store)
            }
            Err(e) => {
                tracing::error!(error = %e, "[state]: the cache stays local");
                config
            }
        },
    );
    let retry = retry.map(|config| {
        let Some(budget) = config.retry_budget().cloned() else {
            return config;
        };
        match RedisRetryBudget::new(state.redis().clone(), &budget) {
            Ok(store) => {
                stores.budget = Some(store.clone());
                config.budget(budget.store(store))
            }
            Err(e) => {
                tracing::error!(error = %e, "[state]: the retry budget stays local");
                config
            }
        }
    });
    Shared {
        breaker,
        cache,
        retry,
        stores,
    }
}
