//! One call: estimate, admission (and the wait), the call, learning, settlement, in
//! a hand-written future: the common path (a body in memory, room in the buckets)
//! decides in `call` and then only polls the inner future, with no allocation of
//! its own beyond the response body's wrapper.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::{Duration, SystemTime},
};

use brownout_core::{
    body::{prepare_now, Need as PrepareNeed, Prepare},
    classify::parse_retry_after,
    event::Event,
    future::Output,
    provider::Api,
    Body, BoxError, RequestFacts,
};
use bytes::{Bytes, BytesMut};
use http::{request::Parts, Request, Response};
use http_body::Frame;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::{
    config::OnLimit,
    refusal,
    shared::Shared,
    store::{Admission, LimitKey},
    tokens::{self, Estimate},
    usage::{self, Scanner},
    Admit, Amounts, Deadline, LimitEvent, LimitStore, RateLimited, TooManyTokens,
};

static SDK_TIMEOUT: http::HeaderName = http::HeaderName::from_static("x-stainless-timeout");

/// The request's deadline: the [`Deadline`] in its extensions, or the timeout the
/// official SDKs send in `x-stainless-timeout` (seconds), whichever comes first.
fn deadline(parts: &http::request::Parts, now: Instant) -> Option<Instant> {
    let ext = parts.extensions.get::<Deadline>().map(|d| d.0);
    // Most requests carry a few headers and none of the SDK's: a look at the names
    // is cheaper than a hashed lookup.
    if !parts.headers.keys().any(|name| name == SDK_TIMEOUT) {
        return ext;
    }
    let sdk = parts
        .headers
        .get(&SDK_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(|s| now + Duration::from_secs_f64(s));
    match (ext, sdk) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, F> {
        #[pin]
        state: State<S, F>,
    }
}

impl<S, F> fmt::Debug for ResponseFuture<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        // The body is still arriving (rare: bodies are in memory by now).
        Prepare {
            prepare: Pin<Box<Prepare>>,
            shared: Option<Arc<Shared>>,
            inner: Option<S>,
        },
        // A remote store's answer is on its way.
        Admit {
            admission: Pin<Box<dyn Future<Output = Admit> + Send>>,
            held: Option<Box<Held<S>>>,
        },
        // Admitted, waiting for the room it took to refill.
        Wait {
            sleep: Pin<Box<Sleep>>,
            held: Option<Box<Held<S>>>,
        },
        // Sent.
        Call {
            #[pin]
            future: F,
            sent: Option<Sent>,
        },
        Done {
            output: Option<Output>,
        },
    }
}

/// A request decided on but not sent yet; what it took goes back if it is dropped
/// before it is sent (the caller gave up while it waited).
struct Held<S> {
    shared: Arc<Shared>,
    inner: Option<S>,
    request: Option<(Parts, Body)>,
    key: Arc<LimitKey>,
    need: Amounts,
    taken: bool,
    estimate: Estimate,
    input: u64,
    output: u64,
    api: Api,
    stream: bool,
    deadline: Option<Instant>,
    start: Instant,
}

impl<S> Drop for Held<S> {
    fn drop(&mut self) {
        if self.taken {
            self.shared
                .store
                .give_back(&self.key, &self.need, Instant::now());
        }
    }
}

/// What a sent request needs once its answer comes.
struct Sent {
    shared: Arc<Shared>,
    key: Arc<LimitKey>,
    estimate: Estimate,
    input: u64,
    output: u64,
    api: Api,
    stream: bool,
}

/// The future of one call of the service.
pub(crate) fn call<S, B, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    request: Request<B>,
) -> ResponseFuture<S, S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // With no facts read further out and no key closure, the layer reads the facts in
    // the same pass as its estimate (see `start`); else brownout-core reads them, or
    // completes what a layer further out began.
    let need =
        if shared.config.key_by.is_none() && request.extensions().get::<RequestFacts>().is_none() {
            PrepareNeed::Replay
        } else {
            PrepareNeed::Facts
        };
    let state = match prepare_now(request, need) {
        Ok(Ok(request)) => start(shared.clone(), inner, request),
        // The caller's broken or invalid request: answered at once, counted nowhere.
        Ok(Err(error)) => State::Done {
            output: Some(Err(error)),
        },
        Err(prepare) => State::Prepare {
            prepare,
            shared: Some(shared.clone()),
            inner: Some(inner),
        },
    };
    ResponseFuture { state }
}

/// Estimates the request, and asks the store for room.
fn start<S, ResBody>(shared: Arc<Shared>, inner: S, request: Request<Body>) -> State<S, S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let cfg = &shared.config;
    let now = Instant::now();
    let (parts, body) = request.into_parts();
    let mut facts = RequestFacts::of(&parts.extensions);
    let api = facts.map_or_else(|| Api::from_path(parts.uri.path()), |f| f.api());
    let llm = api != Api::Other;
    // One pass over the body for its facts and its input tokens, when no layer further
    // out read the facts: the estimate parses the whole body anyway.
    let one_pass = match (facts, llm, cfg.key_by.is_none(), body.bytes()) {
        (None, true, true, Some(bytes)) => tokens::read(bytes),
        _ => None,
    };
    let read_facts;
    if facts.is_none() && one_pass.is_none() {
        // As brownout-core reads them: the body in memory, or what was read ahead of
        // one over the limit. A body naming its model twice is the caller's error.
        let (bytes, whole) = match body.bytes() {
            Some(bytes) => (&bytes[..], true),
            None => (body.prefix(), false),
        };
        read_facts = match RequestFacts::read(&parts, bytes, whole) {
            Ok(read) => read,
            Err(error) => {
                return State::Done {
                    output: Some(Err(Box::new(error))),
                }
            }
        };
        facts = Some(&read_facts);
    }
    let (model, max_tokens, stream) = match (&one_pass, facts) {
        (Some(r), _) => (r.model(), r.max_tokens(), r.is_stream()),
        (None, Some(f)) => (f.model(), f.max_tokens(), f.is_stream()),
        (None, None) => (None, None, false),
    };
    let key = shared.entry(&parts, model, facts, now);
    let estimate = match (llm, &one_pass, body.bytes()) {
        (false, ..) => Estimate {
            raw: 0,
            exact: true,
        },
        (true, Some(read), _) => tokens::count_read(api, model, read, &cfg.estimate),
        (true, None, Some(bytes)) => tokens::estimate(api, model, bytes, &cfg.estimate),
        // Too long to buffer: its length, as text.
        (true, None, None) => {
            use http_body::Body as _;
            let len = body.size_hint().lower().max(body.prefix().len() as u64);
            Estimate {
                raw: (len as f64 / cfg.estimate.bytes_per_token).ceil() as u64,
                exact: false,
            }
        }
    };
    let input = key.ratio.charge(estimate, cfg.estimate.margin);
    let output = if llm {
        max_tokens.unwrap_or(cfg.default_max_tokens)
    } else {
        0
    };
    let need = Amounts::request(input, output);
    let deadline = deadline(&parts, now);
    let may_wait = deadline.map_or(cfg.max_wait, |d| {
        cfg.max_wait.min(d.saturating_duration_since(now))
    });
    let admission = shared.store.admit(&key, &need, now, may_wait);
    if let Admission::Ready(Admit::Taken(wait)) = admission {
        if wait.is_zero() {
            // The common path: sent at once, nothing held.
            let sent = Sent {
                shared,
                key,
                estimate,
                input,
                output,
                api,
                stream,
            };
            return send_parts(inner, parts, body, sent);
        }
    }
    let held = Held {
        shared,
        inner: Some(inner),
        request: Some((parts, body)),
        key,
        need,
        taken: false,
        estimate,
        input,
        output,
        api,
        stream,
        deadline,
        start: now,
    };
    match admission {
        Admission::Ready(admit) => decided(held, admit),
        Admission::Pending(admission) => State::Admit {
            admission,
            held: Some(Box::new(held)),
        },
    }
}

/// What follows the store's answer: send, wait, or refuse.
fn decided<S, ResBody>(mut held: Held<S>, admit: Admit) -> State<S, S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    match admit {
        Admit::Taken(wait) if wait.is_zero() => send(held),
        Admit::Taken(wait) => {
            held.taken = true;
            State::Wait {
                sleep: Box::pin(tokio::time::sleep_until(held.start + wait)),
                held: Some(Box::new(held)),
            }
        }
        Admit::Refused { wait, resource } => {
            let shared = &held.shared;
            let cfg = &shared.config;
            let key = &held.key;
            LimitKey::count(&key.sheds);
            if let Some((parts, _)) = &held.request {
                cfg.events.emit(Event::new(
                    "limit",
                    &parts.method,
                    &parts.uri,
                    LimitEvent::Shed {
                        key: key.name.clone(),
                        retry_after: wait,
                        resource,
                    },
                ));
            }
            let limited = RateLimited::new(key.name.clone(), resource, wait);
            let output = match cfg.on_limit {
                OnLimit::Respond => Ok(refusal::rate_limited(held.api, limited)),
                OnLimit::Error => Err(Box::new(limited) as BoxError),
            };
            State::Done {
                output: Some(output),
            }
        }
        Admit::Oversized {
            resource,
            need,
            limit,
        } => {
            let shared = &held.shared;
            let cfg = &shared.config;
            let key = &held.key;
            LimitKey::count(&key.sheds);
            if let Some((parts, _)) = &held.request {
                cfg.events.emit(Event::new(
                    "limit",
                    &parts.method,
                    &parts.uri,
                    LimitEvent::Oversized {
                        key: key.name.clone(),
                        resource,
                        need,
                        limit,
                    },
                ));
            }
            let refused = TooManyTokens::new(key.name.clone(), resource, need, limit);
            let output = match cfg.on_limit {
                OnLimit::Respond => Ok(refusal::too_many_tokens(held.api, refused)),
                OnLimit::Error => Err(Box::new(refused) as BoxError),
            };
            State::Done {
                output: Some(output),
            }
        }
    }
}

/// Sends the request.
fn send<S, ResBody>(mut held: Held<S>) -> State<S, S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    held.taken = false;
    let (Some(inner), Some((parts, body))) = (held.inner.take(), held.request.take()) else {
        unreachable!("a held request is sent once");
    };
    let sent = Sent {
        shared: held.shared.clone(),
        key: held.key.clone(),
        estimate: held.estimate,
        input: held.input,
        output: held.output,
        api: held.api,
        stream: held.stream,
    };
    send_parts(inner, parts, body, sent)
}

fn send_parts<S, ResBody>(
    mut inner: S,
    mut parts: Parts,
    body: Body,
    sent: Sent,
) -> State<S, S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let body = if sent.api == Api::OpenAiChat && sent.stream {
        ask_for_usage(&mut parts, body)
    } else {
        body
    };
    let future = inner.call(Request::from_parts(parts, body));
    State::Call {
        future,
        sent: Some(sent),
    }
}

impl<S, F, ResBody, E> Future for ResponseFuture<S, F>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = E, Future = F>,
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Call { future, sent } => {
                    let result = ready!(future.poll(cx));
                    let sent = sent.take().expect("polled after completion");
                    return Poll::Ready(answered(sent, result.map_err(Into::into)));
                }
                StateProj::Prepare {
                    prepare,
                    shared,
                    inner,
                } => match ready!(prepare.as_mut().poll(cx)) {
                    Ok(request) => {
                        let (Some(shared), Some(inner)) = (shared.take(), inner.take()) else {
                            unreachable!("prepared once");
                        };
                        start(shared, inner, request)
                    }
                    Err(error) => State::Done {
                        output: Some(Err(error)),
                    },
                },
                StateProj::Admit { admission, held } => {
                    let admit = ready!(admission.as_mut().poll(cx));
                    let held = held.take().expect("polled after completion");
                    decided(*held, admit)
                }
                StateProj::Wait { sleep, held } => {
                    ready!(sleep.as_mut().poll(cx));
                    let h = held.as_mut().expect("polled after completion");
                    // A provider's 429 while this one waited: wait for its pause too,
                    // as far as the deadline allows.
                    let now = Instant::now();
                    let max_wait = h.shared.config.max_wait;
                    match h.key.local.paused_until(now) {
                        Some(t) if h.deadline.is_none_or(|d| t <= d) && t - h.start <= max_wait => {
                            sleep.as_mut().reset(t);
                            continue;
                        }
                        _ => {}
                    }
                    let h = held.take().expect("polled after completion");
                    LimitKey::count(&h.key.waits);
                    if let Some((parts, _)) = &h.request {
                        h.shared.config.events.emit(Event::new(
                            "limit",
                            &parts.method,
                            &parts.uri,
                            LimitEvent::Waited {
                                key: h.key.name.clone(),
                                waited: now - h.start,
                                resource: None,
                            },
                        ));
                    }
                    send(*h)
                }
                StateProj::Done { output } => {
                    return Poll::Ready(output.take().expect("polled after completion"));
                }
            };
            state.set(next);
        }
    }
}

/// The answer: learn from its headers, settle or refund what the request took.
fn answered<ResBody>(sent: Sent, result: Result<Response<ResBody>, BoxError>) -> Output
where
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    // No answer: the provider may have counted it all; the reservation stands.
    let response = result?;
    // The clock is read only when something is learned or given back now.
    let success = response.status().is_success();
    let mut now = None;
    learn(&sent.shared, &sent.key, sent.api, &response, &mut now);
    let ticket = Ticket {
        store: sent.shared.store.clone(),
        key: sent.key,
        estimate: sent.estimate,
        input: sent.input,
        output: sent.output,
    };
    if !success {
        // An error answer generated nothing: the tokens come back, the request
        // stays counted.
        ticket.refund_tokens(*now.get_or_insert_with(Instant::now));
        return Ok(response.map(Body::new));
    }
    let scanner = Scanner::new(sent.api, sent.stream);
    Ok(response.map(|body| {
        Body::new(Settle {
            inner: Body::new(body),
            scanner,
            ticket: Some(ticket),
        })
    }))
}

/// Tightens the key's buckets from the response's rate-limit headers, and pauses it
/// on a 429 that says how long.
fn learn<B>(
    shared: &Shared,
    key: &Arc<LimitKey>,
    api: Api,
    response: &Response<B>,
    now: &mut Option<Instant>,
) {
    let store = &shared.store;
    usage::learned(api, response.headers(), |l| {
        let now = *now.get_or_insert_with(Instant::now);
        if store.learn(key, l.resource, l.limit, l.remaining, now) && l.limit.is_some() {
            shared.config.events.emit(Event::detached(
                "limit",
                LimitEvent::Learned {
                    key: key.name.clone(),
                    resource: l.resource,
                    limit: l.limit,
                    remaining: l.remaining,
                },
            ));
        }
    });
    if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
        if let Some(delay) = retry_after(response.headers()) {
            let now = *now.get_or_insert_with(Instant::now);
            store.pause(key, now + delay, now);
            shared.config.events.emit(Event::detached(
                "limit",
                LimitEvent::Paused {
                    key: key.name.clone(),
                    delay,
                },
            ));
        }
    }
}

fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e12)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// An OpenAI stream reports usage only when asked: ask, unless the caller said
/// anything about `stream_options` itself. The facts are read again from the new
/// body, so that a layer inside that edits it finds the right places.
fn ask_for_usage(parts: &mut http::request::Parts, body: Body) -> Body {
    let Some(bytes) = body.bytes() else {
        return body;
    };
    if brownout_core::json::find_top_level_span(bytes, "stream_options").is_some() {
        return body;
    }
    let Some(open) = bytes.iter().position(|b| *b == b'{') else {
        return body;
    };
    const ASK: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let mut out = BytesMut::with_capacity(bytes.len() + ASK.len());
    out.extend_from_slice(&bytes[..=open]);
    out.extend_from_slice(ASK);
    out.extend_from_slice(&bytes[open + 1..]);
    let out: Bytes = out.freeze();
    match RequestFacts::read(parts, &out, true) {
        Ok(facts) => {
            parts.extensions.insert(facts);
            parts.headers.remove(http::header::CONTENT_LENGTH);
            Body::from(out)
        }
        Err(_) => body,
    }
}

/// What a sent request took, to settle from its usage.
struct Ticket {
    store: Arc<dyn LimitStore>,
    key: Arc<LimitKey>,
    estimate: Estimate,
    input: u64,
    output: u64,
}

impl Ticket {
    fn refund_tokens(&self, now: Instant) {
        let back = Amounts::tokens(self.input as f64, self.output as f64);
        self.store.give_back(&self.key, &back, now);
    }

    /// Refunds the difference between what was taken and what `usage` reports; what
    /// it does not report stays taken.
    fn settle(&self, usage: &usage::Usage) {
        if usage.input.is_none() && usage.output.is_none() {
            return;
        }
        let input = usage
            .input
            .map_or(0.0, |actual| self.input as f64 - actual as f64);
        let output = usage
            .output
            .map_or(0.0, |actual| self.output as f64 - actual as f64);
        let back = Amounts::tokens(input, output);
        if !back.is_zero() {
            self.store.give_back(&self.key, &back, Instant::now());
        }
        if let Some(prompt) = usage.prompt {
            self.key
                .ratio
                .observe(self.estimate.raw, self.input, prompt);
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body, read for its usage as it passes; settled at its end, or
    /// when it is dropped.
    struct Settle {
        #[pin]
        inner: Body,
        scanner: Scanner,
        ticket: Option<Ticket>,
    }

    impl PinnedDrop for Settle {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(ticket) = this.ticket.take() {
                ticket.settle(&this.scanner.usage);
            }
        }
    }
}

impl http_body::Body for Settle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let last = this.inner.is_end_stream();
                    this.scanner.feed(data, last);
                }
            }
            None => {
                if let Some(ticket) = this.ticket.take() {
                    ticket.settle(&this.scanner.usage);
                }
            }
            Some(Err(_)) => {}
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
