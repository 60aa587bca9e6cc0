use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use brownout_core::{
    body::PrefixedBody,
    classify::{Classifier, Outcome},
    error::CircuitOpen,
    event::Events,
    future::take_ready,
    shape, BoxError,
};
use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    config::{Keying, OnOpen},
    future::ResponseFuture,
    handle::BreakerHandle,
    state::Settings,
    store::{BreakerStore, LocalStore},
    BreakerConfig, CircuitBreakerLayer, FailurePolicy, Window,
};

/// What every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn BreakerStore>,
    pub(crate) keying: Keying,
    pub(crate) key_body_limit: usize,
    pub(crate) on_open: OnOpen,
    pub(crate) classifier: Classifier,
    pub(crate) error_body_limit: usize,
    pub(crate) is_failure: Arc<dyn Fn(&Outcome) -> bool + Send + Sync>,
    pub(crate) slow_call: Option<Duration>,
    /// Whether the policy counts calls in a time window (and so needs the clock for
    /// every verdict).
    pub(crate) timed_window: bool,
    pub(crate) events: Events,
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
            timed_window: matches!(
                config.policy,
                FailurePolicy::FailureRate {
                    window: Window::Time(_),
                    ..
                }
            ),
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
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    /// Ready when the inner service is: which key a request belongs to is known only
    /// in `call`, where an open breaker refuses it without touching the inner service.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        ResponseFuture::new(inner, self.shared.clone(), request)
    }
}

pub(crate) fn host_key(parts: &Parts) -> &str {
    let authority = match parts.uri.authority() {
        Some(authority) => authority.as_str(),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    let host = strip_authority(authority);
    if host.is_empty() {
        "default"
    } else {
        host
    }
}

/// The host of an authority: without `user@` and `:port`, IPv6 brackets kept. By
/// bytes, as it runs on every request.
fn strip_authority(authority: &str) -> &str {
    let bytes = authority.as_bytes();
    let start = bytes.iter().rposition(|&b| b == b'@').map_or(0, |i| i + 1);
    let rest = &authority[start..];
    if rest.starts_with('[') {
        return rest.find(']').map_or(rest, |end| &rest[..=end]);
    }
    rest.find(':').map_or(rest, |colon| &rest[..colon])
}

/// The 503 answer of [`OnOpen::Respond`], in the shape of the provider the path
/// belongs to.
pub(crate) fn refusal<B: Body>(parts: &Parts, open: CircuitOpen) -> Response<PrefixedBody<B>> {
    let message = open.to_string();
    let body = if parts.uri.path().ends_with("/chat/completions") {
        shape::openai_error(&message, "server_error", None, Some("circuit_open"))
    } else {
        shape::anthropic_error("overloaded_error", &message)
    };
    let bytes = Bytes::from(body);
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

#[cfg(test)]
mod tests {
    use super::strip_authority;

    #[test]
    fn hosts_of_authorities() {
        for (authority, host) in [
            ("api.anthropic.com", "api.anthropic.com"),
            ("api.openai.com:443", "api.openai.com"),
            ("user:pw@example.com:8080", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("", ""),
        ] {
            assert_eq!(strip_authority(authority), host);
        }
    }
}
