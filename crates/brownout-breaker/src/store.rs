//! Where breakers live: the small trait a shared store implements, and the local one.

use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use brownout_core::event::CircuitState;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::state::{Admission, Force, KeyState, Permit, Settings, Snapshot, Transition, Verdict};

/// The breakers of all keys. The layer asks it for a key's entry on every request.
///
/// [`LocalStore`] keeps them in this process. A store shared by several replicas
/// (Redis, say) implements this trait and [`BreakerEntry`]; the trait's methods are
/// synchronous so that the hot path never waits on the network: such a store keeps a
/// local view and exchanges counts in the background.
pub trait BreakerStore: Send + Sync + fmt::Debug + 'static {
    /// The entry of `key`, created (and the store kept within its bounds) if need be.
    fn entry(&self, key: &str, now: Instant) -> Arc<dyn BreakerEntry>;
    /// The entry of `key`, if there is one.
    fn get(&self, key: &str) -> Option<Arc<dyn BreakerEntry>>;
    /// Every entry.
    fn entries(&self) -> Vec<Arc<dyn BreakerEntry>>;
    /// Drops the entry of `key`; `true` if there was one.
    fn remove(&self, key: &str) -> bool;
}

/// One key's breaker.
pub trait BreakerEntry: Send + Sync + fmt::Debug + 'static {
    /// The key.
    fn key(&self) -> &Arc<str>;
    /// Whether a request may go now, and the state change this caused (an open time
    /// that passed), if any.
    fn acquire(&self, now: Instant) -> (Admission, Option<Transition>);
    /// Counts the verdict of an admitted request; the state change it caused, if any.
    fn record(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition>;
    /// Forces a state; the state change, if any.
    fn force(&self, force: Force) -> Option<Transition>;
    /// The state and counts.
    fn snapshot(&self, now: Instant) -> Snapshot;
    /// Whether a request would be admitted now, without taking a permit.
    fn is_available(&self, now: Instant) -> bool;
}

impl BreakerEntry for KeyState {
    fn key(&self) -> &Arc<str> {
        KeyState::key(self)
    }

    fn acquire(&self, now: Instant) -> (Admission, Option<Transition>) {
        KeyState::acquire(self, now)
    }

    fn record(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition> {
        KeyState::record(self, permit, verdict, now)
    }

    fn force(&self, force: Force) -> Option<Transition> {
        KeyState::force(self, force)
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        KeyState::snapshot(self, now)
    }

    fn is_available(&self, now: Instant) -> bool {
        KeyState::is_available(self, now)
    }
}

/// Breakers kept in this process, in a sharded concurrent map, at most
/// [`max_keys`](crate::BreakerConfig::max_keys) of them.
///
/// Looking up a key takes a read lock on one shard of the map, never a global lock.
/// When a new key would pass the bound, keys idle for longer than the
/// [`idle_timeout`](crate::BreakerConfig::idle_timeout) are dropped; if that is not
/// enough, the least recently used eighth of the keys goes. Keys an operator forced
/// open or closed are kept. A dropped key starts again closed.
pub struct LocalStore {
    // foldhash: keys come from requests, so a seeded hasher, and a fast one.
    map: DashMap<Arc<str>, Arc<KeyState>, foldhash::fast::RandomState>,
    settings: Arc<Settings>,
    max_keys: usize,
    idle: Duration,
    created: AtomicUsize,
}

impl LocalStore {
    pub(crate) fn new(settings: Arc<Settings>, max_keys: usize, idle: Duration) -> Self {
        LocalStore {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            settings,
            max_keys,
            idle,
            created: AtomicUsize::new(0),
        }
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn make_room(&self, now: Instant) {
        let created = self.created.fetch_add(1, Ordering::Relaxed) + 1;
        let full = self.map.len() >= self.max_keys;
        // Sweep idle keys when full, and now and then on the way there.
        if !full && !created.is_multiple_of((self.max_keys / 4).max(16)) {
            return;
        }
        let now_n = self.settings.nanos(now);
        let idle = u64::try_from(self.idle.as_nanos()).unwrap_or(u64::MAX);
        self.map
            .retain(|_, state| pinned(state) || now_n.saturating_sub(state.last_used()) < idle);
        if self.map.len() < self.max_keys {
            return;
        }
        let mut by_use: Vec<(u64, Arc<str>)> = self
            .map
            .iter()
            .filter(|e| !pinned(e.value()))
            .map(|e| (e.value().last_used(), e.key().clone()))
            .collect();
        by_use.sort_unstable_by_key(|(used, _)| *used);
        // Other callers may have evicted since the check above: saturate.
        let excess = (self.map.len() + 1).saturating_sub(self.max_keys);
        let evict = excess.max(self.max_keys / 8).min(by_use.len());
        for (_, key) in by_use.into_iter().take(evict) {
            self.map.remove(&key);
        }
    }
}

fn pinned(state: &KeyState) -> bool {
    matches!(
        state.state(),
        CircuitState::ForcedOpen | CircuitState::ForcedClosed
    )
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("keys", &self.map.len())
            .field("max_keys", &self.max_keys)
            .field("idle", &self.idle)
            .finish()
    }
}

impl BreakerStore for LocalStore {
    fn entry(&self, key: &str, now: Instant) -> Arc<dyn BreakerEntry> {
        if let Some(state) = self.map.get(key) {
            state.touch(now);
            return state.value().clone();
        }
        self.make_room(now);
        self.map
            .entry(Arc::from(key))
            .or_insert_with(|| Arc::new(KeyState::new(Arc::from(key), self.settings.clone(), now)))
            .value()
            .clone()
    }

    fn get(&self, key: &str) -> Option<Arc<dyn BreakerEntry>> {
        self.map
            .get(key)
            .map(|s| s.value().clone() as Arc<dyn BreakerEntry>)
    }

    fn entries(&self) -> Vec<Arc<dyn BreakerEntry>> {
        self.map
            .iter()
            .map(|s| s.value().clone() as Arc<dyn BreakerEntry>)
            .collect()
    }

    fn remove(&self, key: &str) -> bool {
        self.map.remove(key).is_some()
    }
}
