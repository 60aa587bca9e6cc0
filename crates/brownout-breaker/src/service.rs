use std::task::{Context, Poll};

use brownout_core::{Body, BoxError};
use http::{Request, Response};
use tower_service::Service;

use crate::{
    future::ResponseFuture,
    handle::BreakerHandle,
    shared::{Shared, SharedRef},
    BreakerConfig, CircuitBreakerLayer,
};

/// Fails fast while the upstream behind a key is failing. See the [crate docs](crate).
///
/// It takes requests with any body and hands its inner service a [`Body`]; keyed by
/// model (the default) or by the body, the body is buffered once under the stack's
/// [`BodyLimits`](brownout_core::body::BodyLimits) first. Responses come back as
/// [`Body`] too.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: SharedRef,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` with breakers of its own.
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        CircuitBreaker::from_shared(inner, Shared::new_ref(config))
    }

    pub(crate) fn from_shared(inner: S, shared: SharedRef) -> Self {
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

    /// Ready when the inner service is: which key a request belongs to is known only
    /// in `call`, where an open breaker refuses it without touching the inner service.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture::new(&mut self.inner, &self.shared, request)
    }
}
