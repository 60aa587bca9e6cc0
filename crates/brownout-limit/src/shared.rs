//! What every service of one layer shares: the settings and the keys' buckets.

use std::{
    borrow::Borrow,
    fmt,
    hash::{Hash, Hasher},
    sync::Arc,
};

use std::hash::BuildHasher;

use brownout_core::{provider::CREDENTIAL_HEADERS, request::Fingerprint, RequestFacts};
use dashmap::DashMap;
use http::{request::Parts, HeaderName};
use tokio::time::Instant;

use crate::{store::LimitKey, tokens::Ratio, LimitStore, RateLimitConfig};

/// A key, as the map holds it: by model and caller without building a string.
///
/// The caller is a keyed 64-bit hash of its credential headers (the key is drawn per
/// process), not brownout-core's SHA-256 fingerprint: a budget partition needs no
/// cryptographic digest, and the SHA-256 was 40 % of the layer's own cost per call
/// (`benches/limit.rs`). It reveals nothing of the credential. (Keys also carry the
/// SHA-256 fingerprint, made once per key, for stores shared by processes.)
#[derive(Clone)]
enum KeyId {
    Model(Option<Arc<str>>, Option<u64>),
    Custom(Box<str>),
}

/// A key as borrowed from a request: looked up without building a [`KeyId`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum View<'a> {
    Model(Option<&'a str>, Option<u64>),
    Custom(&'a str),
}

trait AsKey {
    fn view(&self) -> View<'_>;
}

impl AsKey for KeyId {
    fn view(&self) -> View<'_> {
        match self {
            KeyId::Model(m, f) => View::Model(m.as_deref(), *f),
            KeyId::Custom(s) => View::Custom(s),
        }
    }
}

struct Probe<'a>(View<'a>);

impl AsKey for Probe<'_> {
    fn view(&self) -> View<'_> {
        self.0
    }
}

impl<'a> Borrow<dyn AsKey + 'a> for KeyId {
    fn borrow(&self) -> &(dyn AsKey + 'a) {
        self
    }
}

impl Hash for dyn AsKey + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.view().hash(h)
    }
}

impl PartialEq for dyn AsKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for dyn AsKey + '_ {}

impl Hash for KeyId {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.view().hash(h)
    }
}

impl PartialEq for KeyId {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for KeyId {}

type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

pub(crate) struct Shared {
    pub(crate) config: RateLimitConfig,
    pub(crate) store: Arc<dyn LimitStore>,
    keys: Map<KeyId, Arc<LimitKey>>,
    ratios: Map<Arc<str>, Arc<Ratio>>,
    callers: foldhash::quality::RandomState,
}

impl Shared {
    pub(crate) fn new(config: RateLimitConfig) -> Self {
        Shared {
            store: config.store.clone(),
            config,
            keys: Map::default(),
            ratios: Map::default(),
            callers: foldhash::quality::RandomState::default(),
        }
    }

    /// The entry of a request's key, made on first sight: by `model` and the caller,
    /// or by the configured closure (which needs the request's `facts`).
    pub(crate) fn entry(
        &self,
        parts: &Parts,
        model: Option<&str>,
        facts: Option<&RequestFacts>,
        now: Instant,
    ) -> Arc<LimitKey> {
        let custom;
        let view = match (&self.config.key_by, facts) {
            (Some(key), Some(facts)) => {
                custom = key(parts, facts);
                View::Custom(&custom)
            }
            (Some(key), None) => {
                custom = key(parts, &RequestFacts::of_head(parts));
                View::Custom(&custom)
            }
            (None, _) => View::Model(model, self.caller(&parts.headers)),
        };
        if let Some(entry) = self.keys.get(&Probe(view) as &dyn AsKey) {
            return entry.clone();
        }
        if self.keys.len() >= self.config.max_keys {
            self.keys.retain(|_, e| !e.local.lock().is_idle(now));
        }
        let (id, name, model, caller) = match view {
            View::Custom(s) => (KeyId::Custom(s.into()), Arc::from(s), None, None),
            View::Model(m, f) => {
                let model: Option<Arc<str>> = m.map(Arc::from);
                let label = m.unwrap_or("-");
                let name: Arc<str> = match f {
                    Some(f) => format!("{label}/{:08x}", f >> 32).into(),
                    None => label.into(),
                };
                // A fingerprint every process computes alike, for stores shared by
                // replicas: made once per key, not per call.
                let caller = f.and_then(|_| Fingerprint::of(&parts.headers));
                (KeyId::Model(model.clone(), f), name, model, caller)
            }
        };
        let model_name = model.as_deref().or(facts.and_then(|f| f.model()));
        let ratio = match model_name {
            Some(m) => self
                .ratios
                .entry(Arc::from(m))
                .or_insert_with(|| Arc::new(Ratio::new()))
                .clone(),
            None => Arc::new(Ratio::new()),
        };
        let limits = self.config.limits_of(model_name);
        self.keys
            .entry(id)
            .or_insert_with(|| Arc::new(LimitKey::new(name, model, caller, limits, ratio, now)))
            .clone()
    }

    /// The caller's credential headers, hashed; `None` without any. One pass over
    /// the request's few headers rather than a hashed lookup of each credential
    /// header's name; a request with more than one credential header is hashed in
    /// [`CREDENTIAL_HEADERS`]' order, whatever the order of its headers.
    fn caller(&self, headers: &http::HeaderMap) -> Option<u64> {
        let mut found: Option<&HeaderName> = None;
        for name in headers.keys() {
            if CREDENTIAL_HEADERS.contains(name) {
                match found {
                    None => found = Some(name),
                    Some(first) if first == name => {}
                    Some(_) => return self.callers_in_order(headers),
                }
            }
        }
        let name = found?;
        let mut h = self.callers.build_hasher();
        for value in headers.get_all(name) {
            h.write(name.as_str().as_bytes());
            h.write_u8(0);
            h.write(value.as_bytes());
            h.write_u8(0);
        }
        Some(h.finish())
    }

    fn callers_in_order(&self, headers: &http::HeaderMap) -> Option<u64> {
        let mut hasher = None;
        for name in &CREDENTIAL_HEADERS {
            for value in headers.get_all(name) {
                let h = hasher.get_or_insert_with(|| self.callers.build_hasher());
                h.write(name.as_str().as_bytes());
                h.write_u8(0);
                h.write(value.as_bytes());
                h.write_u8(0);
            }
        }
        hasher.map(|h| h.finish())
    }

    pub(crate) fn entries(&self) -> Vec<Arc<LimitKey>> {
        self.keys.iter().map(|e| e.value().clone()).collect()
    }

    pub(crate) fn ratio(&self, model: &str) -> Option<Arc<Ratio>> {
        self.ratios.get(model).map(|r| r.clone())
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}
