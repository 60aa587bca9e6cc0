//! The retry loop.

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use brownout_core::{
    body::{buffer, BufferFuture, Buffered, PrefixedBody, ReplayBody},
    classify::{
        classify_head, classify_response, classify_result, Classify, Observed, Outcome, OutcomeKind,
    },
    error::{AttemptTimedOut, DeadlineExceeded},
    event::{Event, EventKind, GiveUpReason, NotReplayable},
    meta::Attempts,
    BoxError,
};
use http::{request::Parts, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower_service::Service;

use crate::RetryConfig;

type Result<B> = std::result::Result<Response<PrefixedBody<B>>, BoxError>;

pin_project! {
    /// Response future of [`Retry`](crate::Retry).
    ///
    /// The first attempt runs in this hand-written state machine, with no allocation
    /// on the success path; once an attempt fails, the rest of the call (waits, further
    /// attempts, events) continues in one boxed future. The `retry` benchmark measures
    /// the success path against tower's own retry.
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        ResBody: Body,
    {
        #[pin]
        state: State<S::Future, ReqBody, ResBody>,
        first: Option<First<S, ReqBody>>,
    }
}

/// What the first attempt needs, and hands over to the slow path.
struct First<S, ReqBody: Body> {
    inner: S,
    config: Arc<RetryConfig>,
    parts: Parts,
    replay: Option<ReplayBody>,
    deadline: Option<Instant>,
    /// The first attempt's cutoff: the deadline or the attempt timeout, whichever is
    /// sooner. Allocated only when one of them is configured.
    cutoff: Option<Pin<Box<Sleep>>>,
    _body: PhantomData<fn(ReqBody)>,
}

pin_project! {
    #[project = StateProj]
    enum State<F, ReqBody, ResBody>
    where
        ReqBody: Body,
        ResBody: Body,
    {
        Buffering { buffer: BufferFuture<ReqBody> },
        Calling { #[pin] future: F },
        Slow { future: Pin<Box<dyn Future<Output = Result<ResBody>> + Send>> },
        Done,
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body + Unpin,
    ResBody: Body,
{
    pub(crate) fn new(inner: S, config: Arc<RetryConfig>, request: Request<ReqBody>) -> Self {
        let (parts, body) = request.into_parts();
        let deadline = config.deadline.map(|d| Instant::now() + d);
        let buffer = buffer(body, config.replay_limit);
        ResponseFuture {
            state: State::Buffering { buffer },
            first: Some(First {
                inner,
                config,
                parts,
                replay: None,
                deadline,
                cutoff: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
                _body: PhantomData,
            }),
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Body + Unpin + Send + 'static,
    ReqBody::Error: Send,
    ResBody: Body + Unpin + Send + 'static,
    ResBody::Error: Send,
{
    type Output = Result<ResBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { buffer } => {
                    let first = this.first.as_mut().expect("present until the slow path");
                    if deadline_passed(&mut first.cutoff, cx) {
                        this.state.set(State::Done);
                        let config = &this.first.take().expect("present").config;
                        return Poll::Ready(Err(deadline_exceeded(config, 0)));
                    }
                    let buffered = ready!(Pin::new(buffer).poll(cx));
                    let config = first.config.clone();
                    let body = match buffered {
                        Buffered::Complete(replay) => replay,
                        Buffered::TooLarge(body) => {
                            let reason = NotReplayable::BodyTooLarge {
                                limit: config.replay_limit,
                            };
                            let once = Sendable::Once(Some(body), reason);
                            let future = this.first.take().expect("present").into_slow(once, None);
                            this.state.set(State::Slow { future });
                            continue;
                        }
                        Buffered::Failed(body) => {
                            let once = Sendable::Once(Some(body), NotReplayable::BodyFailed);
                            let future = this.first.take().expect("present").into_slow(once, None);
                            this.state.set(State::Slow { future });
                            continue;
                        }
                    };
                    if let Some(budget) = &config.budget {
                        budget.deposit();
                    }
                    if let Some(timeout) = config.attempt_timeout {
                        let at = Instant::now() + timeout;
                        match &mut first.cutoff {
                            Some(cutoff) if cutoff.deadline() <= at => {}
                            Some(cutoff) => cutoff.as_mut().reset(at),
                            None => first.cutoff = Some(Box::pin(tokio::time::sleep_until(at))),
                        }
                    }
                    let request = Request::from_parts(first.parts.clone(), body.replay());
                    first.replay = Some(body);
                    // The service the caller drove to readiness serves the first attempt.
                    let future = first.inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let first = this.first.as_mut().expect("present until the slow path");
                    let result = if deadline_passed(&mut first.cutoff, cx) {
                        Err(first.timeout_error(1))
                    } else {
                        ready!(future.poll(cx)).map_err(Into::into)
                    };
                    let classifier = &first.config.classifier;
                    let attempt = match result {
                        Ok(response) => match classify_head(classifier, &response) {
                            Some(outcome) if outcome.is_success() => {
                                this.state.set(State::Done);
                                this.first.take();
                                let response = response.map(PrefixedBody::new);
                                return Poll::Ready(with_attempts(Ok(response), 1));
                            }
                            Some(outcome) => FirstAttempt::Classified(
                                Ok(response.map(PrefixedBody::new)),
                                outcome,
                            ),
                            None => FirstAttempt::Unclassified(response),
                        },
                        Err(error) => {
                            let outcome = classifier.classify(Observed::Error(error.as_ref()));
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

fn deadline_passed(cutoff: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    cutoff
        .as_mut()
        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
}

/// The first attempt's result, as handed to the slow path.
enum FirstAttempt<B: Body> {
    Classified(Result<B>, Outcome),
    /// An error response whose body the classifier wants to read.
    Unclassified(Response<B>),
}

impl<S, ReqBody> First<S, ReqBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>>,
    ReqBody: Body,
{
    fn timeout_error(&self, attempts: u32) -> BoxError {
        let cutoff = self
            .cutoff
            .as_ref()
            .map_or_else(Instant::now, |s| s.deadline());
        timeout_error(&self.config, self.deadline, cutoff, attempts)
    }
}

impl<S, ReqBody, ResBody> First<S, ReqBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Body + Unpin + Send + 'static,
    ReqBody::Error: Send,
    ResBody: Body + Unpin + Send + 'static,
    ResBody::Error: Send,
{
    fn into_slow(
        self,
        body: Sendable<ReqBody>,
        attempt: Option<FirstAttempt<ResBody>>,
    ) -> Pin<Box<dyn Future<Output = Result<ResBody>> + Send>> {
        let cutoff = self.cutoff.as_ref().map(|sleep| sleep.deadline());
        Box::pin(slow(
            self.inner,
            self.config,
            self.parts,
            body,
            self.deadline,
            attempt.map(|a| (a, cutoff)),
        ))
    }
}

/// What can be sent: a body to replay on every attempt, or one to send once.
enum Sendable<B: Body> {
    Replay(ReplayBody),
    Once(Option<PrefixedBody<B>>, NotReplayable),
}

/// The rest of a call once the first attempt failed (or when the body cannot be
/// replayed, the whole call): classification of an error body, events, waits and
/// further attempts.
async fn slow<S, ReqBody, ResBody>(
    mut inner: S,
    config: Arc<RetryConfig>,
    parts: Parts,
    mut body: Sendable<ReqBody>,
    deadline: Option<Instant>,
    first: Option<(FirstAttempt<ResBody>, Option<Instant>)>,
) -> Result<ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ResBody: Body + Unpin,
{
    let event = |kind| Event::new("retry", &parts.method, &parts.uri, kind);
    if let Sendable::Once(_, reason) = &body {
        let reason = *reason;
        config
            .events
            .emit(event(EventKind::NotReplayable { reason }));
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
                let classify =
                    classify_response(&config.classifier, response, config.error_body_limit);
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
                let request = match &mut body {
                    Sendable::Replay(replay) => Request::from_parts(parts.clone(), replay.replay()),
                    Sendable::Once(once, _) => match once.take() {
                        Some(body) => Request::from_parts(parts.clone(), body),
                        None => unreachable!("a body sent once is never retried"),
                    },
                };
                send(&mut inner, &config, request, attempt, deadline).await
            }
        };
        if outcome.is_success() {
            return with_attempts(result, attempt);
        }
        config.events.emit(event(EventKind::AttemptFailed {
            attempt,
            outcome: outcome.clone(),
        }));

        let decision = decide(&config, &outcome, &body, attempt, previous_delay, deadline);
        let delay = match decision {
            Ok(delay) => delay,
            Err(reason) => {
                config.events.emit(event(EventKind::GaveUp {
                    attempts: attempt,
                    reason,
                    outcome,
                }));
                return with_attempts(result, attempt);
            }
        };
        config.events.emit(event(EventKind::Retrying {
            attempt,
            delay,
            outcome,
        }));
        // The failed response is dropped here, before the wait, so that its connection
        // goes back to the pool.
        drop(result);
        tokio::time::sleep(delay).await;
        previous_delay = delay;
    }
}

/// One attempt: readiness, the call and the classification, bounded by the attempt
/// timeout and the deadline.
async fn send<S, ReqBody, ResBody>(
    inner: &mut S,
    config: &RetryConfig,
    request: Request<PrefixedBody<ReqBody>>,
    attempt: u32,
    deadline: Option<Instant>,
) -> (Result<ResBody>, Outcome)
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ResBody: Body + Unpin,
{
    let call = async {
        // The first attempt uses the service the caller drove to readiness.
        let result: std::result::Result<_, BoxError> = if attempt == 1 {
            inner.call(request).await.map_err(Into::into)
        } else {
            match inner.ready().await.map_err(Into::into) {
                Ok(ready) => ready.call(request).await.map_err(Into::into),
                Err(error) => Err(error),
            }
        };
        classify_result(&config.classifier, result, config.error_body_limit).await
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
fn decide<B: Body>(
    config: &RetryConfig,
    outcome: &Outcome,
    body: &Sendable<B>,
    attempt: u32,
    previous_delay: Duration,
    deadline: Option<Instant>,
) -> std::result::Result<Duration, GiveUpReason> {
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
fn with_attempts<B: Body>(result: Result<B>, attempts: u32) -> Result<B> {
    result.map(|mut response| {
        if attempts > 1 {
            response.extensions_mut().insert(Attempts(attempts));
        }
        response
    })
}
