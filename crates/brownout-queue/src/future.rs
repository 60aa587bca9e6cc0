//! The queue's response future: straight through while nothing is wrong, else a boxed
//! wait in the key's queue.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use brownout_core::{
    classify::{
        classify_error, classify_head, classify_response, classify_result, DefaultClassifier,
        Outcome, DEFAULT_ERROR_BODY_LIMIT,
    },
    event::Event,
    future::{Output, ResponseFuture as Boxed},
    Body, BoxError, RequestFacts,
};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    config::OnShed,
    shed,
    state::{Arrival, Key, Permit, Shared, Slot, Ticket},
    Deadline, QueueEvent, Shed, ShedReason,
};

pin_project! {
    /// Response future of [`Queue`](crate::Queue).
    ///
    /// While no key is unavailable it is the inner future and a look at the answer,
    /// with no allocation of its own (the `queue` benchmark measures it against the
    /// bare service); a request that may wait is one boxed future.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Direct {
            #[pin]
            future: F,
            shared: Arc<Shared>,
            key: Arc<str>,
        },
        Boxed { future: Boxed },
        Failed { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn direct(future: F, shared: Arc<Shared>, key: Arc<str>) -> Self {
        ResponseFuture {
            kind: Kind::Direct {
                future,
                shared,
                key,
            },
        }
    }

    pub(crate) fn boxed(future: impl Future<Output = Output> + Send + 'static) -> Self {
        ResponseFuture {
            kind: Kind::Boxed {
                future: Boxed::new(future),
            },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Output> {
        let mut this = self.project();
        match this.kind.as_mut().project() {
            KindProj::Direct {
                future,
                shared,
                key,
            } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                let classifier = DefaultClassifier::new();
                match result {
                    Ok(response) => {
                        let response = response.map(Body::new);
                        match classify_head(&classifier, &response) {
                            Some(outcome) => {
                                if !outcome.is_success() {
                                    learn(shared, key, &outcome);
                                }
                                Poll::Ready(Ok(response))
                            }
                            // An error body to read first (429, 5xx): the rare path.
                            None => {
                                let (shared, key) = (shared.clone(), key.clone());
                                let future = Boxed::new(async move {
                                    let (response, outcome) = classify_response(
                                        &classifier,
                                        response,
                                        DEFAULT_ERROR_BODY_LIMIT,
                                    )
                                    .await;
                                    learn(&shared, &key, &outcome);
                                    Ok(response)
                                });
                                this.kind.set(Kind::Boxed { future });
                                self_poll_boxed(this.kind, cx)
                            }
                        }
                    }
                    Err(error) => {
                        let outcome = classify_error(&classifier, error.as_ref());
                        learn(shared, key, &outcome);
                        Poll::Ready(Err(error))
                    }
                }
            }
            KindProj::Boxed { future } => Pin::new(future).poll(cx),
            KindProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

fn self_poll_boxed<F>(kind: Pin<&mut Kind<F>>, cx: &mut Context<'_>) -> Poll<Output> {
    match kind.project() {
        KindProj::Boxed { future } => Pin::new(future).poll(cx),
        _ => unreachable!("just set to boxed"),
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Learns from an answer that passed untracked, and emits the admission change it
/// caused.
fn learn(shared: &Arc<Shared>, key: &Arc<str>, outcome: &Outcome) {
    if let Some(change) = shared.observe(key, outcome, None) {
        shared.emit(Event::detached("queue", change));
    }
}

/// The request's key: its model, else its host, else `"default"`.
pub(crate) fn key_of(request: &Request<Body>) -> Arc<str> {
    if let Some(model) = RequestFacts::of(request.extensions())
        .and_then(RequestFacts::model_arc)
        .filter(|model| !model.is_empty())
    {
        return model.clone();
    }
    Arc::from(request.uri().host().unwrap_or("default"))
}

/// How long the request may wait: `max_wait`, or less when its deadline is nearer.
fn budget(shared: &Shared, request: &Request<Body>, start: Instant) -> Duration {
    let deadline = request
        .extensions()
        .get::<Deadline>()
        .map(|d| d.0)
        .or_else(|| shared.deadline.map(|d| start + d));
    match deadline {
        Some(at) => shared.max_wait.min(at.saturating_duration_since(start)),
        None => shared.max_wait,
    }
}

/// Takes a waiter out of its queue when its caller hangs up.
struct Leave {
    shared: Arc<Shared>,
    key: Arc<Key>,
    slot: Slot,
    armed: bool,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if self.armed {
            self.shared.leave(&self.key, self.slot);
        }
    }
}

/// A request that may have to wait: arrives at its key's queue, waits for a permit
/// (or is shed), then is sent.
pub(crate) async fn queued<S, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    request: Request<Body>,
    key: Arc<str>,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let start = Instant::now();
    let priority = {
        let (parts, body) = request.into_parts();
        let priority = shared.priority.of(&parts);
        (Request::from_parts(parts, body), priority)
    };
    let (request, priority) = priority;
    let caller = RequestFacts::of(request.extensions()).and_then(|f| f.caller(request.headers()));
    let budget = budget(&shared, &request, start);
    match shared.arrive(&key, priority, caller, budget) {
        Arrival::Pass(permit) => send(&shared, inner, request, &key, permit, false).await,
        Arrival::Shed {
            key,
            reason,
            retry_after,
        } => shed_output(&shared, &request, key, reason, retry_after, Duration::ZERO),
        Arrival::Wait {
            key: entry,
            slot,
            mut rx,
            depth,
            expected,
        } => {
            shared.emit(Event::new(
                "queue",
                request.method(),
                request.uri(),
                QueueEvent::Queued {
                    key: key.clone(),
                    depth,
                    expected,
                },
            ));
            let mut leave = Leave {
                shared: shared.clone(),
                key: entry.clone(),
                slot,
                armed: true,
            };
            let shed_at = start + budget;
            let ticket = loop {
                let wake = shared.wake_at(&entry, Instant::now());
                tokio::select! {
                    biased;
                    ticket = &mut rx => break ticket.ok(),
                    () = tokio::time::sleep_until(shed_at) => {
                        if shared.leave(&entry, slot) {
                            break Some(Ticket::Shed(ShedReason::WaitExpired));
                        }
                        // Admitted or shed in the same instant: take what was sent.
                        break rx.try_recv().ok();
                    }
                    () = tokio::time::sleep_until(wake.unwrap_or(shed_at)), if wake.is_some() => {
                        shared.poke(&entry);
                    }
                }
            };
            leave.armed = false;
            let waited = start.elapsed();
            match ticket {
                Some(Ticket::Go(permit)) => {
                    shared.emit(Event::new(
                        "queue",
                        request.method(),
                        request.uri(),
                        QueueEvent::Admitted {
                            key: key.clone(),
                            waited,
                        },
                    ));
                    send(&shared, inner, request, &key, Some(permit), true).await
                }
                Some(Ticket::Shed(reason)) => {
                    let retry_after = match reason {
                        ShedReason::Shutdown => None,
                        _ => shared.expected(&key),
                    };
                    shed_output(&shared, &request, key, reason, retry_after, waited)
                }
                None => shed_output(&shared, &request, key, ShedReason::Shutdown, None, waited),
            }
        }
    }
}

/// Sends the request and learns from its answer.
async fn send<S, ResBody>(
    shared: &Arc<Shared>,
    mut inner: S,
    request: Request<Body>,
    key: &Arc<str>,
    permit: Option<Permit>,
    waited: bool,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    if waited {
        // Readiness was reserved before the wait; ask again, as it may have changed.
        std::future::poll_fn(|cx| inner.poll_ready(cx))
            .await
            .map_err(Into::into)?;
    }
    let result = inner
        .call(request)
        .await
        .map(|response| response.map(Body::new))
        .map_err(Into::into);
    let (result, outcome) =
        classify_result(&DefaultClassifier::new(), result, DEFAULT_ERROR_BODY_LIMIT).await;
    if let Some(change) = shared.observe(key, &outcome, permit.as_ref()) {
        shared.emit(Event::detached("queue", change));
    }
    drop(permit);
    result
}

fn shed_output(
    shared: &Shared,
    request: &Request<Body>,
    key: Arc<str>,
    reason: ShedReason,
    retry_after: Option<Duration>,
    waited: Duration,
) -> Output {
    shared.emit(Event::new(
        "queue",
        request.method(),
        request.uri(),
        QueueEvent::Shed {
            key: key.clone(),
            reason,
            waited,
        },
    ));
    let shed = Shed::new(key, reason, retry_after);
    match shared.on_shed {
        OnShed::Respond => Ok(shed::response(request.uri(), shed)),
        OnShed::Error => Err(Box::new(shed)),
    }
}
