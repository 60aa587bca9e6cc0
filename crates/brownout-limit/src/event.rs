//! The rate limiter's events.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::event::{EventData, Value};

use crate::Resource;

/// What the rate limiter decided: the data of the
/// [`Event`](brownout_core::event::Event)s it emits, with layer `"limit"`.
///
/// ```
/// use brownout_limit::LimitEvent;
/// use brownout_core::event::Event;
///
/// fn shed_key(event: &Event) -> Option<&str> {
///     match event.data::<LimitEvent>()? {
///         LimitEvent::Shed { key, .. } => Some(key),
///         _ => None,
///     }
/// }
/// # let _ = shed_key;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LimitEvent {
    /// A request waited for room before it was sent.
    Waited {
        /// The key.
        key: Arc<str>,
        /// How long.
        waited: Duration,
        /// The limit that made it wait, if one did (else a provider's pause).
        resource: Option<Resource>,
    },
    /// A request was refused: it would have waited longer than it may.
    Shed {
        /// The key.
        key: Arc<str>,
        /// When the key has room.
        retry_after: Duration,
        /// The limit that binds, if one does.
        resource: Option<Resource>,
    },
    /// A request was refused at once: it needs more than a minute's limit.
    Oversized {
        /// The key.
        key: Arc<str>,
        /// The limit.
        resource: Resource,
        /// What the request needs.
        need: u64,
        /// The limit per minute.
        limit: u64,
    },
    /// The provider's headers tightened (or first set) a limit.
    Learned {
        /// The key.
        key: Arc<str>,
        /// The limit.
        resource: Resource,
        /// The limit the provider states, per minute.
        limit: Option<u64>,
        /// What the provider says remains.
        remaining: Option<u64>,
    },
    /// A provider's 429 paused the key.
    Paused {
        /// The key.
        key: Arc<str>,
        /// For how long.
        delay: Duration,
    },
}

impl fmt::Display for LimitEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitEvent::Waited { key, waited, .. } => {
                write!(f, "{key} waited {}ms for room", waited.as_millis())
            }
            LimitEvent::Shed {
                key, retry_after, ..
            } => write!(
                f,
                "{key} over its rate limit for {}ms: request refused",
                retry_after.as_millis()
            ),
            LimitEvent::Oversized {
                key,
                resource,
                need,
                limit,
            } => write!(
                f,
                "{key}: request needs {need} {resource}, over the limit of {limit} per minute"
            ),
            LimitEvent::Learned { key, resource, .. } => {
                write!(f, "{key}: {resource} limit learned from the provider")
            }
            LimitEvent::Paused { key, delay } => {
                write!(
                    f,
                    "{key} paused {}ms by the provider's 429",
                    delay.as_millis()
                )
            }
        }
    }
}

impl EventData for LimitEvent {
    fn name(&self) -> &'static str {
        match self {
            LimitEvent::Waited { .. } => "limit_waited",
            LimitEvent::Shed { .. } => "limit_shed",
            LimitEvent::Oversized { .. } => "limit_oversized",
            LimitEvent::Learned { .. } => "limit_learned",
            LimitEvent::Paused { .. } => "limit_paused",
        }
    }

    /// `INFO` for a shed or paused key and an oversized request, `DEBUG` otherwise.
    fn level(&self) -> tracing::Level {
        match self {
            LimitEvent::Shed { .. } | LimitEvent::Paused { .. } | LimitEvent::Oversized { .. } => {
                tracing::Level::INFO
            }
            _ => tracing::Level::DEBUG,
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            LimitEvent::Waited {
                key,
                waited,
                resource,
            } => {
                field("key", Value::Str(key));
                field("delay_ms", Value::Duration(*waited));
                if let Some(r) = resource {
                    field("resource", Value::Str(r.as_str()));
                }
            }
            LimitEvent::Shed {
                key,
                retry_after,
                resource,
            } => {
                field("key", Value::Str(key));
                field("delay_ms", Value::Duration(*retry_after));
                if let Some(r) = resource {
                    field("resource", Value::Str(r.as_str()));
                }
            }
            LimitEvent::Oversized {
                key,
                resource,
                need,
                limit,
            } => {
                field("key", Value::Str(key));
                field("resource", Value::Str(resource.as_str()));
                field("need", Value::U64(*need));
                field("limit", Value::U64(*limit));
            }
            LimitEvent::Learned {
                key,
                resource,
                limit,
                remaining,
            } => {
                field("key", Value::Str(key));
                field("resource", Value::Str(resource.as_str()));
                if let Some(l) = limit {
                    field("limit", Value::U64(*l));
                }
                if let Some(r) = remaining {
                    field("remaining", Value::U64(*r));
                }
            }
            LimitEvent::Paused { key, delay } => {
                field("key", Value::Str(key));
                field("delay_ms", Value::Duration(*delay));
            }
        }
    }
}
