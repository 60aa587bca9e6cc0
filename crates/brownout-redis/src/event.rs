//! The Redis stores' events: shared state lost, resumed, and opened by another replica.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::event::{EventData, Value};

/// What a Redis-backed store noticed: the data of the
/// [`Event`](brownout_core::event::Event)s it emits, with layer `"redis"`.
///
/// ```
/// use brownout_core::event::Event;
/// use brownout_redis::RedisEvent;
///
/// fn lost(event: &Event) -> bool {
///     matches!(event.data::<RedisEvent>(), Some(RedisEvent::SharedStateLost { .. }))
/// }
/// # let _ = lost;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisEvent {
    /// Redis did not answer in time or failed: the store goes on with its local state.
    SharedStateLost {
        /// What failed: `"timeout"`, `"connect"`, `"io"` or `"response"`. Never the URL.
        reason: &'static str,
    },
    /// Redis answers again: the store is back on the shared state.
    SharedStateResumed {
        /// How long it was local only.
        down_for: Duration,
    },
    /// Another replica opened a key's breaker: this replica skips it too.
    SharedOpen {
        /// The breaker's key.
        key: Arc<str>,
        /// How long it refuses.
        open_for: Duration,
    },
}

impl fmt::Display for RedisEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisEvent::SharedStateLost { reason } => {
                write!(f, "redis unavailable ({reason}): local state only")
            }
            RedisEvent::SharedStateResumed { .. } => f.write_str("redis answers: shared state"),
            RedisEvent::SharedOpen { key, .. } => {
                write!(f, "circuit {key} opened by another replica")
            }
        }
    }
}

impl EventData for RedisEvent {
    fn name(&self) -> &'static str {
        match self {
            RedisEvent::SharedStateLost { .. } => "shared_state_lost",
            RedisEvent::SharedStateResumed { .. } => "shared_state_resumed",
            RedisEvent::SharedOpen { .. } => "shared_open",
        }
    }

    /// `WARN` when Redis is lost, `INFO` otherwise.
    fn level(&self) -> tracing::Level {
        match self {
            RedisEvent::SharedStateLost { .. } => tracing::Level::WARN,
            _ => tracing::Level::INFO,
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            RedisEvent::SharedStateLost { reason } => field("reason", Value::Str(reason)),
            RedisEvent::SharedStateResumed { down_for } => {
                field("down_ms", Value::Duration(*down_for))
            }
            RedisEvent::SharedOpen { key, open_for } => {
                field("key", Value::Str(key));
                field("delay_ms", Value::Duration(*open_for));
            }
        }
    }
}
