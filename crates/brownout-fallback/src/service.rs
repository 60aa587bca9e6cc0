use std::{
    fmt,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use brownout_core::{
    body::{prepare_now, BodyLimits, Need},
    classify::{
        classify_result, DefaultClassifier, Outcome, OutcomeKind, DEFAULT_ERROR_BODY_LIMIT,
    },
    error::DeadlineExceeded,
    event::{Event, NotReplayable},
    future::{take_ready, Output},
    provider::CREDENTIAL_HEADERS,
    Body, BoxError, RequestFacts,
};
use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::{
    config::{Exhausted, Target, UnknownModels},
    future::ResponseFuture,
    stream::{resume_mode, AfterFirstByte, Next, ResumeContext},
    AllTargetsFailed, FallbackConfig, FallbackEvent, FallbackLayer, FallbackReason, InvalidConfig,
    NoCascadeReason, ServedBy,
};

/// Sends a request to the next model of a cascade when the current one is overloaded
/// or down. See the [crate docs](crate).
#[derive(Clone)]
pub struct Fallback<S> {
    inner: S,
    /// A clone of `inner`, shared by this service's clones, for the targets after
    /// the first: a request's cascade clones it only when its first target fails,
    /// instead of every request cloning the whole stack inside. Made at the first
    /// call that needs it, and again after [`get_mut`](Self::get_mut). A clone of
    /// it serves as well as a clone of `inner` would: tower services keep what
    /// changes per call (a readiness permit) out of their clones.
    spare: Arc<OnceLock<S>>,
    routes: Arc<[Option<S>]>,
    config: Arc<FallbackConfig>,
}

impl<S> Fallback<S> {
    /// Wraps `inner`, which serves every target.
    pub fn new(inner: S, config: FallbackConfig) -> Self {
        Fallback::from_shared(inner, Arc::new(config))
    }

    pub(crate) fn from_shared(inner: S, config: Arc<FallbackConfig>) -> Self {
        let routes = config.targets.iter().map(|_| None).collect();
        Fallback {
            inner,
            spare: Arc::default(),
            routes,
            config,
        }
    }

    /// A [`FallbackLayer`] with the given settings.
    pub fn layer(config: FallbackConfig) -> FallbackLayer {
        FallbackLayer::new(config)
    }

    /// Serves `model`'s target with `service` instead of the inner service: another
    /// client, pool or endpoint of the same type (box services of different types into
    /// `tower::util::BoxCloneSyncService` to mix them). Fails when `model` is not a
    /// target.
    pub fn target_service(mut self, model: &str, service: S) -> Result<Self, InvalidConfig>
    where
        S: Clone,
    {
        let Some(i) = self.config.targets.iter().position(|t| &*t.model == model) else {
            return Err(FallbackConfig::unknown_target(model));
        };
        let mut routes: Vec<Option<S>> = self.routes.iter().cloned().collect();
        routes[i] = Some(service);
        self.routes = routes.into();
        Ok(self)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. What is changed through it serves the targets
    /// after the first too, from the next call on.
    pub fn get_mut(&mut self) -> &mut S {
        self.spare = Arc::default();
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for Fallback<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routed: Vec<&str> = self
            .config
            .targets
            .iter()
            .zip(self.routes.iter())
            .filter(|(_, r)| r.is_some())
            .map(|(t, _)| &*t.model)
            .collect();
        f.debug_struct("Fallback")
            .field("config", &self.config)
            .field("own_services", &routed)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Fallback<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Buffered once for the whole stack, and the facts read once: a caller's
        // broken or ambiguous body is its own error, answered at once.
        let request = match prepare_now(request, Need::Facts) {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => return ResponseFuture::slow(async move { Err(error) }),
            Err(prepare) => {
                let inner = take_ready(&mut self.inner);
                let routes = self.routes.clone();
                let config = self.config.clone();
                return ResponseFuture::slow(async move {
                    let request = prepare.await?;
                    run(inner, routes, config, request).await
                });
            }
        };
        match self.first(request) {
            Ok(future) => future,
            Err(request) => {
                let inner = take_ready(&mut self.inner);
                ResponseFuture::slow(run(
                    inner,
                    self.routes.clone(),
                    self.config.clone(),
                    request,
                ))
            }
        }
    }
}

impl<S, ResBody> Fallback<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    /// The common case without a box: a request whose body is in memory, for a model
    /// of the cascade that is available and served by the inner service. Its target's
    /// request is sent at once with the service the caller readied; the future keeps
    /// the layer's shared spare for the rest of the cascade, cloned only if a later
    /// target is tried. Anything else is handed back, for [`run`].
    // The `Err` is the request itself, handed back unboxed on purpose: boxing it
    // would add an allocation to the path this function exists to keep lean.
    #[allow(clippy::result_large_err)]
    fn first(&mut self, request: Request<Body>) -> Result<ResponseFuture<S>, Request<Body>> {
        let config = &self.config;
        let Some(start) = RequestFacts::of(request.extensions())
            .and_then(RequestFacts::model)
            .and_then(|model| config.targets.iter().position(|t| *t.model == *model))
        else {
            return Err(request);
        };
        let target = &config.targets[start];
        if self.routes[start].is_some()
            || config
                .health
                .as_ref()
                .is_some_and(|health| !health.is_available(&target.model))
        {
            return Err(request);
        }
        let Some(data) = request
            .body()
            .is_replayable()
            .then(|| request.body().bytes().cloned())
            .flatten()
        else {
            return Err(request);
        };
        let deadline = config.deadline.map(|d| Instant::now() + d);
        let (parts, body) = request.into_parts();
        let inner = &self.inner;
        self.spare.get_or_init(|| inner.clone());
        let cascade = Cascade {
            // For the targets after the first: cloned from the spare, and driven to
            // readiness, only if one is tried.
            inner: Spare::Shared(self.spare.clone()),
            routes: self.routes.clone(),
            config: config.clone(),
            parts,
            data,
            trailers: body.trailers().cloned(),
            start,
            deadline,
        };
        drop(body);
        let future = self.inner.call(cascade.request(target));
        Ok(ResponseFuture::first(future, cascade))
    }
}

async fn run<S, ResBody>(
    inner: S,
    routes: Arc<[Option<S>]>,
    config: Arc<FallbackConfig>,
    request: Request<Body>,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let deadline = config.deadline.map(|d| Instant::now() + d);
    let (parts, body) = request.into_parts();
    let event = |data: FallbackEvent| Event::new("fallback", &parts.method, &parts.uri, data);
    // Borrowed, not cloned: every target's head is a clone of `parts`, and carries
    // these facts with it when its model is the requested one.
    let head_facts;
    let facts = match RequestFacts::of(&parts.extensions) {
        Some(facts) => facts,
        None => {
            head_facts = RequestFacts::of_head(&parts);
            &head_facts
        }
    };
    // A request for one of the targets starts the cascade there: never an upgrade.
    let requested = facts
        .model()
        .and_then(|model| config.targets.iter().position(|t| *t.model == *model));
    let pass_through = requested.is_none() && config.unknown_models == UnknownModels::PassThrough;
    let start = requested.unwrap_or(0);
    // The service of the one target a request goes to without a cascade. The caller
    // readied the inner service, not a target's own one.
    let once = |at: usize, inner: S| match &routes[at] {
        Some(own) => (own.clone(), false),
        None => (inner, true),
    };

    let replayable = body
        .is_replayable()
        .then(|| body.bytes().cloned())
        .flatten();
    let Some(data) = replayable else {
        // Too long to buffer: sent once, to the cascade's first target, its model
        // (read from the bytes read ahead) written into those bytes.
        let limit = body
            .over_limit()
            .unwrap_or_else(|| BodyLimits::of(&parts.extensions).replay_limit_bytes());
        let reason = NoCascadeReason::NotReplayable(NotReplayable::BodyTooLarge { limit });
        config
            .events
            .emit(event(FallbackEvent::NoCascade { reason }));
        let at = if pass_through { 0 } else { start };
        let (mut service, ready) = once(at, inner);
        let target = &config.targets[at];
        let request = if pass_through {
            Request::from_parts(parts, body)
        } else {
            let mut parts = target_parts(&parts, target, None);
            let (body, change) = retarget_prefix(facts, body, target);
            if let Some((grown, new_facts)) = change {
                grow_content_length(&mut parts, grown);
                parts.extensions.insert(new_facts);
            }
            Request::from_parts(parts, body)
        };
        let (result, _) = attempt(&mut service, ready, &config, request, deadline).await;
        return if pass_through {
            result
        } else {
            served(result, &config, target, 0)
        };
    };
    let trailers = body.trailers().cloned();

    if facts.model().is_none() {
        config.events.emit(event(FallbackEvent::NoCascade {
            reason: NoCascadeReason::NoModel,
        }));
        let (mut service, ready) = once(0, inner);
        let first = &config.targets[0];
        let request = Request::from_parts(target_parts(&parts, first, None), body);
        let (result, _) = attempt(&mut service, ready, &config, request, deadline).await;
        return served(result, &config, first, 0);
    }
    if pass_through {
        config.events.emit(event(FallbackEvent::NoCascade {
            reason: NoCascadeReason::NotATarget,
        }));
        let (mut service, ready) = once(0, inner);
        let request = Request::from_parts(parts, body);
        let (result, _) = attempt(&mut service, ready, &config, request, deadline).await;
        return result;
    }
    drop(body);
    let cascade = Cascade {
        // The inner service was driven to readiness by the caller: its first use
        // skips `ready`, later uses wait for it.
        inner: Spare::Own {
            service: inner,
            ready: true,
        },
        routes,
        config,
        parts,
        data,
        trailers,
        start,
        deadline,
    };
    cascade.run(0, Vec::new(), Vec::new(), None).await
}

/// What a cascade needs to try its targets from a position on: the request's head
/// and bytes, and the services.
pub(crate) struct Cascade<S> {
    pub(crate) inner: Spare<S>,
    pub(crate) routes: Arc<[Option<S>]>,
    pub(crate) config: Arc<FallbackConfig>,
    /// The request's head as the caller sent it; each target's head is a clone.
    pub(crate) parts: Parts,
    pub(crate) data: Bytes,
    pub(crate) trailers: Option<http::HeaderMap>,
    /// Where in the cascade the request starts (its model's target).
    pub(crate) start: usize,
    pub(crate) deadline: Option<Instant>,
}

/// The inner service as a cascade holds it for the targets it has not tried yet:
/// its own (`ready` when the caller drove it to readiness and it is not used yet),
/// or the layer's shared spare, cloned at its first use.
pub(crate) enum Spare<S> {
    Own {
        service: S,
        ready: bool,
    },
    /// The layer's spare (set before the cascade starts), not cloned yet.
    Shared(Arc<OnceLock<S>>),
}

impl<S: Clone> Spare<S> {
    /// The service for the next call, and whether it is ready already (only the
    /// first use of a readied one is).
    fn for_call(&mut self) -> (&mut S, bool) {
        if let Spare::Shared(shared) = self {
            *self = Spare::Own {
                service: spare_of(shared),
                ready: false,
            };
        }
        match self {
            Spare::Own { service, ready } => (service, std::mem::replace(ready, false)),
            Spare::Shared(_) => unreachable!("made its own above"),
        }
    }

    /// The service itself, for what goes on after the cascade answers.
    fn into_inner(self) -> S {
        match self {
            Spare::Own { service, .. } => service,
            Spare::Shared(shared) => spare_of(&shared),
        }
    }
}

/// A clone of the layer's spare.
fn spare_of<S: Clone>(shared: &OnceLock<S>) -> S {
    shared
        .get()
        .expect("the spare is set before a cascade holds it")
        .clone()
}

/// The failures of the targets tried so far, with each failed call's error chain.
pub(crate) type Failures = (Vec<(Arc<str>, FallbackReason)>, Vec<Option<Arc<str>>>);

impl<S> Cascade<S> {
    /// The request for the target at `offset` from the start: its head, its body
    /// (its model, and `max_tokens`, rewritten when they differ) and its facts, so
    /// that the layers inside (a breaker keyed by model) see the model it asks for
    /// without reading the body again.
    pub(crate) fn request(&self, target: &Target) -> Request<Body> {
        let head_facts;
        let (facts, in_parts) = match RequestFacts::of(&self.parts.extensions) {
            Some(facts) => (facts, true),
            None => {
                head_facts = RequestFacts::of_head(&self.parts);
                (&head_facts, false)
            }
        };
        let clamps = matches!(
            (facts.max_tokens(), target.max_tokens),
            (Some(n), Some(limit)) if n > limit
        );
        let (bytes, target_facts) = if in_parts && facts.model() == Some(&*target.model) && !clamps
        {
            // The body as it is, and the facts the head's clone already carries.
            (self.data.clone(), None)
        } else {
            let (bytes, target_facts) = facts
                .retarget(&self.data, &target.model, target.max_tokens)
                .unwrap_or_else(|| (self.data.clone(), facts.clone()));
            (bytes, Some(target_facts))
        };
        let mut target_parts = target_parts(&self.parts, target, Some(bytes.len()));
        if let Some(target_facts) = target_facts {
            target_parts.extensions.insert(target_facts);
        }
        Request::from_parts(target_parts, Body::full(bytes, self.trailers.clone()))
    }

    /// Emits the event of moving on from `target` (at `offset`) to the next one.
    pub(crate) fn moving_on(&self, offset: usize, target: &Target, reason: FallbackReason) {
        if let Some(next) = self.config.targets[self.start..].get(offset + 1) {
            self.config.events.emit(Event::new(
                "fallback",
                &self.parts.method,
                &self.parts.uri,
                FallbackEvent::FallingBack {
                    from: target.model.clone(),
                    to: next.model.clone(),
                    reason,
                },
            ));
        }
    }

    /// The failure of the target at `offset`, counted before the next is tried.
    pub(crate) fn failed(
        &self,
        failures: &mut Failures,
        offset: usize,
        target: &Target,
        result: &Output,
        outcome: Outcome,
    ) {
        let (failures, details) = failures;
        failures.push((
            target.model.clone(),
            FallbackReason::Failed(outcome.clone()),
        ));
        details.resize(failures.len() - 1, None);
        details.push(
            result
                .as_ref()
                .err()
                .map(|error| error_chain(error.as_ref())),
        );
        self.moving_on(offset, target, FallbackReason::Failed(outcome));
    }
}

impl<S, ResBody> Cascade<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    /// Tries the targets from `from` (an offset from the start) on, after the
    /// `failures` of the ones before, until one answers or none is left.
    pub(crate) async fn run(
        mut self,
        from: usize,
        failures: Vec<(Arc<str>, FallbackReason)>,
        details: Vec<Option<Arc<str>>>,
        mut last: Option<Output>,
    ) -> Output {
        let config = self.config.clone();
        let cascade = &config.targets[self.start..];
        let mut tally: Failures = (failures, details);
        for (offset, target) in cascade.iter().enumerate().skip(from) {
            if let Some(health) = &config.health {
                if !health.is_available(&target.model) {
                    tally
                        .0
                        .push((target.model.clone(), FallbackReason::Unavailable));
                    self.moving_on(offset, target, FallbackReason::Unavailable);
                    continue;
                }
            }
            // The first target tried always goes, whatever the deadline: a deadline
            // shorter than `min_time_left` must not mean that nothing is ever sent.
            if let (Some(at), false) = (
                self.deadline,
                tally
                    .0
                    .iter()
                    .all(|(_, r)| matches!(r, FallbackReason::Unavailable)),
            ) {
                if at.saturating_duration_since(Instant::now()) < config.min_time_left {
                    break;
                }
            }
            let request = self.request(target);
            let deadline = self.deadline;
            let (result, outcome) = match &self.routes[self.start + offset] {
                Some(own) => attempt(&mut own.clone(), false, &config, request, deadline).await,
                None => {
                    let (inner, ready) = self.inner.for_call();
                    attempt(inner, ready, &config, request, deadline).await
                }
            };
            if outcome.is_success() || !(config.fallback_when)(&outcome) {
                return self.answer(result, outcome.is_success(), offset);
            }
            self.failed(&mut tally, offset, target, &result, outcome);
            last = Some(result);
        }
        exhausted(&config, tally, last)
    }

    /// The answer of the target at `offset`: marked with the target that served it,
    /// and, for a stream with `after_first_byte = "resume"`, ready to resume on the
    /// next target.
    pub(crate) fn answer(self, result: Output, success: bool, offset: usize) -> Output {
        let config = &self.config;
        let position = self.start + offset;
        let target = &config.targets[position];
        let result = served(result, config, target, offset);
        if success && config.after_first_byte == AfterFirstByte::Resume {
            let api = RequestFacts::of(&self.parts.extensions).map_or_else(
                || RequestFacts::of_head(&self.parts).api(),
                RequestFacts::api,
            );
            let ctx = ResumeContext {
                api,
                data: self.data.clone(),
                models: config.targets.iter().map(|t| t.model.clone()).collect(),
                position,
                request: (self.parts.method.clone(), self.parts.uri.clone()),
                events: config.events.clone(),
                start: resume_start(
                    self.inner.into_inner(),
                    self.routes,
                    self.config.clone(),
                    self.parts,
                    self.deadline,
                ),
            };
            return result.map(|response| resume_mode(ctx, response));
        }
        result
    }
}

/// Every target failed or was skipped: the last answer, or the report.
pub(crate) fn exhausted(
    config: &FallbackConfig,
    (failures, mut details): Failures,
    last: Option<Output>,
) -> Output {
    details.resize(failures.len(), None);
    let report = AllTargetsFailed::with_details(failures, details);
    match (config.on_exhausted, last) {
        (Exhausted::LastResponse, Some(Ok(mut response))) => {
            response.extensions_mut().insert(report);
            Ok(response)
        }
        _ => Err(Box::new(report)),
    }
}

/// How a resumed stream starts its next part: from cascade position `from` on, the
/// first target that is available and answers with a stream, sent `body` (the
/// continuation request) with its model written in.
fn resume_start<S, ResBody>(
    inner: S,
    routes: Arc<[Option<S>]>,
    config: Arc<FallbackConfig>,
    parts: Parts,
    deadline: Option<Instant>,
) -> Arc<dyn Fn(usize, Bytes) -> Next + Send + Sync>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let shared = Arc::new((inner, routes, config, parts));
    Arc::new(move |from: usize, body: Bytes| -> Next {
        let shared = shared.clone();
        Box::pin(async move {
            let (inner, routes, config, parts) = &*shared;
            let facts = RequestFacts::read(parts, &body, true).ok()?;
            for at in from..config.targets.len() {
                let target = &config.targets[at];
                if let Some(health) = &config.health {
                    if !health.is_available(&target.model) {
                        continue;
                    }
                }
                if deadline.is_some_and(|at| at <= Instant::now()) {
                    return None;
                }
                let (bytes, target_facts) = facts
                    .retarget(&body, &target.model, target.max_tokens)
                    .unwrap_or_else(|| (body.clone(), facts.clone()));
                let mut head = target_parts(parts, target, Some(bytes.len()));
                head.extensions.insert(target_facts);
                let request = Request::from_parts(head, Body::from_bytes(bytes));
                let mut service = routes[at].clone().unwrap_or_else(|| inner.clone());
                let (result, outcome) =
                    attempt(&mut service, false, config, request, deadline).await;
                match result {
                    Ok(response) if outcome.is_success() => {
                        let stream = response
                            .headers()
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.as_bytes().get(..17))
                            .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"));
                        if stream {
                            return Some((response.into_body(), at));
                        }
                    }
                    _ => {}
                }
            }
            None
        })
    })
}

/// The body of a request too long to buffer, for `target`: its model (and
/// `max_tokens`) rewritten in the bytes read ahead of the rest, with how much longer
/// the body got and its new facts; the body as it is when nothing changes.
fn retarget_prefix(
    facts: &RequestFacts,
    body: Body,
    target: &Target,
) -> (Body, Option<(i64, RequestFacts)>) {
    let clamps = matches!(
        (facts.max_tokens(), target.max_tokens),
        (Some(n), Some(limit)) if n > limit
    );
    if facts.model().is_none() || (facts.model() == Some(&*target.model) && !clamps) {
        return (body, None);
    }
    let prefix = Bytes::copy_from_slice(body.prefix());
    match facts.retarget(&prefix, &target.model, target.max_tokens) {
        Some((bytes, new_facts)) => {
            let grown = bytes.len() as i64 - prefix.len() as i64;
            (body.with_prefix(bytes), Some((grown, new_facts)))
        }
        None => (body, None),
    }
}

/// Moves `content-length`, when the request has one, by `grown` bytes.
fn grow_content_length(parts: &mut Parts, grown: i64) {
    let Some(length) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let length = length.saturating_add_signed(grown);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// One target's attempt: readiness, the call and its classification (the outcome a
/// layer further in recorded, else the default classifier's), cut off at the
/// deadline.
async fn attempt<S, ResBody>(
    service: &mut S,
    ready: bool,
    config: &FallbackConfig,
    request: Request<Body>,
    deadline: Option<Instant>,
) -> (Output, Outcome)
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let call = async {
        let result = if ready {
            service.call(request).await.map_err(Into::into)
        } else {
            match service.ready().await.map_err(Into::into) {
                Ok(service) => service.call(request).await.map_err(Into::into),
                Err(error) => Err(error),
            }
        };
        let result = result.map(|response| response.map(Body::new));
        classify_result(&DefaultClassifier::new(), result, DEFAULT_ERROR_BODY_LIMIT).await
    };
    let Some(at) = deadline else {
        return call.await;
    };
    match Box::pin(tokio::time::timeout_at(at, call)).await {
        Ok(done) => done,
        Err(_) => {
            let deadline = config.deadline.unwrap_or_default();
            let error: BoxError = Box::new(DeadlineExceeded::new(deadline, 1));
            (Err(error), Outcome::new(OutcomeKind::Timeout))
        }
    }
}

/// An error's message followed by its causes, where they add to it. Errors that
/// reach this layer from an HTTP client carry no credentials (brownout's client names
/// host and port only).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> Arc<str> {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    Arc::from(text)
}

/// Marks a response with the target that served it.
fn served(result: Output, config: &FallbackConfig, target: &Target, position: usize) -> Output {
    result.map(|mut response| {
        if let (Some(name), Some(value)) = (&config.served_header, &target.model_value) {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
            .extensions_mut()
            .insert(ServedBy::new(target.model.clone(), position));
        response
    })
}

/// The request head for `target`: its endpoint and headers, and the new body length.
fn target_parts(parts: &Parts, target: &Target, body_len: Option<usize>) -> Parts {
    let mut parts = parts.clone();
    if let Some(base) = &target.base_url {
        parts.uri = brownout_core::request::rebase(&parts.uri, base);
        if parts.headers.contains_key(header::HOST) {
            if let Some(authority) = base.authority() {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(header::HOST, host);
                }
            }
        }
    }
    // A target with its own endpoint or headers never receives the caller's
    // credentials: they belong to the caller's provider, not to this one.
    if (target.base_url.is_some() || !target.headers.is_empty()) && !target.keep_caller_credentials
    {
        for name in &CREDENTIAL_HEADERS {
            parts.headers.remove(name);
        }
    }
    for (name, value) in &target.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    if let Some(len) = body_len {
        // Written only when the body's length changed (a rewritten model or
        // `max_tokens`): a new value is an allocation.
        let stated = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().ok().and_then(|v| v.parse::<usize>().ok()));
        if matches!(stated, Some(n) if n != Some(len)) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    parts
}
