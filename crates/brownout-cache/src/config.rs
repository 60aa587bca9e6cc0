//! What is cached, for how long, and when a stored answer is served.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    classify::{Classifier, Classify, Outcome, OutcomeKind, DEFAULT_ERROR_BODY_LIMIT},
    event::{Events, Listener},
};
use http::{header::HeaderName, request::Parts};

use crate::key::Keying;

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
/// | partition | the caller's `x-api-key`, `authorization` and `api-key`, hashed |
/// | [`serve_stale_when`](Self::serve_stale_when) | overloaded, rate limited, server error, timeout, connection failure, refused by a breaker |
/// | [`status_header`](Self::status_header) | `x-brownout-cache: hit` or `stale` on answers from the store |
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
    pub(crate) replay_limit: usize,
    pub(crate) classifier: Classifier,
    pub(crate) error_body_limit: usize,
    pub(crate) events: Events,
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
                headers: [
                    "anthropic-version",
                    "anthropic-beta",
                    "openai-organization",
                    "openai-project",
                ]
                .map(HeaderName::from_static)
                .into(),
                credentials: Some(
                    ["x-api-key", "authorization", "api-key"]
                        .map(HeaderName::from_static)
                        .into(),
                ),
                custom: None,
            },
            serve_stale_when: Arc::new(|outcome: &Outcome| {
                matches!(
                    outcome.kind(),
                    OutcomeKind::Overloaded
                        | OutcomeKind::RateLimited
                        | OutcomeKind::ServerError
                        | OutcomeKind::Timeout
                        | OutcomeKind::ConnectionFailed
                        | OutcomeKind::Rejected
                )
            }),
            status_header: Some(HeaderName::from_static("x-brownout-cache")),
            replay_limit: 4 * 1024 * 1024,
            classifier: Classifier::default(),
            error_body_limit: DEFAULT_ERROR_BODY_LIMIT,
            events: Events::new(),
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

    /// The most entries kept (at least 1). Enforced together with
    /// [`max_bytes`](Self::max_bytes): each entry weighs at least
    /// `max_bytes / max_entries`.
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
    /// cache (replaces the default list).
    pub fn credential_headers<I>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        self.keying.credentials = Some(headers.into_iter().collect());
        self
    }

    /// Shares entries between callers with different credentials. Only for answers
    /// that are the same for everyone: with this, a caller may receive an answer
    /// another caller paid for.
    pub fn no_credential_partitioning(mut self) -> Self {
        self.keying.credentials = None;
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

    /// Which live outcomes a stored answer may stand in for. Client errors should not:
    /// the caller must learn that its request is wrong.
    pub fn serve_stale_when(
        mut self,
        when: impl Fn(&Outcome) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.serve_stale_when = Arc::new(when);
        self
    }

    /// The header that marks answers from the store (`hit` or `stale`); `None` for no
    /// header. The [`CacheStatus`](brownout_core::meta::CacheStatus) extension and
    /// `age` are always set.
    pub fn status_header(mut self, name: Option<HeaderName>) -> Self {
        self.status_header = name;
        self
    }

    /// The largest request body read to make a key; a request with a longer one
    /// bypasses the cache.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// Decides what happened on the live path.
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Classifier::new(classifier);
        self
    }

    /// Where decisions go besides `tracing`.
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
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
            .field("credential_headers", &self.keying.credentials)
            .field("custom_key", &self.keying.custom.is_some())
            .field("status_header", &self.status_header)
            .finish_non_exhaustive()
    }
}
