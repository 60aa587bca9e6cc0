//! What is cached, for how long, and when a stored answer is served.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    classify::Outcome,
    event::{Events, Listener},
    provider::VARYING_HEADERS,
};
use http::{header::HeaderName, request::Parts};

use crate::{
    key::{Keying, Partition},
    CacheStore,
};

/// When the cache answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Always go live; serve a stored answer only when the live path fails in a way
    /// [`serve_stale_when`](CacheConfig::serve_stale_when) accepts (overload,
    /// unavailable, timeout, connection failure…). For LLM calls, where a fresh answer
    /// is wanted whenever there is one. The default.
    StaleIfError,
    /// Serve a fresh entry without going live; identical concurrent misses are
    /// coalesced into one upstream call. For FAQ-style traffic.
    FreshHit,
}

/// The cache layer's settings. Every setter takes and returns `self`.
///
/// | setting | default |
/// |---|---|
/// | [`mode`](Self::mode) | [`Mode::StaleIfError`] |
/// | [`ttl`](Self::ttl) | 5 min: how long an entry is fresh |
/// | [`stale_window`](Self::stale_window) | 1 h after it stops being fresh, an entry may still be served when the live path fails |
/// | [`max_entries`](Self::max_entries) | 10,000 |
/// | [`max_bytes`](Self::max_bytes) | 64 MiB in all |
/// | [`max_entry_bytes`](Self::max_entry_bytes) | 1 MiB: a longer answer is not stored |
/// | key | method, path, query, `anthropic-version`, `anthropic-beta`, `openai-organization`, `openai-project`, the canonical JSON body |
/// | partition | the caller's credential (`x-api-key`, `authorization`, `api-key`: [`CREDENTIAL_HEADERS`](brownout_core::provider::CREDENTIAL_HEADERS)), hashed into the key |
/// | [`serve_stale_when`](Self::serve_stale_when) | [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable): rate limited, overloaded, server error, timeout, connection failure, refused by a breaker |
/// | [`status_header`](Self::status_header) | `x-brownout-cache: hit` or `stale` on answers from the store |
/// | [`store`](Self::store) | a [`LocalCacheStore`](crate::LocalCacheStore) of the layer's own |
///
/// Two settings are the stack's, not this layer's: how much of a request body is read
/// to key it is the [`BodyLimits`](brownout_core::body::BodyLimits) in the request's
/// extensions (4 MiB by default; a longer body bypasses the cache), and what the live
/// answer means is decided by the stack's one classifier
/// ([`DefaultClassifier`](brownout_core::classify::DefaultClassifier), or yours through
/// a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the HTTP client).
#[derive(Clone)]
pub struct CacheConfig {
    pub(crate) mode: Mode,
    pub(crate) ttl: Duration,
    pub(crate) stale_window: Duration,
    pub(crate) max_entries: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_entry_bytes: usize,
    pub(crate) keying: Keying,
    pub(crate) serve_stale_when: Arc<dyn Fn(&Outcome) -> bool + Send + Sync>,
    pub(crate) status_header: Option<HeaderName>,
    pub(crate) events: Events,
    pub(crate) store: Option<Arc<dyn CacheStore>>,
}

impl CacheConfig {
    /// The defaults in the table above.
    pub fn new() -> Self {
        CacheConfig {
            mode: Mode::StaleIfError,
            ttl: Duration::from_secs(300),
            stale_window: Duration::from_secs(3600),
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            keying: Keying {
                headers: VARYING_HEADERS.into(),
                partition: Partition::Caller,
                custom: None,
            },
            serve_stale_when: Arc::new(|outcome: &Outcome| outcome.kind().is_unavailable()),
            status_header: Some(HeaderName::from_static("x-brownout-cache")),
            events: Events::new(),
            store: None,
        }
    }

    /// When the cache answers.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// How long an entry is fresh: served as a hit in [`Mode::FreshHit`], and in both
    /// modes servable when the live path fails.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long after it stops being fresh an entry may still be served when the live
    /// path fails (stale-if-error).
    pub fn stale_window(mut self, window: Duration) -> Self {
        self.stale_window = window;
        self
    }

    /// The most entries kept (at least 1), exactly: the store never holds more.
    /// Enforced together with [`max_bytes`](Self::max_bytes), in one weighted bound:
    /// each entry weighs at least `max_bytes / max_entries` bytes.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries.max(1);
        self
    }

    /// The most bytes kept in all (bodies and headers; at least 1).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes.max(1);
        self
    }

    /// The longest answer stored; a longer one is passed on and not stored.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// The request headers that are part of the key, besides method, path, query and
    /// body (replaces the default list).
    pub fn key_headers<I>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        self.keying.headers = headers.into_iter().collect();
        self
    }

    /// The headers holding the caller's credential, whose hashed value partitions the
    /// cache, instead of the providers' credential headers (`x-api-key`,
    /// `authorization`, `api-key`) of the default partition.
    pub fn credential_headers<I>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        self.keying.partition = Partition::Headers(headers.into_iter().collect());
        self
    }

    /// Shares entries between callers with different credentials. Only for answers
    /// that are the same for everyone: with this, a caller may receive an answer
    /// another caller paid for.
    pub fn no_credential_partitioning(mut self) -> Self {
        self.keying.partition = Partition::Shared;
        self
    }

    /// Replaces the key's method, path, headers and body with what `key` returns for a
    /// request head and its whole body. The credential still partitions the cache,
    /// unless [`no_credential_partitioning`](Self::no_credential_partitioning).
    pub fn key_with(
        mut self,
        key: impl Fn(&Parts, &[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.keying.custom = Some(Arc::new(key));
        self
    }

    /// Which live outcomes a stored answer may stand in for. The default is
    /// [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable).
    /// Client errors should not: the caller must learn that its request is wrong (and
    /// a caller's broken or ambiguous request body never reaches this predicate: it
    /// is answered with its error at once).
    pub fn serve_stale_when(
        mut self,
        when: impl Fn(&Outcome) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.serve_stale_when = Arc::new(when);
        self
    }

    /// The header that marks answers from the store (`hit` or `stale`); `None` for no
    /// header. The [`CacheStatus`](crate::CacheStatus) extension and
    /// `age` are always set.
    pub fn status_header(mut self, name: Option<HeaderName>) -> Self {
        self.status_header = name;
        self
    }

    /// Keeps the entries in `store` instead of the layer's own
    /// [`LocalCacheStore`](crate::LocalCacheStore) (a `quick_cache` cache in this process): for
    /// example a Redis-backed store shared by a fleet of replicas
    /// (`brownout_redis::RedisCacheStore`). The key, its memo of exact request forms (fresh-hit mode),
    /// the coalescing of fresh-hit misses and freshness stay the layer's. The bounds
    /// [`max_entries`](Self::max_entries) and [`max_bytes`](Self::max_bytes) are then
    /// `store`'s to keep.
    pub fn store(mut self, store: impl CacheStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Where decisions go besides `tracing`.
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }
}

impl CacheConfig {
    /// How long an entry is fresh, and how long after that it may stand in for a
    /// failed live answer: [`ttl`](Self::ttl) and [`stale_window`](Self::stale_window),
    /// for a [`CacheStore`] that keeps expirations of its own.
    pub fn lifetimes(&self) -> (Duration, Duration) {
        (self.ttl, self.stale_window)
    }

    /// [`max_entries`](Self::max_entries), [`max_bytes`](Self::max_bytes) and
    /// [`max_entry_bytes`](Self::max_entry_bytes), for a [`CacheStore`] that keeps
    /// bounds of its own.
    pub fn bounds(&self) -> (u64, u64, usize) {
        (self.max_entries, self.max_bytes, self.max_entry_bytes)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::new()
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("mode", &self.mode)
            .field("ttl", &self.ttl)
            .field("stale_window", &self.stale_window)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("key_headers", &self.keying.headers)
            .field("partition", &self.keying.partition)
            .field("custom_key", &self.keying.custom.is_some())
            .field("status_header", &self.status_header)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
