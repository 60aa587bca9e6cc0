use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use brownout_core::{
    body::{buffer, Buffered, PrefixedBody},
    classify::{classify_result, Outcome},
    event::{Event, EventKind},
    future::{take_ready, Output, ResponseFuture},
    meta::Degraded,
    BoxError,
};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use tower_service::Service;

use crate::{
    answer::{Answer, Provider},
    request::{self, Asked},
    DegradeConfig, DegradeLayer,
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
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Body + Unpin + Send + 'static,
    ReqBody::Error: Send,
    ResBody: Body + Unpin + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<PrefixedBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        ResponseFuture::new(run(inner, self.config.clone(), request))
    }
}

/// What is kept of the request to shape an answer after a failure.
enum Kept {
    /// The whole body.
    Body(Bytes),
    /// The body was too long to keep: what its start said.
    Start(Asked<'static>),
    /// The body failed while it was read: the caller's side broke, not the upstream,
    /// so the result is handed back as it is.
    Failed,
}

async fn run<S, ReqBody, ResBody>(
    mut inner: S,
    config: Arc<DegradeConfig>,
    request: Request<ReqBody>,
) -> Output<ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ResBody: Body + Unpin,
{
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let (kept, body) = match buffer(body, config.replay_limit).await {
        Buffered::Complete(replay) => (Kept::Body(replay.data().clone()), replay.replay()),
        Buffered::TooLarge(body) => (Kept::Start(request::scan(body.prefix()).into_owned()), body),
        Buffered::Failed(body) => (Kept::Failed, body),
    };
    let result = inner
        .call(Request::from_parts(parts, body))
        .await
        .map_err(Into::into);
    let (result, outcome) =
        classify_result(&config.classifier, result, config.error_body_limit).await;
    if outcome.is_success() || matches!(kept, Kept::Failed) || !(config.degrade_when)(&outcome) {
        return result;
    }
    Ok(degraded(&config, &method, &uri, kept, outcome))
}

/// The canned answer for a failed request.
fn degraded<B: Body>(
    config: &DegradeConfig,
    method: &Method,
    uri: &Uri,
    kept: Kept,
    outcome: Outcome,
) -> Response<PrefixedBody<B>> {
    let body;
    let asked = match kept {
        Kept::Body(bytes) => {
            body = bytes;
            request::read(&body)
        }
        Kept::Start(asked) => asked,
        Kept::Failed => Asked::default(),
    };
    let rule = asked.text.as_deref().and_then(|text| config.rule_for(text));
    let provider = Provider::of_path(uri.path());
    let id = config.ids.next(provider.id_prefix());
    let answer = Answer {
        provider,
        stream: asked.stream,
        include_usage: asked.include_usage,
        id: &id,
        model: asked.model.as_deref().unwrap_or(UNKNOWN_MODEL),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        text: rule.map_or(&*config.generic, |r| &*r.answer),
    };

    let mut response = Response::new(PrefixedBody::complete(answer.render(), None));
    *response.status_mut() = config.status;
    let headers = response.headers_mut();
    if asked.stream {
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
        method,
        uri,
        EventKind::Degraded {
            rule: rule_name,
            outcome: Some(outcome),
        },
    ));
    response
}
