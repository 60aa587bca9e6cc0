//! What every service of one layer shares.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{classify::Outcome, event::Events};
use crossbeam_utils::CachePadded;

use crate::{
    config::{IsFailure, Keying, OnOpen},
    handle::BreakerHandle,
    store::{BreakerStore, LocalStore},
    BreakerConfig,
};

/// How services hold their [`Shared`]: padded, so that the reference count, written by
/// every clone of a service (tower clones one per request), is on a line of its own
/// and the settings every call reads stay shared between cores.
pub(crate) type SharedRef = Arc<CachePadded<Shared>>;

/// The settings and the store of one layer, shared by its services and their clones.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn BreakerStore>,
    pub(crate) keying: Keying,
    pub(crate) on_open: OnOpen,
    pub(crate) judge: Judge,
    pub(crate) events: Events,
}

/// What a call's verdict needs, copied into each call: with the default classification
/// and no listener, copying it writes to no shared reference count.
#[derive(Clone)]
pub(crate) struct Judge {
    /// `None` for the default, [`OutcomeKind::is_upstream_failure`](brownout_core::OutcomeKind::is_upstream_failure).
    pub(crate) is_failure: Option<IsFailure>,
    pub(crate) slow_call: Option<Duration>,
    /// Whether every verdict needs the clock: the policy counts calls in a time
    /// window, or the store is not ours and is given exact times.
    pub(crate) timed_window: bool,
    pub(crate) events: Events,
}

impl Judge {
    pub(crate) fn is_failure(&self, outcome: &Outcome) -> bool {
        match &self.is_failure {
            Some(is_failure) => is_failure(outcome),
            None => outcome.kind().is_upstream_failure(),
        }
    }
}

impl Shared {
    pub(crate) fn new_ref(config: BreakerConfig) -> SharedRef {
        Arc::new(CachePadded::new(Shared::new(config)))
    }

    fn new(config: BreakerConfig) -> Self {
        let (store, timed_window): (Arc<dyn BreakerStore>, bool) = match &config.store {
            Some(store) => (store.clone(), true),
            None => (Arc::new(LocalStore::new(&config)), config.policy.is_timed()),
        };
        Shared {
            store,
            keying: config.keying,
            on_open: config.on_open,
            judge: Judge {
                is_failure: config.is_failure,
                slow_call: config.slow_call,
                timed_window,
                events: config.events.clone(),
            },
            events: config.events,
        }
    }

    pub(crate) fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.store.clone(), self.events.clone())
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("keying", &self.keying)
            .field("on_open", &self.on_open)
            .finish_non_exhaustive()
    }
}
