//! A layer slot left empty, with the body types of the layer it stands for.
//!
//! Each brownout layer hands its inner service a request whose body is a
//! [`PrefixedBody`] and returns one. A layer the configuration turns off is replaced by
//! [`Skip`], which only wraps the bodies the same way, so that a pipeline has one type
//! whichever layers are on (`tower::util::Either<Layer, Skip>` at each position) and no
//! boxing is needed for the choice.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use brownout_core::{body::PrefixedBody, BoxError};
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The layer of [`Skipped`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Skip;

impl<S> Layer<S> for Skip {
    type Service = Skipped<S>;

    fn layer(&self, inner: S) -> Skipped<S> {
        Skipped { inner }
    }
}

/// Passes requests to `inner` with their bodies wrapped in a [`PrefixedBody`], and its
/// responses back the same way: a brownout layer's types without its work.
#[derive(Debug, Clone)]
pub struct Skipped<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Skipped<S>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = Response<PrefixedBody<ResBody>>;
    type Error = BoxError;
    type Future = SkippedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        SkippedFuture {
            inner: self.inner.call(request.map(PrefixedBody::new)),
        }
    }
}

pin_project! {
    /// The response future of [`Skipped`].
    #[derive(Debug)]
    pub struct SkippedFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for SkippedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<PrefixedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().inner.poll(cx));
        Poll::Ready(result.map(|r| r.map(PrefixedBody::new)).map_err(Into::into))
    }
}
