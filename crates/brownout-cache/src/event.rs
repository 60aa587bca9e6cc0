//! The cache's event, and the status it records on the answers it serves.

use std::{fmt, time::Duration};

use brownout_core::{
    classify::Outcome,
    event::{EventData, Value},
};

/// What a cache layer decided: the data of the [`Event`](brownout_core::event::Event)s
/// the cache layer emits, with layer `"cache"`.
///
/// ```
/// use brownout_cache::CacheEvent;
/// use brownout_core::event::Event;
///
/// fn stale_answers(events: &[Event]) -> usize {
///     events
///         .iter()
///         .filter(|e| matches!(e.data::<CacheEvent>(), Some(CacheEvent::ServedFromCache { stale: true, .. })))
///         .count()
/// }
/// # let _ = stale_answers;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// A cache answered instead of the upstream.
    ServedFromCache {
        /// `true` for an entry past its freshness, served because the live path
        /// failed (stale-if-error); `false` for a fresh hit.
        stale: bool,
        /// The entry's age.
        age: Duration,
        /// What the live path did, when it was tried.
        outcome: Option<Outcome>,
    },
}

impl fmt::Display for CacheEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheEvent::ServedFromCache {
                stale: true, age, ..
            } => write!(f, "served a stale cached answer ({age:?} old)"),
            CacheEvent::ServedFromCache { stale: false, .. } => {
                f.write_str("served a fresh cached answer")
            }
        }
    }
}

impl EventData for CacheEvent {
    fn name(&self) -> &'static str {
        match self {
            CacheEvent::ServedFromCache { .. } => "served_from_cache",
        }
    }

    /// `INFO` for a stale answer, `DEBUG` for a fresh hit.
    fn level(&self) -> tracing::Level {
        match self {
            CacheEvent::ServedFromCache { stale: true, .. } => tracing::Level::INFO,
            CacheEvent::ServedFromCache { stale: false, .. } => tracing::Level::DEBUG,
        }
    }

    fn outcome(&self) -> Option<&Outcome> {
        match self {
            CacheEvent::ServedFromCache { outcome, .. } => outcome.as_ref(),
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            CacheEvent::ServedFromCache { stale, age, .. } => {
                field("stale", Value::Bool(*stale));
                field("age_ms", Value::Duration(*age));
            }
        }
    }
}

/// How a cache layer answered. Inserted by the cache layer on the responses it serves
/// from its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// A fresh entry, served without going live.
    Hit,
    /// An entry past its freshness, served because the live path failed.
    Stale,
}

impl CacheStatus {
    /// `"hit"` or `"stale"`, as in the `x-brownout-cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Stale => "stale",
        }
    }
}

#[cfg(test)]
mod tests {
    use brownout_core::event::Event;

    use super::*;

    #[test]
    fn a_cached_answer_logs_its_staleness_and_age() {
        let stale = Event::detached(
            "cache",
            CacheEvent::ServedFromCache {
                stale: true,
                age: Duration::from_secs(42),
                outcome: None,
            },
        );
        assert_eq!(stale.name(), "served_from_cache");
        assert_eq!(stale.kind().level(), tracing::Level::INFO);
        assert_eq!(stale.fields_text(), "stale=true age_ms=42000");
        assert_eq!(
            stale.kind().to_string(),
            "served a stale cached answer (42s old)"
        );
        let fresh = CacheEvent::ServedFromCache {
            stale: false,
            age: Duration::from_millis(5),
            outcome: None,
        };
        assert_eq!(fresh.level(), tracing::Level::DEBUG);
        assert_eq!(fresh.to_string(), "served a fresh cached answer");
    }
}
