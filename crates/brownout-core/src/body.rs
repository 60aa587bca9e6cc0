//! [`Body`]: the one body type of every brownout layer, buffered once.
//!
//! Every layer accepts `Request<B>` for any [`http_body::Body`] `B` whose data is
//! [`Buf`], hands its inner service `Request<Body>` and answers `Response<Body>`. A
//! client under a brownout stack is therefore always named with this one type
//! (`Client<C, brownout::Body>`), whichever layers are on, and
//! `ServiceBuilder::option_layer` works with each of them.
//!
//! Like axum-core's `Body`, [`Body::new`] wraps any body and never wraps a [`Body`]
//! a second time: it is handed back as it is. A body whose bytes are all in memory is
//! a [`Bytes`] (and its trailers), which [`Body::try_clone`] copies for a retry or a
//! fallback by reference count, without copying a byte.
//!
//! # Buffered once
//!
//! The first layer that needs a request's bytes (to replay it, read its `model`, or
//! key a cache entry) calls [`prepare`]. It reads the body up to the replay limit of
//! [`BodyLimits`] (one setting for the whole stack: put a `BodyLimits` in the
//! request's extensions, or leave the default of 4 MiB), and the layers inside see a
//! body that is already replayable, or already known to be too large, and neither read
//! nor copy it again. A body over the limit is sent once, streamed, and never retried:
//! the bytes read so far go first, then the rest.
//!
//! # A caller's broken upload is the caller's failure
//!
//! A request body that fails while it is read (cut short of its `content-length`, the
//! client hung up) or stalls for longer than [`BodyLimits::idle_timeout`] is never
//! sent truncated. [`prepare`] answers a [`BrokenBody`] error, which the default
//! classifier reads as a [`ClientError`](crate::OutcomeKind::ClientError): it never
//! counts against a breaker or a retry budget, never causes a fallback, and is never
//! answered by a cache or a canned answer. The same holds for a body over the limit
//! that breaks while it streams: its errors reach the inner service as a
//! `BrokenBody`, found in the error's source chain.

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use tokio::time::Sleep;

use crate::{error::BrokenBody, request::RequestFacts, BoxError};

/// The replay limit of [`BodyLimits::default`]: 4 MiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 4 * 1024 * 1024;

/// The idle timeout of [`BodyLimits::default`]: 30 seconds without a byte of the
/// request body.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How far the layers read a request body: the one setting for the whole stack.
///
/// Put it in the request's extensions (the gateway does, from its config; a
/// `tower_http::add_extension` layer or a `map_request` outside the stack does it for
/// a library user); without it, [`BodyLimits::default`] holds.
///
/// ```
/// use brownout_core::body::BodyLimits;
/// use std::time::Duration;
///
/// let limits = BodyLimits::new()
///     .replay_limit(1024 * 1024)
///     .idle_timeout(Some(Duration::from_secs(10)));
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(limits);
/// assert_eq!(BodyLimits::of(request.extensions()).replay_limit_bytes(), 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    replay_limit: usize,
    idle_timeout: Option<Duration>,
}

impl BodyLimits {
    /// The defaults: [`DEFAULT_REPLAY_LIMIT`] and [`DEFAULT_IDLE_TIMEOUT`].
    pub const fn new() -> Self {
        BodyLimits {
            replay_limit: DEFAULT_REPLAY_LIMIT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }

    /// Bodies up to this many bytes are buffered and can be sent again; longer ones
    /// are sent once.
    pub const fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// How long the caller's body may go without a byte before it counts as stalled;
    /// `None` waits for ever.
    pub const fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The replay limit, in bytes.
    pub const fn replay_limit_bytes(&self) -> usize {
        self.replay_limit
    }

    /// The idle timeout.
    pub const fn idle(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The limits in `extensions`, or the defaults.
    pub fn of(extensions: &http::Extensions) -> BodyLimits {
        extensions.get::<BodyLimits>().copied().unwrap_or_default()
    }
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits::new()
    }
}

type Stream = UnsyncBoxBody<Bytes, BoxError>;

/// The body every brownout layer hands inward and outward. See the
/// [module docs](self).
pub struct Body {
    kind: Kind,
}

enum Kind {
    /// Every byte in memory: replayable.
    Full {
        data: Bytes,
        trailers: Option<Box<HeaderMap>>,
        /// Set when a layer found the body longer than this replay limit: it is in
        /// memory, but the stack's limit says it is sent once.
        once: Option<usize>,
    },
    /// Bytes read ahead (possibly none), then the rest of the original body.
    Stream {
        prefix: Bytes,
        rest: Stream,
        /// Set once a layer tried to buffer the body and found it longer than this.
        over_limit: Option<usize>,
        /// The caller's request body: its errors are the caller's ([`BrokenBody`]).
        caller: bool,
    },
    /// The bytes read before the original body failed, then its error.
    Failed {
        prefix: Bytes,
        error: Option<BoxError>,
    },
}

impl Body {
    /// Wraps any body whose data is [`Buf`]. A [`Body`] is handed back as it is,
    /// never wrapped twice.
    #[inline]
    pub fn new<B>(body: B) -> Body
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let body = match try_downcast::<Body, B>(body) {
            Ok(body) => return body,
            Err(body) => body,
        };
        let body = match try_downcast::<Stream, B>(body) {
            Ok(rest) => return Body::stream(rest),
            Err(body) => body,
        };
        // The body of most requests built in memory, and of most test and mock
        // answers: taken as bytes, without boxing (the `stack_instructions` bench).
        let body = match try_downcast::<http_body_util::Full<Bytes>, B>(body) {
            Ok(full) => return Body::from_full(full),
            Err(body) => body,
        };
        Body::stream(ToBytes { inner: body }.boxed_unsync())
    }

    /// The bytes of a `Full`, which yields them at once on its first poll.
    #[inline]
    fn from_full(mut full: http_body_util::Full<Bytes>) -> Body {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut full).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Body::from_bytes(data),
                Err(_) => Body::empty(),
            },
            Poll::Ready(None) => Body::empty(),
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Pending => Body::stream(full.map_err(|never| match never {}).boxed_unsync()),
        }
    }

    fn stream(rest: Stream) -> Body {
        Body {
            kind: Kind::Stream {
                prefix: Bytes::new(),
                rest,
                over_limit: None,
                caller: false,
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Body {
        Body::from_bytes(Bytes::new())
    }

    /// A complete body of these bytes.
    pub fn from_bytes(data: Bytes) -> Body {
        Body::full(data, None)
    }

    /// A complete body of these bytes and trailers.
    pub fn full(data: Bytes, trailers: Option<HeaderMap>) -> Body {
        Body {
            kind: Kind::Full {
                data,
                trailers: trailers.map(Box::new),
                once: None,
            },
        }
    }

    /// A copy of the body when every byte is in memory (cloning [`Bytes`] copies no
    /// data); `None` for a body that streams.
    pub fn try_clone(&self) -> Option<Body> {
        match &self.kind {
            Kind::Full {
                data,
                trailers,
                once: None,
            } => Some(Body {
                kind: Kind::Full {
                    data: data.clone(),
                    trailers: trailers.clone(),
                    once: None,
                },
            }),
            _ => None,
        }
    }

    /// Whether every byte is in memory, so that the body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Full { once: None, .. })
    }

    /// The whole body, when every byte is in memory.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The bytes held in memory: the whole body when it is complete, else what was
    /// read ahead of the rest (possibly nothing).
    pub fn prefix(&self) -> &[u8] {
        match &self.kind {
            Kind::Full { data, .. } => data,
            Kind::Stream { prefix, .. } | Kind::Failed { prefix, .. } => prefix,
        }
    }

    /// The replay limit a layer found this body to be over, once one tried.
    pub fn over_limit(&self) -> Option<usize> {
        match &self.kind {
            Kind::Stream { over_limit, .. } => *over_limit,
            Kind::Full { once, .. } => *once,
            Kind::Failed { .. } => None,
        }
    }

    /// The trailers of a complete body.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        match &self.kind {
            Kind::Full { trailers, .. } => trailers.as_deref(),
            _ => None,
        }
    }

    /// Reads the body until it ends or more than `limit` bytes have been read.
    /// See [`Buffer`].
    pub fn buffer(self, limit: usize) -> Buffer {
        Buffer {
            body: Some(self),
            limit,
            trust_size_hint: true,
            idle: None,
            timer: None,
            rearm: false,
            first: None,
            more: None,
            read: 0,
            trailers: None,
        }
    }

    /// Like [`buffer`](Self::buffer), but reads up to `limit` bytes even when the size
    /// hint says the body is longer: for the start of an error body.
    pub fn read_prefix(self, limit: usize) -> Buffer {
        Buffer {
            trust_size_hint: false,
            ..self.buffer(limit)
        }
    }

    /// Replaces the bytes held in memory (the whole body, or the prefix read ahead)
    /// with `bytes`: how a fallback writes another model into a request.
    pub fn with_prefix(self, bytes: Bytes) -> Body {
        match self.kind {
            Kind::Full { trailers, once, .. } => Body {
                kind: Kind::Full {
                    data: bytes,
                    trailers,
                    once,
                },
            },
            Kind::Stream {
                rest,
                over_limit,
                caller,
                ..
            } => Body {
                kind: Kind::Stream {
                    prefix: bytes,
                    rest,
                    over_limit,
                    caller,
                },
            },
            Kind::Failed { error, .. } => Body {
                kind: Kind::Failed {
                    prefix: bytes,
                    error,
                },
            },
        }
    }

    /// The error of a body that failed while it was buffered.
    fn take_failure(&mut self) -> Option<BoxError> {
        match &mut self.kind {
            Kind::Failed { error, .. } => error.take(),
            _ => None,
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(data: Bytes) -> Self {
        Body::from_bytes(data)
    }
}

impl From<Vec<u8>> for Body {
    fn from(data: Vec<u8>) -> Self {
        Body::from_bytes(data.into())
    }
}

impl From<String> for Body {
    fn from(data: String) -> Self {
        Body::from_bytes(data.into())
    }
}

impl From<&'static str> for Body {
    fn from(data: &'static str) -> Self {
        Body::from_bytes(Bytes::from_static(data.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(data: &'static [u8]) -> Self {
        Body::from_bytes(Bytes::from_static(data))
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Body");
        match &self.kind {
            Kind::Full { data, trailers, .. } => d
                .field("len", &data.len())
                .field("has_trailers", &trailers.is_some()),
            Kind::Stream {
                prefix, over_limit, ..
            } => d
                .field("prefix_len", &prefix.len())
                .field("over_limit", over_limit),
            Kind::Failed { prefix, .. } => {
                d.field("prefix_len", &prefix.len()).field("failed", &true)
            }
        };
        d.finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full { data, trailers, .. } => {
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(data)))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            Kind::Stream {
                prefix,
                rest,
                caller,
                ..
            } => {
                if !prefix.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(prefix)))));
                }
                match ready!(Pin::new(rest).poll_frame(cx)) {
                    Some(Err(error)) if *caller && !error.is::<BrokenBody>() => {
                        Poll::Ready(Some(Err(Box::new(BrokenBody::cut(error)))))
                    }
                    frame => Poll::Ready(frame),
                }
            }
            Kind::Failed { prefix, error } => {
                if !prefix.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(prefix)))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers, .. } => data.is_empty() && trailers.is_none(),
            Kind::Stream { prefix, rest, .. } => prefix.is_empty() && rest.is_end_stream(),
            Kind::Failed { prefix, error } => prefix.is_empty() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => SizeHint::with_exact(data.len() as u64),
            Kind::Stream { prefix, rest, .. } => {
                let hint = rest.size_hint();
                let prefix = prefix.len() as u64;
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(prefix));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(prefix));
                }
                out
            }
            Kind::Failed { prefix, .. } => SizeHint::with_exact(prefix.len() as u64),
        }
    }
}

pin_project_lite::pin_project! {
    /// Any body as one of `Bytes` and `BoxError`, size hint and end kept (the
    /// combinators of `http-body-util` drop the size hint when they map frames).
    struct ToBytes<B> {
        #[pin]
        inner: B,
    }
}

impl<B> http_body::Body for ToBytes<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(self.project().inner.poll_frame(cx));
        Poll::Ready(frame.map(|frame| match frame {
            Ok(frame) => Ok(frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))),
            Err(error) => Err(error.into()),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `Ok` when `K` is `T`: how [`Body::new`] avoids wrapping a body twice.
fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut k = Some(k);
    match <dyn Any>::downcast_mut::<Option<T>>(&mut k) {
        Some(t) => Ok(t.take().expect("present")),
        None => Err(k.expect("present")),
    }
}

/// The future of [`Body::buffer`] and [`Body::read_prefix`].
///
/// Its output is a [`Body`]: complete (replayable) when the body ended within the
/// limit; the bytes read so far followed by the rest when it is longer (marked with
/// [`Body::over_limit`], so that no layer inside reads it again); or the bytes read
/// so far followed by the error when it failed. A body that is already complete, or
/// already found over a limit, is handed back at once. A body whose frames are all
/// ready (such as `Full`) is buffered in the first poll, without waiting, and a body
/// of one frame is not copied.
pub struct Buffer {
    body: Option<Body>,
    limit: usize,
    trust_size_hint: bool,
    idle: Option<Duration>,
    // Allocated only once a frame is not ready at once.
    timer: Option<Pin<Box<Sleep>>>,
    rearm: bool,
    first: Option<Bytes>,
    more: Option<BytesMut>,
    read: usize,
    trailers: Option<Box<HeaderMap>>,
}

impl Buffer {
    /// Fails the body with [`BrokenBody`] when it goes `idle` without a frame.
    fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("limit", &self.limit)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Future for Buffer {
    type Output = Body;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Body> {
        let this = &mut *self;
        let body = this.body.as_mut().expect("Buffer polled after completion");
        let hint = body.size_hint().lower();
        let prefix = match &mut body.kind {
            Kind::Full { data, once, .. } => {
                if this.trust_size_hint && once.is_none() && data.len() > this.limit {
                    *once = Some(this.limit);
                }
                return Poll::Ready(this.body.take().expect("present"));
            }
            Kind::Failed { .. } => return Poll::Ready(this.body.take().expect("present")),
            Kind::Stream {
                over_limit: Some(_),
                ..
            } => return Poll::Ready(this.body.take().expect("present")),
            Kind::Stream { prefix, .. } => prefix,
        };
        if this.read == 0 && this.first.is_none() {
            if this.trust_size_hint && hint > this.limit as u64 {
                let mut body = this.body.take().expect("present");
                set_over_limit(&mut body, this.limit);
                return Poll::Ready(body);
            }
            if !prefix.is_empty() {
                let prefix = std::mem::take(prefix);
                this.read = prefix.len();
                this.first = Some(prefix);
            }
        }
        loop {
            let Some(Kind::Stream { rest, .. }) = this.body.as_mut().map(|b| &mut b.kind) else {
                unreachable!("a streaming body until ready");
            };
            let frame = match Pin::new(rest).poll_frame(cx) {
                Poll::Ready(frame) => {
                    this.rearm = true;
                    frame
                }
                Poll::Pending => {
                    let Some(idle) = this.idle else {
                        return Poll::Pending;
                    };
                    let at = tokio::time::Instant::now() + idle;
                    let timer = match &mut this.timer {
                        Some(timer) => {
                            if std::mem::take(&mut this.rearm) {
                                timer.as_mut().reset(at);
                            }
                            timer
                        }
                        None => {
                            this.rearm = false;
                            this.timer.insert(Box::pin(tokio::time::sleep_until(at)))
                        }
                    };
                    ready!(timer.as_mut().poll(cx));
                    let error: BoxError = Box::new(BrokenBody::stalled(idle));
                    return Poll::Ready(this.finish_failed(error));
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(this.finish_failed(error)),
            };
            match frame.into_data() {
                Ok(chunk) => {
                    this.read = this.read.saturating_add(chunk.len());
                    match (&mut this.first, &mut this.more) {
                        (None, _) => this.first = Some(chunk),
                        (Some(first), None) => {
                            let mut joined = BytesMut::with_capacity(first.len() + chunk.len());
                            joined.extend_from_slice(first);
                            joined.extend_from_slice(&chunk);
                            this.more = Some(joined);
                        }
                        (Some(_), Some(joined)) => joined.extend_from_slice(&chunk),
                    }
                    if this.read > this.limit {
                        let mut body = this.body.take().expect("present");
                        let read = take(this.first.take(), this.more.take());
                        body = body.with_prefix(read);
                        set_over_limit(&mut body, this.limit);
                        return Poll::Ready(body);
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        match &mut this.trailers {
                            Some(existing) => existing.extend(t),
                            None => this.trailers = Some(Box::new(t)),
                        }
                    }
                }
            }
        }
        this.body = None;
        let data = take(this.first.take(), this.more.take());
        Poll::Ready(Body {
            kind: Kind::Full {
                data,
                trailers: this.trailers.take(),
                once: None,
            },
        })
    }
}

impl Buffer {
    fn finish_failed(&mut self, error: BoxError) -> Body {
        self.body = None;
        Body {
            kind: Kind::Failed {
                prefix: take(self.first.take(), self.more.take()),
                error: Some(error),
            },
        }
    }
}

fn set_over_limit(body: &mut Body, limit: usize) {
    match &mut body.kind {
        Kind::Stream { over_limit, .. } => *over_limit = Some(limit),
        Kind::Full { once, .. } => *once = Some(limit),
        Kind::Failed { .. } => {}
    }
}

fn take(first: Option<Bytes>, more: Option<BytesMut>) -> Bytes {
    match more {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    }
}

/// What a layer needs of a request before it can act on it, for [`prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The body buffered for replay (retry, fallback, cache).
    Replay,
    /// The body buffered and the [`RequestFacts`] read as far as the top-level
    /// `model` (a breaker keyed by model): the scan stops there, and a layer inside
    /// that needs more resumes it ([`RequestFacts::read_model`]). The check for a
    /// second `model` member is left to that layer, so a stack without one keys on
    /// the first.
    Model,
    /// The body buffered and every [`RequestFacts`] read (fallback, cache, degrade).
    Facts,
}

/// Reads, or completes, the facts `need` asks for into `parts`' extensions.
fn read_facts(
    parts: &mut http::request::Parts,
    body: &[u8],
    whole: bool,
    need: Need,
) -> Result<(), crate::error::InvalidRequest> {
    match (need, parts.extensions.get_mut::<RequestFacts>()) {
        (Need::Replay, _) | (Need::Model, Some(_)) => Ok(()),
        (Need::Facts, Some(facts)) => facts.complete(body),
        (Need::Model, None) => {
            let facts = RequestFacts::read_model(parts, body, whole)?;
            parts.extensions.insert(facts);
            Ok(())
        }
        (Need::Facts, None) => {
            let facts = RequestFacts::read(parts, body, whole)?;
            parts.extensions.insert(facts);
            Ok(())
        }
    }
}

/// The future of [`prepare`].
pub struct Prepare {
    parts: Option<http::request::Parts>,
    buffer: Buffer,
    replay_limit: usize,
    need: Need,
}

impl fmt::Debug for Prepare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepare")
            .field("need", &self.need)
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

/// Makes a request ready for a layer: its body a [`Body`] buffered under the stack's
/// [`BodyLimits`] (unless a layer further out already did), and with [`Need::Facts`]
/// its [`RequestFacts`] read once into its extensions.
///
/// Fails with [`BrokenBody`] when the caller's body breaks or stalls while it is read,
/// and with [`InvalidRequest`](crate::error::InvalidRequest) when the body names its `model` twice; both are the
/// caller's errors, classified as [`ClientError`](crate::OutcomeKind::ClientError).
/// A body over the limit is handed on streamed (see [`Body::over_limit`]); its facts
/// are read from the bytes read ahead.
pub fn prepare<B>(request: Request<B>, need: Need) -> Prepare
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let limits = BodyLimits::of(&parts.extensions);
    let body = caller_body(Body::new(body));
    let oversized = body.over_limit().is_none()
        && body.bytes().is_none()
        && body.size_hint().lower() > limits.replay_limit as u64;
    let buffer = if oversized && need != Need::Replay {
        // Too long to replay, whatever is read: read only the start, for the facts.
        body.read_prefix(limits.replay_limit.min(FACTS_PREFIX_LIMIT))
    } else {
        body.buffer(limits.replay_limit)
    };
    Prepare {
        parts: Some(parts),
        buffer: buffer.idle_timeout(limits.idle_timeout),
        replay_limit: limits.replay_limit,
        need,
    }
}

/// [`prepare`], done at once when nothing must be waited for: a body already in
/// memory within the replay limit (a `Full`, or one a layer further out buffered) needs
/// no future at all. Otherwise the [`Prepare`] future, boxed, to be awaited.
///
/// For hand-written response futures, which then skip a state on the common path
/// (the `stack_instructions` bench).
#[inline]
pub fn prepare_now<B>(
    request: Request<B>,
    need: Need,
) -> Result<Result<Request<Body>, BoxError>, Pin<Box<Prepare>>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let request = request.map(Body::new);
    let in_memory = match &request.body().kind {
        Kind::Full {
            data, once: None, ..
        } => data.len() <= BodyLimits::of(request.extensions()).replay_limit,
        _ => false,
    };
    if !in_memory {
        return prepare(request, need).now();
    }
    let read = match (need, RequestFacts::of(request.extensions())) {
        (Need::Replay, _) | (Need::Model, Some(_)) => true,
        (Need::Facts, Some(facts)) => facts.is_complete(),
        (_, None) => false,
    };
    if read {
        // Nothing to read: the request as it is (no move of its head in and out).
        return Ok(Ok(request));
    }
    let (mut parts, body) = request.into_parts();
    if let Err(error) = read_facts(&mut parts, body.prefix(), true, need) {
        return Ok(Err(Box::new(error)));
    }
    Ok(Ok(Request::from_parts(parts, body)))
}

/// Marks the errors of the caller's streamed body as the caller's.
fn caller_body(mut body: Body) -> Body {
    if let Kind::Stream { caller, .. } = &mut body.kind {
        *caller = true;
    }
    body
}

/// The caller's request with its body as a [`Body`] whose failures are the caller's
/// ([`BrokenBody`] in the error chain of whatever sends it), without reading it: for a
/// layer that needs none of its bytes (a breaker keyed by host). Costs no allocation
/// beyond [`Body::new`].
pub fn from_caller<B>(request: Request<B>) -> Request<Body>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    request.map(|body| caller_body(Body::new(body)))
}

/// How much of a body over the replay limit [`prepare`] reads for its facts: the
/// `model` and the rest come first in every SDK's requests.
pub const FACTS_PREFIX_LIMIT: usize = 64 * 1024;

impl Prepare {
    /// The request at once when nothing must be waited for (a body already in memory,
    /// or one whose frames are all ready), else the future back, boxed, to be awaited:
    /// lets a hand-written response future skip a state on the common path.
    pub fn now(mut self) -> Result<Result<Request<Body>, BoxError>, Pin<Box<Prepare>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut self).poll(&mut cx) {
            Poll::Ready(done) => Ok(done),
            // Polled again with the task's waker, the body registers that one.
            Poll::Pending => Err(Box::pin(self)),
        }
    }
}

impl Future for Prepare {
    type Output = Result<Request<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut body = ready!(Pin::new(&mut this.buffer).poll(cx));
        let mut parts = this.parts.take().expect("Prepare polled after completion");
        if body.over_limit().is_some() {
            // Over the stack's limit, however much of it was read for the facts.
            set_over_limit(&mut body, this.replay_limit);
        }
        if let Some(error) = body.take_failure() {
            let error = if error.is::<BrokenBody>() {
                error
            } else {
                Box::new(BrokenBody::cut(error))
            };
            return Poll::Ready(Err(error));
        }
        let whole = body.is_replayable();
        if let Err(error) = read_facts(&mut parts, body.prefix(), whole, this.need) {
            return Poll::Ready(Err(Box::new(error)));
        }
        Poll::Ready(Ok(Request::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests;
