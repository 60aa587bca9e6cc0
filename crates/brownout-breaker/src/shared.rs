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
/// The replica a layer or a service is made with (the root) keeps one replica per
/// other stripe, made on the first clone there; a clone on another stripe takes that
/// one. Those replicas keep none of their own (a clone of one on a third stripe shares
/// its count, as an `Arc` would), so a root has at most one replica per stripe, and as
/// they hold no reference back, the whole goes with the last service.
pub(crate) struct SharedRef(Arc<CachePadded<Replica>>);

struct Replica {
    shared: Arc<Shared>,
    stripe: usize,
    /// The root's replicas for the other stripes; `None` in those replicas.
    others: Option<Box<[OnceLock<SharedRef>]>>,
}

impl SharedRef {
    fn root(shared: Arc<Shared>) -> Self {
        SharedRef(Arc::new(CachePadded::new(Replica {
            shared,
            stripe: this_stripe(),
            others: Some((0..stripe_count()).map(|_| OnceLock::new()).collect()),
        })))
    }
}

impl Clone for SharedRef {
    #[inline]
    fn clone(&self) -> Self {
        let replica = &self.0;
        let stripe = this_stripe();
        let others = match &replica.others {
            Some(others) if stripe != replica.stripe => others,
            _ => return SharedRef(replica.clone()),
        };
        let other = others[stripe % others.len()].get_or_init(|| {
            SharedRef(Arc::new(CachePadded::new(Replica {
                shared: replica.shared.clone(),
                stripe,
                others: None,
            })))
        });
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
        SharedRef::root(Arc::new(Shared::new(config)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &SharedRef, b: &SharedRef) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// Clones on one thread share one replica, and a replica that is not a root never
    /// makes replicas of its own: a root has at most one per stripe.
    #[test]
    fn a_root_keeps_one_replica_per_stripe_and_its_replicas_none() {
        let root = Shared::new_ref(BreakerConfig::new());
        let theirs = root.clone();
        let (a, b) = std::thread::spawn(move || (theirs.clone(), theirs.clone()))
            .join()
            .unwrap();
        assert!(same(&a, &b), "one replica per stripe");
        if !same(&a, &root) {
            assert!(a.0.others.is_none());
            let moved = a.clone();
            let c = std::thread::spawn(move || moved.clone()).join().unwrap();
            assert!(same(&c, &a), "a replica's clone shares its count");
        }
        drop((root, a, b));
    }
}
