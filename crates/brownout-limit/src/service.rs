use std::{
    sync::Arc,
    task::{Context, Poll},
};

use brownout_core::{future::take_ready, Body, BoxError};
use http::{Request, Response};
use tower_service::Service;

use crate::{
    future::{self, ResponseFuture},
    handle::LimitHandle,
    shared::Shared,
    RateLimitLayer,
};

/// Keeps requests under per-minute limits. See the [crate docs](crate).
///
/// It takes requests with any body and hands its inner service a [`Body`], buffered
/// once under the stack's [`BodyLimits`](brownout_core::body::BodyLimits); responses
/// come back as [`Body`] too.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        RateLimit { inner, shared }
    }

    /// The handle to this service's keys (shared with its clones).
    pub fn handle(&self) -> LimitHandle {
        LimitHandle::new(self.shared.clone())
    }

    /// A [`RateLimitLayer`]; see [`RateLimitLayer::new`].
    pub fn layer(
        config: crate::RateLimitConfig,
    ) -> Result<RateLimitLayer, brownout_core::error::InvalidConfig> {
        RateLimitLayer::new(config)
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
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
    type Future = ResponseFuture<S, S::Future>;

    /// Ready when the inner service is: which key a request takes from is known only
    /// in `call`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        future::call(&self.shared, inner, request)
    }
}
