//! The decisions layers take, as `tracing` events and for an optional listener.
//!
//! Every decision a layer takes on the failure path (an attempt failed, retrying after
//! a delay, a breaker opened, falling back, served stale, degraded) is an [`Event`]:
//! the layer's name, and the layer's own data, a type of the layer's crate that
//! implements [`EventData`] (`brownout_retry::RetryEvent`, `brownout_breaker::BreakerEvent`,
//! …). Core names no layer: a new layer brings its own event type and never edits core.
//!
//! Each event is logged through `tracing` with one field vocabulary across layers, and
//! handed to the [`Listener`] configured on the layer, so that metrics and reports can
//! be built without parsing logs. A listener reads the generic part (layer, name,
//! outcome, fields) of any event, or the layer's own type with [`Event::data`]:
//!
//! | field | meaning |
//! |---|---|
//! | `layer` | the layer that decided (`"retry"`) |
//! | `event` | what it decided ([`EventData::name`], `"retrying"`) |
//! | `method`, `path` | the request, when there is one; never its query, headers or body |
//! | `outcome`, `status`, `error_type` | the [`Outcome`] that led to it, when there is one |
//! | `fields` | the layer's own fields, `key=value` separated by spaces: `attempt`, `delay_ms`, `reason`, `key`, `from`, `to`, … |
//!
//! Events never carry credentials: no header of the request is recorded, and the path
//! is recorded without its query string, where some APIs take keys.

use std::{any::Any, fmt, sync::Arc, time::Duration};

use http::Method;

use crate::classify::Outcome;

/// What one layer decided about one request: the layer's own event type.
///
/// ```
/// use brownout_core::event::{Event, EventData, Value};
///
/// #[derive(Debug)]
/// struct Shed { queued: u64 }
///
/// impl std::fmt::Display for Shed {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "shed with {} queued", self.queued)
///     }
/// }
///
/// impl EventData for Shed {
///     fn name(&self) -> &'static str { "shed" }
///     fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
///         field("queued", Value::U64(self.queued));
///     }
/// }
///
/// let event = Event::detached("queue", Shed { queued: 7 });
/// assert_eq!(event.name(), "shed");
/// assert_eq!(event.data::<Shed>().unwrap().queued, 7);
/// assert_eq!(event.fields_text(), "queued=7");
/// ```
pub trait EventData: Any + fmt::Debug + fmt::Display + Send + Sync {
    /// The event's name, as logged in the `event` field (`"retrying"`).
    fn name(&self) -> &'static str;

    /// How loud the log line is: `DEBUG` unless the layer says otherwise.
    fn level(&self) -> tracing::Level {
        tracing::Level::DEBUG
    }

    /// The outcome that led to the decision, when there is one.
    fn outcome(&self) -> Option<&Outcome> {
        None
    }

    /// The event's own fields, one call of `field` each.
    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        let _ = field;
    }
}

/// The value of one of an event's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value<'a> {
    /// A count or a number.
    U64(u64),
    /// A name, key or reason.
    Str(&'a str),
    /// A delay or an age, logged in milliseconds.
    Duration(Duration),
    /// A flag.
    Bool(bool),
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U64(n) => write!(f, "{n}"),
            Value::Str(s) => f.write_str(s),
            Value::Duration(d) => write!(f, "{}", d.as_millis()),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One decision of one layer about one request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// The layer that decided (`"retry"`).
    pub layer: &'static str,
    /// The request's method, when the decision is about a request.
    pub method: Option<Method>,
    /// The request's path, without its query, when the decision is about a request.
    pub path: Option<Box<str>>,
    data: Arc<dyn EventData>,
}

impl Event {
    /// An event of `layer` about the request `method path`. The query is dropped from
    /// the path.
    pub fn new(
        layer: &'static str,
        method: &Method,
        uri: &http::Uri,
        data: impl EventData,
    ) -> Self {
        Event {
            layer,
            method: Some(method.clone()),
            path: Some(uri.path().into()),
            data: Arc::new(data),
        }
    }

    /// An event of `layer` that is not about one request (an operator forced a
    /// breaker open, say).
    pub fn detached(layer: &'static str, data: impl EventData) -> Self {
        Event {
            layer,
            method: None,
            path: None,
            data: Arc::new(data),
        }
    }

    /// The event's name (`"retrying"`).
    pub fn name(&self) -> &'static str {
        self.data.name()
    }

    /// The outcome that led to the decision, when there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.data.outcome()
    }

    /// The layer's own event, when it is a `T`.
    pub fn data<T: EventData>(&self) -> Option<&T> {
        let data: &dyn Any = &*self.data;
        data.downcast_ref::<T>()
    }

    /// The layer's own event, whatever its type.
    pub fn kind(&self) -> &dyn EventData {
        &*self.data
    }

    /// The event's own fields as `key=value`, separated by spaces.
    pub fn fields_text(&self) -> String {
        let mut out = String::new();
        self.data.fields(&mut |key, value| {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(&value.to_string());
        });
        out
    }
}

/// Why a request can be sent only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReplayable {
    /// Its body is longer than the replay buffer.
    BodyTooLarge {
        /// The replay buffer's size, in bytes.
        limit: usize,
    },
    /// Its body failed while it was read.
    BodyFailed,
}

impl NotReplayable {
    /// A short lowercase name, as logged in the `reason` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotReplayable::BodyTooLarge { .. } => "body_too_large",
            NotReplayable::BodyFailed => "body_failed",
        }
    }
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReplayable::BodyTooLarge { limit } => {
                write!(
                    f,
                    "the request body is larger than the {limit}-byte replay buffer"
                )
            }
            NotReplayable::BodyFailed => f.write_str("the request body failed while it was read"),
        }
    }
}

/// Receives every [`Event`] of the layers it is given to.
///
/// Implemented for closures `Fn(&Event) + Send + Sync + 'static`. Called inline on the
/// request's task: keep it quick and never block.
pub trait Listener: Send + Sync + 'static {
    /// Called once per event.
    fn on_event(&self, event: &Event);
}

impl<F> Listener for F
where
    F: Fn(&Event) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// Where a layer sends its events: `tracing`, and the listener if there is one.
#[derive(Clone, Default)]
pub struct Events {
    listener: Option<Arc<dyn Listener>>,
}

impl Events {
    /// Events go to `tracing` only.
    pub fn new() -> Self {
        Events::default()
    }

    /// Events go to `tracing` and to `listener`.
    pub fn with_listener(listener: impl Listener) -> Self {
        Events {
            listener: Some(Arc::new(listener)),
        }
    }

    /// Logs the event and hands it to the listener.
    pub fn emit(&self, event: Event) {
        log(&event);
        if let Some(listener) = &self.listener {
            listener.on_event(&event);
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

fn log(event: &Event) {
    let level = event.data.level();
    macro_rules! at {
        ($level:expr) => {
            if tracing::enabled!($level) {
                let outcome = event.outcome();
                tracing::event!(
                    $level,
                    layer = event.layer,
                    event = event.name(),
                    method = event.method.as_ref().map(Method::as_str),
                    path = event.path.as_deref(),
                    outcome = outcome.map(|o| o.kind().as_str()),
                    status = outcome.and_then(|o| o.status()).map(|s| s.as_u16()),
                    error_type = outcome.and_then(|o| o.error_type()),
                    fields = %event.fields_text(),
                    "{}",
                    event.data
                );
            }
        };
    }
    match level {
        tracing::Level::ERROR => at!(tracing::Level::ERROR),
        tracing::Level::WARN => at!(tracing::Level::WARN),
        tracing::Level::INFO => at!(tracing::Level::INFO),
        tracing::Level::DEBUG => at!(tracing::Level::DEBUG),
        _ => at!(tracing::Level::TRACE),
    }
}
