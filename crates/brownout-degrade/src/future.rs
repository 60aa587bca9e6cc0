//! The degrade layer's response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use brownout_core::{
    body::{prepare_now, Need, Prepare},
    classify::{classify_now, Classification, Classifying, Outcome},
    error::is_caller_error,
    future::Output,
    Body, BoxError,
};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    reply::{degraded, Kept},
    DegradeConfig,
};

pin_project! {
    /// Response future of [`Degrade`](crate::Degrade).
    ///
    /// A hand-written state machine: the request's body is read (unless a layer
    /// further out did), the inner service is called, and its answer is handed back
    /// as it is when it is a success, with no allocation of its own. What a canned
    /// answer needs of the request (its API, model, whether it streams, its bytes for
    /// the rules, and its method and URI for the event) is kept by reference count.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        state: State<S>,
        config: Arc<DegradeConfig>,
        kept: Option<Kept>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S>
    where
        S: Service<Request<Body>>,
    {
        /// Reading the caller's body, with the readied inner service.
        Buffering { prepare: Pin<Box<Prepare>>, inner: Option<S> },
        Calling { #[pin] future: S::Future },
        /// Reading the start of an error body for the classifier (boxed: the rare
        /// path).
        Classifying { future: Classifying },
        /// The caller's broken or ambiguous body, answered at once; or done.
        Ready { output: Option<Output> },
    }
}

impl<S, ResBody> ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    /// `inner` is the readied service: called in place when the body is in memory,
    /// taken (a clone left behind) only when it must be read first.
    pub(crate) fn new<B>(inner: &mut S, config: Arc<DegradeConfig>, request: Request<B>) -> Self
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // Buffered once for the whole stack, and the facts read once: a caller's
        // broken or ambiguous body is its own error, answered at once, never with a
        // canned answer.
        let (state, kept) = match prepare_now(request, Need::Facts) {
            Ok(Ok(request)) => {
                let kept = Kept::of(&request);
                let future = inner.call(request);
                (State::Calling { future }, Some(kept))
            }
            Ok(Err(error)) => (
                State::Ready {
                    output: Some(Err(error)),
                },
                None,
            ),
            Err(prepare) => (
                State::Buffering {
                    prepare,
                    inner: Some(brownout_core::future::take_ready(inner)),
                },
                None,
            ),
        };
        ResponseFuture {
            state,
            config,
            kept,
        }
    }
}

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Output> {
        let mut this = self.project();
        loop {
            let (result, outcome) = match this.state.as_mut().project() {
                StateProj::Buffering { prepare, inner } => {
                    let prepared = ready!(prepare.as_mut().poll(cx));
                    match prepared {
                        Ok(request) => {
                            *this.kept = Some(Kept::of(&request));
                            let mut inner = inner.take().expect("present until called");
                            let future = inner.call(request);
                            this.state.set(State::Calling { future });
                        }
                        Err(error) => this.state.set(State::Ready {
                            output: Some(Err(error)),
                        }),
                    }
                    continue;
                }
                StateProj::Ready { output } => {
                    return Poll::Ready(output.take().expect("polled after completion"));
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx))
                        .map(|response| response.map(Body::new))
                        .map_err(Into::into);
                    match classify_now(result) {
                        Classification::Now(Ok(response), outcome) if outcome.is_success() => {
                            // The success path: handed back as it is.
                            this.state.set(State::Ready { output: None });
                            return Poll::Ready(Ok(response));
                        }
                        Classification::Now(result, outcome) => (result, outcome),
                        Classification::Reading(future) => {
                            this.state.set(State::Classifying { future });
                            continue;
                        }
                    }
                }
                StateProj::Classifying { future } => {
                    let (response, outcome) = ready!(future.as_mut().poll(cx));
                    (Ok(response), outcome)
                }
            };
            this.state.set(State::Ready { output: None });
            let kept = this.kept.take().expect("kept until the answer");
            return Poll::Ready(finish(this.config, kept, result, outcome));
        }
    }
}

/// A failed answer: handed back, or replaced by a canned one.
fn finish(config: &DegradeConfig, kept: Kept, result: Output, outcome: Outcome) -> Output {
    if outcome.is_success() {
        return result;
    }
    // A caller's own broken request is its error, never answered with a canned
    // reply.
    if let Err(error) = &result {
        if is_caller_error(error.as_ref()) {
            return result;
        }
    }
    if !(config.degrade_when)(&outcome) {
        return result;
    }
    Ok(degraded(config, kept, outcome))
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
