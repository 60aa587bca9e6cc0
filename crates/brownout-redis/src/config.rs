//! Where Redis is and how the shared breakers behave.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    error::InvalidConfig,
    event::{Events, Listener},
};
use redis::{ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

const LAYER: &str = "redis";

/// How a Redis-backed store reaches Redis and shares state: give it to
/// [`RedisBreakerStore::new`](crate::RedisBreakerStore::new) or
/// [`RedisLimitStore::new`](crate::RedisLimitStore::new).
///
/// | setting | default | |
/// |---|---|---|
/// | [`timeout`](Self::timeout) | 100 ms | every Redis call; past it the store is local only |
/// | [`poll_interval`](Self::poll_interval) | 500 ms | the fallback when a pub/sub message is lost |
/// | [`flush_interval`](Self::flush_interval) | 100 ms | how often counted outcomes go to Redis, pipelined |
/// | [`probe_lease`](Self::probe_lease) | 10 s | how long one replica holds a half-open key's probe |
/// | [`shared_failure_rate`](Self::shared_failure_rate) | 50 % of ≥ 20 calls in 10 s | when the fleet's counts open a key |
/// | [`shared_open_duration`](Self::shared_open_duration) | 30 s | how long a fleet-opened key refuses |
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) info: ConnectionInfo,
    pub(crate) deployment: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) flush_interval: Duration,
    pub(crate) probe_lease: Duration,
    pub(crate) threshold: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) window: Duration,
    pub(crate) open_duration: Duration,
    pub(crate) max_keys: usize,
    pub(crate) events: Events,
}

impl RedisConfig {
    /// Redis at `url` (`redis://[user:password@]host:port[/db]`), for the fleet named
    /// `deployment`: every key lives under `brownout:{deployment}:`. The deployment is
    /// 1 to 64 letters, digits, `.`, `_` or `-`.
    ///
    /// Nothing connects here: the store connects in the background and works locally
    /// until Redis answers.
    pub fn new(url: &str, deployment: &str) -> Result<Self, InvalidConfig> {
        let valid = !deployment.is_empty()
            && deployment.len() <= 64
            && deployment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(InvalidConfig::new(
                LAYER,
                "deployment",
                "must be 1 to 64 letters, digits, '.', '_' or '-'",
            ));
        }
        // The URL's error text is not quoted: it may carry a password.
        let info = url
            .into_connection_info()
            .map_err(|_| InvalidConfig::new(LAYER, "url", "not a redis:// URL"))?;
        // RESP3: pub/sub messages arrive on the command connection as pushes, and the
        // connection manager subscribes again after a reconnect.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        Ok(RedisConfig {
            info: info.set_redis_settings(settings),
            deployment: Arc::from(deployment),
            timeout: Duration::from_millis(100),
            poll_interval: Duration::from_millis(500),
            flush_interval: Duration::from_millis(100),
            probe_lease: Duration::from_secs(10),
            threshold: 0.5,
            minimum_calls: 20,
            window: Duration::from_secs(10),
            open_duration: Duration::from_secs(30),
            max_keys: 10_000,
            events: Events::new(),
        })
    }

    /// The longest any Redis call may take; past it, the store goes on locally and
    /// emits [`SharedStateLost`](crate::RedisEvent::SharedStateLost).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often the store reads the shared states of its keys, in case a pub/sub
    /// message was missed.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often counted outcomes are sent to Redis (one pipeline per flush).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// How long the replica that won a half-open key's probe holds it: the longest a
    /// probe call may take before another replica may probe instead.
    pub fn probe_lease(mut self, lease: Duration) -> Self {
        self.probe_lease = lease;
        self
    }

    /// The fleet's trip rule: the key opens for every replica when, over the last
    /// `window` (a sliding window of two buckets, on Redis's clock), at least
    /// `minimum_calls` were counted and the failures reach `threshold` (0 to 1] of them.
    ///
    /// Each replica's own breaker still trips on its own policy, and tells the fleet.
    pub fn shared_failure_rate(
        mut self,
        threshold: f64,
        minimum_calls: u32,
        window: Duration,
    ) -> Self {
        self.threshold = threshold;
        self.minimum_calls = minimum_calls;
        self.window = window;
        self
    }

    /// How long a key opened by the fleet's counts refuses.
    pub fn shared_open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// At most this many keys' shared states are remembered (keys of other replicas
    /// included).
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// Where the store's [`RedisEvent`](crate::RedisEvent)s go besides `tracing`.
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        let positive = [
            ("timeout", self.timeout),
            ("poll_interval", self.poll_interval),
            ("flush_interval", self.flush_interval),
            ("probe_lease", self.probe_lease),
            ("shared_failure_rate", self.window),
            ("shared_open_duration", self.open_duration),
        ];
        for (key, value) in positive {
            if value < Duration::from_millis(1) {
                return Err(InvalidConfig::new(LAYER, key, "must be at least 1 ms"));
            }
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(InvalidConfig::new(
                LAYER,
                "shared_failure_rate",
                "threshold must be above 0 and at most 1",
            ));
        }
        if self.max_keys == 0 {
            return Err(InvalidConfig::new(LAYER, "max_keys", "must be at least 1"));
        }
        Ok(())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address only: never the password.
        f.debug_struct("RedisConfig")
            .field("addr", &self.info.addr().to_string())
            .field("deployment", &self.deployment)
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .field("flush_interval", &self.flush_interval)
            .field("probe_lease", &self.probe_lease)
            .finish_non_exhaustive()
    }
}
