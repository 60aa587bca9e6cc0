//! The fallback's response future: the first target tried in place, the rest of the
//! cascade boxed.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use brownout_core::{
    classify::{classify_now, Classification, Classifying, Outcome, OutcomeKind},
    error::DeadlineExceeded,
    future::{Output, ResponseFuture as Boxed},
    Body, BoxError,
};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::cascade::{Cascade, Failures};

pin_project! {
    /// Response future of [`Fallback`](crate::Fallback).
    ///
    /// The common case, a request whose body is in memory for a model of the cascade
    /// that is available, is a hand-written state machine: its target's request is
    /// sent in place, under the cascade's deadline, and a success is marked and handed
    /// back without boxing the call. Everything else (buffering the body, a request
    /// the cascade cannot start at once, and every target after a failure) runs in
    /// one boxed future.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        state: State<S::Future>,
        cascade: Option<Cascade<S>>,
        // The cascade's deadline, while the first target's call runs.
        cutoff: Option<Pin<Box<Sleep>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        // Reading the start of the first target's error body for the classifier.
        Classifying { future: Classifying },
        Slow { future: Boxed },
        Done,
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    /// Everything in one boxed future.
    pub(crate) fn slow(future: impl Future<Output = Output> + Send + 'static) -> Self {
        ResponseFuture {
            state: State::Slow {
                future: Boxed::new(future),
            },
            cascade: None,
            cutoff: None,
        }
    }

    /// The first target's call, already made; `cascade` goes on from the next one
    /// if it fails.
    pub(crate) fn first(future: S::Future, cascade: Cascade<S>) -> Self {
        let cutoff = cascade
            .deadline
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        ResponseFuture {
            state: State::Calling { future },
            cascade: Some(cascade),
            cutoff,
        }
    }
}

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Output> {
        let mut this = self.project();
        let (result, outcome) = loop {
            let done = match this.state.as_mut().project() {
                StateProj::Slow { future } => return Pin::new(future).poll(cx),
                StateProj::Done => panic!("fallback future polled after completion"),
                StateProj::Calling { future } => match future.poll(cx) {
                    Poll::Ready(result) => {
                        let result = result.map(|r| r.map(Body::new)).map_err(Into::into);
                        match classify_now(result) {
                            Classification::Now(result, outcome) => Poll::Ready((result, outcome)),
                            Classification::Reading(future) => {
                                this.state.set(State::Classifying { future });
                                continue;
                            }
                        }
                    }
                    Poll::Pending => Poll::Pending,
                },
                StateProj::Classifying { future } => future
                    .as_mut()
                    .poll(cx)
                    .map(|(response, outcome)| (Ok(response), outcome)),
            };
            match done {
                Poll::Ready(done) => break done,
                Poll::Pending => {
                    // The cascade's deadline: the call is cut off, as a timeout.
                    let Some(cutoff) = this.cutoff.as_mut() else {
                        return Poll::Pending;
                    };
                    ready!(cutoff.as_mut().poll(cx));
                    let cascade = this.cascade.as_ref().expect("present until answered");
                    let deadline = cascade.config.deadline.unwrap_or_default();
                    let error: BoxError = Box::new(DeadlineExceeded::new(deadline, 1));
                    break (Err(error), Outcome::new(OutcomeKind::Timeout));
                }
            }
        };
        this.state.set(State::Done);
        *this.cutoff = None;
        let cascade = this.cascade.take().expect("present until answered");
        let config = cascade.config.clone();
        if outcome.is_success() || !(config.fallback_when)(&outcome) {
            return Poll::Ready(cascade.answer(result, outcome.is_success(), 0));
        }
        // The first target failed: the rest of the cascade, boxed.
        let target = &config.targets[cascade.start];
        let mut failures: Failures = (Vec::new(), Vec::new());
        cascade.failed(&mut failures, 0, target, &result, outcome);
        let (failures, details) = failures;
        let mut future = Boxed::new(cascade.run(1, failures, details, Some(result)));
        let poll = Pin::new(&mut future).poll(cx);
        this.state.set(State::Slow { future });
        poll
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
