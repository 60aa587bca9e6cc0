//! The simulator's response body: a whole JSON document, or server-sent events paced
//! by tokio's clock.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// The body of every answer of the [`Sim`](crate::Sim): one frame holding a whole JSON
/// document, or one frame per server-sent event, the events after the first each
/// waiting the model's stream interval on tokio's clock.
///
/// Its data is [`Bytes`]. A stream that breaks the providers' way does so with an
/// error event; a scripted stall ([`FaultKind::StreamStall`](crate::FaultKind)) goes
/// silent after its events, and a scripted cut
/// ([`FaultKind::StreamCut`](crate::FaultKind)) fails with an [`io::Error`] of kind
/// `ConnectionReset` after them (the [server](crate::SimServer) drops the connection
/// then). It is `Unpin`, `Send` and `'static`, so it goes straight into hyper and
/// through brownout's layers.
pub struct SimBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Events(Box<Events>),
}

struct Events {
    events: VecDeque<Bytes>,
    interval: Duration,
    started: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    after: After,
}

/// What a stream of events does once its events are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// It ends.
    End,
    /// It sends nothing more, and never ends.
    Stall,
    /// It fails: the connection is cut.
    Cut,
    /// Cut already: it has ended.
    Done,
}

impl SimBody {
    /// A body of these bytes, in one frame.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        SimBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        SimBody {
            kind: Kind::Full(None),
        }
    }

    /// A stream of these events (each already framed as `event: …\ndata: …\n\n`), the
    /// second and later ones each after `interval`.
    pub fn events(events: impl IntoIterator<Item = Bytes>, interval: Duration) -> Self {
        SimBody::events_then(events, interval, After::End)
    }

    pub(crate) fn events_then(
        events: impl IntoIterator<Item = Bytes>,
        interval: Duration,
        after: After,
    ) -> Self {
        SimBody {
            kind: Kind::Events(Box::new(Events {
                events: events.into_iter().collect(),
                interval,
                started: false,
                sleep: None,
                after,
            })),
        }
    }
}

impl Default for SimBody {
    fn default() -> Self {
        SimBody::empty()
    }
}

impl fmt::Debug for SimBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(data) => f
                .debug_struct("SimBody")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Events(events) => f
                .debug_struct("SimBody")
                .field("events_left", &events.events.len())
                .field("interval", &events.interval)
                .finish(),
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Events(events) => {
                if events.events.is_empty() {
                    return match events.after {
                        After::End | After::Done => Poll::Ready(None),
                        After::Stall => Poll::Pending,
                        After::Cut => {
                            events.after = After::Done;
                            Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "stream cut by the simulated upstream",
                            ))))
                        }
                    };
                }
                if events.started && !events.interval.is_zero() {
                    let interval = events.interval;
                    let sleep = events
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
                    ready!(sleep.as_mut().poll(cx));
                    events.sleep = None;
                }
                events.started = true;
                Poll::Ready(events.events.pop_front().map(|e| Ok(Frame::data(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Events(events) => {
                events.events.is_empty() && matches!(events.after, After::End | After::Done)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            // No exact size, so that hyper streams it chunked as the providers do.
            Kind::Events(_) => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn events_are_paced_by_tokio_time() {
        let start = Instant::now();
        let mut body = SimBody::events(
            ["a", "b", "c"].map(|s: &'static str| Bytes::from_static(s.as_bytes())),
            Duration::from_millis(100),
        );
        assert_eq!(body.size_hint().exact(), None);
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push((frame.unwrap().into_data().unwrap(), start.elapsed()));
        }
        assert_eq!(
            seen,
            [
                (Bytes::from_static(b"a"), Duration::ZERO),
                (Bytes::from_static(b"b"), Duration::from_millis(100)),
                (Bytes::from_static(b"c"), Duration::from_millis(200)),
            ]
        );
        assert!(body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn streams_can_stall_or_be_cut_after_their_events() {
        let one = || [Bytes::from_static(b"a")];
        let mut cut = SimBody::events_then(one(), Duration::ZERO, After::Cut);
        assert_eq!(
            cut.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        assert!(!cut.is_end_stream());
        let error = cut.frame().await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        assert!(cut.frame().await.is_none());

        let mut stall = SimBody::events_then(one(), Duration::ZERO, After::Stall);
        assert!(stall.frame().await.is_some());
        let waited = tokio::time::timeout(Duration::from_secs(3600), stall.frame()).await;
        assert!(waited.is_err(), "a stalled stream sends nothing more");
    }

    #[tokio::test]
    async fn full_bodies_are_one_frame() {
        let body = SimBody::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert!(SimBody::full("").is_end_stream());
    }
}
