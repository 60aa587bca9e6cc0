//! The breaker store: a local view in front, Redis behind.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*},
        Arc,
    },
    time::Duration,
};

use brownout_breaker::{
    Admission, BreakerConfig, BreakerEntry, BreakerStore, CircuitState, Force, LocalStore, Permit,
    Snapshot, Transition, Verdict,
};
use brownout_core::{error::InvalidConfig, event::Event};
use dashmap::DashMap;
use tokio::{sync::mpsc, time::Instant};

use crate::{config::RedisConfig, event::RedisEvent, keys, worker};

/// The permits of a shared half-open probe carry this bit in their generation.
const SHARED_PROBE: u64 = 1 << 63;

/// Lease states of a key whose shared open time passed.
pub(crate) const LEASE_NONE: u8 = 0;
pub(crate) const LEASE_ASKED: u8 = 1;
pub(crate) const LEASE_HELD: u8 = 2;
pub(crate) const LEASE_PROBING: u8 = 3;
pub(crate) const LEASE_LOST: u8 = 4;

/// How often a call goes through the local store's lookup too (nanoseconds): far
/// below any idle timeout, far above the time between two calls of a busy key.
const TOUCH_EVERY: u64 = 1_000_000_000;

type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// Circuit breakers shared by the replicas of a deployment through Redis, with a
/// local view so that a closed breaker's call never waits on Redis.
///
/// Give it to [`BreakerConfig::store`]; see the [crate docs](crate) for what is
/// shared and how.
#[derive(Clone)]
pub struct RedisBreakerStore {
    shared: Arc<Shared>,
    // Apart from `Shared`, which every entry points to: the store's last clone going
    // drops the entries, then `Shared`, which ends the background task.
    entries: Arc<Map<Arc<str>, Arc<RedisEntry>>>,
}

pub(crate) struct Shared {
    pub(crate) local: LocalStore,
    /// The shared view of each key, by its Redis name.
    pub(crate) remotes: Map<Arc<str>, Arc<Remote>>,
    pub(crate) config: RedisConfig,
    pub(crate) epoch: Instant,
    pub(crate) replica: u64,
    /// Whether Redis answered the last call.
    pub(crate) connected: AtomicBool,
    pub(crate) ops: mpsc::UnboundedSender<Op>,
}

/// What the background task is asked to do.
#[derive(Debug)]
pub(crate) enum Op {
    /// Tell the fleet that this key opened for so long.
    Open(Arc<Remote>, Duration),
    /// Tell the fleet that this key closed.
    Close(Arc<Remote>),
    /// Try to take the key's probe lease.
    Lease(Arc<Remote>),
    /// Read the key's shared state (a key new to this replica).
    Poll(Arc<Remote>),
}

/// The shared state of one key as this replica last heard it.
pub(crate) struct Remote {
    pub(crate) key: Arc<str>,
    /// The key's name in Redis, without the namespace.
    pub(crate) id: Arc<str>,
    /// Nanoseconds since the store's epoch until which the fleet refuses the key; 0
    /// when it is not open.
    pub(crate) open_until: AtomicU64,
    /// The last shared open time, for a failed shared probe.
    pub(crate) open_ms: AtomicU64,
    pub(crate) lease: AtomicU8,
    /// When this replica won the lease (nanoseconds since the epoch): it lapses in
    /// Redis after the probe lease, and so here.
    pub(crate) lease_at: AtomicU64,
    /// Whether the open in `open_until` is this replica's own, to tell the fleet again
    /// if Redis was away when it happened.
    pub(crate) mine: AtomicBool,
    /// When this replica last changed `open_until` (nanoseconds since the epoch): a
    /// poll sent before then is older news.
    pub(crate) changed: AtomicU64,
    /// Opens and closes of this replica not yet written to Redis: until they are, a
    /// poll's answer is older news.
    pub(crate) unsent: AtomicU32,
    pub(crate) calls: AtomicU32,
    pub(crate) failures: AtomicU32,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("key", &self.key)
            .field("open_until", &self.open_until.load(Relaxed))
            .field("lease", &self.lease.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Marks the key open for `open_for` from now: as the fleet said when `announce`
    /// (an event says so), else by this replica's own decision.
    pub(crate) fn apply_open(&self, remote: &Remote, open_for: Duration, announce: bool) {
        let now = Instant::now();
        let until = self.nanos(now + open_for).max(1);
        remote.changed.store(self.nanos(now), Release);
        let before = remote.open_until.swap(until, AcqRel);
        remote.open_ms.store(
            u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX),
            Relaxed,
        );
        remote.lease.store(LEASE_NONE, Release);
        remote.mine.store(!announce, Release);
        if announce && before == 0 {
            self.config.events.emit(Event::detached(
                "redis",
                RedisEvent::SharedOpen {
                    key: remote.key.clone(),
                    open_for,
                },
            ));
        }
    }

    /// Marks the key closed, as the fleet said.
    pub(crate) fn apply_close(&self, remote: &Remote) {
        remote.changed.store(self.nanos(Instant::now()), Release);
        remote.open_until.store(0, Release);
        remote.mine.store(false, Release);
        remote.lease.store(LEASE_NONE, Release);
    }

    /// The shared view of the key named `id` in Redis, made if there is room.
    pub(crate) fn remote_by_id(&self, id: &str) -> Option<Arc<Remote>> {
        if let Some(remote) = self.remotes.get(id) {
            return Some(remote.clone());
        }
        None
    }

    fn remote_for(&self, key: &str) -> Arc<Remote> {
        let id = keys::id(&self.config.deployment, key);
        if let Some(remote) = self.remotes.get(id.as_str()) {
            return remote.clone();
        }
        if self.remotes.len() >= self.config.max_keys {
            // Forget the keys no entry uses any more.
            self.remotes.retain(|_, r| Arc::strong_count(r) > 1);
        }
        let remote = self
            .remotes
            .entry(Arc::from(id.as_str()))
            .or_insert_with(|| {
                Arc::new(Remote {
                    key: Arc::from(key),
                    id: Arc::from(id.as_str()),
                    open_until: AtomicU64::new(0),
                    open_ms: AtomicU64::new(0),
                    lease: AtomicU8::new(LEASE_NONE),
                    lease_at: AtomicU64::new(0),
                    mine: AtomicBool::new(false),
                    changed: AtomicU64::new(0),
                    unsent: AtomicU32::new(0),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                })
            })
            .clone();
        let _ = self.ops.send(Op::Poll(remote.clone()));
        remote
    }

    /// Hands an open or a close of this replica to the background task.
    pub(crate) fn publish(&self, op: Op) {
        if let Op::Open(remote, _) | Op::Close(remote) = &op {
            remote.unsent.fetch_add(1, AcqRel);
        }
        let _ = self.ops.send(op);
    }

    /// Every key's shared view, for the poll and the flush.
    pub(crate) fn remotes(&self) -> Vec<Arc<Remote>> {
        self.remotes.iter().map(|r| r.value().clone()).collect()
    }
}

impl RedisBreakerStore {
    /// A store for the breakers of `breaker` (its policy, open time, probes, bounds:
    /// those of the local view, a [`LocalStore`]) shared through the Redis of `redis`.
    ///
    /// Must be called inside a Tokio runtime: it starts the background task that talks
    /// to Redis, which ends when the last clone of the store is dropped. It does not
    /// wait for Redis: until Redis answers, the store is local.
    pub fn new(redis: RedisConfig, breaker: &BreakerConfig) -> Result<Self, InvalidConfig> {
        redis.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            InvalidConfig::new("redis", "runtime", "must be created inside a Tokio runtime")
        })?;
        let (ops, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            local: LocalStore::new(breaker),
            remotes: Map::default(),
            config: redis,
            epoch: Instant::now(),
            replica: fastrand::u64(..),
            connected: AtomicBool::new(false),
            ops,
        });
        runtime.spawn(worker::run(Arc::downgrade(&shared), rx));
        Ok(RedisBreakerStore {
            shared,
            entries: Arc::default(),
        })
    }

    /// Whether Redis answered the store's last call: `false` while the store is local
    /// only.
    pub fn is_shared(&self) -> bool {
        self.shared.connected.load(Acquire)
    }
}

impl fmt::Debug for RedisBreakerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBreakerStore")
            .field("redis", &self.shared.config)
            .field("keys", &self.entries.len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl BreakerStore for RedisBreakerStore {
    fn entry(&self, key: &str, now: Instant) -> Arc<dyn BreakerEntry> {
        let shared = &self.shared;
        let now_n = shared.nanos(now);
        let found = self.entries.get(key).map(|e| e.value().clone());
        if let Some(entry) = &found {
            // The local store is looked up (which keeps the key from going idle there)
            // once a second, not on every call.
            if now_n.saturating_sub(entry.touched.load(Relaxed)) < TOUCH_EVERY {
                return entry.clone();
            }
        }
        let local = shared.local.entry(key, now);
        if let Some(entry) = found {
            // The local store may have dropped and remade the key.
            if Arc::ptr_eq(&entry.local, &local) {
                entry.touched.store(now_n, Relaxed);
                return entry;
            }
        }
        if self.entries.len() > 2 * shared.local.len() + 64 {
            self.entries.retain(|k, e| {
                shared
                    .local
                    .get(k)
                    .is_some_and(|l| Arc::ptr_eq(&l, &e.local))
            });
        }
        let entry = Arc::new(RedisEntry {
            touched: AtomicU64::new(now_n),
            local,
            remote: shared.remote_for(key),
            shared: self.shared.clone(),
        });
        self.entries.insert(Arc::from(key), entry.clone());
        entry
    }

    fn get(&self, key: &str) -> Option<Arc<dyn BreakerEntry>> {
        self.entries
            .get(key)
            .map(|e| e.value().clone() as Arc<dyn BreakerEntry>)
    }

    fn entries(&self) -> Vec<Arc<dyn BreakerEntry>> {
        self.entries
            .iter()
            .map(|e| e.value().clone() as Arc<dyn BreakerEntry>)
            .collect()
    }

    fn remove(&self, key: &str) -> bool {
        self.entries.remove(key);
        self.shared.local.remove(key)
    }
}

/// One key: the local breaker, and the fleet's view of it.
struct RedisEntry {
    /// When the local store last looked the key up (nanoseconds since the epoch).
    touched: AtomicU64,
    local: Arc<dyn BreakerEntry>,
    remote: Arc<Remote>,
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEntry")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl RedisEntry {
    /// The shared open time left, `Some(ZERO)` when it passed (the key is half-open
    /// for the fleet), `None` when the fleet does not refuse the key.
    fn shared_open(&self, now: Instant) -> Option<Duration> {
        let until = self.remote.open_until.load(Acquire);
        if until == 0 {
            return None;
        }
        Some(Duration::from_nanos(
            until.saturating_sub(self.shared.nanos(now)),
        ))
    }

    /// Whether an operator forced this replica's breaker: that wins over the fleet.
    /// Read only when the fleet refuses the key, off the closed path.
    fn forced(&self, now: Instant) -> bool {
        matches!(
            self.local.snapshot(now).state,
            CircuitState::ForcedOpen | CircuitState::ForcedClosed
        )
    }

    fn opened_locally(&self, now: Instant) {
        let open_for = self
            .local
            .snapshot(now)
            .open_for
            .unwrap_or(self.shared.config.open_duration);
        self.shared.apply_open(&self.remote, open_for, false);
        self.shared.publish(Op::Open(self.remote.clone(), open_for));
    }
}

impl BreakerEntry for RedisEntry {
    fn key(&self) -> &Arc<str> {
        self.local.key()
    }

    fn acquire(&self, now: Instant) -> (Admission, Option<Transition>) {
        let Some(left) = self.shared_open(now) else {
            return self.local.acquire(now);
        };
        if self.forced(now) {
            return self.local.acquire(now);
        }
        if !left.is_zero() {
            return (
                Admission::Rejected {
                    retry_after: Some(left),
                },
                None,
            );
        }
        if !self.shared.connected.load(Acquire) {
            // Redis is away: no lease to take; the local breaker decides.
            return self.local.acquire(now);
        }
        let lease = &self.remote.lease;
        match lease.load(Acquire) {
            LEASE_HELD => {
                let held = self.remote.lease_at.load(Acquire);
                let lapse =
                    u64::try_from(self.shared.config.probe_lease.as_nanos()).unwrap_or(u64::MAX);
                if self.shared.nanos(now).saturating_sub(held) > lapse {
                    // The lease lapsed in Redis unused: another replica may hold it now.
                    if lease
                        .compare_exchange(LEASE_HELD, LEASE_ASKED, AcqRel, Acquire)
                        .is_ok()
                    {
                        let _ = self.shared.ops.send(Op::Lease(self.remote.clone()));
                    }
                    return (Admission::Rejected { retry_after: None }, None);
                }
                if lease
                    .compare_exchange(LEASE_HELD, LEASE_PROBING, AcqRel, Acquire)
                    .is_err()
                {
                    return (Admission::Rejected { retry_after: None }, None);
                }
                match self.local.acquire(now) {
                    (Admission::Admitted(permit), transition) => (
                        Admission::Admitted(Permit::new(
                            permit.generation() | SHARED_PROBE,
                            permit.is_probe(),
                        )),
                        transition,
                    ),
                    refused => {
                        lease.store(LEASE_HELD, Release);
                        refused
                    }
                }
            }
            LEASE_NONE => {
                if lease
                    .compare_exchange(LEASE_NONE, LEASE_ASKED, AcqRel, Acquire)
                    .is_ok()
                {
                    let _ = self.shared.ops.send(Op::Lease(self.remote.clone()));
                }
                (Admission::Rejected { retry_after: None }, None)
            }
            _ => (Admission::Rejected { retry_after: None }, None),
        }
    }

    fn record(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition> {
        if permit.generation() & SHARED_PROBE != 0 {
            let local = Permit::new(permit.generation() & !SHARED_PROBE, permit.is_probe());
            let transition = self.local.record(local, verdict, now);
            match verdict {
                Verdict::Success => {
                    self.shared.apply_close(&self.remote);
                    self.shared.publish(Op::Close(self.remote.clone()));
                }
                Verdict::Failure { .. } => {
                    let opened = transition.is_some_and(|t| t.to == CircuitState::Open);
                    let open_for = if opened {
                        self.local.snapshot(now).open_for
                    } else {
                        None
                    }
                    .unwrap_or(Duration::from_millis(
                        self.remote.open_ms.load(Relaxed).max(1),
                    ));
                    self.shared.apply_open(&self.remote, open_for, false);
                    self.shared.publish(Op::Open(self.remote.clone(), open_for));
                }
                Verdict::Ignored => {
                    let _ = self.remote.lease.compare_exchange(
                        LEASE_PROBING,
                        LEASE_HELD,
                        AcqRel,
                        Acquire,
                    );
                }
            }
            return transition;
        }
        let transition = self.local.record(permit, verdict, now);
        match verdict {
            Verdict::Success => {
                self.remote.calls.fetch_add(1, Relaxed);
            }
            Verdict::Failure { .. } => {
                self.remote.calls.fetch_add(1, Relaxed);
                self.remote.failures.fetch_add(1, Relaxed);
            }
            Verdict::Ignored => {}
        }
        if let Some(t) = transition {
            if t.to == CircuitState::Open {
                self.opened_locally(now);
            }
        }
        transition
    }

    fn force(&self, force: Force) -> Option<Transition> {
        // An operator's decision is this replica's: the fleet's view is left alone.
        self.local.force(force)
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let mut snapshot = self.local.snapshot(now);
        if let Some(left) = self.shared_open(now) {
            if matches!(
                snapshot.state,
                CircuitState::Closed | CircuitState::HalfOpen
            ) {
                if left.is_zero() {
                    snapshot.state = CircuitState::HalfOpen;
                    snapshot.open_for = None;
                } else {
                    snapshot.state = CircuitState::Open;
                    snapshot.open_for = Some(left);
                }
            }
        }
        snapshot
    }

    fn is_available(&self, now: Instant) -> bool {
        match self.shared_open(now) {
            None => self.local.is_available(now),
            Some(_) if self.forced(now) => self.local.is_available(now),
            Some(left) if !left.is_zero() => false,
            Some(_) if !self.shared.connected.load(Acquire) => self.local.is_available(now),
            Some(_) => {
                matches!(self.remote.lease.load(Acquire), LEASE_NONE | LEASE_HELD)
                    && self.local.is_available(now)
            }
        }
    }
}
