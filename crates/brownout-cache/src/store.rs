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

use crate::{key::CacheKey, CacheConfig};

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
        // Each entry weighs at least max_bytes / max_entries, so the byte bound also
        // bounds the count.
        let floor = (config.max_bytes / config.max_entries).max(1);
        let entries = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(move |_key, entry: &Arc<Entry>| {
                u32::try_from(entry.weight().max(floor)).unwrap_or(u32::MAX)
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
        Store {
            entries,
            in_flight: Mutex::new(HashMap::new()),
            max_entry_bytes: config.max_entry_bytes,
        }
    }

    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key).await
    }

    pub(crate) async fn insert(&self, key: CacheKey, entry: Entry) {
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
        (self.entries.entry_count(), self.entries.weighted_size())
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
