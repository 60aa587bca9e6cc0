//! The retry loop.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use brownout_core::{
    body::{prepare_now, BodyLimits, Need, Prepare},
    classify::{
        classify_error, classify_head, classify_response, classify_result, DefaultClassifier,
        Outcome, OutcomeKind, DEFAULT_ERROR_BODY_LIMIT,
    },
    error::{AttemptTimedOut, DeadlineExceeded},
    event::{Event, NotReplayable},
    future::Output,
    request::AttemptGate,
    Body, BoxError,
};
use http::{request::Parts, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower_service::Service;

use crate::{Attempts, GiveUpReason, RetryConfig, RetryEvent};

/// The classifier of an attempt whose outcome no layer further in recorded.
fn classifier() -> DefaultClassifier {
    DefaultClassifier::new()
}

pin_project! {
    /// Response future of [`Retry`](crate::Retry).
    ///
    /// The first attempt runs in this hand-written state machine. Its allocations on
    /// the success path are the copy of the request's head kept to send it again (the
    /// header map's, and the extensions' when the request has any) and, with a
    /// deadline or an attempt timeout configured, one timer; the body's bytes are
    /// kept by reference count, not copied (its trailers, when it has any, are).
    /// Once an attempt fails, the rest of the call (waits, further attempts,
    /// events) continues in one boxed future. The `retry` benchmark measures the
    /// success path against tower's own retry.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        state: State<S::Future>,
        first: Option<First<S>>,
    }
}

/// What the first attempt needs, and hands over to the slow path.
struct First<S> {
    inner: S,
    config: Arc<RetryConfig>,
    /// The request head, once the body is prepared.
    parts: Option<Parts>,
    /// The body to send again, kept while the first attempt runs.
    replay: Option<Body>,
    deadline: Option<Instant>,
    /// The first attempt's cutoff: the deadline or the attempt timeout, whichever is
    /// sooner. Allocated only when one of them is configured.
    cutoff: Option<Pin<Box<Sleep>>>,
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Buffering { prepare: Pin<Box<Prepare>> },
        Refused { error: Option<BoxError> },
        Calling { #[pin] future: F },
        Slow { future: Pin<Box<dyn Future<Output = Output> + Send>> },
        Done,
    }
}

impl<S, ResBody> ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    #[inline(always)]
    pub(crate) fn new<B>(inner: S, config: Arc<RetryConfig>, request: Request<B>) -> Self
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let deadline = config.deadline.map(|d| Instant::now() + d);
        let mut first = Some(First {
            inner,
            config,
            parts: None,
            replay: None,
            deadline,
            cutoff: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        });
        // A body in memory is ready at once: the first attempt starts here, and the
        // future never holds the buffering state (the `stack_instructions` bench).
        let state = match prepare_now(request, Need::Replay) {
            Ok(prepared) => begin(&mut first, prepared),
            Err(prepare) => State::Buffering { prepare },
        };
        ResponseFuture { state, first }
    }
}

/// The first attempt, once the request is prepared: the state to go on in.
#[inline(always)]
fn begin<S, ResBody>(
    slot: &mut Option<First<S>>,
    prepared: Result<Request<Body>, BoxError>,
) -> State<S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let request = match prepared {
        Ok(request) => request,
        // The caller's body broke, or the request is invalid: the caller's failure,
        // answered at once. Nothing was sent, so nothing is deposited and nothing is
        // announced.
        Err(error) => {
            slot.take();
            return State::Refused { error: Some(error) };
        }
    };
    let first = slot.as_mut().expect("present until the slow path");
    let (parts, body) = request.into_parts();
    let Some(attempt_body) = body.try_clone() else {
        // Over the stack's replay limit: sent once, streamed.
        let limit = body
            .over_limit()
            .unwrap_or_else(|| BodyLimits::of(&parts.extensions).replay_limit_bytes());
        first.parts = Some(parts);
        let once = Sendable::Once(Some(body), NotReplayable::BodyTooLarge { limit });
        let future = slot.take().expect("present").into_slow(once, None);
        return State::Slow { future };
    };
    if let Some(budget) = &first.config.budget {
        budget.deposit();
    }
    if let Some(timeout) = first.config.attempt_timeout {
        let at = Instant::now() + timeout;
        match &mut first.cutoff {
            Some(cutoff) if cutoff.deadline() <= at => {}
            Some(cutoff) => cutoff.as_mut().reset(at),
            None => first.cutoff = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }
    let request = Request::from_parts(parts.clone(), attempt_body);
    first.parts = Some(parts);
    first.replay = Some(body);
    // The service the caller drove to readiness serves the first attempt.
    State::Calling {
        future: first.inner.call(request),
    }
}

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { prepare } => {
                    let first = this.first.as_mut().expect("present until the slow path");
                    if deadline_passed(&mut first.cutoff, cx) {
                        this.state.set(State::Done);
                        let config = &this.first.take().expect("present").config;
                        return Poll::Ready(Err(deadline_exceeded(config, 0)));
                    }
                    let prepared = ready!(prepare.as_mut().poll(cx));
                    let next = begin(this.first, prepared);
                    this.state.set(next);
                }
                StateProj::Refused { error } => {
                    let error = error.take().expect("polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Calling { future } => {
                    let first = this.first.as_mut().expect("present until the slow path");
                    let result = if deadline_passed(&mut first.cutoff, cx) {
                        Err(first.timeout_error(1))
                    } else {
                        ready!(future.poll(cx)).map_err(Into::into)
                    };
                    let classifier = classifier();
                    let attempt = match result {
                        Ok(response) => match classify_head(&classifier, &response) {
                            Some(outcome) if outcome.is_success() => {
                                this.state.set(State::Done);
                                this.first.take();
                                // One attempt: nothing to record (`Attempts::of` reads
                                // its absence as one).
                                return Poll::Ready(Ok(response.map(Body::new)));
                            }
                            Some(outcome) => {
                                FirstAttempt::Classified(Ok(response.map(Body::new)), outcome)
                            }
                            None => FirstAttempt::Unclassified(response.map(Body::new)),
                        },
                        Err(error) => {
                            let outcome = classify_error(&classifier, error.as_ref());
                            FirstAttempt::Classified(Err(error), outcome)
                        }
                    };
                    let mut first = this.first.take().expect("present");
                    let replay = first.replay.take().expect("set before the call");
                    let future = first.into_slow(Sendable::Replay(replay), Some(attempt));
                    this.state.set(State::Slow { future });
                }
                StateProj::Slow { future } => {
                    let output = ready!(future.as_mut().poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(output);
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
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

fn deadline_passed(cutoff: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    cutoff
        .as_mut()
        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
}

/// The first attempt's result, as handed to the slow path.
enum FirstAttempt {
    Classified(Output, Outcome),
    /// An error response whose body the classifier wants to read.
    Unclassified(Response<Body>),
}

impl<S> First<S> {
    fn timeout_error(&self, attempts: u32) -> BoxError {
        let cutoff = self
            .cutoff
            .as_ref()
            .map_or_else(Instant::now, |s| s.deadline());
        timeout_error(&self.config, self.deadline, cutoff, attempts)
    }
}

impl<S, ResBody> First<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    fn into_slow(
        self,
        body: Sendable,
        attempt: Option<FirstAttempt>,
    ) -> Pin<Box<dyn Future<Output = Output> + Send>> {
        let cutoff = self.cutoff.as_ref().map(|sleep| sleep.deadline());
        let parts = self
            .parts
            .expect("the slow path starts once the body is prepared");
        Box::pin(slow(
            self.inner,
            self.config,
            parts,
            body,
            self.deadline,
            attempt.map(|a| (a, cutoff)),
        ))
    }
}

/// What can be sent: a body to replay on every attempt, or one to send once.
enum Sendable {
    /// A body whose every byte is in memory.
    Replay(Body),
    Once(Option<Body>, NotReplayable),
}

/// The rest of a call once the first attempt failed (or when the body cannot be
/// replayed, the whole call): classification of an error body, events, waits and
/// further attempts.
async fn slow<S, ResBody>(
    mut inner: S,
    config: Arc<RetryConfig>,
    parts: Parts,
    mut body: Sendable,
    deadline: Option<Instant>,
    first: Option<(FirstAttempt, Option<Instant>)>,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let event = |data: RetryEvent| Event::new("retry", &parts.method, &parts.uri, data);
    if let Sendable::Once(_, reason) = &body {
        let reason = *reason;
        config
            .events
            .emit(event(RetryEvent::NotReplayable { reason }));
        if let Some(budget) = &config.budget {
            budget.deposit();
        }
    }
    let mut first = first;
    let mut previous_delay = config.backoff.base();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let (result, outcome) = match first.take() {
            Some((FirstAttempt::Classified(result, outcome), _)) => (result, outcome),
            Some((FirstAttempt::Unclassified(response), cutoff)) => {
                let classifier = classifier();
                let classify = classify_response(&classifier, response, DEFAULT_ERROR_BODY_LIMIT);
                match cutoff {
                    None => {
                        let (response, outcome) = classify.await;
                        (Ok(response), outcome)
                    }
                    Some(at) => match Box::pin(tokio::time::timeout_at(at, classify)).await {
                        Ok((response, outcome)) => (Ok(response), outcome),
                        Err(_) => (
                            Err(timeout_error(&config, deadline, at, 1)),
                            Outcome::new(OutcomeKind::Timeout),
                        ),
                    },
                }
            }
            None => {
                let body = match &mut body {
                    Sendable::Replay(replay) => replay
                        .try_clone()
                        .expect("a body kept for replay is in memory"),
                    Sendable::Once(once, _) => match once.take() {
                        Some(body) => body,
                        None => unreachable!("a body sent once is never retried"),
                    },
                };
                let request = Request::from_parts(parts.clone(), body);
                send(&mut inner, &config, request, attempt, deadline).await
            }
        };
        if outcome.is_success() {
            return with_attempts(result, attempt);
        }
        config.events.emit(event(RetryEvent::AttemptFailed {
            attempt,
            outcome: outcome.clone(),
        }));

        let decision = if brownout_core::request::Probe::of(&parts.extensions) {
            Err(GiveUpReason::Probe)
        } else if !AttemptGate::allows_in(&parts.extensions) {
            Err(GiveUpReason::Held)
        } else {
            decide(&config, &outcome, &body, attempt, previous_delay, deadline)
        };
        let delay = match decision {
            Ok(delay) => delay,
            Err(reason) => {
                config.events.emit(event(RetryEvent::GaveUp {
                    attempts: attempt,
                    reason,
                    outcome,
                }));
                return with_attempts(result, attempt);
            }
        };
        config.events.emit(event(RetryEvent::Retrying {
            attempt,
            delay,
            outcome: outcome.clone(),
        }));
        // The failed response is dropped here, before the wait, so that its connection
        // goes back to the pool; unless a layer outside may refuse the next attempt
        // (an attempt gate), which then gets this answer back.
        let gated = parts.extensions.get::<AttemptGate>();
        let kept = match gated {
            Some(_) => Some(result),
            None => {
                drop(result);
                None
            }
        };
        tokio::time::sleep(delay).await;
        if let (Some(gate), Some(result)) = (gated, kept) {
            if !gate.allows() {
                config.events.emit(event(RetryEvent::GaveUp {
                    attempts: attempt,
                    reason: GiveUpReason::Held,
                    outcome,
                }));
                return with_attempts(result, attempt);
            }
        }
        previous_delay = delay;
    }
}

/// One attempt: readiness, the call and the classification, bounded by the attempt
/// timeout and the deadline.
async fn send<S, ResBody>(
    inner: &mut S,
    config: &RetryConfig,
    request: Request<Body>,
    attempt: u32,
    deadline: Option<Instant>,
) -> (Output, Outcome)
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let call = async {
        // The first attempt uses the service the caller drove to readiness.
        let result: Result<_, BoxError> = if attempt == 1 {
            inner.call(request).await.map_err(Into::into)
        } else {
            match inner.ready().await.map_err(Into::into) {
                Ok(ready) => ready.call(request).await.map_err(Into::into),
                Err(error) => Err(error),
            }
        };
        let result = result.map(|response| response.map(Body::new));
        classify_result(&classifier(), result, DEFAULT_ERROR_BODY_LIMIT).await
    };
    let attempt_deadline = config.attempt_timeout.map(|t| Instant::now() + t);
    let cutoff = match (attempt_deadline, deadline) {
        (Some(a), Some(d)) => Some(a.min(d)),
        (a, d) => a.or(d),
    };
    let Some(cutoff) = cutoff else {
        return call.await;
    };
    match Box::pin(tokio::time::timeout_at(cutoff, call)).await {
        Ok(done) => done,
        Err(_) => (
            Err(timeout_error(config, deadline, cutoff, attempt)),
            Outcome::new(OutcomeKind::Timeout),
        ),
    }
}

/// Whether to try again, and after how long.
fn decide(
    config: &RetryConfig,
    outcome: &Outcome,
    body: &Sendable,
    attempt: u32,
    previous_delay: Duration,
    deadline: Option<Instant>,
) -> Result<Duration, GiveUpReason> {
    if !outcome.is_retryable() {
        return Err(GiveUpReason::NotRetryable);
    }
    if let Some(at) = deadline {
        if Instant::now() >= at {
            return Err(GiveUpReason::DeadlineReached);
        }
    }
    if let Sendable::Once(_, reason) = body {
        return Err(GiveUpReason::NotReplayable(*reason));
    }
    if attempt >= config.max_attempts {
        return Err(GiveUpReason::AttemptsExhausted);
    }
    if config.move_on_overload
        && outcome.kind() == OutcomeKind::Overloaded
        && outcome.server_delay().is_none()
    {
        return Err(GiveUpReason::Overloaded);
    }
    let server_delay = outcome.server_delay().unwrap_or_default();
    if server_delay > config.max_server_delay {
        return Err(GiveUpReason::ServerDelayTooLong {
            delay: server_delay,
        });
    }
    let backoff = config
        .backoff
        .delay(attempt, previous_delay, config.rng.f64());
    let delay = backoff.max(server_delay);
    if let Some(at) = deadline {
        if Instant::now() + delay >= at {
            return Err(GiveUpReason::DeadlineReached);
        }
    }
    if let Some(budget) = &config.budget {
        if !budget.withdraw() {
            return Err(GiveUpReason::BudgetExhausted);
        }
    }
    Ok(delay)
}

/// The error of an attempt cut off at `cutoff`: the deadline's, when the cutoff was
/// the deadline, else the attempt timeout's.
fn timeout_error(
    config: &RetryConfig,
    deadline: Option<Instant>,
    cutoff: Instant,
    attempt: u32,
) -> BoxError {
    match (deadline, config.attempt_timeout) {
        (Some(d), _) if cutoff >= d => deadline_exceeded(config, attempt),
        (_, Some(timeout)) => Box::new(AttemptTimedOut::new(timeout)),
        (_, None) => deadline_exceeded(config, attempt),
    }
}

fn deadline_exceeded(config: &RetryConfig, attempts: u32) -> BoxError {
    Box::new(DeadlineExceeded::new(
        config.deadline.unwrap_or_default(),
        attempts,
    ))
}

/// Records the attempt count on the response when the request was sent more than
/// once. A first-attempt answer carries no extension, which [`Attempts::of`] reads as
/// one: inserting the first extension of a response costs three allocations, a third
/// of the layer's whole cost on the success path (see the `retry_instructions` bench).
fn with_attempts(result: Output, attempts: u32) -> Output {
    result.map(|mut response| {
        if attempts > 1 {
            response.extensions_mut().insert(Attempts(attempts));
        }
        response
    })
}
