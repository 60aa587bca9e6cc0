//! [`SinkListener`]: the layers' events, for a [`Sink`].

use std::{fmt, sync::Arc};

use brownout_core::event::{Event, Listener};

use crate::record::Sink;

/// Hands every [`Event`] of the layers it is given to to [`Sink::event`].
///
/// Give it to each layer's `Events::with_listener` (the breakers' state changes set
/// the `brownout_breaker_state` gauge of a [`MetricsSink`](crate::MetricsSink), and
/// every event is counted in `brownout_events_total`).
///
/// ```
/// use std::sync::Arc;
/// use brownout_core::event::{Event, Events};
/// use brownout_observe::{Exchange, Sink, SinkListener};
///
/// struct Names(std::sync::Mutex<Vec<&'static str>>);
/// impl Sink for Names {
///     fn exchange(&self, _: &Exchange) {}
///     fn event(&self, event: &Event) {
///         self.0.lock().unwrap().push(event.name());
///     }
/// }
/// # #[derive(Debug)] struct Opened;
/// # impl std::fmt::Display for Opened { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("opened") } }
/// # impl brownout_core::event::EventData for Opened { fn name(&self) -> &'static str { "opened" } }
///
/// let names = Arc::new(Names(Default::default()));
/// let events = Events::with_listener(SinkListener::new(names.clone()));
/// events.emit(Event::detached("breaker", Opened));
/// assert_eq!(*names.0.lock().unwrap(), ["opened"]);
/// ```
#[derive(Clone)]
pub struct SinkListener(Arc<dyn Sink>);

impl SinkListener {
    /// A listener feeding `sink`.
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        SinkListener(sink)
    }
}

impl fmt::Debug for SinkListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkListener").finish_non_exhaustive()
    }
}

impl Listener for SinkListener {
    fn on_event(&self, event: &Event) {
        self.0.event(event);
    }
}
