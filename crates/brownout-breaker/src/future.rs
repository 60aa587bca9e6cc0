//! The breaker's response future: admission, the call, and its verdict.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use brownout_core::{
    body::{read_prefix, BufferFuture, Buffered, PrefixedBody},
    classify::{classify_head, classify_response, Classify, Observed, Outcome, OutcomeKind},
    error::CircuitOpen,
    event::{Event, EventKind},
    future::Output,
    json::{find_in_prefix, find_top_level, Member},
    BoxError,
};
use http::{request::Parts, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    config::{Keying, OnOpen},
    handle::emit_transition,
    service::{host_key, refusal, Shared},
    state::{Admission, Permit, Verdict},
    store::BreakerEntry,
};

type Classifying<B> = Pin<Box<dyn Future<Output = (Response<PrefixedBody<B>>, Outcome)> + Send>>;

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    ///
    /// A hand-written state machine: on the success path it allocates nothing. The
    /// `breaker` benchmark measures it against the bare service and tower-resilience.
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        ResBody: Body,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
        shared: Arc<Shared>,
        call: Option<Admitted>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        ResBody: Body,
    {
        /// Reading the body to find the key. Boxed, with the inner service and the
        /// request head, so that the future stays small when the key needs no body.
        Buffering { pending: Box<Pending<S, ReqBody>> },
        Calling { #[pin] future: S::Future },
        /// Reading the start of an error body for the classifier.
        Classifying { future: Classifying<ResBody> },
        /// Refused (boxed: the refusal is the rare path), or done.
        Ready { output: Option<Box<Output<ResBody>>> },
    }
}

struct Pending<S, ReqBody: Body> {
    inner: S,
    parts: Parts,
    buffer: BufferFuture<ReqBody>,
}

/// An admitted call: its breaker and permit. Dropping it before the verdict gives the
/// permit back uncounted, so that a cancelled probe does not hold a half-open slot.
struct Admitted {
    entry: Arc<dyn BreakerEntry>,
    permit: Option<Permit>,
    start: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.entry.record(permit, Verdict::Ignored, Instant::now());
        }
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ResBody: Body,
{
    pub(crate) fn new(inner: S, shared: Arc<Shared>, request: Request<ReqBody>) -> Self {
        let (parts, body) = request.into_parts();
        if let Keying::ModelOrHost | Keying::Body(_) = shared.keying {
            let buffer = read_prefix(body, shared.key_body_limit);
            let pending = Box::new(Pending {
                inner,
                parts,
                buffer,
            });
            return ResponseFuture {
                state: State::Buffering { pending },
                shared,
                call: None,
            };
        }
        let now = Instant::now();
        let entry = match &shared.keying {
            Keying::Head(key) => shared.store.entry(&key(&parts), now),
            _ => shared.store.entry(host_key(&parts), now),
        };
        let (state, call) = start(inner, &shared, parts, PrefixedBody::new(body), entry, now);
        ResponseFuture {
            state,
            shared,
            call,
        }
    }
}

/// Admission, then the call or the refusal.
fn start<S, ReqBody, ResBody>(
    mut inner: S,
    shared: &Shared,
    parts: Parts,
    body: PrefixedBody<ReqBody>,
    entry: Arc<dyn BreakerEntry>,
    now: Instant,
) -> (State<S, ReqBody, ResBody>, Option<Admitted>)
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body,
{
    let (admission, transition) = entry.acquire(now);
    if let Some(transition) = transition {
        emit_transition(&shared.events, entry.key(), transition);
    }
    match admission {
        Admission::Admitted(permit) => {
            let future = inner.call(Request::from_parts(parts, body));
            let call = Admitted {
                entry,
                permit: Some(permit),
                start: now,
            };
            (State::Calling { future }, Some(call))
        }
        Admission::Rejected { retry_after } => {
            shared.events.emit(Event::new(
                "breaker",
                &parts.method,
                &parts.uri,
                EventKind::CircuitRejected {
                    key: entry.key().clone(),
                    retry_after,
                },
            ));
            let open = CircuitOpen::new(entry.key().clone(), retry_after);
            let output = match shared.on_open {
                OnOpen::Error => Err(Box::new(open) as BoxError),
                OnOpen::Respond => Ok(refusal(&parts, open)),
            };
            (
                State::Ready {
                    output: Some(Box::new(output)),
                },
                None,
            )
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ResBody: Body + Unpin + Send + 'static,
    ResBody::Error: Send,
{
    type Output = Output<ResBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { pending } => {
                    let body = match ready!(Pin::new(&mut pending.buffer).poll(cx)) {
                        Buffered::Complete(replay) => replay.replay(),
                        Buffered::TooLarge(body) | Buffered::Failed(body) => body,
                    };
                    let StateReplace::Buffering { pending } = this
                        .state
                        .as_mut()
                        .project_replace(State::Ready { output: None })
                    else {
                        unreachable!("in the buffering state")
                    };
                    let Pending { inner, parts, .. } = *pending;
                    // A body over the limit is keyed by the bytes read: `model` comes
                    // early in the requests of both providers.
                    let now = Instant::now();
                    let store = &this.shared.store;
                    let entry = match &this.shared.keying {
                        Keying::Body(key) => store.entry(&key(&parts, body.prefix()), now),
                        _ => match find_model(&body) {
                            Some(model) if !model.value.is_empty() => {
                                store.entry(&model.value, now)
                            }
                            _ => store.entry(host_key(&parts), now),
                        },
                    };
                    let (state, call) = start(inner, this.shared, parts, body, entry, now);
                    *this.call = call;
                    this.state.set(state);
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let classifier = &this.shared.classifier;
                    match result {
                        Ok(response) => match classify_head(classifier, &response) {
                            Some(outcome) => {
                                verdict(this.shared, this.call, &outcome);
                                let output = Ok(response.map(PrefixedBody::new));
                                this.state.set(State::Ready { output: None });
                                return Poll::Ready(output);
                            }
                            None => {
                                let classifier = classifier.clone();
                                let limit = this.shared.error_body_limit;
                                let future = Box::pin(async move {
                                    classify_response(&classifier, response, limit).await
                                });
                                this.state.set(State::Classifying { future });
                            }
                        },
                        Err(error) => {
                            let outcome = classifier.classify(Observed::Error(error.as_ref()));
                            verdict(this.shared, this.call, &outcome);
                            this.state.set(State::Ready { output: None });
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Classifying { future } => {
                    let (response, outcome) = ready!(future.as_mut().poll(cx));
                    verdict(this.shared, this.call, &outcome);
                    this.state.set(State::Ready { output: None });
                    return Poll::Ready(Ok(response));
                }
                StateProj::Ready { output } => {
                    let output = output
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(*output);
                }
            }
        }
    }
}

/// The body's `model`: in the whole body when it was read to its end, else in the
/// bytes read (the SDKs write `model` first).
fn find_model<B: Body>(body: &PrefixedBody<B>) -> Option<Member<'_>> {
    if body.is_complete() {
        find_top_level(body.prefix(), "model")
    } else {
        find_in_prefix(body.prefix(), "model")
    }
}

/// Counts the call's outcome against its breaker.
fn verdict(shared: &Shared, call: &mut Option<Admitted>, outcome: &Outcome) {
    let Some(mut call) = call.take() else {
        return;
    };
    let Some(permit) = call.permit.take() else {
        return;
    };
    // The clock is read only when the verdict needs it: a success in a count-based
    // policy does not.
    let failed = (shared.is_failure)(outcome);
    let done = if failed || shared.slow_call.is_some() || shared.timed_window {
        Instant::now()
    } else {
        call.start
    };
    let slow = shared
        .slow_call
        .is_some_and(|threshold| done.saturating_duration_since(call.start) > threshold);
    let verdict = if slow {
        Verdict::Failure {
            server_delay: outcome.server_delay(),
        }
    } else if matches!(
        outcome.kind(),
        OutcomeKind::ClientError | OutcomeKind::Rejected
    ) {
        Verdict::Ignored
    } else if failed {
        Verdict::Failure {
            server_delay: outcome.server_delay(),
        }
    } else {
        Verdict::Success
    };
    if let Some(transition) = call.entry.record(permit, verdict, done) {
        emit_transition(&shared.events, call.entry.key(), transition);
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
