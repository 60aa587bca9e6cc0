//! The queue's events.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::event::{EventData, Value};

use crate::ShedReason;

/// What the queue decided: the data of the [`Event`](brownout_core::event::Event)s the
/// queue layer emits, with layer `"queue"`.
///
/// ```
/// use brownout_core::event::Event;
/// use brownout_queue::QueueEvent;
///
/// fn waited(event: &Event) -> Option<std::time::Duration> {
///     match event.data::<QueueEvent>()? {
///         QueueEvent::Admitted { waited, .. } => Some(*waited),
///         _ => None,
///     }
/// }
/// # let _ = waited;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueEvent {
    /// A request started waiting in its key's queue.
    Queued {
        /// The queue's key (a model name, a host…).
        key: Arc<str>,
        /// Requests in the key's queue, this one included.
        depth: usize,
        /// The expected wait, when the queue knows it.
        expected: Option<Duration>,
    },
    /// A waiting request was admitted and is being sent.
    Admitted {
        /// The queue's key.
        key: Arc<str>,
        /// How long it waited.
        waited: Duration,
    },
    /// A request was answered by the queue without being sent.
    Shed {
        /// The queue's key.
        key: Arc<str>,
        /// Why.
        reason: ShedReason,
        /// How long it waited first (zero when shed at once).
        waited: Duration,
    },
    /// How many requests of a key may be in flight changed: limited to one probe
    /// when the key became unavailable, halved on a new overload, or unlimited again
    /// once slow start reached [`recovery_limit`](crate::QueueConfig::recovery_limit).
    AdmissionChanged {
        /// The queue's key.
        key: Arc<str>,
        /// The new limit; `None` when the key is back to normal (no limit).
        limit: Option<u32>,
        /// Why: `"unavailable"`, `"overloaded"` (halved) or `"recovered"`.
        reason: &'static str,
    },
}

impl fmt::Display for QueueEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueEvent::Queued { key, depth, .. } => {
                write!(f, "request for {key} queued ({depth} waiting)")
            }
            QueueEvent::Admitted { key, waited } => {
                write!(f, "request for {key} admitted after {waited:?}")
            }
            QueueEvent::Shed { key, reason, .. } => write!(f, "request for {key} shed: {reason}"),
            QueueEvent::AdmissionChanged {
                key,
                limit: Some(limit),
                reason,
            } => write!(f, "{key} admits {limit} in flight ({reason})"),
            QueueEvent::AdmissionChanged {
                key, limit: None, ..
            } => write!(f, "{key} recovered: admission unlimited"),
        }
    }
}

impl EventData for QueueEvent {
    fn name(&self) -> &'static str {
        match self {
            QueueEvent::Queued { .. } => "queued",
            QueueEvent::Admitted { .. } => "admitted",
            QueueEvent::Shed { .. } => "shed",
            QueueEvent::AdmissionChanged { .. } => "admission_changed",
        }
    }

    /// `INFO` for sheds and admission changes, `DEBUG` for queued and admitted requests.
    fn level(&self) -> tracing::Level {
        match self {
            QueueEvent::Shed { .. } | QueueEvent::AdmissionChanged { .. } => tracing::Level::INFO,
            _ => tracing::Level::DEBUG,
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            QueueEvent::Queued {
                key,
                depth,
                expected,
            } => {
                field("key", Value::Str(key));
                field("depth", Value::U64(*depth as u64));
                if let Some(expected) = expected {
                    field("delay_ms", Value::Duration(*expected));
                }
            }
            QueueEvent::Admitted { key, waited } => {
                field("key", Value::Str(key));
                field("waited_ms", Value::Duration(*waited));
            }
            QueueEvent::Shed {
                key,
                reason,
                waited,
            } => {
                field("key", Value::Str(key));
                field("reason", Value::Str(reason.as_str()));
                field("waited_ms", Value::Duration(*waited));
            }
            QueueEvent::AdmissionChanged { key, limit, reason } => {
                field("key", Value::Str(key));
                if let Some(limit) = limit {
                    field("limit", Value::U64(u64::from(*limit)));
                }
                field("reason", Value::Str(reason));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use brownout_core::event::Event;

    use super::*;

    #[test]
    fn events_log_their_fields_without_the_query() {
        let event = Event::new(
            "queue",
            &http::Method::POST,
            &"/v1/messages?key=sk-secret".parse().unwrap(),
            QueueEvent::Shed {
                key: "m".into(),
                reason: ShedReason::QueueFull,
                waited: Duration::from_millis(20),
            },
        );
        assert_eq!(event.name(), "shed");
        assert_eq!(event.path.as_deref(), Some("/v1/messages"));
        assert_eq!(event.fields_text(), "key=m reason=queue_full waited_ms=20");
        assert_eq!(event.kind().level(), tracing::Level::INFO);
        let changed = QueueEvent::AdmissionChanged {
            key: "m".into(),
            limit: Some(4),
            reason: "overloaded",
        };
        assert_eq!(changed.to_string(), "m admits 4 in flight (overloaded)");
        assert_eq!(
            Event::detached("queue", changed).fields_text(),
            "key=m limit=4 reason=overloaded"
        );
        let queued = QueueEvent::Queued {
            key: "m".into(),
            depth: 3,
            expected: Some(Duration::from_millis(250)),
        };
        assert_eq!(queued.level(), tracing::Level::DEBUG);
        assert_eq!(
            Event::detached("queue", queued).fields_text(),
            "key=m depth=3 delay_ms=250"
        );
    }
}
