//! The queue layer's settings.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    error::InvalidConfig,
    event::{Events, Listener},
    health::Health,
    rng::SharedRng,
};
use http::{request::Parts, HeaderName};

use crate::PreferWait;

/// The header the default priority is read from.
pub const PRIORITY_HEADER: HeaderName = HeaderName::from_static("x-brownout-priority");

/// A request's priority class: higher classes are admitted first, FIFO within a class.
///
/// By default read from the [`x-brownout-priority`](PRIORITY_HEADER) header: `high`,
/// `normal`, `low`, or a number from 0 to 255; a request without it, or with another
/// value, is [`NORMAL`](Priority::NORMAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub u8);

impl Priority {
    /// `low`.
    pub const LOW: Priority = Priority(0);
    /// `normal`, the default.
    pub const NORMAL: Priority = Priority(1);
    /// `high`.
    pub const HIGH: Priority = Priority(2);

    /// The priority a header value names, if it names one.
    pub fn parse(value: &[u8]) -> Option<Priority> {
        match value {
            b"low" => Some(Priority::LOW),
            b"normal" => Some(Priority::NORMAL),
            b"high" => Some(Priority::HIGH),
            digits => std::str::from_utf8(digits).ok()?.parse().ok().map(Priority),
        }
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

type PriorityFn = Arc<dyn Fn(&Parts) -> Priority + Send + Sync>;
type HintFn = Arc<dyn Fn(&str) -> Option<Duration> + Send + Sync>;

/// Where a request's priority comes from.
#[derive(Clone)]
pub(crate) enum PriorityFrom {
    Header(HeaderName),
    Fn(PriorityFn),
}

impl PriorityFrom {
    pub(crate) fn of(&self, parts: &Parts) -> Priority {
        match self {
            PriorityFrom::Header(name) => parts
                .headers
                .get(name)
                .and_then(|v| Priority::parse(v.as_bytes()))
                .unwrap_or_default(),
            PriorityFrom::Fn(f) => f(parts),
        }
    }
}

/// What the layer gives back when it sheds a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnShed {
    /// An answer in the provider's shape (the default): Anthropic's `529`
    /// `overloaded_error`, or for OpenAI's APIs a `503`, with `retry-after` when the
    /// wait is known and `x-should-retry: false`, so that SDKs do not retry on top;
    /// the [`Shed`](crate::Shed) rides in its extensions.
    #[default]
    Respond,
    /// A [`Shed`](crate::Shed) error.
    Error,
}

/// The queue layer's settings. Every setter takes and returns `self`.
///
/// | setting | default |
/// |---|---|
/// | [`max_queue`](Self::max_queue) | 64 requests per key |
/// | [`max_wait`](Self::max_wait) | 1 s |
/// | [`caller_share`](Self::caller_share) | half of `max_queue` per credential |
/// | [`deadline`](Self::deadline) | none |
/// | [`recovery_limit`](Self::recovery_limit) | 32 in flight, then no limit |
/// | [`probe_after`](Self::probe_after) | none: held for the whole server-given delay |
/// | [`early_ack`](Self::early_ack) | 120 ms in flight counts as a success for slow start |
/// | [`prefer_wait`](Self::prefer_wait) | wait up to 500 ms ([`PreferWait::default`]) |
/// | [`health`](Self::health) | none: only the answers that pass say a key is unavailable |
/// | [`poll_interval`](Self::poll_interval) | 50 ms, with ±50 % jitter |
/// | priority | the `x-brownout-priority` header |
/// | [`on_shed`](Self::on_shed) | [`OnShed::Respond`] |
#[derive(Clone)]
pub struct QueueConfig {
    pub(crate) max_queue: usize,
    pub(crate) max_wait: Duration,
    pub(crate) caller_share: f64,
    pub(crate) deadline: Option<Duration>,
    pub(crate) recovery_limit: u32,
    pub(crate) probe_after: Option<Duration>,
    pub(crate) early_ack: Option<Duration>,
    pub(crate) prefer_wait: PreferWait,
    pub(crate) health: Option<Arc<dyn Health>>,
    pub(crate) reopen_hint: Option<HintFn>,
    pub(crate) poll_interval: Duration,
    pub(crate) priority: PriorityFrom,
    pub(crate) on_shed: OnShed,
    pub(crate) events: Events,
    pub(crate) rng: SharedRng,
}

impl QueueConfig {
    /// The defaults in the table above.
    pub fn new() -> Self {
        QueueConfig {
            max_queue: 64,
            max_wait: Duration::from_secs(1),
            caller_share: 0.5,
            deadline: None,
            recovery_limit: 32,
            probe_after: None,
            early_ack: Some(Duration::from_millis(120)),
            prefer_wait: PreferWait::default(),
            health: None,
            reopen_hint: None,
            poll_interval: Duration::from_millis(50),
            priority: PriorityFrom::Header(PRIORITY_HEADER),
            on_shed: OnShed::Respond,
            events: Events::new(),
            rng: SharedRng::new(),
        }
    }

    /// How many requests may wait per key; one more is shed with
    /// [`QueueFull`](crate::ShedReason::QueueFull). `0` holds nothing: every request
    /// that would wait is shed at once.
    pub fn max_queue(mut self, requests: usize) -> Self {
        self.max_queue = requests;
        self
    }

    /// The longest a request waits. A request whose expected wait is longer is shed
    /// at once; one still waiting after it is shed then.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The share of a key's queue one caller's credential (its
    /// [`Fingerprint`](brownout_core::request::Fingerprint)) may hold, at least one
    /// request. Requests without a credential are not counted per caller: the queue
    /// cannot tell their callers apart.
    ///
    /// Refused unless `0 < share <= 1`.
    pub fn caller_share(mut self, share: f64) -> Result<Self, InvalidConfig> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(InvalidConfig::new(
                "queue",
                "caller_share",
                format!("must be above 0 and at most 1, not {share}"),
            ));
        }
        self.caller_share = share;
        Ok(self)
    }

    /// The caller's deadline, from the moment the layer is called: a request waits
    /// no longer than leaves it time, and is shed at once when the expected wait is
    /// longer. A [`Deadline`](crate::Deadline) in the request's extensions takes
    /// precedence.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Once a recovering key admits this many requests in flight, it is back to
    /// normal: no limit, requests pass straight through. `0` is taken as `1`.
    pub fn recovery_limit(mut self, in_flight: u32) -> Self {
        self.recovery_limit = in_flight.max(1);
        self
    }

    /// Probes a key held by a server-given delay after at most `after`, instead of
    /// the whole delay: the delay is an upper bound (`retry-after` has whole seconds,
    /// and an overload burst often ends sooner), a probe costs one request, and a
    /// failed one holds the key again. The expected wait is then the time to the next
    /// probe. An overload without a delay during a hold (a failed probe) holds the key
    /// for `after` too, so that the next probe does not go the moment the failed one
    /// answered. Off by default: a key is held for the whole delay the server asked
    /// for.
    pub fn probe_after(mut self, after: Duration) -> Self {
        self.probe_after = Some(after);
        self
    }

    /// A call admitted while a key recovers counts as a success for slow start once it
    /// has been in flight this long without failing: overload and rate-limit answers
    /// come in milliseconds, LLM answers in seconds, so waiting for the whole answer
    /// would hold every waiter behind the probe for a full answer's time. Such a call
    /// no longer holds a place in flight: admission bounds the calls not yet known to
    /// pass. Its answer still counts when it comes: an overload then halves admission.
    /// 120 ms by default.
    pub fn early_ack(mut self, after: Duration) -> Self {
        self.early_ack = Some(after);
        self
    }

    /// Slow start grows only on answers: see [`early_ack`](Self::early_ack).
    pub fn no_early_ack(mut self) -> Self {
        self.early_ack = None;
        self
    }

    /// The wait-or-move rule of the layer's [`QueueHandle`](crate::QueueHandle) as a
    /// [`Health`] view: a fallback given the handle skips a key only when its expected
    /// wait is longer than this.
    pub fn prefer_wait(mut self, policy: PreferWait) -> Self {
        self.prefer_wait = policy;
        self
    }

    /// Another source of whether a key can take requests now: a circuit breaker's
    /// handle (`brownout::breaker::BreakerHandle`), or any `Fn(&str) -> bool`. While it
    /// says no, the key's requests wait; the queue asks again every
    /// [`poll_interval`](Self::poll_interval).
    pub fn health(mut self, health: impl Health) -> Self {
        self.health = Some(Arc::new(health));
        self
    }

    /// How long a key that [`health`](Self::health) says is unavailable stays so, when
    /// known (a breaker's remaining open time): lets the queue shed at once a request
    /// that could not wait that long, and lets the handle's wait-or-move rule wait for a
    /// short one. Without it, the wait of an unavailable key is unknown.
    pub fn reopen_hint(
        mut self,
        hint: impl Fn(&str) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.reopen_hint = Some(Arc::new(hint));
        self
    }

    /// How often waiting requests ask [`health`](Self::health) again, jittered by
    /// ±50 %. `0` is taken as 1 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Reads the priority from `header` instead of `x-brownout-priority`.
    pub fn priority_header(mut self, header: HeaderName) -> Self {
        self.priority = PriorityFrom::Header(header);
        self
    }

    /// Decides the priority with a closure over the request's head.
    pub fn priority_by(
        mut self,
        priority: impl Fn(&Parts) -> Priority + Send + Sync + 'static,
    ) -> Self {
        self.priority = PriorityFrom::Fn(Arc::new(priority));
        self
    }

    /// What a shed request gets back.
    pub fn on_shed(mut self, on_shed: OnShed) -> Self {
        self.on_shed = on_shed;
        self
    }

    /// Where decisions go besides `tracing`: each is an
    /// [`Event`](brownout_core::event::Event) whose data is a
    /// [`QueueEvent`](crate::QueueEvent).
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }

    /// Fixes the seed of the poll jitter, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SharedRng::with_seed(seed);
        self
    }

    /// How many requests of one caller a key's queue holds at most.
    pub(crate) fn per_caller(&self) -> usize {
        ((self.max_queue as f64 * self.caller_share).floor() as usize).max(1)
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::new()
    }
}

impl fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConfig")
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .field("caller_share", &self.caller_share)
            .field("deadline", &self.deadline)
            .field("recovery_limit", &self.recovery_limit)
            .field("probe_after", &self.probe_after)
            .field("early_ack", &self.early_ack)
            .field("prefer_wait", &self.prefer_wait)
            .field("health", &self.health.is_some())
            .field("poll_interval", &self.poll_interval)
            .field("on_shed", &self.on_shed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_names_and_numbers() {
        assert_eq!(Priority::parse(b"high"), Some(Priority::HIGH));
        assert_eq!(Priority::parse(b"low"), Some(Priority::LOW));
        assert_eq!(Priority::parse(b"7"), Some(Priority(7)));
        assert_eq!(Priority::parse(b"300"), None);
        assert_eq!(Priority::parse(b"\xff"), None);
    }

    #[test]
    fn a_share_outside_0_1_is_refused_and_the_per_caller_bound_is_at_least_one() {
        for bad in [0.0, -1.0, 1.5, f64::NAN] {
            let error = QueueConfig::new().caller_share(bad).unwrap_err();
            assert_eq!(error.key(), "caller_share");
        }
        let config = QueueConfig::new().max_queue(10).caller_share(0.5).unwrap();
        assert_eq!(config.per_caller(), 5);
        assert_eq!(QueueConfig::new().max_queue(1).per_caller(), 1);
    }
}
