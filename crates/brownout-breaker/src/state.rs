//! One breaker's state: atomics on the hot path, a per-key lock for transitions.
//!
//! A successful call in the closed state reads the key's state (a cache line that only
//! transitions write) and adds one to a counter of its own thread's *stripe*: each key
//! keeps its success counts in a few cache-padded stripes, one per thread modulo their
//! number, so that threads calling the same key do not bounce a line between their
//! cores on every call (the `breaker` benchmark's contended group measures it).
//! Failures, probes, rejections and state changes write the key's shared lines; state
//! changes take the key's own mutex, so that two calls cannot both trip or both close
//! the breaker, and a count window's failures take a second, small one.
//!
//! # How exact the counts are
//!
//! A failure decides from the sum of the stripes as it reads them. With one thread the
//! counts are exact. Under concurrency that sum may miss the successes still being
//! added on other threads (at most the calls in flight there), so a failure may be
//! placed that many calls early in a window of the last N calls, and a rate may be
//! read over a window a few calls short: a breaker trips a call or two earlier or
//! later, never on a rate it did not see. Successes never decide anything (they cannot
//! trip a breaker), so they do not read the other stripes.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use crossbeam_utils::CachePadded;

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

/// One key's breaker, shared by the key's [`KeyEntry`]s (one per stripe).
pub(crate) struct KeyState {
    // Read on every call; written only by state changes.
    key: Arc<str>,
    settings: Arc<Settings>,
    state: AtomicU8,
    generation: AtomicU64,
    open_until: AtomicU64,
    /// Set when the store dropped the key, so that a cached entry is not used again.
    evicted: AtomicBool,
    stripes: Box<[CachePadded<Stripe>]>,
    // Written by failures, probes, rejections and state changes: off the line above.
    cold: CachePadded<Cold>,
    /// Stored at most once a millisecond: a line of its own.
    last_used: CachePadded<AtomicU64>,
}

/// The counts one stripe of threads adds to.
#[derive(Default)]
struct Stripe {
    /// Successes counted in the closed state since the key was created.
    successes: AtomicU64,
    /// A time window's successes (their `failures` stay at zero).
    buckets: [Bucket; TIME_BUCKETS as usize],
}

struct Cold {
    /// The latest end of a server-given delay seen on a failure: a trip opens at least
    /// until then.
    server_until: AtomicU64,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
    trips: AtomicU32,
    consecutive: AtomicU32,
    /// Failures counted in the closed state since the key was created.
    closed_failures: AtomicU64,
    /// Probes counted since the key was created.
    probe_calls: AtomicU64,
    total_failures: AtomicU64,
    total_rejected: AtomicU64,
    window: WindowState,
    transition: Mutex<()>,
}

/// The failure-rate window's own state; its successes are in the stripes.
enum WindowState {
    None,
    /// The last `size` calls. Calls are numbered by the count of closed-state calls
    /// (the stripes' successes plus `closed_failures`); `base` is that count when the
    /// window was last emptied, and `failures` holds the numbers of the failures among
    /// the last `size` calls, oldest first.
    Count {
        size: u64,
        base: AtomicU64,
        failures: Mutex<VecDeque<u64>>,
    },
    /// Ten buckets of `width` nanoseconds each (failures; the stripes have the
    /// successes).
    Time {
        width: u64,
        buckets: [Bucket; TIME_BUCKETS as usize],
    },
}

#[derive(Default)]
struct Bucket {
    /// The bucket's number (time / width) plus one; zero when unused.
    epoch: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
}

const TIME_BUCKETS: u64 = 10;

impl Bucket {
    fn add(&self, number: u64, failure: bool) {
        let seen = self.epoch.load(Acquire);
        if seen != number
            && self
                .epoch
                .compare_exchange(seen, number, AcqRel, Acquire)
                .is_ok()
        {
            self.calls.store(0, Release);
            self.failures.store(0, Release);
        }
        self.calls.fetch_add(1, AcqRel);
        if failure {
            self.failures.fetch_add(1, AcqRel);
        }
    }

    /// (failures, calls) when the bucket is within the window ending in bucket `number`.
    fn counts(&self, number: u64) -> (u32, u32) {
        let epoch = self.epoch.load(Acquire);
        if epoch != 0 && epoch <= number && number - epoch < TIME_BUCKETS {
            (self.failures.load(Acquire), self.calls.load(Acquire))
        } else {
            (0, 0)
        }
    }

    fn reset(&self) {
        self.epoch.store(0, Release);
        self.calls.store(0, Release);
        self.failures.store(0, Release);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
    pub(crate) fn new(
        key: Arc<str>,
        settings: Arc<Settings>,
        stripes: usize,
        now: Instant,
    ) -> Self {
        let window = match settings.policy.0 {
            Policy::ConsecutiveFailures(_) => WindowState::None,
            Policy::FailureRate {
                window: Window::Count(n),
                ..
            } => WindowState::Count {
                size: u64::from(n.max(1)),
                base: AtomicU64::new(0),
                failures: Mutex::new(VecDeque::new()),
            },
            Policy::FailureRate {
                window: Window::Time(d),
                ..
            } => WindowState::Time {
                width: (u64::try_from(d.as_nanos()).unwrap_or(u64::MAX) / TIME_BUCKETS).max(1),
                buckets: Default::default(),
            },
        };
        let last_used = settings.nanos(now);
        KeyState {
            key,
            settings,
            state: AtomicU8::new(CLOSED),
            generation: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            stripes: (0..stripes.max(1)).map(|_| Default::default()).collect(),
            cold: CachePadded::new(Cold {
                server_until: AtomicU64::new(0),
                probes_in_flight: AtomicU32::new(0),
                probe_successes: AtomicU32::new(0),
                trips: AtomicU32::new(0),
                consecutive: AtomicU32::new(0),
                closed_failures: AtomicU64::new(0),
                probe_calls: AtomicU64::new(0),
                total_failures: AtomicU64::new(0),
                total_rejected: AtomicU64::new(0),
                window,
                transition: Mutex::new(()),
            }),
            last_used: CachePadded::new(AtomicU64::new(last_used)),
        }
    }

    pub(crate) fn key(&self) -> &Arc<str> {
        &self.key
    }

    pub(crate) fn state(&self) -> CircuitState {
        state_of(self.state.load(Acquire))
    }

    pub(crate) fn stripes(&self) -> usize {
        self.stripes.len()
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Relaxed)
    }

    /// Marks the key as dropped by its store.
    pub(crate) fn evict(&self) {
        self.evicted.store(true, Relaxed);
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

    fn lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.cold.transition)
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
                        self.cold.probes_in_flight.store(0, Release);
                        self.cold.probe_successes.store(0, Release);
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
            .cold
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
        self.cold.total_rejected.fetch_add(1, Relaxed);
        Admission::Rejected { retry_after }
    }

    /// Counts a call's verdict, a success on stripe `stripe`; the transition when it
    /// changed the state.
    pub(crate) fn record(
        &self,
        permit: Permit,
        verdict: Verdict,
        now: Instant,
        stripe: usize,
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
                    let until = self.cold.server_until.load(Acquire);
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
            CLOSED => match verdict {
                Verdict::Ignored => None,
                Verdict::Success => {
                    self.record_success(stripe, now);
                    None
                }
                Verdict::Failure { .. } => self.record_failure(permit, now),
            },
            _ => None,
        }
    }

    fn note_server_delay(&self, delay: Duration, now: Instant) {
        let delay = delay.min(self.settings.max_server_delay);
        let until = self.settings.nanos(now + delay);
        self.cold.server_until.fetch_max(until, AcqRel);
    }

    fn record_probe(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<Transition> {
        let cold = &*self.cold;
        let _ = cold
            .probes_in_flight
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
        match verdict {
            Verdict::Ignored => None,
            Verdict::Success => {
                cold.probe_calls.fetch_add(1, Relaxed);
                let successes = cold.probe_successes.fetch_add(1, AcqRel) + 1;
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
                cold.probe_calls.fetch_add(1, Relaxed);
                cold.total_failures.fetch_add(1, Relaxed);
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

    /// A closed-state success: its own stripe's lines only (the consecutive count's is
    /// read, and written only when a streak ends).
    #[inline]
    fn record_success(&self, stripe: usize, now: Instant) {
        let counts = &self.stripes[stripe % self.stripes.len()];
        counts.successes.fetch_add(1, Relaxed);
        match &self.cold.window {
            WindowState::None => {
                let consecutive = &self.cold.consecutive;
                if consecutive.load(Relaxed) != 0 {
                    consecutive.store(0, Release);
                }
            }
            WindowState::Count { .. } => {}
            WindowState::Time { width, .. } => {
                let number = self.settings.nanos(now) / width + 1;
                counts.buckets[(number % TIME_BUCKETS) as usize].add(number, false);
            }
        }
    }

    fn record_failure(&self, permit: Permit, now: Instant) -> Option<Transition> {
        let cold = &*self.cold;
        cold.total_failures.fetch_add(1, Relaxed);
        let reason = match self.settings.policy.0 {
            Policy::ConsecutiveFailures(limit) => {
                cold.closed_failures.fetch_add(1, Relaxed);
                let streak = cold.consecutive.fetch_add(1, AcqRel) + 1;
                (streak >= limit).then_some(TransitionReason::ConsecutiveFailures(streak))
            }
            Policy::FailureRate {
                threshold,
                minimum_calls,
                ..
            } => {
                let (failures, calls) = match &cold.window {
                    WindowState::Count {
                        size,
                        base,
                        failures,
                    } => {
                        let mut failures = lock(failures);
                        // Numbered under the lock, so that the list stays in order.
                        let number =
                            cold.closed_failures.fetch_add(1, AcqRel) + 1 + self.successes();
                        failures.push_back(number);
                        let oldest = number.saturating_sub(*size);
                        while failures.front().is_some_and(|&n| n <= oldest) {
                            failures.pop_front();
                        }
                        let calls = count(number.saturating_sub(base.load(Acquire)).min(*size));
                        (count(failures.len()).min(calls), calls)
                    }
                    WindowState::Time { width, buckets } => {
                        cold.closed_failures.fetch_add(1, Relaxed);
                        let number = self.settings.nanos(now) / width + 1;
                        buckets[(number % TIME_BUCKETS) as usize].add(number, true);
                        self.time_counts(number)
                    }
                    WindowState::None => (0, 0),
                };
                let tripped =
                    calls >= minimum_calls && f64::from(failures) >= threshold * f64::from(calls);
                tripped.then_some(TransitionReason::FailureRate { failures, calls })
            }
        };
        let reason = reason?;
        let _guard = self.lock();
        if self.generation.load(Acquire) != permit.generation || self.state.load(Acquire) != CLOSED
        {
            return None;
        }
        Some(self.open(CircuitState::Closed, reason, now))
    }

    /// The closed-state successes of every stripe.
    fn successes(&self) -> u64 {
        self.stripes.iter().map(|s| s.successes.load(Acquire)).sum()
    }

    /// (failures, calls) of a time window ending in bucket `number`.
    fn time_counts(&self, number: u64) -> (u32, u32) {
        let WindowState::Time { buckets, .. } = &self.cold.window else {
            return (0, 0);
        };
        buckets
            .iter()
            .chain(self.stripes.iter().flat_map(|s| s.buckets.iter()))
            .map(|b| b.counts(number))
            .fold((0, 0), |(f, c), (bf, bc)| {
                (f.saturating_add(bf), c.saturating_add(bc))
            })
    }

    /// (failures, calls) in the window now.
    fn window_counts(&self, now: Instant) -> (u32, u32) {
        match &self.cold.window {
            WindowState::None => (0, 0),
            WindowState::Count {
                size,
                base,
                failures,
            } => {
                let failures = lock(failures);
                let number = self.cold.closed_failures.load(Acquire) + self.successes();
                let oldest = number.saturating_sub(*size);
                let calls = count(number.saturating_sub(base.load(Acquire)).min(*size));
                let within = failures.iter().rev().take_while(|&&n| n > oldest).count();
                (count(within).min(calls), calls)
            }
            WindowState::Time { width, .. } => {
                self.time_counts(self.settings.nanos(now) / width + 1)
            }
        }
    }

    /// Opens the breaker. Called with the transition lock held.
    fn open(&self, from: CircuitState, reason: TransitionReason, now: Instant) -> Transition {
        let trips = self.cold.trips.fetch_add(1, AcqRel) + 1;
        let open_for = self
            .settings
            .open_duration
            .for_trip(trips, self.settings.rng.f64());
        let until = self
            .settings
            .nanos(now + open_for)
            .max(self.cold.server_until.load(Acquire));
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
        self.cold.trips.store(0, Release);
        self.reset_counts();
        self.generation.fetch_add(1, AcqRel);
        self.state.store(CLOSED, Release);
        Some(Transition {
            from,
            to: CircuitState::Closed,
            reason,
        })
    }

    /// Empties the window. Called with the transition lock held.
    fn reset_counts(&self) {
        let cold = &*self.cold;
        cold.consecutive.store(0, Release);
        match &cold.window {
            WindowState::None => {}
            WindowState::Count { base, failures, .. } => {
                let mut failures = lock(failures);
                failures.clear();
                base.store(
                    cold.closed_failures.load(Acquire) + self.successes(),
                    Release,
                );
            }
            WindowState::Time { buckets, .. } => {
                buckets
                    .iter()
                    .chain(self.stripes.iter().flat_map(|s| s.buckets.iter()))
                    .for_each(Bucket::reset);
            }
        }
        cold.probes_in_flight.store(0, Release);
        cold.probe_successes.store(0, Release);
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
        self.cold.trips.store(0, Release);
        self.cold.server_until.store(0, Release);
        self.reset_counts();
        self.generation.fetch_add(1, AcqRel);
        self.state.store(code, Release);
        let to = state_of(code);
        (from != to).then_some(Transition { from, to, reason })
    }

    pub(crate) fn snapshot(&self, now: Instant) -> Snapshot {
        let state = self.state();
        let now_n = self.settings.nanos(now);
        let cold = &*self.cold;
        let (failures, calls) = match self.settings.policy.0 {
            Policy::ConsecutiveFailures(_) => {
                let streak = cold.consecutive.load(Acquire);
                (streak, streak)
            }
            Policy::FailureRate { .. } => self.window_counts(now),
        };
        let open_for = (state == CircuitState::Open)
            .then(|| Duration::from_nanos(self.open_until.load(Acquire).saturating_sub(now_n)));
        Snapshot {
            key: self.key.clone(),
            state,
            failures,
            calls,
            open_for,
            trips: cold.trips.load(Acquire),
            total_calls: self.successes()
                + cold.closed_failures.load(Relaxed)
                + cold.probe_calls.load(Relaxed),
            total_failures: cold.total_failures.load(Relaxed),
            total_rejected: cold.total_rejected.load(Relaxed),
        }
    }

    /// Whether a request would be admitted now, without taking a permit.
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        match self.state.load(Acquire) {
            CLOSED | FORCED_CLOSED => true,
            FORCED_OPEN => false,
            OPEN => self.settings.nanos(now) >= self.open_until.load(Acquire),
            _ => self.cold.probes_in_flight.load(Acquire) < self.settings.probes,
        }
    }
}

fn count(n: impl TryInto<u32>) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use brownout_core::rng::SharedRng;

    use super::*;
    use crate::{BreakerConfig, FailurePolicy, Window};

    fn key_state(policy: FailurePolicy, stripes: usize) -> KeyState {
        let settings = Settings::of(&BreakerConfig::new().policy(policy));
        KeyState::new("k".into(), Arc::new(settings), stripes, Instant::now())
    }

    fn permit(state: &KeyState, now: Instant) -> Permit {
        match state.acquire(now).0 {
            Admission::Admitted(permit) => permit,
            Admission::Rejected { .. } => panic!("refused while closed"),
        }
    }

    const FAILED: Verdict = Verdict::Failure { server_delay: None };

    /// With one caller at a time, a count window split over stripes counts exactly the
    /// last N calls, whichever stripes they were counted on: checked against a plain
    /// list of the last N outcomes, over a seeded random run.
    #[test]
    fn a_count_window_over_stripes_is_exact_one_call_at_a_time() {
        let (size, minimum) = (20, 10);
        let policy = FailurePolicy::failure_rate(0.6, Window::Count(size), minimum).unwrap();
        let state = key_state(policy, 4);
        let rng = SharedRng::with_seed(7);
        let mut last: VecDeque<bool> = VecDeque::new();
        let now = Instant::now();
        for call in 0..2_000 {
            let failure = rng.f64() < 0.45;
            let stripe = (rng.f64() * 4.0) as usize;
            let permit = permit(&state, now);
            let verdict = if failure { FAILED } else { Verdict::Success };
            let transition = state.record(permit, verdict, now, stripe);
            last.push_back(failure);
            if last.len() > size as usize {
                last.pop_front();
            }
            let failures = last.iter().filter(|&&f| f).count() as u32;
            let calls = last.len() as u32;
            let trips =
                failure && calls >= minimum && f64::from(failures) >= 0.6 * f64::from(calls);
            if trips {
                let transition = transition.expect("the rate was reached");
                assert_eq!(
                    transition.reason,
                    TransitionReason::FailureRate { failures, calls },
                    "call {call}"
                );
                state.force(Force::Reset);
                last.clear();
            } else {
                assert_eq!(transition, None, "call {call}");
                let snapshot = state.snapshot(now);
                assert_eq!(
                    (snapshot.failures, snapshot.calls),
                    (failures, calls),
                    "call {call}"
                );
            }
        }
        assert_eq!(state.snapshot(now).total_calls, 2_000);
    }

    /// A time window's successes are counted per stripe and its failures on the key:
    /// a rate reads both, and both are forgotten as the window moves on.
    #[tokio::test(start_paused = true)]
    async fn a_time_window_over_stripes_counts_every_stripe_and_forgets() {
        let second = Duration::from_secs(1);
        let policy = FailurePolicy::failure_rate(0.5, Window::Time(10 * second), 4).unwrap();
        let state = key_state(policy, 3);
        let now = Instant::now();
        for stripe in 0..3 {
            state.record(permit(&state, now), Verdict::Success, now, stripe);
        }
        let later = now + 2 * second;
        state.record(permit(&state, later), FAILED, later, 0);
        let snapshot = state.snapshot(later);
        assert_eq!((snapshot.failures, snapshot.calls), (1, 4));

        // The successes (at 0 s) are forgotten by 10 s, the failure (at 2 s) not yet.
        let then = now + 10 * second;
        let snapshot = state.snapshot(then);
        assert_eq!((snapshot.failures, snapshot.calls), (1, 1));
        for stripe in [1, 2] {
            state.record(permit(&state, then), Verdict::Success, then, stripe);
        }
        // 2 of 4 failed: the fourth call trips it, from the stripes and the key's own.
        let transition = state.record(permit(&state, then), FAILED, then, 1);
        assert_eq!(
            transition.map(|t| t.reason),
            Some(TransitionReason::FailureRate {
                failures: 2,
                calls: 4
            })
        );
        assert_eq!(state.snapshot(then).total_calls, 7);
    }

    /// Threads counting on their own stripes at once lose no call.
    #[test]
    fn concurrent_successes_on_stripes_all_count() {
        let policy = FailurePolicy::failure_rate(0.5, Window::Count(100), 100).unwrap();
        let state = key_state(policy, 2);
        let now = Instant::now();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let state = &state;
                scope.spawn(move || {
                    for _ in 0..1_000 {
                        state.record(permit(state, now), Verdict::Success, now, thread);
                    }
                });
            }
        });
        let snapshot = state.snapshot(now);
        assert_eq!((snapshot.calls, snapshot.total_calls), (100, 4_000));
        // Once quiet, the window is exact again: 50 failures in the last 100 calls trip it.
        for i in 1..=50 {
            let transition = state.record(permit(&state, now), FAILED, now, 0);
            assert_eq!(transition.is_some(), i == 50);
        }
    }
}
