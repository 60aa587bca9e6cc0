//! The simulator's response body: a whole JSON document, or server-sent events paced
//! by tokio's clock.

use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt,
    future::Future,
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
/// Its data is [`Bytes`] and it never fails (`Error = Infallible`): a stream that
/// breaks does so the providers' way, with an error event. It is `Unpin`, `Send` and
/// `'static`, so it goes straight into hyper and through brownout's layers.
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
        SimBody {
            kind: Kind::Events(Box::new(Events {
                events: events.into_iter().collect(),
                interval,
                started: false,
                sleep: None,
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
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Events(events) => {
                if events.events.is_empty() {
                    return Poll::Ready(None);
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
            Kind::Events(events) => events.events.is_empty(),
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

    #[tokio::test]
    async fn full_bodies_are_one_frame() {
        let body = SimBody::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert!(SimBody::full("").is_end_stream());
    }
}
