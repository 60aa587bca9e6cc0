//! [`ObserveLayer`]: one [`Exchange`] per request; [`AttemptLayer`]: one [`Attempt`] per
//! upstream call.

use std::{
    cell::Cell,
    error::Error as StdError,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    task::{ready, Context, Poll},
    time::SystemTime,
};

use brownout_breaker::CircuitOpen;
use brownout_cache::CacheStatus;
use brownout_core::{
    body::{prepare_now, Need, Prepare},
    classify::{
        classify_error, classify_head, classify_response, record, recorded, Classifier,
        DefaultClassifier, Outcome, OutcomeKind, DEFAULT_ERROR_BODY_LIMIT,
    },
    error::{find, BrokenBody, InvalidRequest},
    provider::Api,
    request::RequestFacts,
    Body, BoxError,
};
use brownout_degrade::Degraded;
use brownout_fallback::{AllTargetsFailed, FallbackReason, ServedBy};
use brownout_limit::{RateLimited, TooManyTokens, Usage, UsageScanner};
use brownout_queue::Shed;
use brownout_retry::Attempts;
use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::record::{Answer, Attempt, Exchange, Sink};

/// The route names of the three LLM APIs, shared by every record.
#[derive(Debug)]
struct Routes {
    messages: Arc<str>,
    chat: Arc<str>,
    responses: Arc<str>,
}

impl Routes {
    fn new() -> Self {
        Routes {
            messages: Arc::from(crate::ROUTE_MESSAGES),
            chat: Arc::from(crate::ROUTE_CHAT),
            responses: Arc::from(crate::ROUTE_RESPONSES),
        }
    }

    /// The route of a request on `path`: one of the three shared names, else the path
    /// (which the metrics sink counts as `other`).
    fn of(&self, path: &str) -> Arc<str> {
        match Api::from_path(path) {
            Api::AnthropicMessages => self.messages.clone(),
            Api::OpenAiChat => self.chat.clone(),
            Api::OpenAiResponses => self.responses.clone(),
            _ => Arc::from(path),
        }
    }
}

/// How many upstream calls a request made so far, shared by the [`ObserveLayer`] that
/// keeps it and the [`AttemptLayer`] that counts each call. It also holds when the
/// request arrived, so an attempt's wall-clock time costs no second clock read, and the
/// request's first attempt until its [`Exchange`] carries it.
///
/// The attempt layer finds it the way a `tracing` span is found: the observe layer
/// makes it the thread's [`current`](Self::current) tally while it calls and polls the
/// stack inside, as it enters its span, and every brownout layer calls its inner
/// service from its own future. (It used to travel in the request's extensions, where
/// each retry's and fallback's copy of the request cost an allocation.) A call made
/// from a task that a layer of yours spawns finds no tally: it is recorded as an
/// attempt of its own, numbered 1, like a call with no observe layer over it.
#[derive(Debug, Clone)]
pub struct AttemptTally(Arc<Tally>);

thread_local! {
    /// The tally of the request whose stack this thread is calling or polling.
    static CURRENT: Cell<Option<AttemptTally>> = const { Cell::new(None) };
}

/// The tally made current by [`AttemptTally::enter`], until dropped: then it goes back
/// to its owner, and the one before is current again. Moved in and out, not cloned:
/// entering costs no count of references.
struct Entered<'a> {
    owner: &'a mut Option<AttemptTally>,
    before: Option<AttemptTally>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let before = self.before.take();
        *self.owner = CURRENT.with(|current| current.replace(before));
    }
}

#[derive(Debug)]
struct Tally {
    count: AtomicU32,
    at: SystemTime,
    started: Instant,
    /// The address of the [`ObserveLayer`]'s sink: the first attempt travels with the
    /// exchange only when the [`AttemptLayer`] records into the same sink.
    sink: usize,
    first: Mutex<First>,
}

/// Where the request's first attempt is, between the two layers.
#[derive(Debug)]
enum First {
    /// Neither the first attempt nor the exchange is recorded yet.
    Waiting,
    /// The first attempt, recorded (marked `in_exchange`), for the exchange to carry.
    Held(Attempt),
    /// The exchange is recorded: a first attempt that ends later is a record of its own.
    Closed,
}

/// The address of a sink, to tell whether two layers record into the same one.
fn sink_addr(sink: &Arc<dyn Sink>) -> usize {
    Arc::as_ptr(sink) as *const () as usize
}

impl AttemptTally {
    fn new(at: SystemTime, started: Instant, sink: &Arc<dyn Sink>) -> Self {
        AttemptTally(Arc::new(Tally {
            count: AtomicU32::new(0),
            at,
            started,
            sink: sink_addr(sink),
            first: Mutex::new(First::Waiting),
        }))
    }

    /// The tally of the request whose stack is being called or polled on this thread,
    /// when an [`ObserveLayer`] is over it.
    pub fn current() -> Option<AttemptTally> {
        CURRENT.with(|current| {
            let tally = current.take();
            let copy = tally.clone();
            current.set(tally);
            copy
        })
    }

    /// Makes `owner`'s tally the thread's current one, moved out of `owner` until the
    /// guard is dropped.
    fn enter(owner: &mut Option<AttemptTally>) -> Entered<'_> {
        let before = CURRENT.with(|current| current.replace(owner.take()));
        Entered { owner, before }
    }

    /// Calls counted so far.
    pub fn get(&self) -> u32 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Counts one more call and says which it is (1 for the first).
    fn next(&self) -> u32 {
        self.0.count.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The wall-clock time of `now`, from the request's arrival.
    fn wall_clock(&self, now: Instant) -> SystemTime {
        self.0.at + now.saturating_duration_since(self.0.started)
    }

    /// Records the request's first attempt into `sink`, the exchange's sink: marked
    /// `in_exchange` and kept for the exchange when the exchange is not recorded yet,
    /// as a record of its own otherwise.
    fn first_attempt(&self, sink: &dyn Sink, mut attempt: Attempt) {
        let mut first = self.0.first.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*first, First::Waiting) {
            attempt.in_exchange = true;
            // Under the lock, so that the exchange cannot be recorded in between.
            sink.attempt(&attempt);
            *first = First::Held(attempt);
        } else {
            drop(first);
            sink.attempt(&attempt);
        }
    }

    /// The first attempt for the exchange being recorded, if it is held; from now on
    /// a first attempt is a record of its own.
    fn take_first(&self) -> Option<Attempt> {
        let mut first = self.0.first.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *first, First::Closed) {
            First::Held(attempt) => Some(attempt),
            _ => None,
        }
    }
}

/// One [`Exchange`] per request for a [`Sink`], and a `tracing` span around it.
///
/// # When to use it
///
/// To count every request by how it was answered (live, fallback, cached, degraded,
/// shed, failed), with its latency to the response head, for metrics, a status page or
/// an availability log. Successes are counted too, not only failures.
///
/// # Where it goes
///
/// Outermost, over the degrade layer: it reads what every layer inside recorded in
/// the response's extensions (the fallback's [`ServedBy`], the retry's [`Attempts`],
/// the cache's [`CacheStatus`], the degrade layer's [`Degraded`], the queue's,
/// breaker's and limiter's refusals, the classified [`Outcome`]). It buffers the
/// request's body under the stack's `BodyLimits` and reads every
/// [`RequestFacts`] in it (the layers inside find both done and do not read them
/// again): it needs only the model, the API and whether the answer streams, but the
/// cache, fallback, degrade, queue and rate-limit layers need the rest, and one read
/// of all of them costs less than a read of the model here and the rest resumed there
/// (a stack of only a breaker and a retry under it reads a little more than it needs). Pair it with an
/// [`AttemptLayer`] right over the HTTP client to count each upstream call.
///
/// # On failure
///
/// It changes no answer: a response or an error of the stack passes unchanged, after
/// it is recorded (an error as `failed`, `shed` or `caller_error`, with the status a
/// gateway answers for it). A caller's broken upload is recorded as `caller_error` and
/// handed back as the [`BrokenBody`] error it is.
///
/// A 2xx answer that may report `usage` is recorded with its tokens: when its body
/// ends (or is dropped: a caller who hangs up mid-stream is recorded with what was
/// seen), or at once when the whole body is in memory already (a cached answer, or one
/// the cache buffered to store it), read from the end for its last `usage` object.
///
/// Each request runs inside an `INFO` span `brownout.request` with the fields `route`,
/// `model` (requested), `served`, `attempts` and `answer`, filled in when the head
/// returns; events of the layers inside carry it.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use brownout_observe::{Answer, Exchange, ObserveLayer, Sink};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// #[derive(Default)]
/// struct Last(Mutex<Option<Answer>>);
/// impl Sink for Last {
///     fn exchange(&self, exchange: &Exchange) {
///         *self.0.lock().unwrap() = Some(exchange.answer);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let last = Arc::new(Last::default());
/// let client = ServiceBuilder::new()
///     .layer(ObserveLayer::new(last.clone()))
///     .service(tower::service_fn(|_: http::Request<brownout_core::Body>| async {
///         Ok::<_, brownout_core::BoxError>(http::Response::new(brownout_core::Body::empty()))
///     }));
/// let request = http::Request::post("/v1/messages")
///     .body(brownout_core::Body::from(r#"{"model":"claude-haiku-4-5"}"#))
///     .unwrap();
/// client.oneshot(request).await.unwrap();
/// assert_eq!(*last.0.lock().unwrap(), Some(Answer::Live));
/// # }
/// ```
#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<ObserveShared>,
}

struct ObserveShared {
    sink: Arc<dyn Sink>,
    routes: Routes,
}

impl ObserveLayer {
    /// A layer recording into `sink` (a [`MetricsSink`](crate::MetricsSink), a
    /// [`StatusBoard`](crate::StatusBoard), several as [`Sinks`](crate::Sinks), …).
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        ObserveLayer {
            shared: Arc::new(ObserveShared {
                sink,
                routes: Routes::new(),
            }),
        }
    }
}

impl fmt::Debug for ObserveLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<ObserveShared>,
}

impl<S> Observe<S> {
    /// `inner`, observed by `layer`.
    pub fn new(inner: S, layer: &ObserveLayer) -> Self {
        layer.layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Observe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the future keeps of the request until its answer.
struct Pending {
    shared: Arc<ObserveShared>,
    route: Arc<str>,
    model: Option<Arc<str>>,
    at: SystemTime,
    started: Instant,
    tally: Option<AttemptTally>,
    span: tracing::Span,
    /// The request's API and whether it streams, for reading `usage` in the answer.
    api: Option<(Api, bool)>,
}

impl Pending {
    fn new(shared: Arc<ObserveShared>, path: &str) -> Self {
        let route = shared.routes.of(path);
        Pending {
            shared,
            route,
            model: None,
            at: SystemTime::now(),
            started: Instant::now(),
            tally: None,
            span: tracing::Span::none(),
            api: None,
        }
    }

    /// Reads the request's facts, gives it a tally, and opens the span.
    fn start(&mut self, request: &Request<Body>) {
        let facts = RequestFacts::of(request.extensions());
        self.model = facts.and_then(|f| f.model_arc().cloned());
        self.api = facts.map(|f| (f.api(), f.is_stream()));
        self.tally = Some(AttemptTally::new(self.at, self.started, &self.shared.sink));
        self.span = tracing::info_span!(
            "brownout.request",
            route = &*self.route,
            model = self.model.as_deref(),
            served = tracing::field::Empty,
            attempts = tracing::field::Empty,
            answer = tracing::field::Empty,
            status = tracing::field::Empty,
        );
    }

    fn finish(&self, mut exchange: Exchange, served: Option<Arc<str>>, attempts: u32) {
        self.complete(&mut exchange, served, attempts);
        self.shared.sink.exchange(&exchange);
    }

    /// The exchange with the request's part filled in, and the span's fields.
    fn complete(&self, exchange: &mut Exchange, served: Option<Arc<str>>, attempts: u32) {
        exchange.requested_model = self.model.clone();
        exchange.served_by = served;
        exchange.first_attempt = self.tally.as_ref().and_then(AttemptTally::take_first);
        exchange.attempts = match &self.tally {
            // Without an attempt layer inside, the retry layer's count of the model
            // that answered (0 when nothing was sent).
            Some(tally) if tally.get() > 0 => tally.get(),
            _ => attempts,
        };
        if !self.span.is_disabled() {
            self.span.record("served", exchange.served_by.as_deref());
            self.span.record("attempts", exchange.attempts);
            self.span.record("answer", exchange.answer.as_str());
            self.span.record("status", exchange.status);
        }
    }

    /// Records `response`: at once, or for an answer of a model that may report its
    /// `usage` (a live, fallback, cached or stale 2xx of a known API), when its body
    /// ends or is dropped, with the tokens it reported; at once, too, for such an
    /// answer whose whole body is already in memory (its latency is then the time to
    /// its head, which is also the time to its last byte here).
    fn response(&self, response: Response<Body>) -> Response<Body> {
        let extensions = response.extensions();
        let status = response.status().as_u16();
        let served = extensions.get::<ServedBy>();
        let cache = extensions.get::<CacheStatus>();
        let answer = if extensions.get::<Degraded>().is_some() {
            Answer::Degraded
        } else if let Some(cache) = cache {
            match cache {
                CacheStatus::Hit => Answer::Cached,
                CacheStatus::Stale => Answer::Stale,
            }
        } else if status >= 400
            // A refusal answers 429, 503 or 529: an answer under 400 is not one, and
            // costs no look for the four markers.
            && (extensions.get::<Shed>().is_some()
                || extensions.get::<CircuitOpen>().is_some()
                || extensions.get::<RateLimited>().is_some()
                || extensions.get::<TooManyTokens>().is_some())
        {
            Answer::Shed
        } else {
            match recorded(&response).map(Outcome::kind) {
                Some(OutcomeKind::ClientError) => Answer::CallerError,
                Some(OutcomeKind::Rejected) => Answer::Shed,
                Some(OutcomeKind::Success) | None if status < 400 => {
                    if served.is_some_and(ServedBy::is_fallback) {
                        Answer::Fallback
                    } else {
                        Answer::Live
                    }
                }
                // A 4xx the classifier did not see (no brownout layer inside).
                None if status < 500 && status != 408 && status != 429 => Answer::CallerError,
                _ => Answer::Failed,
            }
        };
        let attempts = match answer {
            Answer::Cached | Answer::Shed => 0,
            _ => Attempts::of(extensions),
        };
        let served = match answer {
            Answer::Live | Answer::Fallback | Answer::Stale | Answer::Failed => served
                .map(ServedBy::model_arc)
                .or_else(|| self.model.clone()),
            _ => None,
        };
        let mut exchange = Exchange::at(
            self.at,
            self.route.clone(),
            answer,
            status,
            self.started.elapsed(),
        );
        if answer == Answer::Degraded {
            exchange.degraded_rule = extensions
                .get::<Degraded>()
                .and_then(Degraded::rule)
                .map(Arc::from);
        }
        let metered = matches!(
            answer,
            Answer::Live | Answer::Fallback | Answer::Cached | Answer::Stale
        ) && (200..300).contains(&status);
        match self.api.filter(|_| metered) {
            Some((api, stream)) => {
                self.complete(&mut exchange, served, attempts);
                // A whole answer in memory (the cache's, or one it buffered to
                // store): its usage read at once, and the exchange recorded with the
                // head, as the body has nothing left to wait for (no body wrapper, no
                // scan per frame).
                if let Some(bytes) = response.body().bytes() {
                    set_tokens(&mut exchange, UsageScanner::whole(api, stream, bytes));
                    self.shared.sink.exchange(&exchange);
                    return response;
                }
                response.map(|body| {
                    Body::new(Metered {
                        inner: body,
                        scanner: UsageScanner::new(api, stream),
                        exchange: Some(exchange),
                        sink: self.shared.sink.clone(),
                    })
                })
            }
            None => {
                self.finish(exchange, served, attempts);
                response
            }
        }
    }

    fn error(&self, error: &(dyn StdError + Send + Sync + 'static)) {
        let (answer, mut status) = answer_of_error(error);
        if status == 503 && &*self.route == crate::ROUTE_MESSAGES {
            // Anthropic's overload status, as brownout-gateway answers a refusal there.
            status = 529;
        }
        let exchange = Exchange::at(
            self.at,
            self.route.clone(),
            answer,
            status,
            self.started.elapsed(),
        );
        self.finish(exchange, None, 0);
    }

    /// The caller hung up before the answer's head: its own doing, never counted
    /// against availability, recorded as `499` (the status proxies log for it) with
    /// the attempts made so far.
    fn cancelled(&self) {
        let exchange = Exchange::at(
            self.at,
            self.route.clone(),
            Answer::CallerError,
            499,
            self.started.elapsed(),
        );
        self.finish(exchange, None, 0);
    }
}

/// How a stack's error reaches a caller: the answer, and the status a gateway gives it
/// (`503` for a refusal, `429` for the rate limiter's, `504` when every path timed out,
/// `502` otherwise, `400`/`408` for the caller's own broken request). The
/// [`ObserveLayer`] records a refusal on Anthropic's Messages route as `529`, the
/// status brownout-gateway answers there.
pub fn answer_of_error(error: &(dyn StdError + Send + Sync + 'static)) -> (Answer, u16) {
    if let Some(broken) = find::<BrokenBody>(error) {
        return (
            Answer::CallerError,
            if broken.is_stalled() { 408 } else { 400 },
        );
    }
    if find::<InvalidRequest>(error).is_some() {
        return (Answer::CallerError, 400);
    }
    if find::<RateLimited>(error).is_some() || find::<TooManyTokens>(error).is_some() {
        return (Answer::Shed, 429);
    }
    if find::<CircuitOpen>(error).is_some() || find::<Shed>(error).is_some() {
        return (Answer::Shed, 503);
    }
    if let Some(all) = find::<AllTargetsFailed>(error) {
        let failures = all.failures();
        let refused = |r: &FallbackReason| matches!(r, FallbackReason::Unavailable);
        if failures.iter().all(|(_, r)| refused(r)) {
            return (Answer::Shed, 503);
        }
        let timed_out = |r: &FallbackReason| match r {
            FallbackReason::Failed(outcome) => outcome.kind() == OutcomeKind::Timeout,
            _ => true,
        };
        let status = if failures.iter().all(|(_, r)| timed_out(r)) {
            504
        } else {
            502
        };
        return (Answer::Failed, status);
    }
    match classify_error(&DefaultClassifier::new(), error).kind() {
        OutcomeKind::ClientError => (Answer::CallerError, 400),
        OutcomeKind::Rejected => (Answer::Shed, 503),
        OutcomeKind::Timeout => (Answer::Failed, 504),
        _ => (Answer::Failed, 502),
    }
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ObserveFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> ObserveFuture<S> {
        let mut pending = Pending::new(self.shared.clone(), request.uri().path());
        let state = match prepare_now(request, Need::Facts) {
            // The body is there: the ready service is called in place (no clone of
            // the stack under it).
            Ok(Ok(request)) => {
                pending.start(&request);
                let future = {
                    let _entered = pending.span.enter();
                    let _tally = AttemptTally::enter(&mut pending.tally);
                    self.inner.call(request)
                };
                State::Calling { future }
            }
            Ok(Err(error)) => State::Refused { error: Some(error) },
            // The service that was made ready is the one to call once the body is
            // read; its clone waits for the next `poll_ready`.
            Err(prepare) => {
                let clone = self.inner.clone();
                State::Preparing {
                    prepare,
                    inner: Some(std::mem::replace(&mut self.inner, clone)),
                }
            }
        };
        ObserveFuture {
            state,
            pending,
            done: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, read through for the `usage` it reports: its exchange is
    /// recorded, with the tokens, when the body ends or is dropped (a caller who hangs
    /// up mid-answer is recorded all the same, with what was seen). The bytes pass
    /// unchanged; a scan for `"usage"` (memchr) is all it adds per frame.
    struct Metered {
        #[pin]
        inner: Body,
        scanner: UsageScanner,
        exchange: Option<Exchange>,
        sink: Arc<dyn Sink>,
    }

    impl PinnedDrop for Metered {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            record_tokens(this.exchange, this.scanner, this.sink);
        }
    }
}

fn record_tokens(exchange: &mut Option<Exchange>, scanner: &UsageScanner, sink: &Arc<dyn Sink>) {
    if let Some(mut exchange) = exchange.take() {
        set_tokens(&mut exchange, scanner.usage());
        sink.exchange(&exchange);
    }
}

/// The exchange's tokens, from the `usage` its answer reported: the input counted as
/// the prompt was (cache reads included) where the answer says.
fn set_tokens(exchange: &mut Exchange, usage: Usage) {
    exchange.input_tokens = usage.prompt.or(usage.input);
    exchange.output_tokens = usage.output;
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    // A frame that ends the body (a whole JSON answer, usually) is
                    // scanned as the last: nothing kept for a next one, no second pass.
                    let last = this.inner.is_end_stream();
                    this.scanner.feed(data, last);
                    if last {
                        record_tokens(this.exchange, this.scanner, this.sink);
                    }
                }
            }
            None => {
                if this.exchange.is_some() {
                    this.scanner.feed(&[], true);
                    record_tokens(this.exchange, this.scanner, this.sink);
                }
            }
            // An answer that fails half-way is a failure, whatever its head said;
            // recorded (with the tokens seen) when the body is dropped.
            Some(Err(error)) => {
                if let Some(exchange) = this.exchange.as_mut() {
                    exchange.answer = answer_of_error(error.as_ref()).0;
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Observe`].
    pub struct ObserveFuture<S: Service<Request<Body>>> {
        #[pin]
        state: State<S>,
        pending: Pending,
        // Whether the exchange was recorded: a future dropped before (the caller hung
        // up) records it as cancelled.
        done: bool,
    }

    impl<S: Service<Request<Body>>> PinnedDrop for ObserveFuture<S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                this.pending.cancelled();
            }
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<Body>>> {
        Preparing { prepare: Pin<Box<Prepare>>, inner: Option<S> },
        Calling { #[pin] future: S::Future },
        Refused { error: Option<BoxError> },
    }
}

impl<S: Service<Request<Body>>> fmt::Debug for ObserveFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveFuture").finish_non_exhaustive()
    }
}

impl<S> Future for ObserveFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Preparing { prepare, inner } => {
                    match ready!(prepare.as_mut().poll(cx)) {
                        Ok(request) => {
                            this.pending.start(&request);
                            let mut inner =
                                inner.take().expect("ObserveFuture polled after completion");
                            let future = {
                                let _entered = this.pending.span.enter();
                                let _tally = AttemptTally::enter(&mut this.pending.tally);
                                inner.call(request)
                            };
                            this.state.set(State::Calling { future });
                        }
                        Err(error) => this.state.set(State::Refused { error: Some(error) }),
                    }
                }
                StateProj::Calling { future } => {
                    let result = {
                        let _entered = this.pending.span.enter();
                        let _tally = AttemptTally::enter(&mut this.pending.tally);
                        ready!(future.poll(cx))
                    };
                    *this.done = true;
                    return Poll::Ready(match result {
                        Ok(response) => Ok(this.pending.response(response)),
                        Err(error) => {
                            let error: BoxError = error.into();
                            this.pending.error(error.as_ref());
                            Err(error)
                        }
                    });
                }
                StateProj::Refused { error } => {
                    let error = error.take().expect("ObserveFuture polled after completion");
                    *this.done = true;
                    this.pending.error(error.as_ref());
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

/// One [`Attempt`] per upstream call for a [`Sink`], classified once for the stack.
///
/// # When to use it
///
/// To count what the upstream itself did (each try, retry and fallback target), not
/// only what the caller got: the availability of a model behind a cascade that hides
/// its outage from the callers.
///
/// # Where it goes
///
/// Innermost, right over the HTTP client (under the retry layer and the rate limiter),
/// in place of a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer): it
/// classifies each answer with its classifier (the default one, or yours with
/// [`classifier`](Self::classifier)) and records the outcome in the response, so the
/// layers above read it and do not classify again. Under an [`ObserveLayer`] it numbers
/// the attempts of a request across retries and fallbacks.
///
/// # On failure
///
/// It changes nothing: an error of the client is handed on as it is, after it is
/// recorded with its classified outcome.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use brownout_observe::{Attempt, AttemptLayer, Exchange, Sink};
/// use brownout_core::classify::OutcomeKind;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// #[derive(Default)]
/// struct Outcomes(Mutex<Vec<OutcomeKind>>);
/// impl Sink for Outcomes {
///     fn exchange(&self, _: &Exchange) {}
///     fn attempt(&self, attempt: &Attempt) {
///         self.0.lock().unwrap().push(attempt.outcome);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let outcomes = Arc::new(Outcomes::default());
/// let client = ServiceBuilder::new()
///     .layer(AttemptLayer::new(outcomes.clone()))
///     .service(tower::service_fn(|_: http::Request<brownout_core::Body>| async {
///         let mut response = http::Response::new(brownout_core::Body::empty());
///         *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
///         Ok::<_, brownout_core::BoxError>(response)
///     }));
/// client.oneshot(http::Request::new(brownout_core::Body::empty())).await.unwrap();
/// assert_eq!(*outcomes.0.lock().unwrap(), [OutcomeKind::Overloaded]);
/// # }
/// ```
#[derive(Clone)]
pub struct AttemptLayer {
    shared: Arc<AttemptShared>,
}

struct AttemptShared {
    sink: Arc<dyn Sink>,
    classifier: Classifier,
    routes: Routes,
}

impl AttemptLayer {
    /// A layer recording into `sink`, classifying with the default classifier.
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        AttemptLayer {
            shared: Arc::new(AttemptShared {
                sink,
                classifier: Classifier::new(DefaultClassifier::new()),
                routes: Routes::new(),
            }),
        }
    }

    /// Classifies with `classifier` instead of the default.
    pub fn classifier(self, classifier: Classifier) -> Self {
        AttemptLayer {
            shared: Arc::new(AttemptShared {
                sink: self.shared.sink.clone(),
                classifier,
                routes: Routes::new(),
            }),
        }
    }
}

impl fmt::Debug for AttemptLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = AttemptObserve<S>;

    fn layer(&self, inner: S) -> AttemptObserve<S> {
        AttemptObserve {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`AttemptLayer`].
#[derive(Clone)]
pub struct AttemptObserve<S> {
    inner: S,
    shared: Arc<AttemptShared>,
}

impl<S> AttemptObserve<S> {
    /// `inner`, observed by `layer`.
    pub fn new(inner: S, layer: &AttemptLayer) -> Self {
        layer.layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for AttemptObserve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptObserve")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

struct Sent {
    shared: Arc<AttemptShared>,
    route: Arc<str>,
    model: Option<Arc<str>>,
    attempt: u32,
    at: SystemTime,
    started: Instant,
    /// The request's tally, for a first attempt whose exchange goes to the same sink.
    first_of: Option<AttemptTally>,
}

impl Sent {
    fn record(&self, outcome: OutcomeKind, status: Option<u16>) {
        let mut attempt = Attempt::at(
            self.at,
            self.route.clone(),
            self.attempt,
            outcome,
            self.started.elapsed(),
        );
        attempt.model = self.model.clone();
        attempt.status = status;
        match &self.first_of {
            Some(tally) => tally.first_attempt(&*self.shared.sink, attempt),
            None => self.shared.sink.attempt(&attempt),
        }
    }
}

type Reading = Pin<Box<dyn Future<Output = (Response<Body>, Outcome)> + Send>>;

impl<S, X> Service<Request<Body>> for AttemptObserve<S>
where
    S: Service<Request<Body>, Response = Response<X>>,
    S::Error: Into<BoxError>,
    X: http_body::Body + Send + 'static,
    X::Data: Send,
    X::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let extensions = request.extensions();
        let started = Instant::now();
        let tally = AttemptTally::current();
        let attempt = tally.as_ref().map_or(1, AttemptTally::next);
        let at = tally
            .as_ref()
            .map_or_else(SystemTime::now, |t| t.wall_clock(started));
        let first_of = tally.filter(|t| attempt == 1 && t.0.sink == sink_addr(&self.shared.sink));
        let sent = Sent {
            shared: self.shared.clone(),
            route: self.shared.routes.of(request.uri().path()),
            model: RequestFacts::of(extensions).and_then(|f| f.model_arc().cloned()),
            attempt,
            at,
            started,
            first_of,
        };
        AttemptFuture {
            state: AttemptState::Calling {
                future: self.inner.call(request),
            },
            sent,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AttemptObserve`].
    pub struct AttemptFuture<F> {
        #[pin]
        state: AttemptState<F>,
        sent: Sent,
    }
}

pin_project_lite::pin_project! {
    #[project = AttemptProj]
    enum AttemptState<F> {
        Calling { #[pin] future: F },
        // Boxed: only error responses whose body the classifier reads get here.
        Reading { future: Reading },
    }
}

impl<F> fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptFuture").finish_non_exhaustive()
    }
}

impl<F, X, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<X>, E>>,
    E: Into<BoxError>,
    X: http_body::Body + Send + 'static,
    X::Data: Send,
    X::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                AttemptProj::Calling { future } => match ready!(future.poll(cx)) {
                    Ok(response) => {
                        let mut response = response.map(Body::new);
                        match classify_head(&this.sent.shared.classifier, &response) {
                            Some(outcome) => {
                                if recorded(&response).is_none() {
                                    record(&mut response, &outcome);
                                }
                                this.sent
                                    .record(outcome.kind(), Some(response.status().as_u16()));
                                return Poll::Ready(Ok(response));
                            }
                            None => {
                                let classifier = this.sent.shared.classifier.clone();
                                let future = Box::pin(async move {
                                    classify_response(
                                        &classifier,
                                        response,
                                        DEFAULT_ERROR_BODY_LIMIT,
                                    )
                                    .await
                                });
                                this.state.set(AttemptState::Reading { future });
                            }
                        }
                    }
                    Err(error) => {
                        let error: BoxError = error.into();
                        let outcome = classify_error(&this.sent.shared.classifier, error.as_ref());
                        this.sent.record(outcome.kind(), None);
                        return Poll::Ready(Err(error));
                    }
                },
                AttemptProj::Reading { future } => {
                    let (response, outcome) = ready!(future.as_mut().poll(cx));
                    this.sent
                        .record(outcome.kind(), Some(response.status().as_u16()));
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}
