//! What the retry layer does, configured once and shared by every service it builds.

use std::{fmt, time::Duration};

use brownout_core::{
    event::{Events, Listener},
    rng::SharedRng,
};

use crate::{Backoff, RetryBudget};

/// The retry layer's settings. Every setter takes and returns `self`.
///
/// | setting | default |
/// |---|---|
/// | [`max_attempts`](Self::max_attempts) | 3, the first attempt included |
/// | [`backoff`](Self::backoff) | full jitter, 500 ms doubling to 8 s |
/// | [`max_server_delay`](Self::max_server_delay) | 60 s |
/// | [`deadline`](Self::deadline) | none |
/// | [`attempt_timeout`](Self::attempt_timeout) | none |
/// | [`budget`](Self::budget) | 20 % of the last 10 s of requests, plus 10 retries a second |
///
/// Two things are not set here, because they are one setting for the whole stack:
/// how much of a request body is kept to be sent again is the stack's
/// [`BodyLimits`](brownout_core::body::BodyLimits) (4 MiB by default), and what a
/// result means is decided by brownout-core's
/// [`DefaultClassifier`](brownout_core::classify::DefaultClassifier), or by your own
/// given to a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the HTTP
/// client.
///
/// The budget and the random number generator are shared by everything built from one
/// config (and its clones); give a service its own budget with
/// [`budget`](Self::budget).
#[derive(Clone)]
pub struct RetryConfig {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_server_delay: Duration,
    pub(crate) move_on_overload: bool,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) events: Events,
    pub(crate) rng: SharedRng,
}

impl RetryConfig {
    /// The defaults in the table above.
    pub fn new() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_server_delay: Duration::from_secs(60),
            move_on_overload: false,
            deadline: None,
            attempt_timeout: None,
            budget: Some(RetryBudget::default()),
            events: Events::new(),
            rng: SharedRng::new(),
        }
    }

    /// How many times a request may be sent in all, the first attempt included. `0` is
    /// taken as `1`: a request is always sent at least once.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How long to wait between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest server-given delay (`retry-after`, `retry-after-ms`, reset headers)
    /// the layer will wait. A response asking for more goes back to the caller at once:
    /// a provider that says "come back in ten minutes" is better answered by a fallback
    /// than by a caller left waiting.
    ///
    /// **Wait or move.** Under a model cascade with a queue layer
    /// (`fallback > breaker > queue > retry`), set this to the queue's wait-or-move
    /// limit (`brownout_queue::PreferWait`, 500 ms by default; the gateway's
    /// `[queue] prefer_wait`): a `retry-after` at most that long is slept here, as the
    /// queue would wait it; a longer one is handed back at once, so that the queue
    /// holds the model's next requests and the fallback moves this one to the next
    /// model instead of sleeping, as `brownout_queue::prefer_wait_up_to` decides.
    pub fn max_server_delay(mut self, delay: Duration) -> Self {
        self.max_server_delay = delay;
        self
    }

    /// Whether an overload answer (`529`, or an OpenAI `503`, classified
    /// [`Overloaded`](brownout_core::classify::OutcomeKind::Overloaded)) that names no
    /// server delay is handed back at once ([`GiveUpReason::Overloaded`](crate::GiveUpReason::Overloaded))
    /// rather than retried after a backoff: off by default. Turn it on under a
    /// cascade with the queue's wait-or-move rule (the gateway does, with `[queue]`
    /// on): how long the overload lasts is unknown, so a backoff into it is a wait of
    /// unknown length, and the rule moves on any wait it cannot bound by
    /// `prefer_wait`. Other retryable failures (a reset connection, a `500`, a
    /// timeout, a `retry-after` within [`max_server_delay`](Self::max_server_delay))
    /// are retried as before.
    pub fn move_on_overload(mut self, on: bool) -> Self {
        self.move_on_overload = on;
        self
    }

    /// An overall deadline for the call, from the moment it starts, all attempts and
    /// waits included. No wait is started that would end after it, and an attempt
    /// running when it passes is cut off with a
    /// [`DeadlineExceeded`](brownout_core::error::DeadlineExceeded) error.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// A timeout for each attempt, reading the error body included. An attempt that
    /// outlives it counts as a [`Timeout`](brownout_core::OutcomeKind::Timeout) and may
    /// be retried; the last one ends in an
    /// [`AttemptTimedOut`](brownout_core::error::AttemptTimedOut) error.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The retry budget.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The retry budget, when there is one (for a store built from its settings, as
    /// `brownout_redis::RedisRetryBudget::new` is).
    pub fn retry_budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    /// No retry budget: every retryable failure is retried up to
    /// [`max_attempts`](Self::max_attempts), however many requests are failing.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Where decisions go besides `tracing`: each is an
    /// [`Event`](brownout_core::event::Event) whose data is a [`RetryEvent`](crate::RetryEvent).
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }

    /// Fixes the seed of the jitter's random numbers, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SharedRng::with_seed(seed);
        self
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig::new()
    }
}

impl fmt::Debug for RetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryConfig")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("max_server_delay", &self.max_server_delay)
            .field("move_on_overload", &self.move_on_overload)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}
