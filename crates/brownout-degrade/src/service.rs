use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use brownout_core::{classify::Outcome, event::Event, Body, BoxError};
use http::{header, HeaderValue, Request, Response};
use tower_service::Service;

use crate::{
    answer::{id_prefix, Answer},
    future::{Kept, ResponseFuture},
    request::{self, Said},
    DegradeConfig, DegradeEvent, DegradeLayer, Degraded,
};

/// The header that marks a degraded answer: `x-brownout-degraded: true`.
pub const DEGRADED_HEADER: &str = "x-brownout-degraded";

/// The header that names the rule of a degraded answer; absent for the generic answer.
pub const DEGRADED_RULE_HEADER: &str = "x-brownout-degraded-rule";

/// The `model` of a degraded answer when the request's model cannot be read.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Answers with a canned reply in the provider's shape when the inner service fails
/// with an overload or an outage. See the [crate docs](crate).
#[derive(Clone)]
pub struct Degrade<S> {
    inner: S,
    config: Arc<DegradeConfig>,
}

impl<S> Degrade<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: DegradeConfig) -> Self {
        Degrade::from_shared(inner, Arc::new(config))
    }

    pub(crate) fn from_shared(inner: S, config: Arc<DegradeConfig>) -> Self {
        Degrade { inner, config }
    }

    /// A [`DegradeLayer`] with the given rules and settings.
    pub fn layer(config: DegradeConfig) -> DegradeLayer {
        DegradeLayer::new(config)
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

impl<S> fmt::Debug for Degrade<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Degrade")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Degrade<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
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
        ResponseFuture::new(&mut self.inner, self.config.clone(), request)
    }
}

/// The canned answer for a failed request.
pub(crate) fn degraded(config: &DegradeConfig, kept: Kept, outcome: Outcome) -> Response<Body> {
    let said = kept
        .body
        .as_deref()
        .map_or_else(Said::default, request::read);
    let rule = said.text.as_deref().and_then(|text| config.rule_for(text));
    let id = config.ids.next(id_prefix(kept.api));
    let answer = Answer {
        api: kept.api,
        stream: kept.stream,
        include_usage: said.include_usage,
        id: &id,
        model: kept.model.as_deref().unwrap_or(UNKNOWN_MODEL),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        text: rule.map_or(&*config.generic, |r| &*r.answer),
    };

    let mut response = Response::new(Body::from_bytes(answer.render()));
    *response.status_mut() = config.status;
    let headers = response.headers_mut();
    if kept.stream {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.insert(DEGRADED_HEADER, HeaderValue::from_static("true"));
    if let Some(rule) = rule {
        headers.insert(DEGRADED_RULE_HEADER, rule.header.clone());
    }
    if let Some(retry_after) = &config.retry_after_header {
        headers.insert(header::RETRY_AFTER, retry_after.clone());
    }
    let rule_name = rule.map(|r| r.name.clone());
    response
        .extensions_mut()
        .insert(Degraded::new(rule_name.clone()));
    config.events.emit(Event::new(
        "degrade",
        &kept.method,
        &kept.uri,
        DegradeEvent::Degraded {
            rule: rule_name,
            outcome: Some(outcome),
        },
    ));
    response
}
