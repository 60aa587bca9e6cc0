//! What every service of one layer shares: the settings and the keys' buckets.

use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::Arc,
};

use std::hash::BuildHasher;

use brownout_core::{provider::CREDENTIAL_HEADERS, request::Fingerprint, RequestFacts};
use dashmap::DashMap;
use http::request::Parts;
use tokio::time::Instant;

use crate::{store::LimitKey, tokens::Ratio, LimitStore, RateLimitConfig};

/// A key, as the map holds it: by model and caller without building a string.
///
/// The caller is a keyed 64-bit hash of its credential headers (the key is drawn per
/// process), not brownout-core's SHA-256 fingerprint: a budget partition needs no
/// cryptographic digest, and the SHA-256 was 40 % of the layer's own cost per call
/// (`benches/limit.rs`). It reveals nothing of the credential.
#[derive(Clone, PartialEq, Eq)]
enum KeyId {
    Model(Option<Arc<str>>, Option<u64>),
    Custom(Box<str>),
}

impl Hash for KeyId {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            KeyId::Model(m, f) => {
                m.as_deref().hash(h);
                f.hash(h);
            }
            KeyId::Custom(s) => s.hash(h),
        }
    }
}

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

    /// The entry of a request's key, made on first sight.
    pub(crate) fn entry(&self, parts: &Parts, facts: &RequestFacts, now: Instant) -> Arc<LimitKey> {
        let id = match &self.config.key_by {
            Some(key) => KeyId::Custom(key(parts, facts).into_boxed_str()),
            None => KeyId::Model(facts.model_arc().cloned(), self.caller(&parts.headers)),
        };
        if let Some(entry) = self.keys.get(&id) {
            return entry.clone();
        }
        if self.keys.len() >= self.config.max_keys {
            self.keys.retain(|_, e| !e.local.lock().is_idle(now));
        }
        let model = facts.model_arc();
        let name: Arc<str> = match &id {
            KeyId::Custom(s) => Arc::from(&**s),
            KeyId::Model(m, f) => {
                let m = m.as_deref().unwrap_or("-");
                match f {
                    Some(f) => format!("{m}/{:08x}", f >> 32).into(),
                    None => m.into(),
                }
            }
        };
        // A fingerprint every process computes alike, for stores shared by replicas:
        // made once per key, not per call.
        let caller = match &id {
            KeyId::Model(_, Some(_)) => Fingerprint::of(&parts.headers),
            _ => None,
        };
        let model = match &id {
            KeyId::Model(..) => model.cloned(),
            KeyId::Custom(_) => None,
        };
        let ratio = match facts.model_arc() {
            Some(m) => self
                .ratios
                .entry(m.clone())
                .or_insert_with(|| Arc::new(Ratio::new()))
                .clone(),
            None => Arc::new(Ratio::new()),
        };
        let limits = self.config.limits_of(facts.model());
        self.keys
            .entry(id)
            .or_insert_with(|| Arc::new(LimitKey::new(name, model, caller, limits, ratio, now)))
            .clone()
    }

    /// The caller's credential headers, hashed; `None` without any.
    fn caller(&self, headers: &http::HeaderMap) -> Option<u64> {
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
