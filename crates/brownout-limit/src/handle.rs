//! Reading the limiter's state.

use std::{sync::atomic::Ordering, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{bucket::Remaining, shared::Shared, tokens::EstimateError};

/// Reads the keys of one [`RateLimitLayer`](crate::RateLimitLayer) and every service
/// it built. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LimitHandle {
    shared: Arc<Shared>,
}

/// One key's state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KeySnapshot {
    /// The key: the model, then `/` and the first bytes of the credential's
    /// fingerprint (never the credential), or your key.
    pub key: Arc<str>,
    /// What each limited bucket holds now.
    pub remaining: Vec<Remaining>,
    /// How long the key is still paused by a provider's 429.
    pub paused_for: Option<Duration>,
    /// Requests that waited for room.
    pub waits: u64,
    /// Requests refused (over the limit for longer than they could wait, or larger
    /// than a minute's limit).
    pub sheds: u64,
}

impl LimitHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        LimitHandle { shared }
    }

    /// Every tracked key, by key.
    pub fn keys(&self) -> Vec<KeySnapshot> {
        let now = Instant::now();
        let mut all: Vec<KeySnapshot> = self
            .shared
            .entries()
            .iter()
            .map(|e| {
                let mut b = e.local.lock();
                KeySnapshot {
                    key: e.name.clone(),
                    remaining: b.remaining(now),
                    paused_for: b.paused_until(now).map(|t| t - now),
                    waits: e.waits.load(Ordering::Relaxed),
                    sheds: e.sheds.load(Ordering::Relaxed),
                }
            })
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// The state of `key`, if it is tracked.
    pub fn key(&self, key: &str) -> Option<KeySnapshot> {
        self.keys().into_iter().find(|k| &*k.key == key)
    }

    /// How far `model`'s input estimates were from the usage its responses reported.
    pub fn estimate_error(&self, model: &str) -> Option<EstimateError> {
        self.shared.ratio(model).map(|r| r.error())
    }
}
