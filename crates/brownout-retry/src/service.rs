use std::{
    sync::Arc,
    task::{Context, Poll},
};

use brownout_core::{future::take_ready, Body, BoxError};
use http::{Request, Response};
use tower_service::Service;

use crate::{future::ResponseFuture, RetryConfig, RetryLayer};

/// Sends a request again when it fails in a way that may pass. See the
/// [crate docs](crate).
///
/// It takes requests with any body and hands its inner service a [`Body`]: the
/// caller's bytes, buffered once under the stack's
/// [`BodyLimits`](brownout_core::body::BodyLimits) and replayed on every attempt.
/// Responses come back as [`Body`] too, since the classifier may have read the start
/// of an error body.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    config: Arc<RetryConfig>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with the given settings.
    pub fn new(inner: S, config: RetryConfig) -> Self {
        Retry::from_shared(inner, Arc::new(config))
    }

    pub(crate) fn from_shared(inner: S, config: Arc<RetryConfig>) -> Self {
        Retry { inner, config }
    }

    /// A [`RetryLayer`] with the given settings.
    pub fn layer(config: RetryConfig) -> RetryLayer {
        RetryLayer::new(config)
    }

    /// The settings.
    pub fn config(&self) -> &RetryConfig {
        &self.config
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Retry<S>
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
        let inner = take_ready(&mut self.inner);
        ResponseFuture::new(inner, self.config.clone(), request)
    }
}
