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
    config::Mode,
    future::ResponseFuture,
    serve::{keyed, run, Live, Shared},
    store::Store,
    CacheConfig, CacheLayer,
};

/// Answers from the last good response when the live path fails, or from a fresh one
/// without going live. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Cache<S> {
    /// Wraps `inner` with a store of its own.
    pub fn new(inner: S, config: CacheConfig) -> Self {
        let store = Arc::new(Store::new(&config));
        Cache::from_shared(inner, Arc::new(Shared { config, store }))
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Cache { inner, shared }
    }

    /// A [`CacheLayer`] with the given settings.
    pub fn layer(config: CacheConfig) -> CacheLayer {
        CacheLayer::new(config)
    }

    /// How many entries are stored, and their weight in bytes.
    pub async fn usage(&self) -> (u64, u64) {
        self.shared.store.usage().await
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
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

    /// Ready when the inner service is, even in fresh-hit mode: whether a request hits
    /// is known only in `call`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Buffered once for the whole stack, and the facts read once. A caller's
        // broken or ambiguous body is its own error: answered at once, never from the
        // store, and nothing is stored.
        let request = match prepare_now(request, Need::Facts) {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => return ResponseFuture::slow(async move { Err(error) }),
            Err(prepare) => {
                let inner = take_ready(&mut self.inner);
                let shared = self.shared.clone();
                return ResponseFuture::slow(async move {
                    let request = prepare.await?;
                    run(inner, shared, request).await
                });
            }
        };
        if self.shared.config.mode == Mode::FreshHit {
            let inner = take_ready(&mut self.inner);
            return ResponseFuture::slow(run(inner, self.shared.clone(), request));
        }
        // Stale-if-error: keyed, sent in place, and stored from the answer.
        let (parts, body) = request.into_parts();
        let live = keyed(&self.shared, &parts, &body).map(|(key, api, serve)| Live {
            shared: self.shared.clone(),
            key,
            api,
            serve,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
        });
        let future = self.inner.call(Request::from_parts(parts, body));
        ResponseFuture::calling(future, live)
    }
}
