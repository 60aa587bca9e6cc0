use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use brownout_core::{
    body::{buffer, Buffered, PrefixedBody},
    classify::{classify_result, Classifier, Outcome, OutcomeKind},
    error::CircuitOpen,
    event::{Event, EventKind, Events},
    json::find_top_level,
    BoxError,
};
use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    config::{Keying, OnOpen},
    handle::{emit_transition, BreakerHandle},
    state::{Admission, Permit, Settings, Verdict},
    store::{BreakerEntry, BreakerStore, LocalStore},
    BreakerConfig, CircuitBreakerLayer,
};

/// What every service of one layer shares.
pub(crate) struct Shared {
    store: Arc<dyn BreakerStore>,
    keying: Keying,
    key_body_limit: usize,
    on_open: OnOpen,
    classifier: Classifier,
    error_body_limit: usize,
    is_failure: Arc<dyn Fn(&Outcome) -> bool + Send + Sync>,
    slow_call: Option<Duration>,
    events: Events,
}

impl Shared {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        let settings = Arc::new(Settings {
            policy: config.policy,
            open_duration: config.open_duration,
            probes: config.half_open_probes,
            successes: config.half_open_successes,
            max_server_delay: config.max_server_delay,
            rng: config.rng,
            epoch: Instant::now(),
        });
        let store = LocalStore::new(settings, config.max_keys, config.idle_timeout);
        Shared {
            store: Arc::new(store),
            keying: config.keying,
            key_body_limit: config.key_body_limit,
            on_open: config.on_open,
            classifier: config.classifier,
            error_body_limit: config.error_body_limit,
            is_failure: config.is_failure,
            slow_call: config.slow_call,
            events: config.events,
        }
    }

    pub(crate) fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.store.clone(), self.events.clone())
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("keying", &self.keying)
            .field("on_open", &self.on_open)
            .finish_non_exhaustive()
    }
}

/// Fails fast while the upstream behind a key is failing. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` with breakers of its own.
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        CircuitBreaker::from_shared(inner, Arc::new(Shared::new(config)))
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        CircuitBreaker { inner, shared }
    }

    /// A [`CircuitBreakerLayer`] with the given settings.
    pub fn layer(config: BreakerConfig) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(config)
    }

    /// The handle to this service's breakers (shared with its clones).
    pub fn handle(&self) -> BreakerHandle {
        self.shared.handle()
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

/// Response future of [`CircuitBreaker`].
///
/// One allocation per call; the `breaker` benchmark measures the whole layer on the
/// success path.
pub struct ResponseFuture<B: Body> {
    inner: Pin<Box<dyn Future<Output = Output<B>> + Send>>,
}

type Output<B> = Result<Response<PrefixedBody<B>>, BoxError>;

impl<B: Body> Future for ResponseFuture<B> {
    type Output = Output<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B: Body> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S>
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

    /// Ready when the inner service is: which key a request belongs to is known only
    /// in `call`, where an open breaker refuses it without touching the inner service.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            inner: Box::pin(run(inner, self.shared.clone(), request)),
        }
    }
}

async fn run<S, ReqBody, ResBody>(
    mut inner: S,
    shared: Arc<Shared>,
    request: Request<ReqBody>,
) -> Result<Response<PrefixedBody<ResBody>>, BoxError>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ResBody: Body + Unpin,
{
    let (parts, body) = request.into_parts();
    let (key, body) = match &shared.keying {
        Keying::Host => (host_key(&parts), PrefixedBody::new(body)),
        Keying::Head(key) => (Cow::Owned(key(&parts)), PrefixedBody::new(body)),
        Keying::ModelOrHost | Keying::Body(_) => {
            let body = match buffer(body, shared.key_body_limit).await {
                Buffered::Complete(replay) => replay.replay(),
                Buffered::TooLarge(body) | Buffered::Failed(body) => body,
            };
            // A body over the limit is keyed by the bytes read: `model` comes early.
            let key = match &shared.keying {
                Keying::Body(key) => Cow::Owned(key(&parts, body.prefix())),
                _ => match find_top_level(body.prefix(), "model") {
                    Some(model) if !model.value.is_empty() => Cow::Owned(model.value),
                    _ => host_key(&parts),
                },
            };
            (key.into_owned().into(), body)
        }
    };

    let now = Instant::now();
    let entry = shared.store.entry(&key, now);
    let (admission, transition) = entry.acquire(now);
    if let Some(transition) = transition {
        emit_transition(&shared.events, entry.key(), transition);
    }
    let permit = match admission {
        Admission::Admitted(permit) => permit,
        Admission::Rejected { retry_after } => {
            shared.events.emit(Event::new(
                "breaker",
                &parts.method,
                &parts.uri,
                EventKind::CircuitRejected {
                    key: entry.key().clone(),
                    retry_after,
                },
            ));
            let open = CircuitOpen::new(entry.key().clone(), retry_after);
            return match shared.on_open {
                OnOpen::Error => Err(Box::new(open)),
                OnOpen::Respond => Ok(refusal(&parts, open)),
            };
        }
    };
    let mut guard = PermitGuard {
        entry: &*entry,
        permit: Some(permit),
    };

    let result = inner
        .call(Request::from_parts(parts, body))
        .await
        .map_err(Into::into);
    let (result, outcome) =
        classify_result(&shared.classifier, result, shared.error_body_limit).await;
    let done = Instant::now();
    let slow = shared
        .slow_call
        .is_some_and(|threshold| done.saturating_duration_since(now) > threshold);
    let verdict = if slow {
        Verdict::Failure {
            server_delay: outcome.server_delay(),
        }
    } else if matches!(
        outcome.kind(),
        OutcomeKind::ClientError | OutcomeKind::Rejected
    ) {
        Verdict::Ignored
    } else if (shared.is_failure)(&outcome) {
        Verdict::Failure {
            server_delay: outcome.server_delay(),
        }
    } else {
        Verdict::Success
    };
    let permit = guard.permit.take().expect("taken once");
    if let Some(transition) = entry.record(permit, verdict, done) {
        emit_transition(&shared.events, entry.key(), transition);
    }
    result
}

/// Gives the permit back uncounted if the call is dropped before its verdict, so that
/// a cancelled probe does not hold a half-open slot for ever.
struct PermitGuard<'a> {
    entry: &'a dyn BreakerEntry,
    permit: Option<Permit>,
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.entry.record(permit, Verdict::Ignored, Instant::now());
        }
    }
}

fn host_key(parts: &Parts) -> Cow<'static, str> {
    let host = parts.uri.host().or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h))
    });
    Cow::Owned(
        host.filter(|h| !h.is_empty())
            .unwrap_or("default")
            .to_owned(),
    )
}

/// The 503 answer of [`OnOpen::Respond`], in the shape of the provider the path
/// belongs to.
fn refusal<B: Body>(parts: &Parts, open: CircuitOpen) -> Response<PrefixedBody<B>> {
    let message = open.to_string();
    let body = if parts.uri.path().ends_with("/chat/completions") {
        serde_json::json!({
            "error": {"message": message, "type": "server_error", "param": null, "code": "circuit_open"}
        })
    } else {
        serde_json::json!({
            "type": "error",
            "error": {"type": "overloaded_error", "message": message}
        })
    };
    let bytes = Bytes::from(body.to_string());
    let mut response = Response::new(PrefixedBody::complete(bytes, None));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-brownout-circuit", HeaderValue::from_static("open"));
    if let Some(delay) = open.retry_after() {
        // Whole seconds, rounded up: retry-after has no fractions.
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response.extensions_mut().insert(open);
    response
}
