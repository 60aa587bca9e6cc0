use std::{
    sync::Arc,
    task::{Context, Poll},
};

use brownout_core::{
    body::{prepare_now, Need},
    future::take_ready,
    Body, BoxError,
};
use http::{Request, Response};
use tower_service::Service;

use crate::{
    future::{self, KeySource, ResponseFuture},
    state::Shared,
    QueueConfig, QueueHandle, QueueLayer,
};

/// Holds a key's requests while it is unavailable and admits them as it recovers.
/// See the [crate docs](crate).
///
/// It takes requests with any body and hands its inner service a [`Body`], buffered
/// once under the stack's [`BodyLimits`](brownout_core::body::BodyLimits) with the
/// request's [`RequestFacts`](brownout_core::RequestFacts) read (the key is the
/// model). Responses come back as [`Body`] too.
#[derive(Debug, Clone)]
pub struct Queue<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Queue<S> {
    /// Wraps `inner` with queues of its own.
    pub fn new(inner: S, config: QueueConfig) -> Self {
        Queue::from_shared(inner, Arc::new(Shared::new(config)))
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Queue { inner, shared }
    }

    /// A [`QueueLayer`] with the given settings.
    pub fn layer(config: QueueConfig) -> QueueLayer {
        QueueLayer::new(config)
    }

    /// The handle to this service's queues (shared with its clones).
    pub fn handle(&self) -> QueueHandle {
        QueueHandle::new(self.shared.clone())
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Queue<S>
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
    type Future = ResponseFuture<S::Future>;

    /// Ready when the inner service is: whether a request waits depends on its key,
    /// known only in `call`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The ready service is called in place on the straight-through paths; only a
        // request that may wait takes it (and leaves a clone behind).
        let shared = self.shared.clone();
        let (parts, body) = request.into_parts();
        let body = Body::new(body);
        if shared.is_idle() {
            if let Some(bytes) = body.bytes().cloned() {
                // Nothing is wrong anywhere and no health view to ask: straight
                // through, the key found only if the answer needs it.
                let authority = parts.uri.authority().cloned();
                let future = self.inner.call(Request::from_parts(parts, body));
                let key = KeySource::Lazy {
                    body: bytes,
                    authority,
                };
                return ResponseFuture::direct(future, shared, key);
            }
        }
        match prepare_now(Request::from_parts(parts, body), Need::Facts) {
            Ok(Ok(request)) => {
                let key = future::key_of(&request);
                if shared.is_clear(&key) {
                    // Nothing is wrong anywhere: straight through, watching the answer.
                    let future = self.inner.call(request);
                    ResponseFuture::direct(future, shared, KeySource::Known(key))
                } else {
                    let inner = take_ready(&mut self.inner);
                    ResponseFuture::boxed(future::queued(shared, inner, request, key))
                }
            }
            // The caller's body broke, or the request is invalid: the caller's
            // failure, answered at once and never queued.
            Ok(Err(error)) => ResponseFuture::failed(error),
            Err(prepare) => {
                let inner = take_ready(&mut self.inner);
                ResponseFuture::boxed(async move {
                    let request = prepare.await?;
                    let key = future::key_of(&request);
                    future::queued(shared, inner, request, key).await
                })
            }
        }
    }
}
