//! Which request goes through which pipeline, and what the caller gets back.
//!
//! # Placing a request
//!
//! Each request goes to the provider whose API it speaks, never by accident:
//!
//! - An explicit prefix decides first: `/anthropic/v1/...` is Anthropic's,
//!   `/openai/v1/...` OpenAI's; the prefix is removed before the request goes on.
//! - Else the path: `/v1/messages` (with `count_tokens`, `batches`) is Anthropic's;
//!   `/v1/chat/completions`, `/v1/responses`, `/v1/embeddings`, `/v1/completions` (and
//!   OpenAI's other APIs) are OpenAI's ([`Family::from_path`]).
//! - Else, for paths both have (`GET /v1/models`), the credential style: `x-api-key`
//!   or `anthropic-version` are Anthropic's, `Authorization: Bearer` alone OpenAI's.
//!
//! A request that cannot be placed gets `400` naming why, and so does one whose
//! credential style is the other provider's (the caller's key is never sent to the
//! other provider's host). `POST /v1/messages`, `POST /v1/chat/completions` and `POST
//! /v1/responses` go through their route's pipeline when the configuration has the
//! route; every other request is forwarded unchanged, without the layers, to the
//! provider of its API: `forward_to` when it speaks it, else the first provider that
//! does. Methods no route accepts (`CONNECT`, `TRACE`, `PUT`, ...) get `405`; a path
//! with dot segments or an encoded slash `400`. `GET /healthz` and `GET /readyz` are
//! answered by the gateway itself.
//!
//! # What the caller gets
//!
//! Responses stream back as they arrive; an event stream that goes silent for
//! `[streams] idle_timeout` is ended with an error event in the provider's shape. The
//! router cleans hop-by-hop headers, puts `x-brownout-attempts` on when configured,
//! and turns the error that comes out of a pipeline into an answer in the provider's
//! shape: every breaker open is `529 overloaded_error` on Anthropic routes and `503`
//! on OpenAI routes, with `retry-after` the earliest moment a target may be tried;
//! every target timed out is `504`; anything else `502`. Every failed answer the
//! gateway already retried or fell back on, and each of its own error answers, carries
//! `x-should-retry: false` (unless `[headers] should_retry = false`), so that an SDK
//! does not retry on top. One line per request is logged at `DEBUG` (method, path
//! without its query, status, latency, which model, cache or rule answered), never a
//! header value or a body.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{atomic::AtomicU64, Arc},
    task::{Context, Poll},
    time::Duration,
};

use brownout::{
    body::BodyLimits,
    breaker::BreakerHandle,
    cache::CacheStatus,
    classify::{Classify, DefaultClassifier, Observed, OutcomeKind},
    degrade::Degraded,
    error::{find, BrokenBody, InvalidRequest},
    fallback::{AllTargetsFailed, FallbackReason, ServedBy},
    health::Health,
    provider::{self, ErrorKind, Family},
    request::rebase,
    retry::Attempts,
    Body, BoxError,
};
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use tokio::time::Instant;
use tower::Service;

use crate::{
    config::{Headers, CHAT_COMPLETIONS_PATH, MESSAGES_PATH, RESPONSES_PATH},
    pipeline::{Layers, Pipeline},
    timeout::{BodyTimedOut, IdleStream, Timed},
    Config,
};

/// The header that says how many times the model that answered was tried.
pub const ATTEMPTS_HEADER: &str = "x-brownout-attempts";

/// The methods some route accepts; any other gets `405`.
const ALLOW: &str = "GET, HEAD, POST, DELETE";

struct RouteService<B> {
    path: &'static str,
    api: provider::Api,
    /// The provider's base URL, or `None` when the route's cascade sets each target's.
    base: Option<Uri>,
    pipeline: Pipeline<Timed<B>>,
    /// The cascade's models, for `retry-after` and `/readyz` (empty without one).
    models: Arc<[Arc<str>]>,
}

/// Which of the proxied APIs a request is for.
#[derive(Clone, Copy)]
enum Which {
    Messages,
    ChatCompletions,
    Responses,
}

impl<B> Shared<B> {
    fn route(&self, which: Which) -> Option<&RouteService<B>> {
        match which {
            Which::Messages => self.messages.as_ref(),
            Which::ChatCompletions => self.chat_completions.as_ref(),
            Which::Responses => self.responses.as_ref(),
        }
    }
}

struct Shared<B> {
    messages: Option<RouteService<B>>,
    chat_completions: Option<RouteService<B>>,
    responses: Option<RouteService<B>>,
    /// Where each API's other paths are forwarded, when a provider speaks it.
    anthropic_base: Option<Uri>,
    openai_base: Option<Uri>,
    forward: Pipeline<Timed<B>>,
    headers: Headers,
    limits: BodyLimits,
    layers: Layers,
    body_timeout: Duration,
    stream_idle: Duration,
    stalls: Arc<AtomicU64>,
}

/// The gateway as a `tower::Service`: places each request (see the [module
/// docs](self)), routes it into its pipeline or forwards it, and always answers (its
/// error type is [`Infallible`]).
///
/// `B` is the callers' request body (hyper's `Incoming` in the proxy). Cheap to clone.
pub struct Router<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Router<B> {
    fn clone(&self) -> Self {
        Router {
            shared: self.shared.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Router<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("messages", &self.shared.messages.is_some())
            .field("chat_completions", &self.shared.chat_completions.is_some())
            .field("responses", &self.shared.responses.is_some())
            .field("anthropic", &self.shared.anthropic_base)
            .field("openai", &self.shared.openai_base)
            .field("headers", &self.shared.headers)
            .finish_non_exhaustive()
    }
}

impl<B> Router<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Builds the layers of `config` and the routes over two clients: `upstream`
    /// serves the pipelines, `forward` the other paths. Each gets the providers' keys.
    ///
    /// Call it inside the runtime that will serve: the layers take their start time
    /// from tokio's clock.
    pub fn new<C, F, X>(config: &Config, upstream: C, forward: F) -> Self
    where
        X: http_body::Body + Send + 'static,
        X::Data: Send,
        X::Error: Into<BoxError>,
        C: Service<Request<Body>, Response = Response<X>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
        F: Service<Request<Body>, Response = Response<X>> + Clone + Send + Sync + 'static,
        F::Error: Into<BoxError>,
        F::Future: Send + 'static,
    {
        let layers = Layers::new(config);
        let route = |route: Option<&crate::config::Route>, path: &'static str| {
            route.map(|r| {
                let api = provider::Api::from_path(path);
                RouteService {
                    path,
                    api,
                    base: match r.cascade() {
                        Some(_) => None,
                        None => Some(config.providers()[r.provider()].base_url().clone()),
                    },
                    // The degrade layer renders each route's own shape: Anthropic
                    // Messages, Chat Completions and Responses answers.
                    pipeline: layers.pipeline(r.cascade(), upstream.clone()),
                    models: r
                        .cascade()
                        .map(|c| c.targets().iter().map(|t| Arc::from(t.model())).collect())
                        .unwrap_or_default(),
                }
            })
        };
        let messages = route(config.messages(), MESSAGES_PATH);
        let chat_completions = route(config.chat_completions(), CHAT_COMPLETIONS_PATH);
        let responses = route(config.responses(), RESPONSES_PATH);
        let base_of = |family: Family| {
            let forward_to = config.forward_to();
            let provider = if forward_to.family() == family {
                Some(forward_to)
            } else {
                config.providers().iter().find(|p| p.family() == family)
            };
            provider.map(|p| p.base_url().clone())
        };
        let forward = layers.plain(forward);
        Router {
            shared: Arc::new(Shared {
                messages,
                chat_completions,
                responses,
                anthropic_base: base_of(Family::Anthropic),
                openai_base: base_of(Family::OpenAi),
                forward,
                headers: config.headers(),
                limits: config.limits(),
                layers,
                body_timeout: config.body_timeout(),
                stream_idle: config.stream_idle_timeout(),
                stalls: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    /// The layers behind the routes (their breakers and cache).
    pub fn layers(&self) -> &Layers {
        &self.shared.layers
    }

    /// How many streamed answers the gateway ended because they went silent for the
    /// stream idle timeout.
    pub fn stalled_streams(&self) -> u64 {
        self.shared
            .stalls
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<B> Shared<B> {
    fn routes(&self) -> impl Iterator<Item = &RouteService<B>> {
        [&self.messages, &self.chat_completions, &self.responses]
            .into_iter()
            .flatten()
    }

    /// Whether each route has a model whose breaker admits calls.
    fn readiness(&self) -> Vec<(&'static str, bool)> {
        let breakers = self.layers.breakers();
        self.routes()
            .map(|route| {
                let ready = match &breakers {
                    Some(handle) if !route.models.is_empty() => {
                        route.models.iter().any(|m| handle.is_available(m))
                    }
                    _ => true,
                };
                (route.path, ready)
            })
            .collect()
    }
}

/// The future of a pipeline's answer: [`Pipeline`]'s, boxed by it.
type PipelineFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// The [`Router`]'s answer to one request: never an error (see [`Router`]).
///
/// A named future rather than a boxed one: the pipeline's own future is already
/// boxed, so the router holds it beside what the answer needs (method, path, start,
/// route) instead of boxing an `async` block around it, which cost an allocation and
/// a copy of that block a request (the gateway bench's `wiring` row). The pipeline is
/// called on the first poll, not when the router is: hyper calls the router as soon as
/// a request's head is read and feeds the body that came with it before it polls, so
/// a layer that reads the body (the `[observe]` layer, first) finds it there.
pub struct RouterFuture<B> {
    state: State<B>,
    /// What the answer needs; `None` for the router's own answers.
    answer: Option<Answer>,
}

// No part of the future is ever pinned in place: the request is moved out of it on
// the first poll, and the pipeline's future is boxed.
impl<B> Unpin for RouterFuture<B> {}

enum State<B> {
    /// An answer the router made itself, at once.
    Ready(Option<Response<Body>>),
    /// A pipeline to call on the first poll, with the request.
    Start {
        pipeline: Source<B>,
        request: Option<Request<Timed<B>>>,
    },
    /// A pipeline called.
    Calling(PipelineFuture),
}

/// Where a [`RouterFuture`]'s pipeline is.
enum Source<B> {
    /// A clone of the route's, its own.
    Owned(Pipeline<Timed<B>>),
    /// Its connection's (see `PerConnection`).
    Connection(ConnectionPipeline<B>),
}

/// What turns a pipeline's answer, or its error, into the caller's answer.
struct Answer {
    started: Instant,
    method: Method,
    /// The caller's URI: its path is logged and named in the gateway's own errors.
    original: Uri,
    api: provider::Api,
    headers: Headers,
    idle: Duration,
    /// The route's pipeline answers, or `None` for a request forwarded without the
    /// layers.
    which: Option<Which>,
    /// The router's state: the stall count, and the route's breakers and models for
    /// an error's `retry-after`, read only when they are needed.
    shared: Arc<dyn Routes>,
}

/// A connection's clone of a pipeline: each request's future locks it while it calls
/// it (never contended: one request at a time).
type ConnectionPipeline<B> = Arc<std::sync::Mutex<Pipeline<Timed<B>>>>;

/// The router on one of the gateway's connections. It keeps its own clone of each
/// pipeline it has used and calls that in place, where the shared [`Router`] clones
/// the route's pipeline for every request (an allocation and a clone of each layer's
/// handles: about 380 instructions a request in the gateway bench's `wiring` row). An
/// HTTP/1.1 connection serves one request at a time, and a pipeline is locked only
/// while it is called, never while its answer is awaited.
pub(crate) struct PerConnection<B> {
    router: Router<B>,
    /// The forwarding pipeline's clone, then each route's (see `index`).
    pipelines: std::cell::RefCell<[Option<ConnectionPipeline<B>>; 4]>,
}

impl<B> Router<B> {
    /// The router for one connection of the gateway's own server.
    pub(crate) fn for_connection(&self) -> PerConnection<B> {
        PerConnection {
            router: self.clone(),
            pipelines: std::cell::RefCell::new([None, None, None, None]),
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for PerConnection<B>
where
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouterFuture<B>;

    fn call(&self, request: Request<B>) -> RouterFuture<B> {
        self.router
            .dispatch(request, |route_pipeline, request, answer| {
                let index = match answer.which {
                    None => 0,
                    Some(Which::Messages) => 1,
                    Some(Which::ChatCompletions) => 2,
                    Some(Which::Responses) => 3,
                };
                let mut pipelines = self.pipelines.borrow_mut();
                let pipeline = pipelines[index]
                    .get_or_insert_with(|| Arc::new(std::sync::Mutex::new(route_pipeline.clone())));
                RouterFuture::call(Source::Connection(pipeline.clone()), request, answer)
            })
    }
}

/// What an [`Answer`] reads of the router's state, whatever the callers' body type.
trait Routes: Send + Sync {
    fn stalls(&self) -> &Arc<AtomicU64>;
    fn answering(&self, which: Option<Which>, should_retry: bool) -> Answering;
}

impl<B: 'static> Routes for Shared<B> {
    fn stalls(&self) -> &Arc<AtomicU64> {
        &self.stalls
    }

    fn answering(&self, which: Option<Which>, should_retry: bool) -> Answering {
        let route = which.and_then(|which| self.route(which));
        Answering {
            should_retry,
            breakers: route.and_then(|_| self.layers.breakers()),
            models: route.map_or_else(|| Arc::from([]), |r| r.models.clone()),
        }
    }
}

impl Answer {
    fn finish(&self, result: Result<Response<Body>, BoxError>) -> Response<Body> {
        let stalls = self.shared.stalls();
        let response = match (result, self.which) {
            (Ok(response), Some(_)) => finish(response, self.headers, self.api, self.idle, stalls),
            (Ok(mut response), None) => {
                remove_hop_by_hop(response.headers_mut());
                bound_stream(response, self.api, self.idle, stalls)
            }
            (Err(error), which) => {
                let answering = self.shared.answering(which, self.headers.should_retry);
                failure(
                    self.api,
                    &*error,
                    &self.method,
                    self.original.path(),
                    &answering,
                )
            }
        };
        log(&self.method, self.original.path(), &response, self.started);
        response
    }
}

impl<B> RouterFuture<B> {
    fn ready(response: Response<Body>) -> RouterFuture<B> {
        RouterFuture {
            state: State::Ready(Some(response)),
            answer: None,
        }
    }

    /// `request`, to be sent through `pipeline` on the first poll.
    fn call(pipeline: Source<B>, request: Request<Timed<B>>, answer: Answer) -> RouterFuture<B> {
        RouterFuture {
            state: State::Start {
                pipeline,
                request: Some(request),
            },
            answer: Some(answer),
        }
    }
}

/// Drives `pipeline` to readiness and calls it with `request`: `None` while it is not
/// ready (the request stays), else its future or the error it was not ready with.
fn start<B>(
    pipeline: &mut Pipeline<Timed<B>>,
    request: &mut Option<Request<Timed<B>>>,
    cx: &mut Context<'_>,
) -> Option<Result<PipelineFuture, BoxError>> {
    match pipeline.poll_ready(cx) {
        Poll::Pending => None,
        Poll::Ready(Ok(())) => {
            let request = request
                .take()
                .expect("RouterFuture polled after completion");
            Some(Ok(pipeline.call(request)))
        }
        Poll::Ready(Err(error)) => Some(Err(error)),
    }
}

impl<B> Future for RouterFuture<B>
where
    B: Send + 'static,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let result = match &mut this.state {
                State::Ready(response) => {
                    return Poll::Ready(Ok(response
                        .take()
                        .expect("RouterFuture polled after completion")))
                }
                State::Start { pipeline, request } => {
                    let started = match pipeline {
                        Source::Owned(pipeline) => start(pipeline, request, cx),
                        Source::Connection(pipeline) => {
                            let mut pipeline = pipeline.lock().unwrap_or_else(|e| e.into_inner());
                            start(&mut pipeline, request, cx)
                        }
                    };
                    match started {
                        None => return Poll::Pending,
                        Some(Ok(future)) => {
                            this.state = State::Calling(future);
                            continue;
                        }
                        Some(Err(error)) => Err(error),
                    }
                }
                State::Calling(future) => std::task::ready!(future.as_mut().poll(cx)),
            };
            this.state = State::Ready(None);
            let answer = this
                .answer
                .take()
                .expect("RouterFuture polled after completion");
            return Poll::Ready(Ok(answer.finish(result)));
        }
    }
}

impl<B> std::fmt::Debug for RouterFuture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterFuture").finish_non_exhaustive()
    }
}

/// What the answer to a failed pipeline needs besides the error.
struct Answering {
    should_retry: bool,
    breakers: Option<BreakerHandle>,
    models: Arc<[Arc<str>]>,
}

impl<B> Service<Request<B>> for Router<B>
where
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouterFuture<B>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every pipeline's layers and clients are always ready: readiness is driven
        // per request, in `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> RouterFuture<B> {
        // A clone of the route's pipeline for this request: `Service::call` needs it
        // mutable, and this router is shared. (The gateway's connections keep their
        // own clones instead: see `PerConnection`.)
        self.dispatch(request, |pipeline, request, answer| {
            RouterFuture::call(Source::Owned(pipeline.clone()), request, answer)
        })
    }
}

impl<B> Router<B>
where
    B: Send + 'static,
{
    /// Places `request` and answers it: at once for the router's own answers, else
    /// through `send`, which calls the pipeline it is given (the route's, or the
    /// forwarding one, as the answer's `which` says) with the request and what its
    /// answer needs.
    fn dispatch(
        &self,
        request: Request<B>,
        send: impl FnOnce(&Pipeline<Timed<B>>, Request<Timed<B>>, Answer) -> RouterFuture<B>,
    ) -> RouterFuture<B> {
        let started = Instant::now();
        let shared = &*self.shared;
        let method = request.method().clone();
        // The caller's path, for the log and the gateway's own errors: the request's
        // URI shares hyper's read buffer, so a clone costs a reference count where a
        // copy of the path would cost an allocation.
        let original = request.uri().clone();
        let path = original.path();
        let headers = shared.headers;
        let refuse = |status: StatusCode, api: provider::Api, message: &str| {
            let response = own_error(api, status, ErrorKind::InvalidRequest, message, true);
            log(&method, path, &response, started);
            RouterFuture::ready(response)
        };
        // The error shape before the request is placed (computed only for refusals).
        let guess = || shape_of(Family::from_path(path), path);

        // `[observe]`: GET /metrics, /brownout/status and /brownout/status.json.
        if let Some(response) = shared
            .layers
            .observability()
            .and_then(|o| o.page(&method, path))
        {
            return RouterFuture::ready(response);
        }
        if matches!(path, "/healthz" | "/readyz") {
            if method != Method::GET && method != Method::HEAD {
                return method_not_allowed(guess(), "GET, HEAD", &method, path);
            }
            let response = health(shared, path);
            log(&method, path, &response, started);
            return RouterFuture::ready(response);
        }
        if !matches!(
            method,
            Method::GET | Method::HEAD | Method::POST | Method::DELETE
        ) {
            return method_not_allowed(guess(), ALLOW, &method, path);
        }
        if let Err(why) = check_path(request.uri()) {
            return refuse(StatusCode::BAD_REQUEST, guess(), why);
        }
        let (family, rest) = match place(path, request.headers()) {
            Ok(placed) => placed,
            Err(why) => return refuse(StatusCode::BAD_REQUEST, guess(), &why),
        };
        let api = shape_of(Some(family), rest);

        let (mut parts, body) = request.into_parts();
        if rest.len() != path.len() {
            // Without the explicit prefix, which only the gateway reads.
            parts.uri = strip_prefix(&parts.uri, rest);
        }
        remove_hop_by_hop(&mut parts.headers);
        // The caller addressed the gateway; the client names the upstream's host.
        parts.headers.remove(header::HOST);
        // The one replay limit of the whole stack, from the config (read as the
        // defaults when absent: no extension map is made for them).
        if shared.limits != BodyLimits::default() {
            parts.extensions.insert(shared.limits);
        }
        let mut request =
            Request::from_parts(parts, Timed::new(body, started, shared.body_timeout));

        let which = match (&method, family, request.uri().path()) {
            (&Method::POST, Family::Anthropic, MESSAGES_PATH) => Some(Which::Messages),
            (&Method::POST, Family::OpenAi, CHAT_COMPLETIONS_PATH) => Some(Which::ChatCompletions),
            (&Method::POST, Family::OpenAi, RESPONSES_PATH) => Some(Which::Responses),
            _ => None,
        };
        let route = which.and_then(|which| shared.route(which).map(|route| (which, route)));
        let idle = shared.stream_idle;
        match route {
            Some((which, route)) => {
                let uri = match &route.base {
                    Some(base) => rebase(request.uri(), base),
                    None => origin_form(request.uri()),
                };
                *request.uri_mut() = uri;
                let answer = Answer {
                    started,
                    method,
                    original,
                    api: route.api,
                    headers,
                    idle,
                    which: Some(which),
                    shared: self.shared.clone(),
                };
                send(&route.pipeline, request, answer)
            }
            None => {
                let base = match family {
                    Family::Anthropic => shared.anthropic_base.as_ref(),
                    _ => shared.openai_base.as_ref(),
                };
                let Some(base) = base else {
                    let why = format!(
                        "{} is a path of the {} API, and no provider of this gateway speaks it",
                        request.uri().path(),
                        family.name()
                    );
                    return refuse(StatusCode::BAD_REQUEST, api, &why);
                };
                *request.uri_mut() = rebase(request.uri(), base);
                let answer = Answer {
                    started,
                    method,
                    original,
                    api,
                    headers,
                    idle,
                    which: None,
                    shared: self.shared.clone(),
                };
                send(&shared.forward, request, answer)
            }
        }
    }
}

/// The error shape for a request of `family` on `path`: Anthropic's unless OpenAI's.
fn shape_of(family: Option<Family>, path: &str) -> provider::Api {
    match family {
        Some(Family::OpenAi) if path.starts_with(RESPONSES_PATH) => provider::Api::OpenAiResponses,
        Some(Family::OpenAi) => provider::Api::OpenAiChat,
        _ if path.contains("/openai/") => provider::Api::OpenAiChat,
        _ => provider::Api::AnthropicMessages,
    }
}

fn method_not_allowed<B>(
    api: provider::Api,
    allow: &'static str,
    method: &Method,
    path: &str,
) -> RouterFuture<B> {
    let message = format!("the gateway does not accept {method} (it accepts {allow})");
    let mut response = own_error(
        api,
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::InvalidRequest,
        &message,
        true,
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    tracing::debug!(%method, path, status = 405, "brownout-gateway: method refused");
    RouterFuture::ready(response)
}

/// Refuses a path the upstream could read differently from the gateway: dot segments
/// (`/v1/../x`, also percent-encoded) and encoded slashes or backslashes.
fn check_path(uri: &Uri) -> Result<(), &'static str> {
    let path = uri.path().as_bytes();
    // Most paths have neither `%`, `\\` nor `.`: one scan, no allocation.
    if !path.iter().any(|b| matches!(b, b'%' | b'\\' | b'.')) {
        return Ok(());
    }
    let encoded = |at: usize, hex: &[u8; 2]| {
        path.get(at + 1..at + 3)
            .is_some_and(|h| h.eq_ignore_ascii_case(hex))
    };
    let slash = path
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\\' || (*b == b'%' && (encoded(i, b"2f") || encoded(i, b"5c"))));
    if slash {
        return Err("the path holds an encoded slash or a backslash: write the path plainly");
    }
    let dot = |segment: &[u8]| {
        let mut dots = 0;
        let mut i = 0;
        while i < segment.len() {
            if segment[i] == b'.' {
                i += 1;
            } else if segment[i] == b'%'
                && segment
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.eq_ignore_ascii_case(b"2e"))
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    };
    if path.split(|b| *b == b'/').any(dot) {
        return Err("the path holds a dot segment (`.` or `..`): write the path it means");
    }
    Ok(())
}

/// Whose API the request speaks, and its path without the gateway's prefix.
fn place<'p>(path: &'p str, headers: &HeaderMap) -> Result<(Family, &'p str), String> {
    let prefixed = [
        ("/anthropic", Family::Anthropic),
        ("/openai", Family::OpenAi),
    ]
    .into_iter()
    .find_map(|(prefix, family)| {
        let rest = path.strip_prefix(prefix)?;
        rest.starts_with('/').then_some((family, rest))
    });
    let (prefix, rest) = match prefixed {
        Some((family, rest)) => (Some(family), rest),
        None => (None, path),
    };
    let by_path = Family::from_path(rest);
    let by_credentials = Family::from_credentials(headers);
    if let (Some(prefix), Some(by_path)) = (prefix, by_path) {
        if prefix != by_path {
            return Err(format!(
                "{rest} is a path of the {} API, under the {} prefix",
                by_path.name(),
                prefix.name()
            ));
        }
    }
    let Some(family) = prefix.or(by_path).or(by_credentials) else {
        return Err(format!(
            "cannot tell which provider {rest} is for: send the provider's credential header (x-api-key for Anthropic, Authorization: Bearer for OpenAI) or use the /anthropic or /openai prefix"
        ));
    };
    if let Some(credentials) = by_credentials {
        if credentials != family {
            return Err(format!(
                "the request is for the {} API but carries {} credentials: the gateway never sends a caller's key to another provider",
                family.name(),
                credentials.name()
            ));
        }
    }
    Ok((family, rest))
}

/// `uri` with its path replaced by `rest`, its query kept.
fn strip_prefix(uri: &Uri, rest: &str) -> Uri {
    let pq = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// `GET /healthz` and `GET /readyz`, answered by the gateway.
fn health<B>(shared: &Shared<B>, path: &str) -> Response<Body> {
    let (status, body) = if path == "/healthz" {
        (StatusCode::OK, serde_json::json!({ "status": "ok" }))
    } else {
        let routes = shared.readiness();
        let ready = routes.iter().all(|(_, ready)| *ready);
        let detail: serde_json::Map<String, serde_json::Value> = routes
            .into_iter()
            .map(|(path, ready)| (path.to_owned(), serde_json::Value::Bool(ready)))
            .collect();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            serde_json::json!({ "status": if ready { "ready" } else { "not_ready" }, "routes": detail }),
        )
    };
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The response of a pipeline, cleaned and marked as configured.
fn finish(
    mut response: Response<Body>,
    headers: Headers,
    api: provider::Api,
    idle: Duration,
    stalls: &Arc<AtomicU64>,
) -> Response<Body> {
    remove_hop_by_hop(response.headers_mut());
    let attempts = Attempts::of(response.extensions());
    if headers.attempts && attempts > 1 {
        response.headers_mut().insert(
            HeaderName::from_static(ATTEMPTS_HEADER),
            HeaderValue::from(attempts),
        );
    }
    if headers.should_retry && !response.status().is_success() {
        let extensions = response.extensions();
        let handled = attempts > 1
            || extensions.get::<AllTargetsFailed>().is_some()
            || extensions
                .get::<ServedBy>()
                .is_some_and(ServedBy::is_fallback)
            || extensions.get::<Degraded>().is_some();
        if handled {
            // The gateway already retried or fell back: an SDK retrying on top would
            // multiply the upstream's load.
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
    }
    if !headers.degraded {
        response
            .headers_mut()
            .remove(brownout::degrade::DEGRADED_HEADER);
        response
            .headers_mut()
            .remove(brownout::degrade::DEGRADED_RULE_HEADER);
    }
    bound_stream(response, api, idle, stalls)
}

/// An event stream, ended with an error event if it goes silent for `idle`.
fn bound_stream(
    response: Response<Body>,
    api: provider::Api,
    idle: Duration,
    stalls: &Arc<AtomicU64>,
) -> Response<Body> {
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming || !response.status().is_success() {
        return response;
    }
    response.map(|body| Body::new(IdleStream::new(body, idle, api, stalls.clone())))
}

/// An error answer of the gateway's own in `api`'s shape.
fn own_error(
    api: provider::Api,
    status: StatusCode,
    kind: ErrorKind,
    message: &str,
    should_retry: bool,
) -> Response<Body> {
    let message = format!("brownout-gateway: {message}");
    let mut response = Response::new(Body::from(api.error_body(kind, &message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if should_retry || status.is_client_error() {
        response
            .headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    response
}

/// The answer when a pipeline or the forwarding client ends in an error: the status
/// that says what happened, with an error body in the provider's shape. The message
/// is the error's own (brownout's errors name models and outcomes, never headers).
///
/// The caller's own failures come first: a body that broke off is `400`, one that
/// stalled or did not arrive within `body_timeout` `408`, a body naming `model` twice
/// `400`. Then every breaker open is Anthropic's `529` or OpenAI's `503` with
/// `retry-after`; every target timed out `504`; anything else `502`.
fn failure(
    api: provider::Api,
    error: &(dyn std::error::Error + 'static),
    method: &Method,
    path: &str,
    answering: &Answering,
) -> Response<Body> {
    // `[limits] on_limit = "error"`: the rate limiter's refusal, as a final 429.
    if let Some(response) = crate::limits::refusal(api, error, answering.should_retry) {
        return response;
    }
    let outcome = DefaultClassifier::new().classify(Observed::Error(error));
    let overloaded = if api.is_openai() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    };
    let mut delay = outcome.server_delay();
    let (status, kind) = if find::<BodyTimedOut>(error).is_some() {
        (StatusCode::REQUEST_TIMEOUT, ErrorKind::RequestTimeout)
    } else if let Some(broken) = find::<BrokenBody>(error) {
        if broken.is_stalled() {
            (StatusCode::REQUEST_TIMEOUT, ErrorKind::RequestTimeout)
        } else {
            (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest)
        }
    } else if find::<InvalidRequest>(error).is_some() {
        (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest)
    } else if let Some(all) = find::<AllTargetsFailed>(error) {
        let failures = all.failures();
        let open = |r: &FallbackReason| matches!(r, FallbackReason::Unavailable);
        let timed_out = |r: &FallbackReason| match r {
            FallbackReason::Failed(outcome) => outcome.kind() == OutcomeKind::Timeout,
            _ => true,
        };
        if failures.iter().all(|(_, r)| open(r)) {
            delay = earliest_open(answering).or(delay);
            (overloaded, ErrorKind::Overloaded)
        } else if failures.iter().all(|(_, r)| timed_out(r)) {
            (StatusCode::GATEWAY_TIMEOUT, ErrorKind::Timeout)
        } else {
            (StatusCode::BAD_GATEWAY, ErrorKind::Upstream)
        }
    } else {
        match outcome.kind() {
            OutcomeKind::Rejected => (overloaded, ErrorKind::Overloaded),
            OutcomeKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, ErrorKind::Timeout),
            _ => (StatusCode::BAD_GATEWAY, ErrorKind::Upstream),
        }
    };
    if status.is_client_error() {
        tracing::debug!(%method, path, status = status.as_u16(), error = %error, "brownout-gateway: the caller's request failed");
    } else {
        tracing::warn!(%method, path, status = status.as_u16(), error = %error, "brownout-gateway: no answer from upstream");
    }
    let mut response = own_error(
        api,
        status,
        kind,
        &error.to_string(),
        answering.should_retry,
    );
    if kind == ErrorKind::Overloaded {
        // A wait is known only for open breakers; without one, a second.
        let delay = delay.unwrap_or(Duration::from_secs(1));
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    } else if let (false, Some(delay)) = (status.is_client_error(), delay) {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// The earliest moment one of the route's open breakers lets a call through again.
fn earliest_open(answering: &Answering) -> Option<Duration> {
    let breakers = answering.breakers.as_ref()?;
    answering
        .models
        .iter()
        .filter_map(|model| breakers.state(model)?.open_for)
        .min()
}

fn log<X>(method: &Method, path: &str, response: &Response<X>, started: Instant) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let extensions = response.extensions();
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        model = extensions.get::<ServedBy>().map(ServedBy::model),
        cache = extensions.get::<CacheStatus>().map(|c| c.as_str()),
        degraded = extensions.get::<Degraded>().map(|d| d.rule().unwrap_or("generic")),
        attempts = Attempts::of(extensions),
        "brownout-gateway: answered",
    );
}

/// The headers that describe one connection, not the message (RFC 9110 §7.6.1), and
/// the proxy-only ones.
// A `static`: a `const` array would be built, and dropped, at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether `name` is one of [`HOP_BY_HOP`]. Its text is sorted by length first: a
/// standard name's text is a table's entry, and most names a message carries
/// (`content-type`, `x-api-key`, `authorization`…) have a length no hop-by-hop name
/// has, so they are told apart without a comparison of bytes, where comparing each
/// name against the nine cost some 45 instructions a name (the gateway bench).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        18 => name == "proxy-authenticate",
        19 => name == "proxy-authorization",
        _ => false,
    }
}

/// Removes the hop-by-hop headers, including those the `connection` header names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Usually `keep-alive` or `close`, both removed below: parse only what else it
        // names.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| {
                !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close")
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Only `uri`'s path and query: the fallback layer puts each target's endpoint in
/// front.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_match_is_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["content-type", "x-api-key", "tE", "connections", "keep"] {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                assert!(
                    !is_hop_by_hop(&name) || HOP_BY_HOP.contains(&name),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-api-key", HeaderValue::from_static("sk-caller"));
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["anthropic-version", "x-api-key"]);
    }

    #[test]
    fn paths_move_under_the_provider_and_keep_their_query() {
        let uri: Uri = "/v1/messages?beta=true".parse().unwrap();
        let base: Uri = "http://127.0.0.1:8787/proxy".parse().unwrap();
        assert_eq!(
            rebase(&uri, &base),
            "http://127.0.0.1:8787/proxy/v1/messages?beta=true"
        );
        let absolute: Uri = "http://gateway:8080/v1/models".parse().unwrap();
        assert_eq!(origin_form(&absolute), "/v1/models");
    }

    #[test]
    fn errors_become_answers_in_the_providers_shape() {
        let open = brownout::breaker::CircuitOpen::new(
            "claude-sonnet-4-5".into(),
            Some(std::time::Duration::from_millis(2500)),
        );
        let response = failure(ANTHROPIC, &open, &Method::POST, "/v1/messages", &none());
        assert_eq!(response.status(), 529);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let bytes = body_bytes(response.into_body());
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "overloaded_error");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit open for claude-sonnet-4-5"));

        let timeout = brownout::error::DeadlineExceeded::new(std::time::Duration::from_secs(60), 3);
        let response = failure(
            OPENAI,
            &timeout,
            &Method::POST,
            "/v1/chat/completions",
            &none(),
        );
        assert_eq!(response.status(), 504);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let response = failure(
            OPENAI,
            &refused,
            &Method::POST,
            "/v1/chat/completions",
            &none(),
        );
        assert_eq!(response.status(), 502);
        let json: serde_json::Value =
            serde_json::from_slice(&body_bytes(response.into_body())).unwrap();
        assert_eq!(json["error"]["code"], "bad_gateway");
    }

    #[test]
    fn the_callers_broken_or_invalid_request_is_a_400_or_408() {
        let cut = BrokenBody::cut("connection reset".into());
        let response = failure(ANTHROPIC, &cut, &Method::POST, "/v1/messages", &none());
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["x-should-retry"], "false");
        let json: serde_json::Value =
            serde_json::from_slice(&body_bytes(response.into_body())).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error");
        let stalled = BrokenBody::stalled(std::time::Duration::from_secs(30));
        let response = failure(
            OPENAI,
            &stalled,
            &Method::POST,
            "/v1/chat/completions",
            &none(),
        );
        assert_eq!(response.status(), 408);
        let twice = InvalidRequest::new("the body names its `model` twice");
        let response = failure(ANTHROPIC, &twice, &Method::POST, "/v1/messages", &none());
        assert_eq!(response.status(), 400);
    }

    const ANTHROPIC: provider::Api = provider::Api::AnthropicMessages;
    const OPENAI: provider::Api = provider::Api::OpenAiChat;

    fn none() -> Answering {
        Answering {
            should_retry: true,
            breakers: None,
            models: Arc::from([]),
        }
    }

    #[test]
    fn requests_are_placed_by_prefix_path_then_credentials() {
        let mut anthropic = HeaderMap::new();
        anthropic.insert("x-api-key", HeaderValue::from_static("sk-ant"));
        let mut openai = HeaderMap::new();
        openai.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer sk"));
        let none = HeaderMap::new();
        assert_eq!(
            place("/v1/models", &anthropic).unwrap(),
            (Family::Anthropic, "/v1/models")
        );
        assert_eq!(
            place("/v1/models", &openai).unwrap(),
            (Family::OpenAi, "/v1/models")
        );
        assert_eq!(
            place("/openai/v1/models", &none).unwrap(),
            (Family::OpenAi, "/v1/models")
        );
        assert_eq!(
            place("/v1/messages/count_tokens", &none).unwrap().0,
            Family::Anthropic
        );
        assert!(place("/v1/models", &none)
            .unwrap_err()
            .contains("cannot tell"));
        assert!(place("/openai/v1/messages", &none)
            .unwrap_err()
            .contains("under the OpenAI prefix"));
        assert!(place("/v1/chat/completions", &anthropic)
            .unwrap_err()
            .contains("Anthropic credentials"));
    }

    #[test]
    fn dot_segments_and_encoded_slashes_are_refused() {
        for bad in [
            "/v1/../x",
            "/v1/./messages",
            "/v1/%2e%2E/x",
            "/v1%2Fmessages",
            "/v1/a%5cb",
        ] {
            assert!(check_path(&bad.parse().unwrap()).is_err(), "{bad}");
        }
        for good in ["/v1/messages", "/v1/files/file-..abc", "/v1/a.b"] {
            assert!(check_path(&good.parse().unwrap()).is_ok(), "{good}");
        }
    }

    fn body_bytes(body: Body) -> bytes::Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(body.collect()).unwrap().to_bytes()
    }
}
