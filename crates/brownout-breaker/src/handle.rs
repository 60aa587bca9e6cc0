use std::sync::Arc;

use brownout_core::{
    event::{Event, Events},
    health::Health,
};
use tokio::time::Instant;

use crate::{
    event::BreakerEvent,
    state::{Force, Snapshot, Transition},
    store::BreakerStore,
};

/// Reads and steers the breakers of one [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)
/// and every service it built. Cheap to clone.
///
/// It is also a [`Health`] view: a fallback layer asks it whether a target's breaker
/// would admit a request, and skips the target if not.
#[derive(Clone, Debug)]
pub struct BreakerHandle {
    store: Arc<dyn BreakerStore>,
    events: Events,
}

impl BreakerHandle {
    pub(crate) fn new(store: Arc<dyn BreakerStore>, events: Events) -> Self {
        BreakerHandle { store, events }
    }

    /// The state and counts of `key`'s breaker, if the key is tracked.
    pub fn state(&self, key: &str) -> Option<Snapshot> {
        self.store.get(key).map(|e| e.snapshot(Instant::now()))
    }

    /// The state and counts of every tracked key, by key.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let now = Instant::now();
        let mut all: Vec<Snapshot> = self
            .store
            .entries()
            .iter()
            .map(|e| e.snapshot(now))
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Refuses every request for `key` until [`reset`](Self::reset).
    pub fn force_open(&self, key: &str) {
        self.force(key, Force::Open);
    }

    /// Admits every request for `key`, counting nothing, until [`reset`](Self::reset).
    pub fn force_closed(&self, key: &str) {
        self.force(key, Force::Closed);
    }

    /// Closes `key`'s breaker with clean counts.
    pub fn reset(&self, key: &str) {
        self.force(key, Force::Reset);
    }

    fn force(&self, key: &str, force: Force) {
        let entry = self.store.entry(key, Instant::now());
        if let Some(transition) = entry.force(force) {
            emit_transition(&self.events, entry.key(), transition);
        }
    }
}

impl Health for BreakerHandle {
    fn is_available(&self, key: &str) -> bool {
        self.store
            .get(key)
            .is_none_or(|e| e.is_available(Instant::now()))
    }
}

pub(crate) fn emit_transition(events: &Events, key: &Arc<str>, t: Transition) {
    events.emit(Event::detached(
        "breaker",
        BreakerEvent::CircuitStateChanged {
            key: key.clone(),
            from: t.from,
            to: t.to,
            reason: t.reason,
        },
    ));
}
