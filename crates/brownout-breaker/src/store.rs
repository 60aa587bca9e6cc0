//! Where breakers live: the small trait a store implements, and the local one.

use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::event::CircuitState;

use crate::{
    state::{Admission, Force, KeyState, Permit, Settings, Snapshot, Transition, Verdict},
    BreakerConfig,
};

/// The breakers of all keys: where a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)
/// keeps its state. Give the layer one with
/// [`BreakerConfig::store`](crate::BreakerConfig::store); without it, the layer keeps a
/// [`LocalStore`] of its own.
///
/// A store shared by several replicas (Redis, say) implements this trait and
/// [`BreakerEntry`] in its own crate. The methods are synchronous so that the hot
/// path never waits on the network: such a store keeps a local view (a
/// [`LocalStore`] it wraps serves well) and exchanges counts and states in the
/// background.
///
/// # How the layer uses it
///
/// - [`entry`](Self::entry) on every request, once its key is known: it must be fast
///   (a map lookup), and may create the entry and drop others to stay within its
///   bounds.
/// - On the entry: [`acquire`](BreakerEntry::acquire) before the call, and, when a
///   [`Permit`] was given, exactly one [`record`](BreakerEntry::record) with the
///   call's [`Verdict`] once it is known ([`Verdict::Ignored`] when the call was
///   cancelled or its outcome does not count). The [`Transition`]s they return become
///   [`CircuitStateChanged`](crate::BreakerEvent::CircuitStateChanged)
///   events.
/// - The [`BreakerHandle`](crate::BreakerHandle) reads [`get`](Self::get) and
///   [`entries`](Self::entries) for its snapshots and health answers, and forces
///   states through [`entry`](Self::entry) and [`BreakerEntry::force`].
///
/// Times are `tokio::time::Instant`s, so tests with a paused clock drive a store too.
///
/// # Example: watching a local store
///
/// ```
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
/// use brownout_breaker::{BreakerConfig, BreakerEntry, BreakerStore, LocalStore};
/// use tokio::time::Instant;
///
/// /// A store that counts the lookups of a LocalStore.
/// #[derive(Debug)]
/// struct Counting {
///     local: LocalStore,
///     lookups: Arc<AtomicUsize>,
/// }
///
/// impl BreakerStore for Counting {
///     fn entry(&self, key: &str, now: Instant) -> Arc<dyn BreakerEntry> {
///         self.lookups.fetch_add(1, Ordering::Relaxed);
///         self.local.entry(key, now)
///     }
///     fn get(&self, key: &str) -> Option<Arc<dyn BreakerEntry>> {
///         self.local.get(key)
///     }
///     fn entries(&self) -> Vec<Arc<dyn BreakerEntry>> {
///         self.local.entries()
///     }
///     fn remove(&self, key: &str) -> bool {
///         self.local.remove(key)
///     }
/// }
///
/// let config = BreakerConfig::new();
/// let lookups = Arc::new(AtomicUsize::new(0));
/// let store = Counting { local: LocalStore::new(&config), lookups: lookups.clone() };
/// let config = config.store(store);
/// # let _ = config;
/// ```
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

/// One key's breaker, as a [`BreakerStore`] hands it out.
///
/// The entries of a [`LocalStore`] implement it with the state machine the crate
/// docs describe; a store of your own may hand those out, wrap them, or implement
/// the machine itself.
pub trait BreakerEntry: Send + Sync + fmt::Debug + 'static {
    /// The key.
    fn key(&self) -> &Arc<str>;
    /// Whether a request may go now, and the state change this caused (an open time
    /// that passed), if any. An [`Admission::Admitted`] permit is handed back to
    /// [`record`](Self::record) exactly once.
    fn acquire(&self, now: Instant) -> (Admission, Option<Transition>);
    /// Counts the verdict of an admitted request; the state change it caused, if any.
    /// A permit of an older [`generation`](Permit::generation) than the current state
    /// should not be counted.
    fn record(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition>;
    /// Forces a state; the state change, if any.
    fn force(&self, force: Force) -> Option<Transition>;
    /// The state and counts (see [`Snapshot::new`] to make one).
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
    /// A store with the breaker settings of `config`: its
    /// [`policy`](BreakerConfig::policy), [`open_duration`](BreakerConfig::open_duration),
    /// half-open settings, [`max_server_delay`](BreakerConfig::max_server_delay),
    /// [`max_keys`](BreakerConfig::max_keys), [`idle_timeout`](BreakerConfig::idle_timeout)
    /// and jitter [`seed`](BreakerConfig::seed).
    ///
    /// What a layer builds for itself when it is given no
    /// [`store`](BreakerConfig::store); build one yourself to wrap it in a store of
    /// your own.
    pub fn new(config: &BreakerConfig) -> Self {
        LocalStore::with_settings(
            Arc::new(Settings::of(config)),
            config.max_keys,
            config.idle_timeout,
        )
    }

    fn with_settings(settings: Arc<Settings>, max_keys: usize, idle: Duration) -> Self {
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
