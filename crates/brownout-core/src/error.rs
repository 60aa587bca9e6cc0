//! Errors that brownout layers create themselves.
//!
//! Each is a small struct with private fields and a lowercase Display, returned inside
//! a `BoxError`; find it with `downcast_ref`. The default classifier knows them, so a
//! layer further out classifies them like any other timeout.

use std::{fmt, time::Duration};

/// The error type the layers return when they add failures of their own, as tower does.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One attempt took longer than the per-attempt timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimedOut {
    timeout: Duration,
}

impl AttemptTimedOut {
    /// An attempt that outlived `timeout`.
    pub fn new(timeout: Duration) -> Self {
        AttemptTimedOut { timeout }
    }

    /// The timeout that was exceeded.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt timed out after {:?}", self.timeout)
    }
}

impl std::error::Error for AttemptTimedOut {}

/// The call's overall deadline passed before an answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded {
    deadline: Duration,
    attempts: u32,
}

impl DeadlineExceeded {
    /// The deadline `deadline` (measured from the call) passed after `attempts`
    /// attempts had started.
    pub fn new(deadline: Duration, attempts: u32) -> Self {
        DeadlineExceeded { deadline, attempts }
    }

    /// The deadline, measured from the start of the call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// How many attempts had started.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deadline of {:?} exceeded after {} attempt{}",
            self.deadline,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

/// A brownout layer refused to send the request (a circuit breaker is open, a queue
/// is full): the upstream was not asked.
///
/// Layers do not return it bare: their own error (the breaker's `CircuitOpen`) holds
/// one and gives it as its [`source`](std::error::Error::source), so that the default
/// classifier recognises any layer's refusal as
/// [`Rejected`](crate::OutcomeKind::Rejected), with [`retry_after`](Self::retry_after)
/// as the server-given delay, without core naming the layer.
///
/// A marker *type* rather than a marker trait: an error's source chain is searched by
/// concrete type (`downcast_ref`), and a `dyn Error` cannot be asked whether its type
/// implements a trait. The type names no layer; any layer that refuses holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    retry_after: Option<Duration>,
}

impl Rejected {
    /// A refusal; the request may pass after `retry_after`, when that is known.
    pub fn new(retry_after: Option<Duration>) -> Self {
        Rejected { retry_after }
    }

    /// How long until the layer admits requests again, when it knows.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused by a brownout layer")
    }
}

impl std::error::Error for Rejected {}

/// The caller's request body broke or stalled before it was all read: the caller's
/// failure, never the upstream's.
///
/// The default classifier reads it, anywhere in an error's source chain, as a
/// [`ClientError`](crate::OutcomeKind::ClientError); the gateway answers 400 for a
/// cut body and 408 for a stalled one.
#[derive(Debug)]
pub struct BrokenBody {
    stalled: Option<Duration>,
    source: Option<BoxError>,
}

impl BrokenBody {
    /// The body failed with `source` (cut short, the client hung up).
    pub fn cut(source: BoxError) -> Self {
        BrokenBody {
            stalled: None,
            source: Some(source),
        }
    }

    /// No byte of the body came for `idle`.
    pub fn stalled(idle: Duration) -> Self {
        BrokenBody {
            stalled: Some(idle),
            source: None,
        }
    }

    /// Whether the body stalled (else it was cut).
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }
}

impl fmt::Display for BrokenBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.stalled, &self.source) {
            (Some(idle), _) => write!(f, "request body stalled for {idle:?}"),
            (None, Some(source)) => write!(f, "request body broken: {source}"),
            (None, None) => f.write_str("request body broken"),
        }
    }
}

impl std::error::Error for BrokenBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The caller's request cannot be sent as it is (its body names `model` twice): the
/// caller's failure, classified as a [`ClientError`](crate::OutcomeKind::ClientError);
/// the gateway answers 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    reason: &'static str,
}

impl InvalidRequest {
    /// The request is refused because of `reason`.
    pub fn new(reason: &'static str) -> Self {
        InvalidRequest { reason }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid request: {}", self.reason)
    }
}

impl std::error::Error for InvalidRequest {}

/// Whether `error` or an error in its source chain is the caller's own failure
/// ([`BrokenBody`], [`InvalidRequest`]).
pub fn is_caller_error(error: &(dyn std::error::Error + 'static)) -> bool {
    find::<BrokenBody>(error).is_some() || find::<InvalidRequest>(error).is_some()
}

/// The first error of type `T` in `error`'s source chain, `error` included.
///
/// The chain goes through an [`io::Error`](std::io::Error) that wraps another error
/// (`io::Error::other(e)`) to `e` itself: `io::Error`'s own `source` skips it.
pub fn find<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        current = next_in_chain(e);
    }
    None
}

/// The error after `error` in its source chain: the error an `io::Error` wraps, else
/// `source()`.
pub(crate) fn next_in_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            return Some(inner);
        }
    }
    error.source()
}

/// A layer's setting was given nonsense: names the layer, the setting and why, and
/// where the setting is one item of a list or a file (a degrade rule), which item and
/// which line.
///
/// The one error of every layer's validating constructors and config files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    layer: &'static str,
    key: &'static str,
    reason: String,
    // Boxed: rare, and the error travels in `Result`s of constructors.
    place: Option<Box<Place>>,
}

/// Where in a list or a file the setting at fault is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Place {
    item: Option<&'static str>,
    item_index: Option<usize>,
    item_name: Option<String>,
    line: Option<usize>,
}

impl InvalidConfig {
    /// The `key` setting of `layer` (`"circuit breaker"`, `"fallback"`) is refused
    /// because of `reason`.
    pub fn new(layer: &'static str, key: &'static str, reason: impl Into<String>) -> Self {
        InvalidConfig {
            layer,
            key,
            reason: reason.into(),
            place: None,
        }
    }

    /// Says which item of a list is at fault: what the items are (`"rule"`), its
    /// position from 1 when known, and its name when it has one.
    pub fn in_item(mut self, item: &'static str, index: Option<usize>, name: &str) -> Self {
        let place = self.place.get_or_insert_with(Box::default);
        place.item = Some(item);
        if index.is_some() {
            place.item_index = index;
        }
        if !name.trim().is_empty() {
            place.item_name = Some(name.to_owned());
        }
        self
    }

    /// Says which line of a file is at fault, from 1.
    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.place.get_or_insert_with(Box::default).line = line;
        self
    }

    /// The layer whose setting it is.
    pub fn layer(&self) -> &str {
        self.layer
    }

    /// The setting at fault (`failure_rate.threshold`).
    pub fn key(&self) -> &str {
        self.key
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The name of the item at fault, when it has one.
    pub fn item_name(&self) -> Option<&str> {
        self.place.as_ref()?.item_name.as_deref()
    }

    /// The position of the item at fault, from 1, when known.
    pub fn item_index(&self) -> Option<usize> {
        self.place.as_ref()?.item_index
    }

    /// The line of the file at fault, from 1, when known.
    pub fn line(&self) -> Option<usize> {
        self.place.as_ref()?.line
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} setting `{}`", self.layer, self.key)?;
        if let Some(place) = &self.place {
            let item = place.item.unwrap_or("item");
            match (&place.item_name, place.item_index) {
                (Some(name), _) => write!(f, " in {item} `{name}`")?,
                (None, Some(index)) => write!(f, " in {item} #{index}")?,
                (None, None) => {}
            }
            if let Some(line) = place.line {
                write!(f, " at line {line}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for InvalidConfig {}
