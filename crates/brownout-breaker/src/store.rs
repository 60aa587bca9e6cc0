//! Where breakers live: the small trait a store implements, and the local one.

use std::{
    cell::RefCell,
    fmt,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::{
    event::CircuitState,
    stripe::{stripe_count, this_stripe},
};

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

/// What a [`LocalStore`] hands out: a key's breaker, seen from one stripe of threads.
///
/// Each key has one per stripe, each in a cache-padded allocation of its own, so that
/// the reference count a call takes and gives back, and the success it counts, stay
/// on lines of its own thread's core.
#[derive(Debug)]
pub(crate) struct KeyEntry {
    state: Arc<KeyState>,
    stripe: usize,
}

impl BreakerEntry for CachePadded<KeyEntry> {
    fn key(&self) -> &Arc<str> {
        self.state.key()
    }

    fn acquire(&self, now: Instant) -> (Admission, Option<Transition>) {
        self.state.acquire(now)
    }

    fn record(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition> {
        self.state.record(permit, verdict, now, self.stripe)
    }

    fn force(&self, force: Force) -> Option<Transition> {
        self.state.force(force)
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        self.state.snapshot(now)
    }

    fn is_available(&self, now: Instant) -> bool {
        self.state.is_available(now)
    }
}

/// A key's entries, one per stripe.
type Entries = Box<[Arc<CachePadded<KeyEntry>>]>;

fn entries_of(state: KeyState) -> Entries {
    let state = Arc::new(state);
    (0..state.stripes())
        .map(|stripe| {
            Arc::new(CachePadded::new(KeyEntry {
                state: state.clone(),
                stripe,
            }))
        })
        .collect()
}

/// How many entries a thread remembers, across all stores.
const CACHED: usize = 4;

/// A thread's last entries, so that a call for a key it used lately takes no lock of
/// the map (a read lock is a write to the shard's lock word, shared by every thread).
struct ThreadCache {
    /// (store id, entry), most recently inserted at `next - 1`.
    entries: [Option<(u64, Arc<CachePadded<KeyEntry>>)>; CACHED],
    next: usize,
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = const {
        RefCell::new(ThreadCache { entries: [const { None }; CACHED], next: 0 })
    };
}

impl ThreadCache {
    /// The cached entry of `key` in store `id`; a dropped key's entry is forgotten
    /// (and handed back, to be dropped outside the borrow).
    fn get(
        &mut self,
        id: u64,
        key: &str,
    ) -> Result<Option<Arc<CachePadded<KeyEntry>>>, Arc<CachePadded<KeyEntry>>> {
        for slot in &mut self.entries {
            if let Some((store, entry)) = slot {
                if *store == id && **entry.state.key() == *key {
                    if entry.state.is_evicted() {
                        let (_, entry) = slot.take().expect("a slot just matched");
                        return Err(entry);
                    }
                    return Ok(Some(entry.clone()));
                }
            }
        }
        Ok(None)
    }

    /// Remembers `entry`; the one it replaces, to be dropped outside the borrow.
    fn insert(
        &mut self,
        id: u64,
        entry: Arc<CachePadded<KeyEntry>>,
    ) -> Option<(u64, Arc<CachePadded<KeyEntry>>)> {
        let slot = self.next % CACHED;
        self.next = self.next.wrapping_add(1);
        self.entries[slot].replace((id, entry))
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
///
/// Each thread also remembers the last few entries it was given (four, across all
/// stores), so that calls for a key it used lately find it without the map's lock:
/// a dropped key is marked so and not used again, but its memory goes only when the
/// thread forgets it (it remembers a newer key, or ends).
///
/// A key's success counts and the entries handed out are split in cache-padded
/// stripes, one per group of threads (twice the cores, 2 to 16 stripes), so that
/// threads calling the same key do not write to one cache line: about 512 bytes a
/// stripe, so up to 8 KiB a key on a machine of 8 cores or more (8 MiB at the default
/// 1,024 keys).
pub struct LocalStore {
    // foldhash: keys come from requests, so a seeded hasher, and a fast one.
    map: DashMap<Arc<str>, Entries, foldhash::fast::RandomState>,
    /// Tells this store's entries apart in the threads' caches.
    id: u64,
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
        static STORES: AtomicU64 = AtomicU64::new(0);
        LocalStore {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            id: STORES.fetch_add(1, Ordering::Relaxed),
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
        self.map.retain(|_, entries| {
            let state = &entries[0].state;
            let keep = pinned(state) || now_n.saturating_sub(state.last_used()) < idle;
            if !keep {
                state.evict();
            }
            keep
        });
        if self.map.len() < self.max_keys {
            return;
        }
        let mut by_use: Vec<(u64, Arc<str>)> = self
            .map
            .iter()
            .filter(|e| !pinned(&e.value()[0].state))
            .map(|e| (e.value()[0].state.last_used(), e.key().clone()))
            .collect();
        by_use.sort_unstable_by_key(|(used, _)| *used);
        // Other callers may have evicted since the check above: saturate.
        let excess = (self.map.len() + 1).saturating_sub(self.max_keys);
        let evict = excess.max(self.max_keys / 8).min(by_use.len());
        for (_, key) in by_use.into_iter().take(evict) {
            self.remove(&key);
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
        let cached = CACHE.try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            Some(cache.get(self.id, key))
        });
        match cached {
            Ok(Some(Ok(Some(entry)))) => {
                entry.state.touch(now);
                return entry;
            }
            // Dropped here, after the borrow.
            Ok(Some(Err(evicted))) => drop(evicted),
            _ => {}
        }
        let stripe = this_stripe();
        let entry = match self.map.get(key) {
            Some(entries) => {
                let entry = entries[stripe % entries.len()].clone();
                entry.state.touch(now);
                entry
            }
            None => {
                self.make_room(now);
                let entries = self.map.entry(Arc::from(key)).or_insert_with(|| {
                    entries_of(KeyState::new(
                        Arc::from(key),
                        self.settings.clone(),
                        stripe_count(),
                        now,
                    ))
                });
                entries[stripe % entries.len()].clone()
            }
        };
        let replaced = CACHE.try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            cache.insert(self.id, entry.clone())
        });
        drop(replaced);
        entry
    }

    fn get(&self, key: &str) -> Option<Arc<dyn BreakerEntry>> {
        self.map
            .get(key)
            .map(|s| s.value()[0].clone() as Arc<dyn BreakerEntry>)
    }

    fn entries(&self) -> Vec<Arc<dyn BreakerEntry>> {
        self.map
            .iter()
            .map(|s| s.value()[0].clone() as Arc<dyn BreakerEntry>)
            .collect()
    }

    fn remove(&self, key: &str) -> bool {
        match self.map.remove(key) {
            Some((_, entries)) => {
                entries[0].state.evict();
                true
            }
            None => false,
        }
    }
}
