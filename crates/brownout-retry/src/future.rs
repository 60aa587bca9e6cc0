//! The retry loop.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use brownout_core::{
    body::{buffer, Buffered, PrefixedBody, ReplayBody},
    classify::{classify_result, Outcome, OutcomeKind},
    error::{AttemptTimedOut, DeadlineExceeded},
    event::{Event, EventKind, GiveUpReason, NotReplayable},
    meta::Attempts,
    BoxError,
};
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::RetryConfig;

type Result<B> = std::result::Result<Response<PrefixedBody<B>>, BoxError>;

/// Response future of [`Retry`](crate::Retry).
///
/// The loop is an `async fn` behind one allocation per call; the `retry` benchmark
/// measures it against tower's hand-written retry future on the success path.
pub struct ResponseFuture<B: Body> {
    inner: Pin<Box<dyn Future<Output = Result<B>> + Send>>,
}

impl<B: Body> ResponseFuture<B> {
    pub(crate) fn new(future: impl Future<Output = Result<B>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl<B: Body> Future for ResponseFuture<B> {
    type Output = Result<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B: Body> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// What can be sent: a body to replay on every attempt, or one to send once.
enum Sendable<B: Body> {
    Replay(ReplayBody),
    Once(Option<PrefixedBody<B>>, NotReplayable),
}

pub(crate) async fn run<S, ReqBody, ResBody>(
    mut inner: S,
    config: Arc<RetryConfig>,
    request: Request<ReqBody>,
) -> Result<ResBody>
where
    S: Service<Request<PrefixedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ResBody: Body + Unpin,
{
    let start = Instant::now();
    let deadline = config.deadline.map(|d| start + d);
    let (parts, body) = request.into_parts();
    let event = |kind| Event::new("retry", &parts.method, &parts.uri, kind);

    let buffered = buffer(body, config.replay_limit);
    let buffered = match deadline {
        Some(at) => match tokio::time::timeout_at(at, buffered).await {
            Ok(buffered) => buffered,
            Err(_) => return Err(deadline_exceeded(&config, 0)),
        },
        None => buffered.await,
    };
    let mut body = match buffered {
        Buffered::Complete(replay) => Sendable::Replay(replay),
        Buffered::TooLarge(body) => {
            let reason = NotReplayable::BodyTooLarge {
                limit: config.replay_limit,
            };
            config
                .events
                .emit(event(EventKind::NotReplayable { reason }));
            Sendable::Once(Some(body), reason)
        }
        Buffered::Failed(body) => {
            let reason = NotReplayable::BodyFailed;
            config
                .events
                .emit(event(EventKind::NotReplayable { reason }));
            Sendable::Once(Some(body), reason)
        }
    };
    if let Some(budget) = &config.budget {
        budget.deposit();
    }

    let mut previous_delay = config.backoff.base();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let request = match &mut body {
            Sendable::Replay(replay) => Request::from_parts(parts.clone(), replay.replay()),
            Sendable::Once(once, _) => match once.take() {
                Some(body) => Request::from_parts(parts.clone(), body),
                None => unreachable!("a body sent once is never retried"),
            },
        };
        let (result, outcome) = send(&mut inner, &config, request, attempt, deadline).await;
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
    match tokio::time::timeout_at(cutoff, call).await {
        Ok(done) => done,
        Err(_) => {
            let error: BoxError = match (deadline, config.attempt_timeout) {
                (Some(d), _) if cutoff >= d => deadline_exceeded(config, attempt),
                (_, Some(timeout)) => Box::new(AttemptTimedOut::new(timeout)),
                (_, None) => deadline_exceeded(config, attempt),
            };
            (Err(error), Outcome::new(OutcomeKind::Timeout))
        }
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

fn deadline_exceeded(config: &RetryConfig, attempts: u32) -> BoxError {
    Box::new(DeadlineExceeded::new(
        config.deadline.unwrap_or_default(),
        attempts,
    ))
}

fn with_attempts<B: Body>(result: Result<B>, attempts: u32) -> Result<B> {
    result.map(|mut response| {
        response.extensions_mut().insert(Attempts(attempts));
        response
    })
}
