//! What every service of one layer shares.

use std::{
    fmt,
    ops::Deref,
    sync::{Arc, OnceLock},
    time::Duration,
};

use brownout_core::{classify::Outcome, event::Events};
use crossbeam_utils::CachePadded;

use crate::{
    config::{IsFailure, Keying, OnOpen},
    handle::BreakerHandle,
    store::{BreakerStore, LocalStore},
    stripe::{stripe_count, this_stripe},
    BreakerConfig,
};

/// How services (and their layer) hold their [`Shared`]: through a replica per stripe
/// of threads, so that cloning a service (tower clones one per request) writes a
/// reference count on a line of the cloning thread's stripe, not one every thread
/// writes.
///
/// A clone made on another stripe than its source's takes the source's replica for
/// that stripe, made on first need and kept by the source. Replicas only ever hold
/// replicas made after them: they form a tree, never a cycle, and the whole goes
/// with the last service.
pub(crate) struct SharedRef(Arc<CachePadded<Replica>>);

struct Replica {
    shared: Arc<Shared>,
    stripe: usize,
    /// This replica's replicas for the other stripes.
    others: Box<[OnceLock<SharedRef>]>,
}

impl SharedRef {
    fn of(shared: Arc<Shared>, stripe: usize) -> Self {
        SharedRef(Arc::new(CachePadded::new(Replica {
            shared,
            stripe,
            others: (0..stripe_count()).map(|_| OnceLock::new()).collect(),
        })))
    }
}

impl Clone for SharedRef {
    #[inline]
    fn clone(&self) -> Self {
        let stripe = this_stripe();
        let replica = &self.0;
        if stripe == replica.stripe {
            return SharedRef(replica.clone());
        }
        let other = replica.others[stripe % replica.others.len()]
            .get_or_init(|| SharedRef::of(replica.shared.clone(), stripe));
        SharedRef(other.0.clone())
    }
}

impl Deref for SharedRef {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0.shared
    }
}

impl fmt::Debug for SharedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.shared.fmt(f)
    }
}

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
        SharedRef::of(Arc::new(Shared::new(config)), this_stripe())
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
