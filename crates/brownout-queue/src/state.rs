//! The per-key queues and admission state, shared by every service of one layer.
//!
//! A key is tracked only while something is wrong with it: it became unavailable,
//! requests wait for it, or it is recovering. While no key is tracked (the common
//! case), a request costs one atomic load, and the health view's answer when one is
//! configured.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
    },
    time::Duration,
};

use brownout_core::{
    event::{Event, Events},
    request::Fingerprint,
    Outcome, OutcomeKind,
};
use tokio::{sync::oneshot, time::Instant};

use crate::{
    config::{OnShed, PriorityFrom},
    Priority, QueueConfig, QueueEvent, ShedReason,
};

/// The settings and the keys of one layer.
pub(crate) struct Shared {
    pub(crate) max_queue: usize,
    pub(crate) per_caller: usize,
    pub(crate) max_wait: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) recovery_limit: u32,
    pub(crate) config: QueueConfig,
    pub(crate) priority: PriorityFrom,
    pub(crate) on_shed: OnShed,
    pub(crate) events: Events,
    keys: RwLock<HashMap<Arc<str>, Arc<Key>>>,
    /// How many keys are tracked: while none is, requests skip the map.
    tracked: AtomicUsize,
    shutdown: AtomicBool,
    seq: AtomicU64,
}

pub(crate) struct Key {
    pub(crate) name: Arc<str>,
    state: Mutex<KeyState>,
}

/// A waiter's place: higher priority first, then first come first served.
pub(crate) type Slot = (Reverse<Priority>, u64);

struct Waiter {
    tx: oneshot::Sender<Ticket>,
    caller: Option<Fingerprint>,
}

#[derive(Default)]
struct KeyState {
    /// Taken out of the map: an arrival holding it looks the key up again.
    removed: bool,
    /// A server-given delay (or a refusal's reopening time) runs until then.
    blocked_until: Option<Instant>,
    /// The health view said no when last asked.
    health_blocked: bool,
    /// How many of this key's requests may be in flight; `None`: no limit.
    limit: Option<u32>,
    /// Below it admission grows by one per success (doubling each round), above it
    /// by one per round.
    ssthresh: u32,
    /// Successes since the last additive increase.
    acked: u32,
    /// Counts the halvings: an overload of a call admitted before the last one does
    /// not halve the limit again.
    epoch: u64,
    /// The epoch the current hold began in: calls sent before it (while nothing
    /// limited the key) no longer count in `in_flight`, and their answers do not grow
    /// slow start.
    held_from: u64,
    /// Calls in flight sent since the hold began (all of them while no hold is on).
    in_flight: u32,
    queue: BTreeMap<Slot, Waiter>,
    callers: HashMap<Fingerprint, usize>,
    /// A moving average of how long admitted calls take.
    latency: Option<Duration>,
}

/// What a waiter is told.
pub(crate) enum Ticket {
    Go(Permit),
    Shed(ShedReason),
}

/// What became of an arriving request.
pub(crate) enum Arrival {
    /// Send it now: untracked, or holding a permit of its key.
    Pass(Option<Permit>),
    Wait {
        key: Arc<Key>,
        slot: Slot,
        rx: oneshot::Receiver<Ticket>,
        depth: usize,
        expected: Option<Duration>,
    },
    Shed {
        key: Arc<str>,
        reason: ShedReason,
        retry_after: Option<Duration>,
    },
}

/// One admitted request of a tracked key. Dropping it frees its place in flight and
/// admits the next waiter.
pub(crate) struct Permit {
    shared: Arc<Shared>,
    key: Arc<Key>,
    pub(crate) started: Instant,
    epoch: u64,
    /// Already counted as a success by slow start (it survived `early_ack`), and no
    /// longer counted in flight.
    acked: bool,
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.shared
                .finish(&self.key, (!self.acked).then_some(self.epoch));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: QueueConfig) -> Self {
        Shared {
            max_queue: config.max_queue,
            per_caller: config.per_caller(),
            max_wait: config.max_wait,
            deadline: config.deadline,
            recovery_limit: config.recovery_limit,
            priority: config.priority.clone(),
            on_shed: config.on_shed,
            events: config.events.clone(),
            config,
            keys: RwLock::default(),
            tracked: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            seq: AtomicU64::new(0),
        }
    }

    /// Whether requests pass untouched without their key: no key is tracked and no
    /// health view is asked.
    pub(crate) fn is_idle(&self) -> bool {
        self.config.health.is_none() && self.tracked.load(Ordering::Acquire) == 0
    }

    /// Whether a request for `key` passes untouched: no key is tracked and the
    /// health view (if any) says yes.
    pub(crate) fn is_clear(&self, key: &str) -> bool {
        self.tracked.load(Ordering::Acquire) == 0 && self.healthy(key)
    }

    fn healthy(&self, key: &str) -> bool {
        self.config
            .health
            .as_ref()
            .is_none_or(|h| h.is_available(key))
    }

    fn get(&self, key: &str) -> Option<Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn get_or_insert(&self, key: &Arc<str>) -> Arc<Key> {
        if let Some(found) = self.get(key) {
            return found;
        }
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let entry = keys
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Key {
                    name: key.clone(),
                    state: Mutex::new(KeyState {
                        ssthresh: u32::MAX,
                        ..KeyState::default()
                    }),
                })
            })
            .clone();
        self.tracked.store(keys.len(), Ordering::Release);
        entry
    }

    /// Forgets `key` once nothing is wrong with it any more.
    fn forget_if_clean(&self, key: &Arc<Key>, state: &mut KeyState, now: Instant) {
        let clean = state.limit.is_none()
            && state.blocked_until.is_none_or(|t| t <= now)
            && !state.health_blocked
            && state.queue.is_empty()
            && state.in_flight == 0;
        if !clean || state.removed {
            return;
        }
        state.removed = true;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.get(&key.name).is_some_and(|k| Arc::ptr_eq(k, key)) {
            keys.remove(&key.name);
        }
        self.tracked.store(keys.len(), Ordering::Release);
    }

    /// Whether a waiter of `key` may be sent now, learning from the health view.
    fn can_admit(&self, key: &Key, state: &mut KeyState, now: Instant) -> bool {
        if state.blocked_until.is_some_and(|t| t > now) {
            return false;
        }
        if !self.healthy(&key.name) {
            if !state.health_blocked {
                state.health_blocked = true;
                if state.limit.is_none() {
                    // A half-open probe first once it is back.
                    begin_hold(state);
                }
            }
            return false;
        }
        state.health_blocked = false;
        state.in_flight < state.limit.unwrap_or(u32::MAX)
    }

    /// Admits waiters while the key can take them.
    fn dispatch(self: &Arc<Self>, key: &Arc<Key>, state: &mut KeyState, now: Instant) {
        while !state.queue.is_empty() && self.can_admit(key, state, now) {
            let Some((_, waiter)) = state.queue.pop_first() else {
                break;
            };
            leave_caller(state, waiter.caller);
            let permit = Permit {
                shared: self.clone(),
                key: key.clone(),
                started: now,
                epoch: state.epoch,
                acked: false,
                armed: true,
            };
            match waiter.tx.send(Ticket::Go(permit)) {
                Ok(()) => state.in_flight += 1,
                // The caller hung up: it is never sent.
                Err(Ticket::Go(mut permit)) => permit.armed = false,
                Err(Ticket::Shed(_)) => {}
            }
        }
    }

    /// A request for `key` (whose health view said no, or some key is tracked)
    /// arrives.
    pub(crate) fn arrive(
        self: &Arc<Self>,
        name: &Arc<str>,
        priority: Priority,
        caller: Option<Fingerprint>,
        budget: Duration,
        place: Option<u64>,
    ) -> Arrival {
        loop {
            let now = Instant::now();
            let key = match self.get(name) {
                Some(key) => key,
                // Untracked and healthy: straight through.
                None if self.healthy(name) => return Arrival::Pass(None),
                None => self.get_or_insert(name),
            };
            let mut state = lock(&key.state);
            if state.removed {
                continue;
            }
            let must_wait = !state.queue.is_empty() || !self.can_admit(&key, &mut state, now);
            if !must_wait {
                state.in_flight += 1;
                return Arrival::Pass(Some(Permit {
                    shared: self.clone(),
                    key: key.clone(),
                    started: now,
                    epoch: state.epoch,
                    acked: false,
                    armed: true,
                }));
            }
            let ahead = state
                .queue
                .keys()
                .filter(|(Reverse(p), _)| *p >= priority)
                .count();
            let expected = self.expected_wait(&key, &state, now, ahead);
            let shed = |reason| Arrival::Shed {
                key: key.name.clone(),
                reason,
                retry_after: expected,
            };
            let reason = if self.shutdown.load(Ordering::Acquire) {
                Some(ShedReason::Shutdown)
            } else if state.queue.len() >= self.max_queue {
                Some(ShedReason::QueueFull)
            } else if caller
                .is_some_and(|c| state.callers.get(&c).copied().unwrap_or(0) >= self.per_caller)
            {
                Some(ShedReason::CallerShare)
            } else if budget.is_zero() || expected.is_some_and(|e| e > budget) {
                Some(ShedReason::WaitTooLong)
            } else {
                None
            };
            if let Some(reason) = reason {
                let arrival = shed(reason);
                self.forget_if_clean(&key, &mut state, now);
                return arrival;
            }
            // A request held again keeps its place.
            let seq = place.unwrap_or_else(|| self.seq.fetch_add(1, Ordering::Relaxed));
            let slot = (Reverse(priority), seq);
            let (tx, rx) = oneshot::channel();
            state.queue.insert(slot, Waiter { tx, caller });
            if let Some(caller) = caller {
                *state.callers.entry(caller).or_default() += 1;
            }
            let depth = state.queue.len();
            drop(state);
            return Arrival::Wait {
                key,
                slot,
                rx,
                depth,
                expected,
            };
        }
    }

    /// The expected wait of a request with `ahead` requests before it: the rest of a
    /// server-given delay or of the health view's reopening time, then one round of
    /// calls per slow-start step needed to reach it. `None` when unknown.
    fn expected_wait(
        &self,
        key: &Key,
        state: &KeyState,
        now: Instant,
        ahead: usize,
    ) -> Option<Duration> {
        let mut wait = state
            .blocked_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        if state.health_blocked || !self.healthy(&key.name) {
            let hint = self.config.reopen_hint.as_ref()?;
            wait = wait.max(hint(&key.name)?);
        }
        let Some(mut limit) = state.limit else {
            return Some(wait);
        };
        let mut covered = u64::from(limit.saturating_sub(state.in_flight));
        let mut rounds = 0u32;
        while covered <= ahead as u64 && rounds < 32 {
            limit = limit.saturating_mul(2).min(self.recovery_limit.max(1));
            covered += u64::from(limit);
            rounds += 1;
        }
        // A round ends when its calls answer, or survive `early_ack`.
        let round = match (state.latency, self.config.early_ack) {
            (Some(latency), Some(ack)) => latency.min(ack),
            (latency, ack) => latency.or(ack).unwrap_or_default(),
        };
        Some(wait + round * rounds)
    }

    /// When a waiter of `key` should look again (a delay ends, the health view may
    /// have changed), if no completion will wake it.
    pub(crate) fn wake_at(&self, key: &Key, now: Instant) -> Option<Instant> {
        let state = lock(&key.state);
        match state.blocked_until {
            Some(t) if t > now => Some(t),
            _ if state.health_blocked => {
                let jitter = 0.5 + self.config.rng.f64();
                Some(now + self.config.poll_interval.mul_f64(jitter))
            }
            _ => None,
        }
    }

    /// Admits what can be admitted of `key` now.
    pub(crate) fn poke(self: &Arc<Self>, key: &Arc<Key>) {
        let now = Instant::now();
        let mut state = lock(&key.state);
        self.dispatch(key, &mut state, now);
        self.forget_if_clean(key, &mut state, now);
    }

    /// Takes a waiter out of the queue (it hung up, or its wait expired); `false`
    /// when it was already admitted or shed.
    pub(crate) fn leave(self: &Arc<Self>, key: &Arc<Key>, slot: Slot) -> bool {
        let now = Instant::now();
        let mut state = lock(&key.state);
        let Some(waiter) = state.queue.remove(&slot) else {
            return false;
        };
        leave_caller(&mut state, waiter.caller);
        self.forget_if_clean(key, &mut state, now);
        true
    }

    /// A call ends; `in_flight`: the epoch it was admitted in, while it still counts
    /// in flight (not yet past `early_ack`).
    fn finish(self: &Arc<Self>, key: &Arc<Key>, in_flight: Option<u64>) {
        let now = Instant::now();
        let mut state = lock(&key.state);
        if in_flight.is_some_and(|epoch| epoch >= state.held_from) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        self.dispatch(key, &mut state, now);
        self.forget_if_clean(key, &mut state, now);
    }

    /// Learns from the outcome of a call for `key` (with its permit, when it had
    /// one); returns the admission change to emit.
    pub(crate) fn observe(
        self: &Arc<Self>,
        name: &Arc<str>,
        outcome: &Outcome,
        permit: Option<&Permit>,
    ) -> Option<QueueEvent> {
        let now = Instant::now();
        let kind = outcome.kind();
        let unavailable = matches!(
            kind,
            OutcomeKind::Overloaded | OutcomeKind::RateLimited | OutcomeKind::Rejected
        );
        let delay = outcome.server_delay().filter(|d| !d.is_zero());
        let key = match permit {
            Some(permit) => permit.key.clone(),
            // Only an answer with a server delay starts tracking a key.
            None if unavailable && delay.is_some() => self.get_or_insert(name),
            None => self.get(name)?,
        };
        let mut state = lock(&key.state);
        if state.removed {
            return None;
        }
        let mut change = None;
        if let Some(permit) = permit {
            let took = now.saturating_duration_since(permit.started);
            state.latency = Some(match state.latency {
                Some(avg) => avg.mul_f64(0.8) + took.mul_f64(0.2),
                None => took,
            });
        }
        if unavailable {
            if let Some(delay) = delay {
                let hold = self.config.probe_after.map_or(delay, |p| delay.min(p));
                let until = now + hold;
                state.blocked_until = Some(state.blocked_until.map_or(until, |t| t.max(until)));
            }
            match state.limit {
                None if delay.is_some() => {
                    begin_hold(&mut state);
                    change = Some((Some(1), "unavailable"));
                }
                None => {}
                // A refusal without a delay (a breaker's probes are busy) says
                // nothing of the capacity.
                Some(_) if kind == OutcomeKind::Rejected && delay.is_none() => {}
                // Once per round: only a call admitted since the last halving halves
                // again (an untracked one always may).
                Some(limit) if permit.is_none_or(|p| p.epoch == state.epoch) => {
                    if delay.is_none() && kind != OutcomeKind::Rejected {
                        // An overload without a delay during the hold (a failed probe,
                        // or a round that met the overload): the next call waits
                        // `probe_after` as after a delay, instead of going the moment
                        // this one's place is free.
                        if let Some(after) = self.config.probe_after {
                            let until = now + after;
                            state.blocked_until =
                                Some(state.blocked_until.map_or(until, |t| t.max(until)));
                        }
                    }
                    let halved = (limit / 2).max(1);
                    // A failed probe says the key is still down, not how much it can
                    // take: slow start again from one.
                    if limit > 1 {
                        state.ssthresh = halved;
                    }
                    state.limit = Some(halved);
                    state.acked = 0;
                    state.epoch += 1;
                    if halved != limit {
                        change = Some((Some(halved), "overloaded"));
                    }
                }
                Some(_) => {}
            }
        } else if kind == OutcomeKind::Success
            && permit.is_some_and(|p| !p.acked && p.epoch == state.epoch)
        {
            // Only a call admitted in this round is slow start's evidence: one sent
            // before the hold began was accepted before the overload, and its answer
            // says nothing of the capacity now.
            change = self.grow(&mut state);
        }
        self.dispatch(&key, &mut state, now);
        if permit.is_none() {
            self.forget_if_clean(&key, &mut state, now);
        }
        drop(state);
        change.map(|(limit, reason)| QueueEvent::AdmissionChanged {
            key: key.name.clone(),
            limit,
            reason,
        })
    }

    /// One more success for slow start: one more in flight below the threshold
    /// (doubling each round), one more per round above it; back to normal at the
    /// recovery limit or once the backlog is gone.
    fn grow(&self, state: &mut KeyState) -> Option<(Option<u32>, &'static str)> {
        let limit = state.limit?;
        let grown = if limit < state.ssthresh {
            limit + 1
        } else {
            state.acked += 1;
            if state.acked >= limit {
                state.acked = 0;
                limit + 1
            } else {
                limit
            }
        };
        // Back to normal at the recovery limit, or once nobody waits: slow start is
        // there to release a backlog gently, and with none left the limit only
        // throttles requests that arrive at their own pace.
        if grown >= self.recovery_limit || state.queue.is_empty() {
            state.limit = None;
            state.ssthresh = u32::MAX;
            return Some((None, "recovered"));
        }
        state.limit = Some(grown);
        None
    }

    /// An admitted call still in flight after `early_ack`: counted as a success for
    /// slow start, once, and no longer in flight for admission.
    pub(crate) fn survived(self: &Arc<Self>, permit: &mut Permit) -> Option<QueueEvent> {
        let now = Instant::now();
        let key = permit.key.clone();
        let mut state = lock(&key.state);
        if state.limit.is_none() || permit.epoch != state.epoch || permit.acked {
            return None;
        }
        permit.acked = true;
        // Past the moment overloads are answered: its place goes to the next one.
        state.in_flight = state.in_flight.saturating_sub(1);
        let change = self.grow(&mut state);
        self.dispatch(&key, &mut state, now);
        drop(state);
        change.map(|(limit, reason)| QueueEvent::AdmissionChanged {
            key: key.name.clone(),
            limit,
            reason,
        })
    }

    /// Sheds every waiting request; requests that would wait from now on are shed
    /// at once.
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        let keys: Vec<Arc<Key>> = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for key in keys {
            let mut state = lock(&key.state);
            let waiters = std::mem::take(&mut state.queue);
            state.callers.clear();
            drop(state);
            for (_, waiter) in waiters {
                let _ = waiter.tx.send(Ticket::Shed(ShedReason::Shutdown));
            }
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The number of requests waiting for `key`.
    pub(crate) fn depth(&self, key: &str) -> usize {
        self.get(key).map_or(0, |k| lock(&k.state).queue.len())
    }

    /// Every tracked key with its depth and limit.
    pub(crate) fn keys(&self) -> Vec<(Arc<str>, usize, Option<u32>)> {
        let keys: Vec<Arc<Key>> = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out: Vec<_> = keys
            .iter()
            .map(|k| {
                let state = lock(&k.state);
                (k.name.clone(), state.queue.len(), state.limit)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The admission limit of `key`: `None` when it is not limited.
    pub(crate) fn limit(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|k| lock(&k.state).limit)
    }

    /// The expected wait of a new normal-priority request for `key`.
    pub(crate) fn expected(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        match self.get(key) {
            Some(k) => {
                let state = lock(&k.state);
                let ahead = state.queue.len();
                self.expected_wait(&k, &state, now, ahead)
            }
            None if self.healthy(key) => Some(Duration::ZERO),
            None => self.config.reopen_hint.as_ref().and_then(|hint| hint(key)),
        }
    }

    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(event);
    }
}

/// The key becomes unavailable while nothing limited it: one probe first. The calls
/// already in flight were sent before the hold and no longer count against admission:
/// slow start did not admit them, and waiting for them (LLM answers take seconds)
/// would keep the probe back long after the key recovered.
fn begin_hold(state: &mut KeyState) {
    state.limit = Some(1);
    state.ssthresh = u32::MAX;
    state.acked = 0;
    state.epoch += 1;
    state.held_from = state.epoch;
    state.in_flight = 0;
}

fn leave_caller(state: &mut KeyState, caller: Option<Fingerprint>) {
    if let Some(caller) = caller {
        if let Some(count) = state.callers.get_mut(&caller) {
            *count -= 1;
            if *count == 0 {
                state.callers.remove(&caller);
            }
        }
    }
}
