//! Where the buckets live: the store trait, the local store, a key and its local
//! buckets.

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
    time::Duration,
};

use brownout_core::request::Fingerprint;
use tokio::time::Instant;

use crate::{
    bucket::{Buckets, Remaining},
    tokens::Ratio,
    Admit, Amounts, Limits, Resource,
};

/// What [`LimitStore::admit`] answers: the decision now, or a future of it.
pub enum Admission {
    /// Decided at once, with no round trip.
    Ready(Admit),
    /// Decided by a round trip to a remote store.
    Pending(Pin<Box<dyn Future<Output = Admit> + Send>>),
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Admission::Ready(admit) => f.debug_tuple("Ready").field(admit).finish(),
            Admission::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Where a [`RateLimitLayer`](crate::RateLimitLayer)'s buckets live: in this process
/// ([`LocalLimitStore`], the default), or behind a store of your own, such as
/// brownout-redis's `RedisLimitStore` that a fleet of replicas shares.
///
/// Set with [`RateLimitConfig::store`](crate::RateLimitConfig::store). The layer
/// keeps the keys (their names, counters and local buckets); a store decides what a
/// key's requests may take.
///
/// # The round-trip budget
///
/// The trait is shaped so that a remote store costs at most one round trip per
/// admitted request, and none otherwise:
///
/// - [`admit`](LimitStore::admit) is the only call a request waits on. It takes what
///   the request needs from every limited bucket of the key at once, atomically, and
///   answers at once ([`Admission::Ready`]: the local store, or a remote store that is
///   away and decides locally) or later ([`Admission::Pending`]: one round trip).
/// - [`give_back`](LimitStore::give_back) (a settlement from `usage`, a refund, a
///   cancelled wait), [`learn`](LimitStore::learn) (a provider's rate-limit headers)
///   and [`pause`](LimitStore::pause) (a 429's `retry-after`) never make a request
///   wait: a remote store applies them to the key's [`LocalBuckets`] at once and
///   sends them later, batched.
///
/// Every key carries its [`LocalBuckets`], whatever the store: the local store's
/// state, and a remote store's mirror and fallback, which it keeps in step so that it
/// can take over when the remote is away.
pub trait LimitStore: Send + Sync + 'static {
    /// Takes `need` from `key`'s buckets if the request may wait `max_wait` for it
    /// (the wait, if any, is in the answer: the layer sleeps it); refuses it
    /// otherwise, or when it needs more than a minute's limit.
    fn admit(
        &self,
        key: &Arc<LimitKey>,
        need: &Amounts,
        now: Instant,
        max_wait: Duration,
    ) -> Admission;

    /// Gives `amounts` back to `key`'s buckets (negative amounts take more): the
    /// settlement of a response's `usage`, a refund, a request never sent.
    fn give_back(&self, key: &Arc<LimitKey>, amounts: &Amounts, now: Instant);

    /// The provider said `resource`'s limit is `limit` and `remaining` is left: the
    /// key's buckets tighten (never above the configured limit). Whether the local
    /// view changed.
    fn learn(
        &self,
        key: &Arc<LimitKey>,
        resource: Resource,
        limit: Option<u64>,
        remaining: Option<u64>,
        now: Instant,
    ) -> bool;

    /// A provider's 429 said to wait until `until`: nothing of `key` is admitted
    /// before then.
    fn pause(&self, key: &Arc<LimitKey>, until: Instant, now: Instant);
}

/// The buckets in this process, as the layer has always kept them: the default
/// [`LimitStore`]. Every call is a short lock on the key's own buckets.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalLimitStore;

impl LimitStore for LocalLimitStore {
    #[inline]
    fn admit(
        &self,
        key: &Arc<LimitKey>,
        need: &Amounts,
        now: Instant,
        max_wait: Duration,
    ) -> Admission {
        Admission::Ready(key.local().admit(need, now, max_wait))
    }

    #[inline]
    fn give_back(&self, key: &Arc<LimitKey>, amounts: &Amounts, now: Instant) {
        key.local().give_back(amounts, now);
    }

    fn learn(
        &self,
        key: &Arc<LimitKey>,
        resource: Resource,
        limit: Option<u64>,
        remaining: Option<u64>,
        now: Instant,
    ) -> bool {
        key.local().learn(resource, limit, remaining, now)
    }

    fn pause(&self, key: &Arc<LimitKey>, until: Instant, now: Instant) {
        key.local().pause(until, now);
    }
}

/// One key's buckets in this process: a continuously refilling bucket per limited
/// resource, behind one short lock.
pub struct LocalBuckets {
    buckets: Mutex<Buckets>,
}

impl LocalBuckets {
    pub(crate) fn new(limits: Limits, now: Instant) -> Self {
        LocalBuckets {
            buckets: Mutex::new(Buckets::new(limits.per_minute, now)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `need` if the request may wait `max_wait` for it.
    pub fn admit(&self, need: &Amounts, now: Instant, max_wait: Duration) -> Admit {
        self.lock().admit(need, now, max_wait)
    }

    /// Takes `need` whatever the buckets hold (they may go into debt, down to minus
    /// a minute's limit): a request a remote store admitted, mirrored here.
    pub fn charge(&self, need: &Amounts, now: Instant) {
        self.lock().charge(need, now);
    }

    /// Gives `amounts` back (never above a minute's limit).
    pub fn give_back(&self, amounts: &Amounts, now: Instant) {
        self.lock().give_back_all(amounts.0, now);
    }

    /// What the provider said of `resource`; whether it changed anything.
    pub fn learn(
        &self,
        resource: Resource,
        limit: Option<u64>,
        remaining: Option<u64>,
        now: Instant,
    ) -> bool {
        self.lock().learn(resource, limit, remaining, now)
    }

    /// Nothing is admitted before `until`.
    pub fn pause(&self, until: Instant, now: Instant) {
        self.lock().pause(until, now);
    }

    /// When the key's pause ends, if it is paused.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.lock().paused_until(now)
    }

    /// The limit per minute in force for each resource, by [`Resource::ALL`]: the
    /// configured one, tightened by what the provider said.
    pub fn capacities(&self) -> [Option<u64>; 4] {
        let b = self.lock();
        Resource::ALL.map(|r| b.capacity(r))
    }

    /// What every limited bucket holds now.
    pub fn remaining(&self, now: Instant) -> Vec<Remaining> {
        self.lock().remaining(now)
    }
}

impl fmt::Debug for LocalBuckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBuckets").finish_non_exhaustive()
    }
}

/// One key of a [`RateLimitLayer`](crate::RateLimitLayer): its name, its configured
/// limits, its local buckets, its counters, and a slot for a store's own data.
pub struct LimitKey {
    pub(crate) name: Arc<str>,
    model: Option<Arc<str>>,
    caller: Option<Fingerprint>,
    pub(crate) limits: Limits,
    pub(crate) local: LocalBuckets,
    pub(crate) ratio: Arc<Ratio>,
    pub(crate) waits: AtomicU64,
    pub(crate) sheds: AtomicU64,
    data: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl LimitKey {
    pub(crate) fn new(
        name: Arc<str>,
        model: Option<Arc<str>>,
        caller: Option<Fingerprint>,
        limits: Limits,
        ratio: Arc<Ratio>,
        now: Instant,
    ) -> Self {
        LimitKey {
            name,
            model,
            caller,
            limits,
            local: LocalBuckets::new(limits, now),
            ratio,
            waits: AtomicU64::new(0),
            sheds: AtomicU64::new(0),
            data: OnceLock::new(),
        }
    }

    /// The key's name: the model, then `/` and the first hex digits of a keyed hash
    /// of the caller's credential (never the credential), or the name your
    /// [`key_by`](crate::RateLimitConfig::key_by) gave it.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The model of a key kept by model and caller (the default); `None` for a key of
    /// your [`key_by`](crate::RateLimitConfig::key_by).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The caller's credential fingerprint of a key kept by model and caller, when the
    /// request had a credential: the same in every process (a store shared by
    /// replicas names its keys by it), never the credential.
    pub fn caller(&self) -> Option<&Fingerprint> {
        self.caller.as_ref()
    }

    /// The limits configured for the key's model.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The key's buckets in this process.
    pub fn local(&self) -> &LocalBuckets {
        &self.local
    }

    /// A store's own data for this key (its remote name, say), made by `init` on
    /// first use. A key serves one store, so one type is ever asked for; another
    /// type gets `None`.
    pub fn data<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.data
            .get_or_init(|| Box::new(init()))
            .downcast_ref::<T>()
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitKey")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
