//! The breaker's response future: admission, the call, and its verdict.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use brownout_core::{
    body::{prepare_now, Need, Prepare},
    classify::{classify_now, Classification, Classifying, Outcome, OutcomeKind},
    event::Event,
    future::{take_ready, Output},
    request::Unscanned,
    Body, BoxError, RequestFacts,
};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    config::{Keying, OnOpen},
    handle::emit_transition,
    keys::host_key,
    refusal::refusal,
    shared::{Judge, Shared, SharedRef},
    state::{Admission, Permit, Verdict},
    store::BreakerEntry,
    BreakerEvent, CircuitOpen,
};

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    ///
    /// A hand-written state machine: on the success path it allocates nothing of its
    /// own. What reading the request allocates is the stack's, once per request:
    /// keyed by model (the default) with no layer further out having read the facts,
    /// the [`RequestFacts`] put in the request's extensions (four allocations when
    /// the extensions start empty and the model is a string: the extensions' map and
    /// its table, the facts, the model's name); keyed by the body, the state that
    /// reads it when it is not in memory yet. The `breaker` benchmark measures it
    /// against the bare service and tower-resilience.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        state: State<S>,
        call: Option<Admitted>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<S>
    where
        S: Service<Request<Body>>,
    {
        /// Reading the body to find the key. Boxed, with the inner service, so that
        /// the future stays small when the key needs no body.
        Buffering { pending: Box<Pending<S>> },
        Calling { #[pin] future: S::Future },
        /// Reading the start of an error body for the classifier.
        Classifying { future: Classifying },
        /// Refused (boxed: the refusal is the rare path), or done.
        Ready { output: Option<Box<Output>> },
    }
}

struct Pending<S> {
    inner: S,
    prepare: Pin<Box<Prepare>>,
    shared: SharedRef,
}

/// An admitted call: its breaker and permit. Dropping it before the verdict gives the
/// permit back uncounted, so that a cancelled probe does not hold a half-open slot.
struct Admitted {
    entry: Arc<dyn BreakerEntry>,
    permit: Option<Permit>,
    start: Instant,
    /// What the verdict needs of the layer's settings, copied so that a call does not
    /// take a reference to the layer's shared state (a write to a line every thread
    /// shares).
    judge: Judge,
    /// Keyed by model, the facts were read only as far as the `model`: the body and
    /// those facts, to finish the scan if the call fails (see [`Unchecked`]).
    unchecked: Option<Unchecked>,
}

/// A body whose facts were read only as far as its `model`. Before its failure is
/// counted, the rest of the scan runs: a body that names a second `model` is the
/// caller's fault (an upstream may have served that one), and counts against no
/// breaker. The success path never pays for it.
struct Unchecked {
    body: bytes::Bytes,
    rest: Unscanned,
}

impl Unchecked {
    /// Whether the body names its `model` twice.
    fn names_two_models(self) -> bool {
        self.rest.names_model_again(&self.body)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.entry.record(permit, Verdict::Ignored, Instant::now());
        }
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    #[inline(always)]
    /// `inner` is the readied service: called in place when the request can be sent
    /// at once, and taken (a clone left behind) only when its body must be read first.
    pub(crate) fn new<B>(inner: &mut S, shared: &SharedRef, request: Request<B>) -> Self
    where
        S: Clone,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let need = match shared.keying {
            Keying::ModelOrHost => Some(Need::Model),
            Keying::Body(_) => Some(Need::Replay),
            Keying::Host | Keying::Head(_) => None,
        };
        let mut request = match need {
            // A body in memory is ready at once: no buffering state.
            Some(need) => match prepare_now(request, need) {
                Ok(Ok(request)) => request,
                // The caller's body broke, or the request is invalid: the caller's
                // failure, answered at once and counted nowhere.
                Ok(Err(error)) => {
                    return ResponseFuture {
                        state: State::Ready {
                            output: Some(Box::new(Err(error))),
                        },
                        call: None,
                    }
                }
                Err(prepare) => {
                    let inner = take_ready(inner);
                    let pending = Box::new(Pending {
                        inner,
                        prepare,
                        shared: shared.clone(),
                    });
                    return ResponseFuture {
                        state: State::Buffering { pending },
                        call: None,
                    };
                }
            },
            // Keyed by the head: the body is not read, but its failures are the
            // caller's.
            None => brownout_core::body::from_caller(request),
        };
        let now = Instant::now();
        let entry = entry_of(shared, &mut request, now);
        let (state, call) = start(inner, shared, request, entry, now);
        ResponseFuture { state, call }
    }
}

/// The breaker of a request (prepared, when its keying reads the body). By reference:
/// keyed by host or model, the request is not moved (a move is a copy of its head).
fn entry_of(shared: &Shared, request: &mut Request<Body>, now: Instant) -> Keyed {
    let store = &shared.store;
    match &shared.keying {
        Keying::Head(key) => {
            // A key of the `Parts`: taken apart and put back.
            let (parts, body) = std::mem::take(request).into_parts();
            let entry = store.entry(&key(&parts), now);
            *request = Request::from_parts(parts, body);
            (entry, None)
        }
        Keying::Body(key) => {
            // The whole body when it is within the limit, else the bytes read ahead.
            let (parts, body) = std::mem::take(request).into_parts();
            let entry = store.entry(&key(&parts, body.prefix()), now);
            *request = Request::from_parts(parts, body);
            (entry, None)
        }
        Keying::ModelOrHost => {
            let facts = RequestFacts::of(request.extensions());
            let model = facts
                .and_then(RequestFacts::model)
                .filter(|model| !model.is_empty());
            let entry = match model {
                Some(model) => store.entry(model, now),
                None => store.entry(host_key(request.uri(), request.headers()), now),
            };
            let unchecked = match (
                facts.and_then(RequestFacts::unscanned),
                request.body().bytes(),
            ) {
                (Some(rest), Some(body)) => Some(Unchecked {
                    body: body.clone(),
                    rest,
                }),
                _ => None,
            };
            (entry, unchecked)
        }
        Keying::Host => (
            store.entry(host_key(request.uri(), request.headers()), now),
            None,
        ),
    }
}

/// A request's breaker, and its body when its facts are not all read yet.
type Keyed = (Arc<dyn BreakerEntry>, Option<Unchecked>);

/// Admission, then the call or the refusal.
#[inline(always)]
fn start<S>(
    inner: &mut S,
    shared: &Shared,
    request: Request<Body>,
    (entry, unchecked): Keyed,
    now: Instant,
) -> (State<S>, Option<Admitted>)
where
    S: Service<Request<Body>>,
{
    let (admission, transition) = entry.acquire(now);
    if let Some(transition) = transition {
        emit_transition(&shared.events, entry.key(), transition);
    }
    match admission {
        Admission::Admitted(permit) => {
            let mut request = request;
            if permit.is_probe() {
                // Its answer decides the breaker: the layers inside send it once.
                request
                    .extensions_mut()
                    .insert(brownout_core::request::Probe);
            }
            let future = inner.call(request);
            let call = Admitted {
                entry,
                permit: Some(permit),
                start: now,
                judge: shared.judge.clone(),
                unchecked,
            };
            (State::Calling { future }, Some(call))
        }
        Admission::Rejected { retry_after } => {
            shared.events.emit(Event::new(
                "breaker",
                request.method(),
                request.uri(),
                BreakerEvent::CircuitRejected {
                    key: entry.key().clone(),
                    retry_after,
                },
            ));
            let open = CircuitOpen::new(entry.key().clone(), retry_after);
            let output = match shared.on_open {
                OnOpen::Error => Err(Box::new(open) as BoxError),
                OnOpen::Respond => Ok(refusal(request.uri(), open)),
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

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { pending } => {
                    let prepared = ready!(pending.prepare.as_mut().poll(cx));
                    let StateReplace::Buffering { pending } = this
                        .state
                        .as_mut()
                        .project_replace(State::Ready { output: None })
                    else {
                        unreachable!("in the buffering state")
                    };
                    let mut request = match prepared {
                        Ok(request) => request,
                        // The caller's body broke, or the request is invalid: the
                        // caller's failure, answered at once and counted nowhere.
                        Err(error) => {
                            this.state.set(State::Ready {
                                output: Some(Box::new(Err(error))),
                            });
                            continue;
                        }
                    };
                    let Pending {
                        mut inner, shared, ..
                    } = *pending;
                    let now = Instant::now();
                    let entry = entry_of(&shared, &mut request, now);
                    let (state, call) = start(&mut inner, &shared, request, entry, now);
                    *this.call = call;
                    this.state.set(state);
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx))
                        .map(|response| response.map(Body::new))
                        .map_err(Into::into);
                    match classify_now(result) {
                        Classification::Now(output, outcome) => {
                            verdict(this.call, &outcome);
                            this.state.set(State::Ready { output: None });
                            return Poll::Ready(output);
                        }
                        Classification::Reading(future) => {
                            this.state.set(State::Classifying { future });
                        }
                    }
                }
                StateProj::Classifying { future } => {
                    let (response, outcome) = ready!(future.as_mut().poll(cx));
                    verdict(this.call, &outcome);
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

/// Counts the call's outcome against its breaker.
fn verdict(call: &mut Option<Admitted>, outcome: &Outcome) {
    let Some(mut call) = call.take() else {
        return;
    };
    let Some(permit) = call.permit.take() else {
        return;
    };
    // The clock is read only when the verdict needs it: a success in a count-based
    // policy does not.
    let judge = &call.judge;
    let failed = judge.is_failure(outcome);
    let done = if failed || judge.slow_call.is_some() || judge.timed_window {
        Instant::now()
    } else {
        call.start
    };
    let slow = judge
        .slow_call
        .is_some_and(|threshold| done.saturating_duration_since(call.start) > threshold);
    let client_error = matches!(
        outcome.kind(),
        OutcomeKind::ClientError | OutcomeKind::Rejected
    );
    let counts = slow || (failed && !client_error);
    let verdict = if client_error && !slow
        || counts
            && call
                .unchecked
                .take()
                .is_some_and(Unchecked::names_two_models)
    {
        Verdict::Ignored
    } else if counts {
        Verdict::Failure {
            server_delay: outcome.server_delay(),
        }
    } else {
        Verdict::Success
    };
    if let Some(transition) = call.entry.record(permit, verdict, done) {
        emit_transition(&call.judge.events, call.entry.key(), transition);
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
