//! The entries: behind the [`CacheStore`] trait, in a `quick_cache` cache bounded by count and
//! bytes ([`LocalCacheStore`]) unless the config names another store.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use tokio::{sync::watch, time::Instant};

use crate::{
    config::Mode,
    key::{CacheKey, Exact, ExactSecret},
    CacheConfig,
};

/// A complete successful answer, as a [`CacheStore`] keeps it.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) stored_at: Instant,
}

impl CachedResponse {
    /// An answer stored at `stored_at` (on tokio's clock: freshness is judged with
    /// `tokio::time`, so that tests can pause it).
    pub fn new(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        stored_at: Instant,
    ) -> Self {
        CachedResponse {
            status,
            version,
            headers,
            body,
            stored_at,
        }
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Its headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Its whole body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// When it was stored.
    pub fn stored_at(&self) -> Instant {
        self.stored_at
    }

    /// Its weight in bytes against a store's byte bound: body, headers and a little
    /// overhead.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 64) as u64
    }
}

/// The future a [`CacheStore`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a cache layer keeps its entries: give one to
/// [`CacheConfig::store`](crate::CacheConfig::store). Without one the layer keeps them
/// in its own [`LocalCacheStore`] (and calls it directly, without the boxed futures of
/// this trait).
///
/// A store holds [`CachedResponse`]s by [`CacheKey`] (a digest: the caller's
/// credential is in it only hashed). The layer judges freshness from
/// [`stored_at`](CachedResponse::stored_at) and the config's `ttl` and
/// `stale_window`; a store may forget an entry at any time (an entry older than both
/// is never served). It must never fail a request: a store whose backend is away
/// answers `None` and drops writes.
pub trait CacheStore: fmt::Debug + Send + Sync + 'static {
    /// The entry stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<Arc<CachedResponse>>>;

    /// Stores `entry` under `key`. Called on the request path, after the answer was
    /// read: a store whose writes take a round trip should queue them and return.
    fn insert(&self, key: CacheKey, entry: CachedResponse) -> StoreFuture<'_, ()>;

    /// How many entries this process holds, and their weight in bytes (after any
    /// pending maintenance). `(0, 0)` by default.
    fn usage(&self) -> StoreFuture<'_, (u64, u64)> {
        Box::pin(async { (0, 0) })
    }
}

/// The default store: entries in this process, in a `quick_cache` cache bounded by the
/// config's [`max_entries`](CacheConfig::max_entries) (exactly) and
/// [`max_bytes`](CacheConfig::max_bytes). Also the local tier of shared stores.
///
/// `quick_cache` rather than `moka`: a stale-if-error cache writes an entry for every
/// new request, and moka's insert (its write log, the housekeeping that replays it, the
/// epoch-deferred frees) cost about 4,000 instructions a request in the gateway bench,
/// against some 700 here (crates/brownout-gateway/BENCHMARKS.md, session 9). Its
/// eviction is CLOCK-based with a ghost list (S3-FIFO-like): one-off requests are
/// pushed out before entries that were read again.
///
/// The entries are split over a few shards, each with its share of the bounds; an
/// entry heavier than a shard's share of [`max_bytes`](CacheConfig::max_bytes) is not
/// stored (the shard count is lowered until a shard holds at least
/// [`max_entry_bytes`](CacheConfig::max_entry_bytes) and 64 KiB of headers). There is
/// no expiry timer: an entry older than `ttl + stale_window` is never served, and is
/// dropped when a read finds it or when the bounds push it out, so memory stays within
/// [`max_bytes`](CacheConfig::max_bytes) either way.
#[derive(Clone)]
pub struct LocalCacheStore {
    /// Hashed with foldhash (seeded at random per process): a key is a digest already,
    /// and SipHash of it cost some 260 instructions per lookup in the gateway bench.
    entries: Arc<QuickCache>,
    /// An entry older than this is never served: a read that finds one drops it.
    lifetime: Duration,
    /// One shard's share of the byte bound: a heavier entry is not stored.
    shard_capacity: u64,
}

type QuickCache =
    quick_cache::sync::Cache<CacheKey, Arc<CachedResponse>, Weight, foldhash::fast::RandomState>;

/// An entry's weight in the store: its bytes ([`CachedResponse::weight`]), and at
/// least `floor`, so that `max_entries` of the lightest fill the byte bound and one
/// more never fits.
#[derive(Clone, Copy)]
struct Weight {
    floor: u64,
}

impl quick_cache::Weighter<CacheKey, Arc<CachedResponse>> for Weight {
    fn weight(&self, _key: &CacheKey, entry: &Arc<CachedResponse>) -> u64 {
        entry.weight().max(self.floor)
    }
}

impl LocalCacheStore {
    /// A store with the bounds and lifetime of `config`.
    pub fn new(config: &CacheConfig) -> Self {
        // One weighted bound enforces both limits. Every entry weighs at least `floor`
        // bytes, and the capacity is at most `max_entries * floor`, so that
        // `max_entries` entries of the least weight fit and one more never does
        // (rounding `floor` down but keeping the whole byte capacity would let
        // `max_entries + 1` of them in); the capacity is never more than `max_bytes`.
        let max_entries = config.max_entries.max(1);
        let floor = (config.max_bytes / max_entries).max(1);
        let capacity = config.max_bytes.min(floor.saturating_mul(max_entries));
        // Shards: a few per core, fewer while a shard would be too small for the
        // largest entry stored. The capacity handed on is a multiple of the count, so
        // that no shard's share is rounded up past the bound (the library rounds up,
        // and halves the count for small caches, which keeps the multiple).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut shards = (cores * 4).next_power_of_two() as u64;
        let largest = config.max_entry_bytes as u64 + 64 * 1024;
        while shards > 1 && capacity / shards < largest {
            shards /= 2;
        }
        let shard_capacity = capacity / shards;
        // The library sizes its tables for this many entries up front: the count bound,
        // unless the byte bound cannot hold that many entries of 1 KiB (a bound of ten
        // million entries in 64 MiB must not allocate tables for ten million).
        let estimated = max_entries.min((capacity / 1024).max(32));
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(estimated).unwrap_or(usize::MAX))
            .weight_capacity(shard_capacity * shards)
            .shards(shards as usize)
            .build()
            .expect("estimated items and weight capacity are both set");
        let entries = quick_cache::sync::Cache::with_options(
            options,
            Weight { floor },
            foldhash::fast::RandomState::default(),
            Default::default(),
        );
        LocalCacheStore {
            entries: Arc::new(entries),
            lifetime: config.ttl.saturating_add(config.stale_window),
            shard_capacity,
        }
    }

    /// The entry stored under `key`, if any and not older than the config's `ttl` and
    /// `stale_window` together.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let entry = self.entries.get(key)?;
        if entry.stored_at().elapsed() >= self.lifetime {
            self.entries.remove(key);
            return None;
        }
        Some(entry)
    }

    /// Stores `entry`, unless it alone weighs more than a shard's share of the store.
    pub async fn insert(&self, key: CacheKey, entry: CachedResponse) {
        self.insert_arc(key, Arc::new(entry)).await;
    }

    /// [`insert`](Self::insert), for an entry already shared.
    pub async fn insert_arc(&self, key: CacheKey, entry: Arc<CachedResponse>) {
        self.insert_now(key, entry);
    }

    /// The write itself, which never waits.
    fn insert_now(&self, key: CacheKey, entry: Arc<CachedResponse>) {
        if entry.weight() > self.shard_capacity {
            return;
        }
        self.entries.insert(key, entry);
    }

    /// Entries and their weight in bytes (each entry counted at least at the floor
    /// weight of the bounds).
    pub async fn usage(&self) -> (u64, u64) {
        (self.entries.len() as u64, self.entries.weight())
    }
}

impl fmt::Debug for LocalCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCacheStore")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish()
    }
}

impl CacheStore for LocalCacheStore {
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<Arc<CachedResponse>>> {
        Box::pin(LocalCacheStore::get(self, key))
    }

    fn insert(&self, key: CacheKey, entry: CachedResponse) -> StoreFuture<'_, ()> {
        Box::pin(LocalCacheStore::insert(self, key, entry))
    }

    fn usage(&self) -> StoreFuture<'_, (u64, u64)> {
        Box::pin(LocalCacheStore::usage(self))
    }
}

/// The layer's entries: its own local store, called directly, or the config's.
enum Entries {
    Local(LocalCacheStore),
    Custom(Arc<dyn CacheStore>),
}

/// The store and the misses in flight.
pub(crate) struct Store {
    entries: Entries,
    /// In fresh-hit mode, the key of each exact byte form of a request seen lately
    /// ([`Keying::exact`](crate::key::Keying::exact) → [`Keying::key_with`](crate::key::Keying::key_with)),
    /// so that a request sent again as the same bytes (a hit, there) is keyed without
    /// reading its JSON into canonical form.
    ///
    /// None in stale-if-error mode. There, most requests are new (a conversation
    /// grows), and a repeat is not served from the store, which is only read when the
    /// live path fails. The exact digest would then cost every new request about a
    /// quarter of its canonical key (the gateway bench: 1,700 instructions against
    /// 6,800 at 150 bytes), and would pay only where more than a quarter of the
    /// requests repeat earlier bytes. The memo's table (up to 3 MiB) is not made
    /// either.
    keys: Option<KeyMemo>,
    /// The secret of those exact digests.
    pub(crate) secret: ExactSecret,
    /// Fresh-hit misses being fetched: followers wait on the leader's channel. Only
    /// touched on a miss in fresh-hit mode.
    in_flight: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
    pub(crate) max_entry_bytes: usize,
}

/// The memo of [`Store::key_of`]: a direct-mapped table, one slot per exact digest's
/// low bits, each holding the last digest that landed there and its key.
///
/// A memo of a pure function may forget at will: a digest whose slot another one took
/// is only keyed again. Direct-mapped rather than a second cache of the store's kind
/// because the memo is asked on every fresh-hit request and written on every new one,
/// where a general cache's get and insert with their bookkeeping cost about as much as
/// the rest of a miss together (the gateway's `callgrind.sh`, `every` with the cache on
/// and off, when the store was moka). A slot's lock is held for a copy of 48 bytes; two
/// requests meet on one only when their digests share the slot bits.
struct KeyMemo {
    slots: Box<[MemoSlot]>,
    mask: usize,
}

/// One slot of the [`KeyMemo`]: the last exact digest that landed there, and its key.
type MemoSlot = Mutex<Option<(Exact, CacheKey)>>;

impl KeyMemo {
    /// As many slots as the store holds entries, rounded up to a power of two, and at
    /// least 64 and at most 65,536 (3 MiB).
    fn new(max_entries: u64) -> Self {
        let slots = usize::try_from(max_entries)
            .unwrap_or(usize::MAX)
            .clamp(64, 1 << 16)
            .next_power_of_two();
        KeyMemo {
            slots: (0..slots).map(|_| Mutex::new(None)).collect(),
            mask: slots - 1,
        }
    }

    fn slot(&self, exact: Exact) -> &MemoSlot {
        // The digest is a keyed pseudo-random function's output: its low bits are as
        // good an index as any.
        &self.slots[(exact as usize) & self.mask]
    }

    fn get(&self, exact: Exact) -> Option<CacheKey> {
        let slot = *self
            .slot(exact)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.and_then(|(seen, key)| (seen == exact).then_some(key))
    }

    fn insert(&self, exact: Exact, key: CacheKey) {
        *self
            .slot(exact)
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((exact, key));
    }
}

/// What a miss in fresh-hit mode should do.
pub(crate) enum Flight {
    /// Fetch it, then drop the guard to wake the followers.
    Lead(FlightGuard),
    /// Another request is fetching it: wait for it.
    Follow(watch::Receiver<()>),
}

/// Held by the leader of a coalesced miss; dropping it (done or cancelled) wakes the
/// followers.
pub(crate) struct FlightGuard {
    store: Arc<Store>,
    key: CacheKey,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.store
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Store {
    pub(crate) fn new(config: &CacheConfig) -> Self {
        let entries = match &config.store {
            Some(store) => Entries::Custom(store.clone()),
            None => Entries::Local(LocalCacheStore::new(config)),
        };
        let keys = (config.mode == Mode::FreshHit).then(|| KeyMemo::new(config.max_entries));
        Store {
            entries,
            keys,
            secret: ExactSecret::random(),
            in_flight: Mutex::new(HashMap::new()),
            max_entry_bytes: config.max_entry_bytes,
        }
    }

    /// The key of a request whose exact form is `exact`, made by `key` the first time.
    pub(crate) fn key_of(&self, exact: Option<Exact>, key: impl FnOnce() -> CacheKey) -> CacheKey {
        let (Some(exact), Some(memo)) = (exact, &self.keys) else {
            return key();
        };
        if let Some(known) = memo.get(exact) {
            return known;
        }
        let made = key();
        memo.insert(exact, made);
        made
    }

    /// Whether [`key_of`](Self::key_of) remembers keys by exact form: only then is
    /// the exact digest worth making.
    pub(crate) fn remembers(&self) -> bool {
        self.keys.is_some()
    }

    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        match &self.entries {
            Entries::Local(local) => local.get(key).await,
            Entries::Custom(store) => store.get(key).await,
        }
    }

    /// Stores `entry`, unless it alone weighs more than the whole store.
    pub(crate) async fn insert(&self, key: CacheKey, entry: CachedResponse) {
        match &self.entries {
            Entries::Local(local) => local.insert(key, entry).await,
            Entries::Custom(store) => store.insert(key, entry).await,
        }
    }

    /// Stores `entry` at once in the local store; a store of the user's own is
    /// handed the write, as a future to await.
    pub(crate) fn insert_now(
        &self,
        key: CacheKey,
        entry: CachedResponse,
    ) -> Option<StoreFuture<'static, ()>> {
        match &self.entries {
            Entries::Local(local) => {
                local.insert_now(key, Arc::new(entry));
                None
            }
            Entries::Custom(store) => {
                let store = store.clone();
                Some(Box::pin(async move { store.insert(key, entry).await }))
            }
        }
    }

    pub(crate) fn flight(self: &Arc<Self>, key: CacheKey) -> Flight {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = in_flight.get(&key) {
            return Flight::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        in_flight.insert(key, rx);
        Flight::Lead(FlightGuard {
            store: self.clone(),
            key,
            _done: tx,
        })
    }

    /// Entries and their weight in bytes, after pending maintenance.
    pub(crate) async fn usage(&self) -> (u64, u64) {
        match &self.entries {
            Entries::Local(local) => local.usage().await,
            Entries::Custom(store) => store.usage().await,
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entries {
            Entries::Local(local) => fmt::Debug::fmt(local, f),
            Entries::Custom(store) => fmt::Debug::fmt(store, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CachedResponse {
        CachedResponse::new(
            StatusCode::OK,
            Version::HTTP_11,
            HeaderMap::new(),
            Bytes::from_static(b"Paris."),
            Instant::now(),
        )
    }

    #[tokio::test]
    async fn a_byte_form_seen_before_is_keyed_without_its_canonical_form() {
        let store = Store::new(&CacheConfig::new().mode(Mode::FreshHit));
        assert!(store.remembers());
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = |k: u32| {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            key(k)
        };
        assert_eq!(store.key_of(Some(100), || make(1)), key(1));
        assert_eq!(store.key_of(Some(100), || make(2)), key(1), "remembered");
        assert_eq!(store.key_of(Some(101), || make(1)), key(1));
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Without an exact form (a key function of the user's), nothing is remembered.
        assert_eq!(store.key_of(None, || make(3)), key(3));
        assert_eq!(store.key_of(None, || make(4)), key(4));
    }

    #[test]
    fn in_stale_if_error_mode_every_key_is_made_from_the_canonical_form() {
        let store = Store::new(&CacheConfig::new().mode(Mode::StaleIfError));
        assert!(!store.remembers());
        let made = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..3 {
            let k = store.key_of(Some(100), || {
                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                key(1)
            });
            assert_eq!(k, key(1));
        }
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn two_byte_forms_on_one_slot_are_each_keyed_right() {
        let memo = KeyMemo::new(100);
        assert_eq!(memo.mask, 127);
        memo.insert(5, key(1));
        memo.insert(5 + 128, key(2));
        assert_eq!(memo.get(5), None, "forgotten: its slot was taken");
        assert_eq!(memo.get(5 + 128), Some(key(2)));
        assert_eq!(memo.get(6), None);
        assert_eq!(KeyMemo::new(0).slots.len(), 64);
        assert_eq!(KeyMemo::new(u64::MAX).slots.len(), 1 << 16);
    }

    fn key(i: u32) -> CacheKey {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        key
    }

    #[tokio::test]
    async fn the_default_bound_holds_exactly_ten_thousand_entries() {
        let config = CacheConfig::new();
        assert_eq!(config.max_entries, 10_000);
        let store = Store::new(&config);
        for i in 0..10_500 {
            store.insert(key(i), entry()).await;
        }
        let (entries, bytes) = store.usage().await;
        assert!(entries <= 10_000, "{entries}");
        assert!(entries >= 9_000, "{entries}: small entries are not refused");
        assert!(bytes <= config.max_bytes, "{bytes}");
    }

    #[tokio::test]
    async fn a_byte_bound_far_beyond_the_entries_keeps_the_count_bound() {
        let config = CacheConfig::new().max_bytes(1 << 40).max_entries(3);
        let store = LocalCacheStore::new(&config);
        for i in 0..100 {
            store.insert(key(i), entry()).await;
        }
        let (entries, _) = store.usage().await;
        assert!((1..=3).contains(&entries), "{entries}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_past_its_lifetime_is_dropped_when_read() {
        let config = CacheConfig::new()
            .ttl(Duration::from_secs(10))
            .stale_window(Duration::from_secs(20));
        let store = LocalCacheStore::new(&config);
        store.insert(key(1), entry()).await;
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            store.get(&key(1)).await.is_some(),
            "within ttl + stale_window"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(store.get(&key(1)).await.is_none());
        assert_eq!(store.usage().await.0, 0, "dropped, not only hidden");
    }

    #[test]
    fn a_shard_holds_the_largest_entry_stored() {
        // 2 MiB in all for answers of up to 1 MiB: one shard, whatever the cores, with
        // all of the capacity (10,000 entries of at least 209 bytes).
        let config = CacheConfig::new().max_bytes(2 << 20);
        let store = LocalCacheStore::new(&config);
        assert_eq!(store.shard_capacity, 209 * 10_000);
        // The default (64 MiB): each shard holds an answer of the default 1 MiB.
        let store = LocalCacheStore::new(&CacheConfig::new());
        assert!(store.shard_capacity >= (1 << 20) + 64 * 1024);
        assert!(store.shard_capacity <= 64 << 20);
    }

    #[tokio::test]
    async fn an_entry_heavier_than_the_whole_store_is_not_stored() {
        let config = CacheConfig::new().max_bytes(100);
        let store = Store::new(&config);
        let mut big = entry();
        big.body = Bytes::from(vec![b'x'; 200]);
        store.insert(key(0), big).await;
        assert_eq!(store.usage().await.0, 0);
    }
}
