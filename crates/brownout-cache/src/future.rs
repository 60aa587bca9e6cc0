//! The cache's response future for stale-if-error mode.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use brownout_core::{
    body::Buffer,
    classify::{classify_now, Classification, Classifying},
    future::{Output, ResponseFuture as Boxed},
    Body, BoxError,
};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::serve::{is_event_stream, no_store_response, record_stream, stale, stored_entry, Live};

pin_project! {
    /// Response future of [`Cache`](crate::Cache).
    ///
    /// In stale-if-error mode, a request whose body is in memory is keyed and sent in
    /// place, and this hand-written state machine reads a successful answer whole and
    /// stores it before handing it on, with no allocation of its own beyond the
    /// entry. Fresh-hit mode, a body still to be read, and the stored answer served
    /// when the live path fails run in one boxed future.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        state: State<S::Future>,
        // What storing and a stale answer need; `None` for a request passed through.
        live: Option<Live>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        // Reading the start of an error body for the classifier.
        Classifying { future: Classifying },
        // Reading a successful answer whole, to store it.
        Storing { buffer: Buffer, parts: Option<http::response::Parts> },
        // A store of the user's own taking the write.
        Writing {
            future: Pin<Box<dyn Future<Output = ()> + Send>>,
            response: Option<Response<Body>>,
        },
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
            live: None,
        }
    }

    /// A call already made: stored from when `live` is given, else passed through.
    pub(crate) fn calling(future: S::Future, live: Option<Live>) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            live,
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
                StateProj::Slow { future } => return Pin::new(future).poll(cx),
                StateProj::Done => panic!("cache future polled after completion"),
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx))
                        .map(|response| response.map(Body::new))
                        .map_err(Into::into);
                    if this.live.is_none() {
                        this.state.set(State::Done);
                        return Poll::Ready(result);
                    }
                    // The outcome a layer further in recorded, else the default
                    // classifier's.
                    match classify_now(result) {
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
                StateProj::Storing { buffer, parts } => {
                    let body = ready!(Pin::new(buffer).poll(cx));
                    let parts = parts.take().expect("present until stored");
                    let live = this.live.take().expect("present until stored");
                    let store = &live.shared.store;
                    let write = stored_entry(store, &parts, &body)
                        .and_then(|entry| store.insert_now(live.key, entry));
                    let response = Response::from_parts(parts, body);
                    match write {
                        Some(future) => {
                            this.state.set(State::Writing {
                                future,
                                response: Some(response),
                            });
                            continue;
                        }
                        None => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProj::Writing { future, response } => {
                    ready!(future.as_mut().poll(cx));
                    let response = response.take().expect("present until written");
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
            };
            let live = this.live.as_ref().expect("a keyed call");
            let successful = |r: &Response<Body>| outcome.is_success() && r.status().is_success();
            match result {
                Ok(response) if successful(&response) && is_event_stream(&response) => {
                    let live = this.live.take().expect("a keyed call");
                    let response = record_stream(&live.shared.store, live.key, live.api, response);
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                Ok(response) if successful(&response) => {
                    if no_store_response(&response) {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    }
                    let (parts, body) = response.into_parts();
                    let buffer = body.buffer(live.shared.store.max_entry_bytes);
                    this.state.set(State::Storing {
                        buffer,
                        parts: Some(parts),
                    });
                }
                result => {
                    if outcome.is_success() || !(live.shared.config.serve_stale_when)(&outcome) {
                        this.state.set(State::Done);
                        return Poll::Ready(result);
                    }
                    // The live path failed: the stored answer, if one is servable.
                    let live = this.live.take().expect("a keyed call");
                    let mut future = Boxed::new(stale(live, result, outcome));
                    let poll = Pin::new(&mut future).poll(cx);
                    this.state.set(State::Slow { future });
                    return poll;
                }
            }
        }
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
