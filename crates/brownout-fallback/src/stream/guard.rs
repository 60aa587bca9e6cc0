//! The stream guard's service, response future and body.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use brownout_core::{
    event::Event,
    provider::{Api, ErrorKind},
    shape,
    sse::{self, Meaning, Splitter},
    Body, BoxError, RequestFacts,
};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{StreamConfig, StreamEvent, StreamFailed, StreamFailure};

/// Holds a streamed answer back until its first content. See the
/// [module docs](super).
#[derive(Clone)]
pub struct StreamGuard<S> {
    inner: S,
    config: Arc<StreamConfig>,
}

impl<S> StreamGuard<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: StreamConfig) -> Self {
        StreamGuard::from_shared(inner, Arc::new(config))
    }

    pub(crate) fn from_shared(inner: S, config: Arc<StreamConfig>) -> Self {
        StreamGuard { inner, config }
    }

    /// A [`StreamGuardLayer`](super::StreamGuardLayer) with these settings.
    pub fn layer(config: StreamConfig) -> super::StreamGuardLayer {
        super::StreamGuardLayer::new(config)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for StreamGuard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamGuard")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StreamGuard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let api = match RequestFacts::of(request.extensions()) {
            Some(facts) if facts.api() != Api::Other => facts.api(),
            _ => Api::from_path(request.uri().path()),
        };
        let method = request.method().clone();
        let uri = request.uri().clone();
        ResponseFuture {
            state: State::Calling {
                future: self.inner.call(request),
            },
            api,
            config: self.config.clone(),
            request: Some((method, uri)),
        }
    }
}

pin_project! {
    /// The response future of [`StreamGuard`]: the inner call, then, for a stream,
    /// the wait for its first content.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        api: Api,
        config: Arc<StreamConfig>,
        request: Option<(Method, Uri)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Holding { hold: Option<Box<Hold>> },
        Done,
    }
}

/// A stream held back until its first content.
struct Hold {
    parts: http::response::Parts,
    body: Body,
    splitter: Splitter,
    held: VecDeque<Bytes>,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Whether the answer is a stream to hold: a 2xx `text/event-stream` of an API whose
/// stream shape is known.
fn is_stream<B>(api: Api, response: &Response<B>) -> bool {
    api != Api::Other
        && response.status().is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.as_bytes().get(..17))
            .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"))
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if !is_stream(*this.api, &response) {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response.map(Body::new)));
                    }
                    let (parts, body) = response.into_parts();
                    let timeout = this.config.first_event_timeout;
                    this.state.set(State::Holding {
                        hold: Some(Box::new(Hold {
                            parts,
                            body: Body::new(body),
                            splitter: Splitter::new(),
                            held: VecDeque::with_capacity(4),
                            sleep: Box::pin(tokio::time::sleep(timeout)),
                            timeout,
                        })),
                    });
                }
                StateProj::Holding { hold: slot } => {
                    let hold = slot.as_mut().expect("holding");
                    let done = ready!(hold.poll_commit(cx, *this.api));
                    let hold = slot.take().expect("holding");
                    this.state.set(State::Done);
                    let (failure, result) = match done {
                        Committed::Yes { tail } => {
                            let Hold {
                                parts,
                                body,
                                splitter,
                                held,
                                ..
                            } = *hold;
                            let body = GuardedBody::new(
                                held,
                                body,
                                splitter,
                                *this.api,
                                this.config.clone(),
                                this.request.take(),
                                tail,
                            );
                            return Poll::Ready(Ok(Response::from_parts(parts, Body::new(body))));
                        }
                        Committed::ErrorAnswer(data) => {
                            let (status, body) = sse::error_answer(*this.api, &data);
                            let mut response = Response::new(Body::from_bytes(body));
                            *response.status_mut() = status;
                            *response.version_mut() = hold.parts.version;
                            let headers = response.headers_mut();
                            for (name, value) in &hold.parts.headers {
                                if name != header::CONTENT_TYPE
                                    && name != header::CONTENT_LENGTH
                                    && name != header::TRANSFER_ENCODING
                                    && name != header::CACHE_CONTROL
                                {
                                    headers.append(name.clone(), value.clone());
                                }
                            }
                            headers.insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            );
                            // Fresh extensions: an outcome a layer inside recorded
                            // for the 200 head no longer holds.
                            (StreamFailure::ErrorEvent, Ok(response))
                        }
                        Committed::Failed(error) => {
                            (error.failure(), Err(Box::new(error) as BoxError))
                        }
                    };
                    if let Some((method, uri)) = this.request.take() {
                        this.config.events.emit(Event::new(
                            "stream",
                            &method,
                            &uri,
                            StreamEvent::FailedBeforeContent { failure },
                        ));
                    }
                    return Poll::Ready(result);
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// How the wait for the first content ended.
enum Committed {
    /// The stream showed content (or its end); `tail` says what the events read
    /// after the commit point already showed.
    Yes { tail: Tail },
    /// An error event came first: its data.
    ErrorAnswer(Bytes),
    /// A stall, a cut or an early end.
    Failed(StreamFailed),
}

/// What the events read so far say of a committed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    Streaming,
    Ended,
    /// An error event was the last thing handed on.
    Failed,
}

impl Hold {
    fn poll_commit(&mut self, cx: &mut Context<'_>, api: Api) -> Poll<Committed> {
        loop {
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    ready!(self.sleep.as_mut().poll(cx));
                    return Poll::Ready(Committed::Failed(StreamFailed::stalled(self.timeout)));
                }
            };
            let data = match frame {
                None => return Poll::Ready(Committed::Failed(StreamFailed::ended_early())),
                Some(Err(error)) => {
                    return Poll::Ready(Committed::Failed(StreamFailed::cut(error)))
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers before any content: nothing to hold.
                    Err(_) => continue,
                },
            };
            let whole = self.splitter.push(data);
            if whole.is_empty() {
                if self.splitter.held() > super::MAX_EVENT_BYTES {
                    return Poll::Ready(Committed::Failed(StreamFailed::cut(
                        "an event longer than 1 MiB".into(),
                    )));
                }
                continue;
            }
            let mut committed = None;
            let mut cut_at = whole.len();
            let mut offset = 0;
            for event in sse::events(&whole) {
                let end = offset + event.raw.len();
                match committed {
                    None => match sse::meaning(api, &event) {
                        Meaning::Opening => {}
                        Meaning::Content => committed = Some(Tail::Streaming),
                        Meaning::End => committed = Some(Tail::Ended),
                        Meaning::Error => {
                            return Poll::Ready(Committed::ErrorAnswer(Bytes::copy_from_slice(
                                &event.data,
                            )))
                        }
                    },
                    Some(Tail::Streaming) => match sse::ending(api, &event) {
                        Meaning::End => committed = Some(Tail::Ended),
                        Meaning::Error => {
                            committed = Some(Tail::Failed);
                            cut_at = end;
                            break;
                        }
                        _ => {}
                    },
                    Some(_) => {}
                }
                offset = end;
            }
            self.held.push_back(if cut_at < whole.len() {
                whole.slice(..cut_at)
            } else {
                whole
            });
            if let Some(tail) = committed {
                return Poll::Ready(Committed::Yes { tail });
            }
        }
    }
}

/// The body of a stream the guard committed to: the held events, byte for byte, then
/// the rest as it comes, whole events only, ended well-formed if it fails. See the
/// [module docs](super).
pub struct GuardedBody {
    held: VecDeque<Bytes>,
    inner: Option<Body>,
    splitter: Splitter,
    api: Api,
    config: Arc<StreamConfig>,
    request: Option<(Method, Uri)>,
    tail: Tail,
    sleep: Option<Pin<Box<Sleep>>>,
    rearm: bool,
}

impl fmt::Debug for GuardedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBody")
            .field("api", &self.api)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl GuardedBody {
    fn new(
        held: VecDeque<Bytes>,
        inner: Body,
        splitter: Splitter,
        api: Api,
        config: Arc<StreamConfig>,
        request: Option<(Method, Uri)>,
        tail: Tail,
    ) -> Self {
        let mut body = GuardedBody {
            held,
            inner: Some(inner),
            splitter,
            api,
            config,
            request,
            tail,
            sleep: None,
            rearm: false,
        };
        if tail == Tail::Failed {
            body.inner = None;
            body.after_error_event();
        }
        body
    }

    /// An upstream error event was handed on: the stream ends after it, with
    /// `[DONE]` for OpenAI chat.
    fn after_error_event(&mut self) {
        self.inner = None;
        if self.api == Api::OpenAiChat {
            self.held.push_back(Bytes::from_static(shape::SSE_DONE));
        }
        self.emit(StreamFailure::ErrorEvent);
    }

    /// Ends the stream with an error event of our own.
    fn fail(&mut self, failure: StreamFailure) {
        self.inner = None;
        self.splitter.clear();
        self.held.extend(failure_events(self.api, failure));
        self.emit(failure);
    }

    fn emit(&mut self, failure: StreamFailure) {
        if let Some((method, uri)) = self.request.take() {
            self.config.events.emit(Event::new(
                "stream",
                &method,
                &uri,
                StreamEvent::EndedAfterContent { failure },
            ));
        }
    }
}

/// The events that end a stream that failed after content reached the caller, in
/// the provider's shape.
pub(crate) fn failure_events(api: Api, failure: StreamFailure) -> Vec<Bytes> {
    let (kind, message) = match failure {
        StreamFailure::Stalled => (
            ErrorKind::Timeout,
            "brownout: the upstream stream went silent after content had reached the caller",
        ),
        StreamFailure::EndedEarly => (
            ErrorKind::Upstream,
            "brownout: the upstream stream ended before its last event",
        ),
        _ => (
            ErrorKind::Upstream,
            "brownout: the upstream stream was cut after content had reached the caller",
        ),
    };
    match api {
        Api::OpenAiChat => vec![
            shape::sse_frame(None, &api.error_body(kind, message)),
            Bytes::from_static(shape::SSE_DONE),
        ],
        Api::OpenAiResponses => {
            let data = serde_json::json!({
                "type": "error",
                "code": kind.openai_code().unwrap_or("server_error"),
                "message": message,
                "param": null,
            });
            vec![shape::sse_frame(Some("error"), data.to_string().as_bytes())]
        }
        _ => vec![shape::sse_frame(
            Some("error"),
            &shape::anthropic_error(kind.anthropic_type(), message),
        )],
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.held.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    this.rearm = true;
                    frame
                }
                Poll::Pending => {
                    let Some(idle) = this
                        .config
                        .idle_timeout
                        .filter(|_| this.tail != Tail::Ended)
                    else {
                        return Poll::Pending;
                    };
                    let at = Instant::now() + idle;
                    let sleep = match &mut this.sleep {
                        Some(sleep) => {
                            if std::mem::take(&mut this.rearm) {
                                sleep.as_mut().reset(at);
                            }
                            sleep
                        }
                        None => {
                            this.rearm = false;
                            this.sleep.insert(Box::pin(tokio::time::sleep_until(at)))
                        }
                    };
                    ready!(sleep.as_mut().poll(cx));
                    this.fail(StreamFailure::Stalled);
                    continue;
                }
            };
            match frame {
                None => {
                    if this.tail == Tail::Ended {
                        this.inner = None;
                        return Poll::Ready(None);
                    }
                    this.fail(StreamFailure::EndedEarly);
                }
                Some(Err(_)) if this.tail == Tail::Ended => {
                    // The answer was whole: a connection that fails after its end
                    // takes nothing from it.
                    this.inner = None;
                    return Poll::Ready(None);
                }
                Some(Err(_)) => this.fail(StreamFailure::Cut),
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    if this.tail == Tail::Ended {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let whole = this.splitter.push(data);
                    if whole.is_empty() {
                        if this.splitter.held() > super::MAX_EVENT_BYTES {
                            this.splitter.clear();
                            this.fail(StreamFailure::Cut);
                        }
                        continue;
                    }
                    let mut offset = 0;
                    for event in sse::events(&whole) {
                        offset += event.raw.len();
                        match sse::ending(this.api, &event) {
                            Meaning::End => this.tail = Tail::Ended,
                            Meaning::Error if this.tail != Tail::Ended => {
                                this.tail = Tail::Failed;
                                break;
                            }
                            _ => {}
                        }
                    }
                    if this.tail == Tail::Failed {
                        let whole = whole.slice(..offset);
                        this.after_error_event();
                        return Poll::Ready(Some(Ok(Frame::data(whole))));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(whole))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}
