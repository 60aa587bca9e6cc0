//! The gateway's two clocks on bodies: the whole request body must arrive within
//! `body_timeout`, and a streamed answer must not go silent for `[streams]
//! idle_timeout`.
//!
//! Both are bodies wrapping bodies. A timer is only made when a body first has to
//! wait, so a body in memory (most requests, every buffered answer) costs no timer.

use std::{
    fmt,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use brownout::{
    error::BrokenBody,
    provider::{self, ErrorKind},
    shape, Body, BoxError,
};
use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The caller's request body did not arrive whole within `body_timeout`.
///
/// Found in the error chain of a request the gateway answers `408`; it is the caller's
/// failure ([`BrokenBody`]), never counted against a breaker or a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimedOut {
    limit: Duration,
}

impl BodyTimedOut {
    /// How long the body was given.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body not received within {:?}", self.limit)
    }
}

impl std::error::Error for BodyTimedOut {}

pin_project! {
    /// A caller's request body that fails with [`BodyTimedOut`] (inside a
    /// [`BrokenBody`]) once `limit` has passed since the request's head arrived.
    pub(crate) struct Timed<B> {
        #[pin]
        inner: B,
        deadline: Instant,
        limit: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        done: bool,
    }
}

impl<B> Timed<B> {
    /// `inner`, due whole `limit` after `start` (when the request's head arrived).
    pub(crate) fn new(inner: B, start: Instant, limit: Duration) -> Self {
        Timed {
            inner,
            deadline: start + limit,
            limit,
            sleep: None,
            done: false,
        }
    }
}

impl<B> fmt::Debug for Timed<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timed")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Ready(None) => {
                *this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let deadline = *this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        *this.done = true;
        let timed_out = BodyTimedOut { limit: *this.limit };
        Poll::Ready(Some(Err(Box::new(BrokenBody::cut(Box::new(timed_out))))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

pin_project! {
    /// A streamed answer that ends with an error event in the provider's shape when
    /// no frame comes for `idle`, and counts the stall.
    pub(crate) struct IdleStream {
        #[pin]
        inner: Body,
        idle: Duration,
        api: provider::Api,
        sleep: Option<Pin<Box<Sleep>>>,
        stalls: Arc<AtomicU64>,
        state: State,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    Ended,
}

impl IdleStream {
    /// `inner`, an event stream of `api`, ended after `idle` without a frame; each
    /// stall adds one to `stalls`.
    pub(crate) fn new(
        inner: Body,
        idle: Duration,
        api: provider::Api,
        stalls: Arc<AtomicU64>,
    ) -> Self {
        IdleStream {
            inner,
            idle,
            api,
            sleep: None,
            stalls,
            state: State::Streaming,
        }
    }
}

impl fmt::Debug for IdleStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleStream")
            .field("idle", &self.idle)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// The event that ends a stalled stream: Anthropic's `event: error` with an
/// `overloaded_error`, or an OpenAI error chunk.
pub(crate) fn stall_event(api: provider::Api, idle: Duration) -> Bytes {
    let message = format!("brownout-gateway: the upstream stream sent nothing for {idle:?}");
    if api.is_openai() {
        let error = api.error_body(ErrorKind::Timeout, &message);
        shape::sse_frame(None, &error)
    } else {
        let error = shape::anthropic_error(ErrorKind::Overloaded.anthropic_type(), &message);
        shape::sse_frame(Some("error"), &error)
    }
}

impl http_body::Body for IdleStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.state == State::Ended {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(frame)) => {
                // Any frame restarts the idle clock.
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(Instant::now() + *this.idle);
                }
                return Poll::Ready(Some(
                    frame.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))),
                ));
            }
            Poll::Ready(None) => {
                *this.state = State::Ended;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let idle = *this.idle;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(sleep.as_mut().poll(cx));
        *this.state = State::Ended;
        this.stalls.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            idle_s = idle.as_secs_f64(),
            api = this.api.as_str(),
            "brownout-gateway: a streamed answer stalled; ended it with an error event"
        );
        Poll::Ready(Some(Ok(Frame::data(stall_event(*this.api, idle)))))
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
