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
    request::AttemptGate,
    Body, BoxError, OutcomeKind, RequestFacts,
};
use bytes::Bytes;
use http::{uri::Authority, Request, Response};
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
            key: KeySource,
        },
        Boxed { future: Boxed },
        Failed { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn direct(future: F, shared: Arc<Shared>, key: KeySource) -> Self {
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
                                    learn(shared, &key.resolve(), &outcome);
                                }
                                Poll::Ready(Ok(response))
                            }
                            // An error body to read first (429, 5xx): the rare path.
                            None => {
                                let (shared, key) = (shared.clone(), key.resolve());
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
                        learn(shared, &key.resolve(), &outcome);
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
    host_key(request.uri().authority())
}

fn host_key(authority: Option<&Authority>) -> Arc<str> {
    Arc::from(authority.map_or("default", Authority::host))
}

/// The key of a request passing straight through: found before it is sent, or, while
/// nothing is tracked and no health view is asked, only if its answer says the key
/// is unavailable, from the body bytes kept aside (a reference count, no copy), so
/// that the success path reads no request facts.
pub(crate) enum KeySource {
    Known(Arc<str>),
    Lazy {
        body: Bytes,
        authority: Option<Authority>,
    },
}

impl KeySource {
    fn resolve(&self) -> Arc<str> {
        match self {
            KeySource::Known(key) => key.clone(),
            KeySource::Lazy { body, authority } => {
                let (parts, ()) = Request::new(()).into_parts();
                match RequestFacts::read(&parts, body, true) {
                    Ok(facts) => match facts.model_arc().filter(|m| !m.is_empty()) {
                        Some(model) => model.clone(),
                        None => host_key(authority.as_ref()),
                    },
                    Err(_) => host_key(authority.as_ref()),
                }
            }
        }
    }
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
/// (or is shed), then is sent; an overload answer with a delay to a request the queue
/// sent puts it back in its place, while its wait allows.
pub(crate) async fn queued<S, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    request: Request<Body>,
    key: Arc<str>,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let priority = shared.priority.of(&parts);
    let mut request = Request::from_parts(parts, body);
    let caller = RequestFacts::of(request.extensions()).and_then(|f| f.caller(request.headers()));
    let shed_at = start + budget(&shared, &request, start);
    let mut place = None;
    // The answer to hand back if the request cannot be held again.
    let mut failed: Option<Output> = None;
    loop {
        let budget = shed_at.saturating_duration_since(Instant::now());
        let (permit, waited) = match shared.arrive(&key, priority, caller, budget, place) {
            Arrival::Pass(permit) => (permit, false),
            Arrival::Shed {
                key,
                reason,
                retry_after,
            } => {
                return match failed {
                    Some(output) => output,
                    None => {
                        shed_output(&shared, &request, key, reason, retry_after, start.elapsed())
                    }
                }
            }
            Arrival::Wait {
                key: entry,
                slot,
                rx,
                depth,
                expected,
            } => {
                if failed.is_none() {
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
                }
                place = Some(slot.1);
                match wait(&shared, &entry, slot, rx, shed_at).await {
                    Some(Ticket::Go(permit)) => {
                        shared.emit(Event::new(
                            "queue",
                            request.method(),
                            request.uri(),
                            QueueEvent::Admitted {
                                key: key.clone(),
                                waited: start.elapsed(),
                            },
                        ));
                        (Some(permit), true)
                    }
                    ticket => {
                        if let Some(output) = failed {
                            return output;
                        }
                        let reason = match ticket {
                            Some(Ticket::Shed(reason)) => reason,
                            _ => ShedReason::Shutdown,
                        };
                        let retry_after = match reason {
                            ShedReason::Shutdown => None,
                            _ => shared.expected(&key),
                        };
                        return shed_output(
                            &shared,
                            &request,
                            key,
                            reason,
                            retry_after,
                            start.elapsed(),
                        );
                    }
                }
            }
        };
        // Only a request the queue admits itself may be held again, and only when its
        // bytes can be sent again.
        // A probe (a breaker's, outside) is sent once: its answer is the measurement.
        let again = permit
            .as_ref()
            .filter(|_| !brownout_core::request::Probe::of(request.extensions()))
            .and_then(|_| replay_of(&request));
        let (output, outcome) = send(&shared, inner.clone(), request, &key, permit, waited).await;
        let hold = again.filter(|_| {
            matches!(
                outcome.kind(),
                OutcomeKind::Overloaded | OutcomeKind::RateLimited | OutcomeKind::Rejected
            ) && outcome.server_delay().is_some()
                && shared
                    .expected(&key)
                    .is_some_and(|wait| Instant::now() + wait < shed_at)
        });
        match hold {
            Some(again) => {
                request = again;
                failed = Some(output);
            }
            None => return output,
        }
    }
}

/// Waits for a ticket, looking again when the key's delay ends or its health may have
/// changed; leaves the queue when the caller hangs up.
async fn wait(
    shared: &Arc<Shared>,
    entry: &Arc<Key>,
    slot: Slot,
    mut rx: tokio::sync::oneshot::Receiver<Ticket>,
    shed_at: Instant,
) -> Option<Ticket> {
    let mut leave = Leave {
        shared: shared.clone(),
        key: entry.clone(),
        slot,
        armed: true,
    };
    let ticket = loop {
        let wake = shared.wake_at(entry, Instant::now());
        tokio::select! {
            biased;
            ticket = &mut rx => break ticket.ok(),
            () = tokio::time::sleep_until(shed_at) => {
                if shared.leave(entry, slot) {
                    break Some(Ticket::Shed(ShedReason::WaitExpired));
                }
                // Admitted or shed in the same instant: take what was sent.
                break rx.try_recv().ok();
            }
            () = tokio::time::sleep_until(wake.unwrap_or(shed_at)), if wake.is_some() => {
                shared.poke(entry);
            }
        }
    };
    leave.armed = false;
    ticket
}

/// A copy of a request whose body is in memory, to be sent again.
fn replay_of(request: &Request<Body>) -> Option<Request<Body>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

/// Sends the request and learns from its answer.
async fn send<S, ResBody>(
    shared: &Arc<Shared>,
    mut inner: S,
    request: Request<Body>,
    key: &Arc<str>,
    mut permit: Option<Permit>,
    waited: bool,
) -> (Output, Outcome)
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    if waited {
        // Readiness was reserved before the wait; ask again, as it may have changed.
        if let Err(error) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
            let error: BoxError = error.into();
            let outcome = classify_error(&DefaultClassifier::new(), error.as_ref());
            return (Err(error), outcome);
        }
    }
    // While the key is held, a retry inside does not send this request again: the
    // queue decides (holds it in its place, or hands the answer out to move on).
    let mut request = request;
    let gate = (shared.clone(), key.clone());
    request
        .extensions_mut()
        .insert(AttemptGate::new(move || gate.0.limit(&gate.1).is_none()));
    let call = inner.call(request);
    let mut call = std::pin::pin!(async move {
        call.await
            .map(|response| response.map(Body::new))
            .map_err(Into::<BoxError>::into)
    });
    let result = match (permit.as_mut(), shared.config.early_ack) {
        // Overload answers come in milliseconds, LLM answers in seconds: a call still
        // in flight after `early_ack` lets slow start admit the next ones.
        (Some(permit), Some(after)) => {
            tokio::select! {
                biased;
                result = &mut call => result,
                () = tokio::time::sleep(after) => {
                    if let Some(change) = shared.survived(permit) {
                        shared.emit(Event::detached("queue", change));
                    }
                    call.await
                }
            }
        }
        _ => call.await,
    };
    let (result, outcome) =
        classify_result(&DefaultClassifier::new(), result, DEFAULT_ERROR_BODY_LIMIT).await;
    if let Some(change) = shared.observe(key, &outcome, permit.as_ref()) {
        shared.emit(Event::detached("queue", change));
    }
    drop(permit);
    (result, outcome)
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
