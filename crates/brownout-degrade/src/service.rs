use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use brownout_core::{Body, BoxError};
use http::{Request, Response};
use tower_service::Service;

use crate::{future::ResponseFuture, DegradeConfig, DegradeLayer};

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
