//! One breaker's state: atomics on the hot path, a per-key lock for transitions.
//!
//! A call in the closed state touches a few atomics of its own key and takes no lock.
//! State changes (rare) take the key's own mutex, so that two calls cannot both trip
//! or both close the breaker. Outcomes are counted without a lock: under heavy
//! concurrency a decision may see a count that misses the few calls still being
//! recorded, which changes when a breaker trips by a call or two, never whether.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use brownout_core::rng::SharedRng;
use tokio::time::Instant;

use crate::{
    config::{FailurePolicy, OpenDuration, Policy, Window},
    event::{CircuitState, TransitionReason},
};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const FORCED_OPEN: u8 = 3;
const FORCED_CLOSED: u8 = 4;

fn state_of(code: u8) -> CircuitState {
    match code {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        FORCED_OPEN => CircuitState::ForcedOpen,
        _ => CircuitState::ForcedClosed,
    }
}

/// The settings every key's breaker shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) policy: FailurePolicy,
    pub(crate) open_duration: OpenDuration,
    pub(crate) probes: u32,
    pub(crate) successes: u32,
    pub(crate) max_server_delay: Duration,
    pub(crate) rng: SharedRng,
    /// Times are kept as nanoseconds since this instant, so that they fit atomics.
    pub(crate) epoch: Instant,
}

impl Settings {
    /// The breaker settings of `config`, with times counted from now.
    pub(crate) fn of(config: &crate::BreakerConfig) -> Self {
        Settings {
            policy: config.policy,
            open_duration: config.open_duration,
            probes: config.half_open_probes,
            successes: config.half_open_successes,
            max_server_delay: config.max_server_delay,
            rng: config.rng.clone(),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A state change, for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
    /// Why.
    pub reason: TransitionReason,
}

/// Leave to send one request, given by [`BreakerEntry::acquire`](crate::BreakerEntry::acquire)
/// and handed back with the call's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    generation: u64,
    probe: bool,
}

impl Permit {
    /// A permit issued in the state numbered `generation` (a store's version of the
    /// state: a verdict for an older generation is not counted); `probe` when it is one
    /// of a half-open breaker's probes.
    pub fn new(generation: u64, probe: bool) -> Self {
        Permit { generation, probe }
    }

    /// The state's version the permit was issued in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether it is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Whether a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It may: send it, then record its verdict with the permit.
    Admitted(Permit),
    /// It may not.
    Rejected {
        /// When a request may be admitted again, if known.
        retry_after: Option<Duration>,
    },
}

/// What a call's outcome means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It counts as a success.
    Success,
    /// It counts as a failure; the server may have asked for a delay.
    Failure {
        /// The server-given delay: an opening breaker stays open at least this long.
        server_delay: Option<Duration>,
    },
    /// Neither (a client error, a refusal by another breaker, a cancelled call): the
    /// call is not counted and its permit is given back.
    Ignored,
}

/// A key's state and counts, as the handle reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The key.
    pub key: Arc<str>,
    /// The state.
    pub state: CircuitState,
    /// Failures counted towards the policy: in a row, or in the window.
    pub failures: u32,
    /// Calls in the window (for a consecutive-failures policy, the calls since the last
    /// failure streak began).
    pub calls: u32,
    /// How long it stays open, when open.
    pub open_for: Option<Duration>,
    /// Trips since it last closed.
    pub trips: u32,
    /// Calls counted since the key was created.
    pub total_calls: u64,
    /// Failures counted since the key was created.
    pub total_failures: u64,
    /// Requests refused since the key was created.
    pub total_rejected: u64,
}

impl Snapshot {
    /// A snapshot of `key` in `state` with every count at zero and no open time: for a
    /// [`BreakerStore`](crate::BreakerStore) of your own, which sets the public fields
    /// it knows.
    pub fn new(key: Arc<str>, state: CircuitState) -> Self {
        Snapshot {
            key,
            state,
            failures: 0,
            calls: 0,
            open_for: None,
            trips: 0,
            total_calls: 0,
            total_failures: 0,
            total_rejected: 0,
        }
    }
}

pub(crate) struct KeyState {
    key: Arc<str>,
    settings: Arc<Settings>,
    state: AtomicU8,
    generation: AtomicU64,
    open_until: AtomicU64,
    /// The latest end of a server-given delay seen on a failure: a trip opens at least
    /// until then.
    server_until: AtomicU64,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
    trips: AtomicU32,
    consecutive: AtomicU32,
    window: Counter,
    last_used: AtomicU64,
    total_calls: AtomicU64,
    total_failures: AtomicU64,
    total_rejected: AtomicU64,
    transition: Mutex<()>,
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState")
            .field("key", &self.key)
            .field("state", &state_of(self.state.load(Relaxed)))
            .finish_non_exhaustive()
    }
}

impl KeyState {
    pub(crate) fn new(key: Arc<str>, settings: Arc<Settings>, now: Instant) -> Self {
        let window = match settings.policy.0 {
            Policy::ConsecutiveFailures(_) => Counter::None,
            Policy::FailureRate { window, .. } => Counter::new(window),
        };
        let last_used = settings.nanos(now);
        KeyState {
            key,
            settings,
            state: AtomicU8::new(CLOSED),
            generation: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            server_until: AtomicU64::new(0),
            probes_in_flight: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            trips: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window,
            last_used: AtomicU64::new(last_used),
            total_calls: AtomicU64::new(0),
            total_failures: AtomicU64::new(0),
            total_rejected: AtomicU64::new(0),
            transition: Mutex::new(()),
        }
    }

    pub(crate) fn key(&self) -> &Arc<str> {
        &self.key
    }

    pub(crate) fn state(&self) -> CircuitState {
        state_of(self.state.load(Acquire))
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Relaxed)
    }

    pub(crate) fn touch(&self, now: Instant) {
        let now = self.settings.nanos(now);
        // Skip the store when it would not change much: keeps the line shared.
        if now.saturating_sub(self.last_used.load(Relaxed)) > 1_000_000 {
            self.last_used.store(now, Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request may go now; the transition when the open time just passed.
    pub(crate) fn acquire(&self, now: Instant) -> (Admission, Option<Transition>) {
        let generation = self.generation.load(Acquire);
        match self.state.load(Acquire) {
            CLOSED | FORCED_CLOSED => (
                Admission::Admitted(Permit {
                    generation,
                    probe: false,
                }),
                None,
            ),
            FORCED_OPEN => (self.reject(None), None),
            OPEN => {
                let now_n = self.settings.nanos(now);
                let until = self.open_until.load(Acquire);
                if now_n < until {
                    return (self.reject(Some(Duration::from_nanos(until - now_n))), None);
                }
                let transition = {
                    let _guard = self.lock();
                    if self.state.load(Acquire) == OPEN && now_n >= self.open_until.load(Acquire) {
                        self.probes_in_flight.store(0, Release);
                        self.probe_successes.store(0, Release);
                        self.generation.fetch_add(1, AcqRel);
                        self.state.store(HALF_OPEN, Release);
                        Some(Transition {
                            from: CircuitState::Open,
                            to: CircuitState::HalfOpen,
                            reason: TransitionReason::OpenElapsed,
                        })
                    } else {
                        None
                    }
                };
                (self.try_probe(now), transition)
            }
            _ => (self.try_probe(now), None),
        }
    }

    fn try_probe(&self, now: Instant) -> Admission {
        let generation = self.generation.load(Acquire);
        match self.state.load(Acquire) {
            HALF_OPEN => {}
            CLOSED | FORCED_CLOSED => {
                return Admission::Admitted(Permit {
                    generation,
                    probe: false,
                })
            }
            OPEN => {
                let now_n = self.settings.nanos(now);
                let until = self.open_until.load(Acquire);
                return self.reject(Some(Duration::from_nanos(until.saturating_sub(now_n))));
            }
            _ => return self.reject(None),
        }
        let admitted = self
            .probes_in_flight
            .fetch_update(AcqRel, Acquire, |n| {
                (n < self.settings.probes).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Admission::Admitted(Permit {
                generation,
                probe: true,
            })
        } else {
            self.reject(None)
        }
    }

    fn reject(&self, retry_after: Option<Duration>) -> Admission {
        self.total_rejected.fetch_add(1, Relaxed);
        Admission::Rejected { retry_after }
    }

    /// Counts a call's verdict; the transition when it changed the state.
    pub(crate) fn record(
        &self,
        permit: Permit,
        verdict: Verdict,
        now: Instant,
    ) -> Option<Transition> {
        let current = self.generation.load(Acquire);
        if permit.generation != current {
            // The state changed while the call was out: its outcome belongs to a state
            // that is gone. A late failure still extends an open time it asked for.
            if let Verdict::Failure {
                server_delay: Some(delay),
            } = verdict
            {
                self.note_server_delay(delay, now);
                if self.state.load(Acquire) == OPEN {
                    let until = self.server_until.load(Acquire);
                    self.open_until.fetch_max(until, AcqRel);
                }
            }
            return None;
        }
        if let Verdict::Failure {
            server_delay: Some(delay),
        } = verdict
        {
            self.note_server_delay(delay, now);
        }
        match self.state.load(Acquire) {
            HALF_OPEN if permit.probe => self.record_probe(permit, verdict, now),
            CLOSED => self.record_closed(permit, verdict, now),
            _ => None,
        }
    }

    fn note_server_delay(&self, delay: Duration, now: Instant) {
        let delay = delay.min(self.settings.max_server_delay);
        let until = self.settings.nanos(now + delay);
        self.server_until.fetch_max(until, AcqRel);
    }

    fn record_probe(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition> {
        let _ = self
            .probes_in_flight
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
        match verdict {
            Verdict::Ignored => None,
            Verdict::Success => {
                self.total_calls.fetch_add(1, Relaxed);
                let successes = self.probe_successes.fetch_add(1, AcqRel) + 1;
                if successes < self.settings.successes {
                    return None;
                }
                let _guard = self.lock();
                if self.generation.load(Acquire) != permit.generation
                    || self.state.load(Acquire) != HALF_OPEN
                {
                    return None;
                }
                self.close(CircuitState::HalfOpen, TransitionReason::ProbesSucceeded)
            }
            Verdict::Failure { .. } => {
                self.total_calls.fetch_add(1, Relaxed);
                self.total_failures.fetch_add(1, Relaxed);
                let _guard = self.lock();
                if self.generation.load(Acquire) != permit.generation
                    || self.state.load(Acquire) != HALF_OPEN
                {
                    return None;
                }
                Some(self.open(CircuitState::HalfOpen, TransitionReason::ProbeFailed, now))
            }
        }
    }

    fn record_closed(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition> {
        let failure = match verdict {
            Verdict::Ignored => return None,
            Verdict::Success => false,
            Verdict::Failure { .. } => true,
        };
        self.total_calls.fetch_add(1, Relaxed);
        let trip = match self.settings.policy.0 {
            Policy::ConsecutiveFailures(limit) => {
                if failure {
                    self.total_failures.fetch_add(1, Relaxed);
                    let streak = self.consecutive.fetch_add(1, AcqRel) + 1;
                    (streak >= limit).then_some(TransitionReason::ConsecutiveFailures(streak))
                } else {
                    if self.consecutive.load(Relaxed) != 0 {
                        self.consecutive.store(0, Release);
                    }
                    None
                }
            }
            Policy::FailureRate {
                threshold,
                minimum_calls,
                ..
            } => {
                let now_n = self.settings.nanos(now);
                self.window.record(failure, now_n);
                if failure {
                    self.total_failures.fetch_add(1, Relaxed);
                    let (failures, calls) = self.window.counts(now_n);
                    let tripped = calls >= minimum_calls
                        && f64::from(failures) >= threshold * f64::from(calls);
                    tripped.then_some(TransitionReason::FailureRate { failures, calls })
                } else {
                    None
                }
            }
        };
        let reason = trip?;
        let _guard = self.lock();
        if self.generation.load(Acquire) != permit.generation || self.state.load(Acquire) != CLOSED
        {
            return None;
        }
        Some(self.open(CircuitState::Closed, reason, now))
    }

    /// Opens the breaker. Called with the transition lock held.
    fn open(&self, from: CircuitState, reason: TransitionReason, now: Instant) -> Transition {
        let trips = self.trips.fetch_add(1, AcqRel) + 1;
        let open_for = self
            .settings
            .open_duration
            .for_trip(trips, self.settings.rng.f64());
        let until = self
            .settings
            .nanos(now + open_for)
            .max(self.server_until.load(Acquire));
        self.open_until.store(until, Release);
        self.reset_counts();
        self.generation.fetch_add(1, AcqRel);
        self.state.store(OPEN, Release);
        Transition {
            from,
            to: CircuitState::Open,
            reason,
        }
    }

    /// Closes the breaker. Called with the transition lock held.
    fn close(&self, from: CircuitState, reason: TransitionReason) -> Option<Transition> {
        self.trips.store(0, Release);
        self.reset_counts();
        self.generation.fetch_add(1, AcqRel);
        self.state.store(CLOSED, Release);
        Some(Transition {
            from,
            to: CircuitState::Closed,
            reason,
        })
    }

    fn reset_counts(&self) {
        self.consecutive.store(0, Release);
        self.window.reset();
        self.probes_in_flight.store(0, Release);
        self.probe_successes.store(0, Release);
    }

    /// Forces a state, or resets to closed with clean counts.
    pub(crate) fn force(&self, to: Force) -> Option<Transition> {
        let _guard = self.lock();
        let from = state_of(self.state.load(Acquire));
        let (code, reason) = match to {
            Force::Open => (FORCED_OPEN, TransitionReason::Forced),
            Force::Closed => (FORCED_CLOSED, TransitionReason::Forced),
            Force::Reset => (CLOSED, TransitionReason::Reset),
        };
        self.trips.store(0, Release);
        self.server_until.store(0, Release);
        self.reset_counts();
        self.generation.fetch_add(1, AcqRel);
        self.state.store(code, Release);
        let to = state_of(code);
        (from != to).then_some(Transition { from, to, reason })
    }

    pub(crate) fn snapshot(&self, now: Instant) -> Snapshot {
        let state = self.state();
        let now_n = self.settings.nanos(now);
        let (failures, calls) = match self.settings.policy.0 {
            Policy::ConsecutiveFailures(_) => {
                let streak = self.consecutive.load(Acquire);
                (streak, streak)
            }
            Policy::FailureRate { .. } => self.window.counts(now_n),
        };
        let open_for = (state == CircuitState::Open)
            .then(|| Duration::from_nanos(self.open_until.load(Acquire).saturating_sub(now_n)));
        Snapshot {
            key: self.key.clone(),
            state,
            failures,
            calls,
            open_for,
            trips: self.trips.load(Acquire),
            total_calls: self.total_calls.load(Relaxed),
            total_failures: self.total_failures.load(Relaxed),
            total_rejected: self.total_rejected.load(Relaxed),
        }
    }

    /// Whether a request would be admitted now, without taking a permit.
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        match self.state.load(Acquire) {
            CLOSED | FORCED_CLOSED => true,
            FORCED_OPEN => false,
            OPEN => self.settings.nanos(now) >= self.open_until.load(Acquire),
            _ => self.probes_in_flight.load(Acquire) < self.settings.probes,
        }
    }
}

/// What an operator can force through the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Refuse everything until reset.
    Open,
    /// Admit everything and count nothing until reset.
    Closed,
    /// Closed, with clean counts.
    Reset,
}

/// The failure-rate window's counts.
enum Counter {
    None,
    /// The last `slots.len()` calls: 1 success, 2 failure, 0 empty.
    Count {
        slots: Box<[AtomicU8]>,
        next: AtomicU64,
        failures: AtomicU32,
    },
    /// Ten buckets of `width` nanoseconds each.
    Time {
        width: u64,
        buckets: Box<[Bucket]>,
    },
}

struct Bucket {
    /// The bucket's number (time / width) plus one; zero when unused.
    epoch: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
}

const TIME_BUCKETS: u64 = 10;

impl Counter {
    fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => Counter::Count {
                slots: (0..n.max(1)).map(|_| AtomicU8::new(0)).collect(),
                next: AtomicU64::new(0),
                failures: AtomicU32::new(0),
            },
            Window::Time(d) => Counter::Time {
                width: (u64::try_from(d.as_nanos()).unwrap_or(u64::MAX) / TIME_BUCKETS).max(1),
                buckets: (0..TIME_BUCKETS)
                    .map(|_| Bucket {
                        epoch: AtomicU64::new(0),
                        calls: AtomicU32::new(0),
                        failures: AtomicU32::new(0),
                    })
                    .collect(),
            },
        }
    }

    fn record(&self, failure: bool, now: u64) {
        match self {
            Counter::None => {}
            Counter::Count {
                slots,
                next,
                failures,
            } => {
                let i = next.fetch_add(1, AcqRel);
                let slot = &slots[(i % slots.len() as u64) as usize];
                let new = if failure { 2 } else { 1 };
                let old = slot.swap(new, AcqRel);
                match (old == 2, failure) {
                    (true, false) => {
                        let _ = failures.fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
                    }
                    (false, true) => {
                        failures.fetch_add(1, AcqRel);
                    }
                    _ => {}
                }
            }
            Counter::Time { width, buckets } => {
                let number = now / width + 1;
                let bucket = &buckets[(number % TIME_BUCKETS) as usize];
                let seen = bucket.epoch.load(Acquire);
                if seen != number
                    && bucket
                        .epoch
                        .compare_exchange(seen, number, AcqRel, Acquire)
                        .is_ok()
                {
                    bucket.calls.store(0, Release);
                    bucket.failures.store(0, Release);
                }
                bucket.calls.fetch_add(1, AcqRel);
                if failure {
                    bucket.failures.fetch_add(1, AcqRel);
                }
            }
        }
    }

    /// (failures, calls) in the window.
    fn counts(&self, now: u64) -> (u32, u32) {
        match self {
            Counter::None => (0, 0),
            Counter::Count {
                slots,
                next,
                failures,
            } => {
                let calls = next.load(Acquire).min(slots.len() as u64) as u32;
                (failures.load(Acquire).min(calls), calls)
            }
            Counter::Time { width, buckets } => {
                let number = now / width + 1;
                buckets
                    .iter()
                    .filter(|b| {
                        let epoch = b.epoch.load(Acquire);
                        epoch != 0 && epoch <= number && number - epoch < TIME_BUCKETS
                    })
                    .fold((0, 0), |(f, c), b| {
                        (f + b.failures.load(Acquire), c + b.calls.load(Acquire))
                    })
            }
        }
    }

    fn reset(&self) {
        match self {
            Counter::None => {}
            Counter::Count {
                slots,
                next,
                failures,
            } => {
                for slot in slots.iter() {
                    slot.store(0, Release);
                }
                next.store(0, Release);
                failures.store(0, Release);
            }
            Counter::Time { buckets, .. } => {
                for bucket in buckets.iter() {
                    bucket.epoch.store(0, Release);
                    bucket.calls.store(0, Release);
                    bucket.failures.store(0, Release);
                }
            }
        }
    }
}
