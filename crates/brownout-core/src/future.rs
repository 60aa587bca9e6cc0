//! The response future of the layers that do their work in one boxed future.
//!
//! The fallback, cache and degrade layers read bodies, call the inner service
//! several times or not at all, and wait on other requests: an `async` block behind
//! one allocation per call says that most clearly, and their benchmarks show the
//! allocation is small beside the work. Retry and breaker, which sit on every
//! request's hot path, have hand-written futures instead.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use crate::{body::Body, BoxError};
use http::Response;

/// What a layer's response future yields: the response or the error.
pub type Output = Result<Response<Body>, BoxError>;

/// A boxed response future answering `Response<Body>` or a [`BoxError`].
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Output> + Send>>,
}

impl ResponseFuture {
    /// Boxes `future`.
    pub fn new(future: impl Future<Output = Output> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Takes the service that `poll_ready` drove to readiness out of `slot`, leaving a clone
/// in its place for the next call, as tower's own middleware do: the ready service
/// serves this call, and the clone waits for its own `poll_ready`.
pub fn take_ready<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}
