//! What trips a breaker, how long it stays open, and how it is keyed.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    classify::Outcome,
    error::InvalidConfig,
    event::{Events, Listener},
    rng::SharedRng,
};
use http::request::Parts;

use crate::store::BreakerStore;

/// A user's [`failure_when`](BreakerConfig::failure_when).
pub(crate) type IsFailure = Arc<dyn Fn(&Outcome) -> bool + Send + Sync>;

/// When a closed breaker opens: after so many failures in a row
/// ([`consecutive`](Self::consecutive)), or at a failure rate over a window of calls
/// ([`failure_rate`](Self::failure_rate)).
///
/// Made only by those constructors, which refuse nonsense settings: a policy in hand
/// is always a valid one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePolicy(pub(crate) Policy);

/// The policies, private so that [`FailurePolicy`]'s constructors cannot be bypassed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Policy {
    /// After this many failures in a row; a success resets the count.
    ConsecutiveFailures(u32),
    /// When the share of failures among the calls in the window reaches `threshold`,
    /// once the window holds at least `minimum_calls` calls.
    FailureRate {
        /// The share of failures that trips the breaker, in `(0, 1]`.
        threshold: f64,
        /// Which calls count.
        window: Window,
        /// How many calls the window must hold before the breaker may trip.
        minimum_calls: u32,
    },
}

impl FailurePolicy {
    /// Opens after `failures` failures in a row. Fails when `failures` is zero.
    pub fn consecutive(failures: u32) -> Result<Self, InvalidConfig> {
        if failures == 0 {
            return Err(InvalidConfig::new(
                "circuit breaker",
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        Ok(FailurePolicy(Policy::ConsecutiveFailures(failures)))
    }

    /// Opens when `threshold` of the calls in `window` failed, once it holds at least
    /// `minimum_calls`.
    ///
    /// Fails unless `threshold` is in `(0, 1]`, `minimum_calls` is at least 1, and, for
    /// a count window, no larger than the window and the window at least 1 call; a time
    /// window must be at least 10 ms long.
    pub fn failure_rate(
        threshold: f64,
        window: Window,
        minimum_calls: u32,
    ) -> Result<Self, InvalidConfig> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(InvalidConfig::new(
                "circuit breaker",
                "failure_rate.threshold",
                format!("must be in (0, 1], not {threshold}"),
            ));
        }
        if minimum_calls == 0 {
            return Err(InvalidConfig::new(
                "circuit breaker",
                "failure_rate.minimum_calls",
                "must be at least 1",
            ));
        }
        match window {
            Window::Count(0) => {
                return Err(InvalidConfig::new(
                    "circuit breaker",
                    "failure_rate.window",
                    "a count window must hold at least 1 call",
                ))
            }
            Window::Count(n) if minimum_calls > n => {
                return Err(InvalidConfig::new(
                    "circuit breaker",
                    "failure_rate.minimum_calls",
                    format!("{minimum_calls} can never be reached in a window of {n} calls"),
                ))
            }
            Window::Time(d) if d < Duration::from_millis(10) => {
                return Err(InvalidConfig::new(
                    "circuit breaker",
                    "failure_rate.window",
                    format!("a time window must be at least 10ms, not {d:?}"),
                ))
            }
            _ => {}
        }
        Ok(FailurePolicy(Policy::FailureRate {
            threshold,
            window,
            minimum_calls,
        }))
    }

    /// The number of failures in a row that trips the breaker, for a
    /// [`consecutive`](Self::consecutive) policy.
    pub fn consecutive_failures(&self) -> Option<u32> {
        match self.0 {
            Policy::ConsecutiveFailures(n) => Some(n),
            Policy::FailureRate { .. } => None,
        }
    }

    /// The threshold, window and minimum number of calls of a
    /// [`failure_rate`](Self::failure_rate) policy.
    pub fn rate(&self) -> Option<(f64, Window, u32)> {
        match self.0 {
            Policy::ConsecutiveFailures(_) => None,
            Policy::FailureRate {
                threshold,
                window,
                minimum_calls,
            } => Some((threshold, window, minimum_calls)),
        }
    }

    /// Whether the policy counts the calls of a stretch of time.
    pub(crate) fn is_timed(&self) -> bool {
        matches!(
            self.0,
            Policy::FailureRate {
                window: Window::Time(_),
                ..
            }
        )
    }
}

/// The calls a failure-rate policy looks at.
///
/// Successes are counted per thread (in a few cache-padded stripes of each key, so that
/// threads calling one key do not contend on one counter), failures on the key; a
/// failure reads the sum of the stripes when it decides. One call at a time, the
/// window is exact. Calls that finish at the same moment on other threads may not be
/// in that sum yet: the window a failure decides on may then miss, at most, the
/// successes still being counted on other threads (a "last 100 calls" of 98, say),
/// which moves a trip by a call or two, never onto a rate that was not reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last stretch of time. Kept in ten buckets: a call is forgotten
    /// between nine tenths of the window and the whole window after it was made.
    Time(Duration),
}

/// How long an open breaker refuses requests before it lets probes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenDuration {
    /// Always the same.
    Fixed(Duration),
    /// An open time that grows on repeated trips; made by
    /// [`OpenDuration::growing`], which checks its bounds.
    Growing(GrowingOpen),
}

/// The bounds of [`OpenDuration::Growing`]: `base` on the first trip, doubling on each
/// trip that follows without the breaker closing in between, up to `max`; each drawn
/// between half and all of that, so that clients do not probe together.
///
/// Its fields are private: make it with [`OpenDuration::growing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowingOpen {
    base: Duration,
    max: Duration,
}

impl GrowingOpen {
    /// The first open time.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest open time.
    pub fn max(&self) -> Duration {
        self.max
    }
}

impl OpenDuration {
    /// An open time that grows on repeated trips. Fails when `base` is zero or above
    /// `max`.
    pub fn growing(base: Duration, max: Duration) -> Result<Self, InvalidConfig> {
        if base.is_zero() || base > max {
            return Err(InvalidConfig::new(
                "circuit breaker",
                "open_duration",
                format!("base ({base:?}) must be above zero and at most max ({max:?})"),
            ));
        }
        Ok(OpenDuration::Growing(GrowingOpen { base, max }))
    }

    /// The open time after `trips` trips in a row (from 1), given a draw from `[0, 1)`.
    pub(crate) fn for_trip(&self, trips: u32, unit: f64) -> Duration {
        match *self {
            OpenDuration::Fixed(d) => d,
            OpenDuration::Growing(GrowingOpen { base, max }) => {
                let exponent = trips.saturating_sub(1).min(32);
                let ceiling = base
                    .checked_mul(1u32 << exponent.min(31))
                    .map_or(max, |d| d.min(max));
                ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
            }
        }
    }
}

/// What the layer does with a request its breaker refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOpen {
    /// Fail with a [`CircuitOpen`](crate::CircuitOpen) error (the default).
    #[default]
    Error,
    /// Answer `503 Service Unavailable` with `retry-after` and an overload error body
    /// in the shape of the API the path belongs to (OpenAI's for
    /// `/v1/chat/completions` and `/v1/responses`, Anthropic's otherwise; see
    /// [`Api::error_body`](brownout_core::provider::Api::error_body)), for servers that
    /// want a response rather than an error. The response carries the
    /// [`CircuitOpen`](crate::CircuitOpen) in its extensions and records a
    /// [`Rejected`](brownout_core::OutcomeKind::Rejected) outcome, so that the layers
    /// further out read it as a refusal, not as the upstream's overload.
    Respond,
}

type HeadKey = dyn Fn(&Parts) -> String + Send + Sync;
type BodyKey = dyn Fn(&Parts, &[u8]) -> String + Send + Sync;

/// How requests are grouped into breakers.
#[derive(Clone)]
pub(crate) enum Keying {
    ModelOrHost,
    Host,
    Head(Arc<HeadKey>),
    Body(Arc<BodyKey>),
}

impl fmt::Debug for Keying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Keying::ModelOrHost => "ModelOrHost",
            Keying::Host => "Host",
            Keying::Head(_) => "Head(..)",
            Keying::Body(_) => "Body(..)",
        })
    }
}

/// The circuit breaker layer's settings. Every setter takes and returns `self`.
///
/// | setting | default |
/// |---|---|
/// | [`policy`](Self::policy) | failure rate of 50 % over the last 20 calls, at least 10 calls |
/// | [`open_duration`](Self::open_duration) | 30 s, fixed |
/// | [`half_open_probes`](Self::half_open_probes) | 1 probe at a time |
/// | [`half_open_successes`](Self::half_open_successes) | 1 success closes it |
/// | [`slow_call`](Self::slow_call) | off |
/// | [`max_server_delay`](Self::max_server_delay) | 10 min |
/// | keys | the JSON body's `model`, else the host ([`key_by_model_or_host`](Self::key_by_model_or_host)) |
/// | [`max_keys`](Self::max_keys) | 1,024 |
/// | [`idle_timeout`](Self::idle_timeout) | 10 min |
/// | [`on_open`](Self::on_open) | [`OnOpen::Error`] |
/// | what fails ([`failure_when`](Self::failure_when)) | [`OutcomeKind::is_upstream_failure`](brownout_core::OutcomeKind::is_upstream_failure) |
/// | [`store`](Self::store) | a [`LocalStore`](crate::LocalStore) of this config's settings |
///
/// Two things are not set here, because they are one setting for the whole stack:
/// how much of a request body is read to find its `model` is the stack's
/// [`BodyLimits`](brownout_core::body::BodyLimits) (4 MiB by default), and what a
/// result means is decided by brownout-core's
/// [`DefaultClassifier`](brownout_core::classify::DefaultClassifier), or by your own
/// given to a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the HTTP
/// client.
#[derive(Clone)]
pub struct BreakerConfig {
    pub(crate) policy: FailurePolicy,
    pub(crate) open_duration: OpenDuration,
    pub(crate) half_open_probes: u32,
    pub(crate) half_open_successes: u32,
    pub(crate) slow_call: Option<Duration>,
    pub(crate) max_server_delay: Duration,
    pub(crate) keying: Keying,
    pub(crate) max_keys: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) on_open: OnOpen,
    pub(crate) store: Option<Arc<dyn BreakerStore>>,
    /// `None` for the default, [`OutcomeKind::is_upstream_failure`](brownout_core::OutcomeKind::is_upstream_failure).
    pub(crate) is_failure: Option<IsFailure>,
    pub(crate) events: Events,
    pub(crate) rng: SharedRng,
}

impl BreakerConfig {
    /// The defaults in the table above.
    pub fn new() -> Self {
        BreakerConfig {
            policy: FailurePolicy(Policy::FailureRate {
                threshold: 0.5,
                window: Window::Count(20),
                minimum_calls: 10,
            }),
            open_duration: OpenDuration::Fixed(Duration::from_secs(30)),
            half_open_probes: 1,
            half_open_successes: 1,
            slow_call: None,
            max_server_delay: Duration::from_secs(600),
            keying: Keying::ModelOrHost,
            max_keys: 1024,
            idle_timeout: Duration::from_secs(600),
            on_open: OnOpen::Error,
            store: None,
            is_failure: None,
            events: Events::new(),
            rng: SharedRng::new(),
        }
    }

    /// When a closed breaker opens.
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long an open breaker refuses requests. A failure whose server-given delay
    /// (`retry-after`…) is longer keeps the breaker open that long instead, up to
    /// [`max_server_delay`](Self::max_server_delay).
    pub fn open_duration(mut self, duration: OpenDuration) -> Self {
        self.open_duration = duration;
        self
    }

    /// How many probes a half-open breaker lets through at once (at least 1); the
    /// others are refused.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes.max(1);
        self
    }

    /// How many probes must succeed to close the breaker (at least 1). One failed probe
    /// opens it again.
    pub fn half_open_successes(mut self, successes: u32) -> Self {
        self.half_open_successes = successes.max(1);
        self
    }

    /// Counts a call slower than `threshold` as a failure, whatever its outcome: a
    /// provider that answers in a minute is as bad as one that fails.
    pub fn slow_call(mut self, threshold: Duration) -> Self {
        self.slow_call = Some(threshold);
        self
    }

    /// The longest server-given delay the breaker honours as an open time.
    pub fn max_server_delay(mut self, delay: Duration) -> Self {
        self.max_server_delay = delay;
        self
    }

    /// One breaker per model: the top-level `model` of a JSON body, else the request's
    /// host, else `"default"`. The default.
    ///
    /// The model comes from the request's
    /// [`RequestFacts`](brownout_core::RequestFacts), read once for the whole stack:
    /// the body is buffered under the stack's
    /// [`BodyLimits`](brownout_core::body::BodyLimits) (unless a layer further out
    /// already did) and sent on whole. A body over the limit is sent on streamed,
    /// keyed by the `model` in the bytes read ahead of the rest, if any.
    pub fn key_by_model_or_host(mut self) -> Self {
        self.keying = Keying::ModelOrHost;
        self
    }

    /// One breaker per host (`"default"` for requests without one); the body is not
    /// read.
    pub fn key_by_host(mut self) -> Self {
        self.keying = Keying::Host;
        self
    }

    /// Keys from the request head (method, URI, headers, extensions).
    ///
    /// Keys appear in events and logs: never key on a credential as it is.
    pub fn key_by(mut self, key: impl Fn(&Parts) -> String + Send + Sync + 'static) -> Self {
        self.keying = Keying::Head(Arc::new(key));
        self
    }

    /// Keys from the request head and the body's bytes: the whole body when it is
    /// within the stack's [`BodyLimits`](brownout_core::body::BodyLimits), else the
    /// bytes read ahead of the rest.
    pub fn key_by_body(
        mut self,
        key: impl Fn(&Parts, &[u8]) -> String + Send + Sync + 'static,
    ) -> Self {
        self.keying = Keying::Body(Arc::new(key));
        self
    }

    /// How many keys are tracked at most. When a new key would pass the bound, idle
    /// keys are dropped first, then the least recently used. At least 1.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// How long a key may go unused before it may be dropped.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// What the layer does with a refused request.
    pub fn on_open(mut self, on_open: OnOpen) -> Self {
        self.on_open = on_open;
        self
    }

    /// Decides which outcomes count against the breaker. The default is
    /// [`OutcomeKind::is_upstream_failure`](brownout_core::OutcomeKind::is_upstream_failure):
    /// rate limits, overloads, server errors (an invalid status such as 641 included),
    /// timeouts and connection failures. Outcomes for which it returns `false` count as
    /// successes, except client errors (the caller's broken body included) and
    /// rejections by another breaker, which are never counted either way.
    pub fn failure_when(
        mut self,
        is_failure: impl Fn(&Outcome) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.is_failure = Some(Arc::new(is_failure));
        self
    }

    /// Keeps the breakers in `store` instead of a [`LocalStore`](crate::LocalStore) of
    /// this config's own: a store shared by several replicas, or one that wraps a
    /// `LocalStore` to watch it. See [`BreakerStore`].
    ///
    /// The store holds the breakers' state machine, so [`policy`](Self::policy),
    /// [`open_duration`](Self::open_duration), the half-open settings,
    /// [`max_server_delay`](Self::max_server_delay), [`max_keys`](Self::max_keys) and
    /// [`idle_timeout`](Self::idle_timeout) are the store's own (a
    /// `LocalStore::new(&config)` takes them from the config it is given); the layer
    /// keeps the keys, what counts as a failure, slow calls, the refusal and the
    /// events. Clones of this config share the store.
    pub fn store(mut self, store: impl BreakerStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Where state changes and refusals go besides `tracing`.
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }

    /// Fixes the seed of the open time's jitter, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SharedRng::with_seed(seed);
        self
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig::new()
    }
}

impl fmt::Debug for BreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerConfig")
            .field("policy", &self.policy)
            .field("open_duration", &self.open_duration)
            .field("half_open_probes", &self.half_open_probes)
            .field("half_open_successes", &self.half_open_successes)
            .field("slow_call", &self.slow_call)
            .field("max_server_delay", &self.max_server_delay)
            .field("keying", &self.keying)
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("on_open", &self.on_open)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
