//! The entries, in a moka cache bounded by count and bytes.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use tokio::{sync::watch, time::Instant};

use crate::{
    key::{CacheKey, Exact, ExactSecret},
    CacheConfig,
};

/// A complete successful answer.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) stored_at: Instant,
}

impl Entry {
    fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 64) as u64
    }
}

/// The store and the misses in flight.
pub(crate) struct Store {
    entries: moka::future::Cache<CacheKey, Arc<Entry>>,
    /// The key of each exact byte form of a request seen lately
    /// ([`Keying::exact`](crate::key::Keying::exact) → [`Keying::key`](crate::key::Keying::key)),
    /// so that a request sent again as the same bytes is keyed without parsing its JSON
    /// into canonical form (a tenth of the cost on a 2 KB body). As many as the store
    /// holds entries; a forgotten one is only computed again.
    keys: moka::future::Cache<Exact, CacheKey>,
    /// The secret of those exact digests.
    pub(crate) secret: ExactSecret,
    /// How many bytes one unit of moka's weight stands for: 1, unless `max_bytes` is
    /// beyond what a `u32` weight can count.
    unit: u64,
    /// moka's capacity, in units.
    capacity: u64,
    /// Fresh-hit misses being fetched: followers wait on the leader's channel. Only
    /// touched on a miss in fresh-hit mode.
    in_flight: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
    pub(crate) max_entry_bytes: usize,
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
        // One weighted bound enforces both limits. Every entry weighs at least `floor`
        // units, and the capacity is at most `max_entries * floor` units, so that
        // `max_entries` entries of the least weight fit and one more never does
        // (rounding `floor` down but keeping the whole byte capacity would let
        // `max_entries + 1` of them in); the capacity is never more than `max_bytes`.
        let max_entries = config.max_entries.max(1);
        let unit = config.max_bytes.div_ceil(u64::from(u32::MAX)).max(1);
        let bytes = (config.max_bytes / unit).max(1);
        let floor = (bytes / max_entries).max(1);
        let capacity = bytes.min(floor.saturating_mul(max_entries));
        let entries = moka::future::Cache::builder()
            .max_capacity(capacity)
            .weigher(move |_key, entry: &Arc<Entry>| {
                u32::try_from(entry.weight().div_ceil(unit).max(floor)).unwrap_or(u32::MAX)
            })
            // moka keeps wall-clock time; it only reclaims memory here. Freshness is
            // judged with tokio's clock, on every read.
            .time_to_live(
                config
                    .ttl
                    .saturating_add(config.stale_window)
                    .max(Duration::from_secs(1)),
            )
            .build();
        let keys = moka::future::Cache::builder()
            .max_capacity(max_entries)
            .build();
        Store {
            entries,
            keys,
            secret: ExactSecret::random(),
            unit,
            capacity,
            in_flight: Mutex::new(HashMap::new()),
            max_entry_bytes: config.max_entry_bytes,
        }
    }

    /// The key of a request whose exact form is `exact`, made by `key` the first time.
    pub(crate) async fn key_of(
        &self,
        exact: Option<Exact>,
        key: impl FnOnce() -> CacheKey,
    ) -> CacheKey {
        let Some(exact) = exact else { return key() };
        if let Some(known) = self.keys.get(&exact).await {
            return known;
        }
        let made = key();
        self.keys.insert(exact, made).await;
        made
    }

    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key).await
    }

    /// Stores `entry`, unless it alone weighs more than the whole store.
    pub(crate) async fn insert(&self, key: CacheKey, entry: Entry) {
        if entry.weight().div_ceil(self.unit) > self.capacity {
            return;
        }
        self.entries.insert(key, Arc::new(entry)).await;
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
        self.entries.run_pending_tasks().await;
        (
            self.entries.entry_count(),
            self.entries.weighted_size().saturating_mul(self.unit),
        )
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"Paris."),
            stored_at: Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_byte_form_seen_before_is_keyed_without_its_canonical_form() {
        let store = Store::new(&CacheConfig::new());
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = |k: u32| {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            key(k)
        };
        assert_eq!(store.key_of(Some(100), || make(1)).await, key(1));
        assert_eq!(
            store.key_of(Some(100), || make(2)).await,
            key(1),
            "remembered"
        );
        assert_eq!(store.key_of(Some(101), || make(1)).await, key(1));
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Without an exact form (a key function of the user's), nothing is remembered.
        assert_eq!(store.key_of(None, || make(3)).await, key(3));
        assert_eq!(store.key_of(None, || make(4)).await, key(4));
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
    async fn a_byte_bound_beyond_u32_counts_in_larger_units() {
        let config = CacheConfig::new().max_bytes(1 << 40).max_entries(3);
        let store = Store::new(&config);
        assert!(store.unit > 1);
        for i in 0..100 {
            store.insert(key(i), entry()).await;
        }
        let (entries, _) = store.usage().await;
        assert!((1..=3).contains(&entries), "{entries}");
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
