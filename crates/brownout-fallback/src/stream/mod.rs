//! Streams that fail half-way: judged before their first byte reaches the caller,
//! ended well-formed after it, or resumed on the next model.
//!
//! A provider that answers `200` and starts a stream can still fail it: an
//! `event: error` with `overloaded_error`, a stall, a cut connection. Judged on its
//! head alone, such a stream is a success that no retry, breaker or fallback ever
//! sees, and its caller gets text followed by an error (or a hung or cut read).
//! This module has two parts:
//!
//! - [`StreamGuardLayer`] **looks before committing.** Placed right over the HTTP
//!   client (inside retry and the breaker), it holds a streamed answer's events
//!   back until the stream has shown it is real — Anthropic's `message_start` and
//!   first `content_block_delta`; the first OpenAI chat chunk with content, a tool
//!   call or a finish reason; the first Responses `*.delta` — or its proper end,
//!   within [`first_event_timeout`](StreamConfig::first_event_timeout). An error
//!   event before that point becomes the error answer it stands for (an
//!   `overloaded_error` event a 529 with that body, see
//!   [`sse::error_answer`](brownout_core::sse::error_answer)), so that the stack's
//!   one classifier judges it, the retry layer retries it, the breaker counts it and
//!   the cascade moves on, exactly as for a 529 head. A stall is a
//!   [`StreamFailed`] error classified as a timeout, a cut or an early end one
//!   classified as a connection failure. After the commit point the caller gets the
//!   held bytes, byte for byte, then the rest as it comes.
//! - **After bytes reached the caller** there is no taking them back. The guard ends
//!   a stream that fails then *well-formed* in the provider's shape ([`AfterFirstByte::End`],
//!   the default): an upstream error event is passed on (OpenAI's then followed by
//!   `data: [DONE]`); a cut, a stall past [`idle_timeout`](StreamConfig::idle_timeout)
//!   or an end without `message_stop` / `[DONE]` becomes an error event of the
//!   provider's error type (`api_error` / `server_error` for a cut, `timeout_error`
//!   / `server_error` for a stall), then `[DONE]` for OpenAI chat. The caller never
//!   sees a cut connection or a clean end of an answer that is not whole.
//!   With [`AfterFirstByte::Resume`] set on the fallback layer
//!   ([`FallbackConfig::after_first_byte`](crate::FallbackConfig::after_first_byte)),
//!   the cascade instead continues the same answer on its next model: see
//!   [Resume](#resume).
//!
//! Only whole events are handed on: an event cut across two chunks of the network
//! is held until its blank line arrives, so that a stream cut mid-event is still
//! ended between events. Bytes are not copied except for such an event; the held
//! prefix is kept as the chunks it came in.
//!
//! ```
//! use std::time::Duration;
//! use brownout_fallback::stream::{StreamConfig, StreamGuardLayer};
//! use brownout_sim::{Fault, ModelScript, Script, Sim};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The stream starts with 200, then fails with overloaded_error before any content.
//! let sim = Sim::new(Script::new().model("m", ModelScript::new().fault(Fault::stream_error(0))));
//! let guarded = StreamGuardLayer::new(StreamConfig::new().first_event_timeout(Duration::from_secs(5))?)
//!     .layer(sim);
//! let request = http::Request::post("/v1/messages").body(Full::new(bytes::Bytes::from(
//!     r#"{"model":"m","max_tokens":64,"stream":true,"messages":[]}"#,
//! )))?;
//! let response = guarded.oneshot(request).await?;
//! // Seen for what it is: an overload, which retry, breaker and fallback act on.
//! assert_eq!(response.status(), 529);
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
//! # Ok(()) }
//! ```
//!
//! # Where it goes in a stack
//!
//! The guard goes right over the HTTP client, inside the retry layer and the
//! breaker (and inside a `ClassifyLayer` of your own, if you have one, so that your
//! classifier sees the error answer): each attempt is then judged on what its stream
//! did before it reached the caller. A request that does not stream, and any answer
//! that is not a `2xx` `text/event-stream`, passes through untouched, at the cost of
//! a header check.
//!
//! # What holding back costs
//!
//! The caller's first byte comes with the stream's first content event instead of
//! its `message_start`: the upstream's own delay from the one to the other (a few
//! tens of milliseconds), plus the guard's work on the held events, which its
//! benchmark (`cargo bench -p brownout-fallback --bench stream`) puts in the
//! microseconds. The held prefix is the stream's opening events: a few hundred bytes.
//!
//! # Resume
//!
//! With [`AfterFirstByte::Resume`] on the fallback layer, a stream that fails after
//! content reached the caller (the guard's well-formed error ending, or a stream
//! cut without a guard) is *continued on the next model of the cascade*: the
//! request is sent again to that model with the text produced so far as an
//! assistant prefill (Anthropic) or as an assistant message followed by a user
//! message asking to continue (OpenAI chat), and its events are stitched into the
//! caller's stream: one `message_start`, content indices that continue, one
//! `message_stop` (one `[DONE]`), output tokens summed. Before the end, an event the
//! SDKs ignore names the models that wrote the answer (`event: brownout` for
//! Anthropic, a `brownout` member on OpenAI's finishing chunk), and the response's
//! [`StreamResumes`] extension records the same for metrics and logs.
//!
//! What resume means, honestly: a second model finishes the first one's answer. It
//! does not know what the first would have said; its style may differ, and the
//! output tokens of the first model's part are counted from its deltas (the provider
//! never reported them). It applies to text only: a stream cut inside a tool-use
//! block (or an OpenAI tool call) is ended as in [`AfterFirstByte::End`], and so is
//! a Responses API stream, a request whose last message is already the assistant's,
//! and a stream whose every remaining target failed.

/// The longest unfinished event the guard or the stitching holds: past it the stream
/// is treated as cut, as an upstream that never sends an event boundary would
/// otherwise be held whole in memory.
const MAX_EVENT_BYTES: usize = 1 << 20;

mod guard;
mod resume;

use std::{fmt, time::Duration};

use brownout_core::{
    error::{AttemptTimedOut, InvalidConfig},
    event::{EventData, Events, Listener, Value},
    BoxError,
};

pub use self::guard::{GuardedBody, ResponseFuture, StreamGuard};
pub use self::resume::StreamResumes;
pub(crate) use self::resume::{resume_mode, Next, ResumeContext};

/// What happens to a stream that fails after bytes reached the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterFirstByte {
    /// End it well-formed in the provider's shape: an error event (then `[DONE]` for
    /// OpenAI chat). The default.
    #[default]
    End,
    /// Continue the answer on the next model of the cascade (a setting of the
    /// fallback layer, which owns the cascade; see the [module docs](self#resume)).
    Resume,
}

impl AfterFirstByte {
    /// The setting's name, as the gateway's `[streams] after_first_byte` takes it
    /// (`"end"`, `"resume"`).
    pub fn as_str(self) -> &'static str {
        match self {
            AfterFirstByte::End => "end",
            AfterFirstByte::Resume => "resume",
        }
    }

    /// The setting named `name` (`"end"`, `"resume"`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "end" => Some(AfterFirstByte::End),
            "resume" => Some(AfterFirstByte::Resume),
            _ => None,
        }
    }
}

/// The default of [`StreamConfig::first_event_timeout`]: 5 seconds.
pub const DEFAULT_FIRST_EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of [`StreamConfig::idle_timeout`]: 60 seconds.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The stream guard's settings.
///
/// | setting | default |
/// |---|---|
/// | [`first_event_timeout`](Self::first_event_timeout) | 5 s from the response head to the first content |
/// | [`idle_timeout`](Self::idle_timeout) | 60 s without a byte, after the first content |
#[derive(Clone)]
pub struct StreamConfig {
    pub(crate) first_event_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) events: Events,
}

impl StreamConfig {
    /// The defaults in the table above.
    pub fn new() -> Self {
        StreamConfig {
            first_event_timeout: DEFAULT_FIRST_EVENT_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            events: Events::new(),
        }
    }

    /// How long after the response head the stream may take to show its first
    /// content (or its end); past it, the attempt fails as a timeout. Zero is
    /// refused.
    pub fn first_event_timeout(mut self, timeout: Duration) -> Result<Self, InvalidConfig> {
        if timeout.is_zero() {
            return Err(InvalidConfig::new(
                "stream",
                "first_event_timeout",
                "must be longer than zero",
            ));
        }
        self.first_event_timeout = timeout;
        Ok(self)
    }

    /// How long a stream may go without a byte once content reached the caller;
    /// past it, it is ended with an error event. `None` waits for ever (the caller's
    /// own timeout, or the gateway's `[streams] idle_timeout`, decides).
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle.filter(|d| !d.is_zero());
        self
    }

    /// Where decisions go besides `tracing`: each is an
    /// [`Event`](brownout_core::event::Event) whose data is a [`StreamEvent`].
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig::new()
    }
}

impl fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConfig")
            .field("first_event_timeout", &self.first_event_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// The stream guard: holds a streamed answer back until its first content. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct StreamGuardLayer {
    config: std::sync::Arc<StreamConfig>,
}

impl StreamGuardLayer {
    /// A guard with these settings.
    pub fn new(config: StreamConfig) -> Self {
        StreamGuardLayer {
            config: std::sync::Arc::new(config),
        }
    }
}

impl<S> tower_layer::Layer<S> for StreamGuardLayer {
    type Service = StreamGuard<S>;

    fn layer(&self, inner: S) -> StreamGuard<S> {
        StreamGuard::from_shared(inner, self.config.clone())
    }
}

/// How a stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamFailure {
    /// The provider sent an error event.
    ErrorEvent,
    /// Nothing came for too long.
    Stalled,
    /// The connection failed mid-stream.
    Cut,
    /// The stream ended without its last event (`message_stop`, `[DONE]`).
    EndedEarly,
}

impl StreamFailure {
    /// A short lowercase name, as in events (`"stalled"`).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamFailure::ErrorEvent => "error_event",
            StreamFailure::Stalled => "stalled",
            StreamFailure::Cut => "cut",
            StreamFailure::EndedEarly => "ended_early",
        }
    }
}

impl fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream that failed before its first content: the attempt's error. A stall has
/// an [`AttemptTimedOut`] as its source (classified as a timeout); a cut has the
/// body's error, an early end none (both classified as connection failures).
#[derive(Debug)]
pub struct StreamFailed {
    failure: StreamFailure,
    source: Option<BoxError>,
}

impl StreamFailed {
    pub(crate) fn stalled(timeout: Duration) -> Self {
        StreamFailed {
            failure: StreamFailure::Stalled,
            source: Some(Box::new(AttemptTimedOut::new(timeout))),
        }
    }

    pub(crate) fn cut(source: BoxError) -> Self {
        StreamFailed {
            failure: StreamFailure::Cut,
            source: Some(source),
        }
    }

    pub(crate) fn ended_early() -> Self {
        StreamFailed {
            failure: StreamFailure::EndedEarly,
            source: None,
        }
    }

    /// How it failed.
    pub fn failure(&self) -> StreamFailure {
        self.failure
    }
}

impl fmt::Display for StreamFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failure {
            StreamFailure::Stalled => f.write_str("the stream sent no content in time"),
            StreamFailure::Cut => f.write_str("the stream was cut before its first content"),
            StreamFailure::EndedEarly => f.write_str("the stream ended before its first content"),
            StreamFailure::ErrorEvent => {
                f.write_str("the stream failed with an error event before its first content")
            }
        }
    }
}

impl std::error::Error for StreamFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What the stream guard and a resuming cascade decide: the data of their
/// [`Event`](brownout_core::event::Event)s.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StreamEvent {
    /// A stream failed before its first content: the attempt failed.
    FailedBeforeContent {
        /// How.
        failure: StreamFailure,
    },
    /// A stream failed after content reached the caller, and was ended well-formed.
    EndedAfterContent {
        /// How.
        failure: StreamFailure,
    },
    /// A stream that failed after content reached the caller is continued on
    /// another model.
    Resuming {
        /// The model that wrote the answer so far (the last of them).
        from: std::sync::Arc<str>,
        /// The model that continues it.
        to: std::sync::Arc<str>,
    },
}

impl fmt::Display for StreamEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamEvent::FailedBeforeContent { failure } => {
                write!(
                    f,
                    "stream failed before its first content ({failure}): the attempt failed"
                )
            }
            StreamEvent::EndedAfterContent { failure } => {
                write!(f, "stream failed after content reached the caller ({failure}): ended with an error event")
            }
            StreamEvent::Resuming { from, to } => {
                write!(
                    f,
                    "stream of {from} failed after content reached the caller: resuming on {to}"
                )
            }
        }
    }
}

impl EventData for StreamEvent {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::FailedBeforeContent { .. } => "stream_failed_before_content",
            StreamEvent::EndedAfterContent { .. } => "stream_ended_after_content",
            StreamEvent::Resuming { .. } => "stream_resuming",
        }
    }

    fn level(&self) -> tracing::Level {
        tracing::Level::WARN
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            StreamEvent::FailedBeforeContent { failure }
            | StreamEvent::EndedAfterContent { failure } => {
                field("failure", Value::Str(failure.as_str()));
            }
            StreamEvent::Resuming { from, to } => {
                field("from", Value::Str(from));
                field("to", Value::Str(to));
            }
        }
    }
}
