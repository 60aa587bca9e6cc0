//! A cascade of one request: its targets tried in turn, from the first one on, and
//! what each target's request is.

use std::sync::{Arc, OnceLock};

use brownout_core::{
    classify::{
        classify_result, DefaultClassifier, Outcome, OutcomeKind, DEFAULT_ERROR_BODY_LIMIT,
    },
    error::DeadlineExceeded,
    event::Event,
    future::Output,
    provider::CREDENTIAL_HEADERS,
    Body, BoxError, RequestFacts,
};
use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::{
    config::{Exhausted, Target},
    stream::{resume_mode, AfterFirstByte, Next, ResumeContext},
    AllTargetsFailed, FallbackConfig, FallbackEvent, FallbackReason, ServedBy,
};

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
pub(crate) fn spare_of<S: Clone>(shared: &OnceLock<S>) -> S {
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
pub(crate) fn resume_start<S, ResBody>(
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
pub(crate) fn retarget_prefix(
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
pub(crate) fn grow_content_length(parts: &mut Parts, grown: i64) {
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
pub(crate) async fn attempt<S, ResBody>(
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
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> Arc<str> {
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
pub(crate) fn served(
    result: Output,
    config: &FallbackConfig,
    target: &Target,
    position: usize,
) -> Output {
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
pub(crate) fn target_parts(parts: &Parts, target: &Target, body_len: Option<usize>) -> Parts {
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
