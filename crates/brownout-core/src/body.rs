//! Bodies that can be read ahead and handed on intact, and replayable requests.
//!
//! HTTP bodies are streams and cannot be cloned, yet retry and fallback must send a
//! request again, byte for byte, and the classifier must peek at an error body without
//! taking it from the caller. Both are served by one body type, [`PrefixedBody`]: the
//! bytes already read, followed by whatever the original body has not yet yielded.
//!
//! [`buffer`] reads a body up to a limit. When the whole body fits, the result is a
//! [`ReplayBody`] that can produce any number of identical copies; when it does not,
//! the result is a [`PrefixedBody`] that sends the bytes read so far followed by the
//! rest, exactly once. A body is never truncated and never replaced by an empty one.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A body made of bytes already read (and, once the original body has ended, its
    /// trailers), followed by the rest of the original body.
    ///
    /// Layers use it both for request bodies they buffer for replay and for error
    /// response bodies the classifier peeked at. Its data type is [`Bytes`]; frames of
    /// the original body are converted with [`Buf::copy_to_bytes`], which does not copy
    /// when the original data already is `Bytes`.
    pub struct PrefixedBody<B: Body> {
        prefix: Option<Bytes>,
        // Boxed: trailers are rare, and the body is moved often.
        trailers: Option<Box<HeaderMap>>,
        error: Option<B::Error>,
        #[pin]
        rest: Option<B>,
    }
}

impl<B: Body> PrefixedBody<B> {
    /// The original body, nothing read ahead.
    pub fn new(body: B) -> Self {
        PrefixedBody {
            prefix: None,
            trailers: None,
            error: None,
            rest: Some(body),
        }
    }

    /// `prefix`, then the rest of `body`.
    pub fn prefixed(prefix: Bytes, body: B) -> Self {
        PrefixedBody {
            prefix: Some(prefix),
            trailers: None,
            error: None,
            rest: Some(body),
        }
    }

    /// A complete body that was read to its end: its data and trailers.
    pub fn complete(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        PrefixedBody {
            prefix: Some(data),
            trailers: trailers.map(Box::new),
            error: None,
            rest: None,
        }
    }

    /// The bytes read before the original body failed, then its error.
    pub fn failed(prefix: Bytes, error: B::Error) -> Self {
        PrefixedBody {
            prefix: Some(prefix),
            trailers: None,
            error: Some(error),
            rest: None,
        }
    }

    /// The bytes read ahead and not yet yielded.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_deref().unwrap_or_default()
    }

    /// The original body, when nothing was read ahead of it; else `self` back.
    pub fn into_unread(self) -> Result<B, Self> {
        if self.prefix().is_empty() && self.trailers.is_none() && self.error.is_none() {
            if let Some(rest) = self.rest {
                return Ok(rest);
            }
        }
        Err(self)
    }

    /// Whether the whole body is held in memory (nothing left to read from the
    /// original body).
    pub fn is_complete(&self) -> bool {
        self.rest.is_none() && self.error.is_none()
    }
}

impl<B: Body + Default> Default for PrefixedBody<B> {
    fn default() -> Self {
        PrefixedBody::new(B::default())
    }
}

impl<B: Body> fmt::Debug for PrefixedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixedBody")
            .field("prefix_len", &self.prefix().len())
            .field("has_trailers", &self.trailers.is_some())
            .field("failed", &self.error.is_some())
            .field("complete", &self.is_complete())
            .finish()
    }
}

impl<B> Body for PrefixedBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some(prefix) = this.prefix.take() {
            if !prefix.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(rest) = this.rest.as_mut().as_pin_mut() {
            let frame = ready!(rest.poll_frame(cx));
            return Poll::Ready(frame.map(|frame| {
                frame.map(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
            }));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(*t))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix().is_empty()
            && self.trailers.is_none()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix().len() as u64;
        match &self.rest {
            None => SizeHint::with_exact(prefix),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(prefix));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(prefix));
                }
                out
            }
        }
    }
}

/// A complete body held in memory, from which identical copies can be made.
#[derive(Clone, Default)]
pub struct ReplayBody {
    data: Bytes,
    trailers: Option<Box<HeaderMap>>,
}

impl ReplayBody {
    /// A replayable body of these bytes and trailers.
    pub fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ReplayBody {
            data,
            trailers: trailers.map(Box::new),
        }
    }

    /// The body's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The body's trailers, if it had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_deref()
    }

    /// A fresh copy of the body, to send. Cloning [`Bytes`] does not copy the data.
    pub fn replay<B: Body>(&self) -> PrefixedBody<B> {
        PrefixedBody {
            prefix: Some(self.data.clone()),
            trailers: self.trailers.clone(),
            error: None,
            rest: None,
        }
    }
}

impl fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("len", &self.data.len())
            .field("has_trailers", &self.trailers.is_some())
            .finish()
    }
}

/// What [`buffer`] made of a body.
#[derive(Debug)]
pub enum Buffered<B: Body> {
    /// The body ended within the limit and can be replayed.
    Complete(ReplayBody),
    /// The body is longer than the limit: the bytes read so far followed by the rest.
    /// It can be sent once.
    TooLarge(PrefixedBody<B>),
    /// The body failed while it was read: the bytes read so far followed by the error,
    /// so that whoever reads it next sees the same failure.
    Failed(PrefixedBody<B>),
}

/// Reads `body` until it ends or more than `limit` bytes have been read.
///
/// A body whose size hint already says it is longer than `limit` is not read at all.
/// Nothing is lost either way: see [`Buffered`]. A body whose frames are all ready
/// (such as `Full`) is buffered in the first poll, without waiting.
pub fn buffer<B>(body: B, limit: usize) -> BufferFuture<B>
where
    B: Body + Unpin,
{
    BufferFuture {
        body: Some(body),
        limit,
        trust_size_hint: true,
        first: None,
        more: None,
        read: 0,
        trailers: None,
    }
}

/// Like [`buffer`], but reads up to `limit` bytes even when the size hint says the body
/// is longer: for a layer that needs the start of any body (to find its `model`, say)
/// rather than a whole body to replay.
pub fn read_prefix<B>(body: B, limit: usize) -> BufferFuture<B>
where
    B: Body + Unpin,
{
    BufferFuture {
        trust_size_hint: false,
        ..buffer(body, limit)
    }
}

/// The future returned by [`buffer`].
pub struct BufferFuture<B> {
    body: Option<B>,
    limit: usize,
    trust_size_hint: bool,
    first: Option<Bytes>,
    more: Option<BytesMut>,
    read: usize,
    trailers: Option<Box<HeaderMap>>,
}

impl<B> fmt::Debug for BufferFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferFuture")
            .field("limit", &self.limit)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl<B> Future for BufferFuture<B>
where
    B: Body + Unpin,
{
    type Output = Buffered<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Buffered<B>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            panic!("BufferFuture polled after completion");
        };
        if this.trust_size_hint
            && this.read == 0
            && this.first.is_none()
            && body.size_hint().lower() > this.limit as u64
        {
            let body = this.body.take().expect("checked above");
            return Poll::Ready(Buffered::TooLarge(PrefixedBody::new(body)));
        }
        loop {
            let body = this.body.as_mut().expect("present until ready");
            let frame = match ready!(Pin::new(body).poll_frame(cx)) {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    this.body = None;
                    let prefix = take(this.first.take(), this.more.take());
                    return Poll::Ready(Buffered::Failed(PrefixedBody::failed(prefix, error)));
                }
            };
            let frame = match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    this.read = this.read.saturating_add(chunk.len());
                    match (&mut this.first, &mut this.more) {
                        (None, _) => this.first = Some(chunk),
                        (Some(first), None) => {
                            let mut joined = BytesMut::with_capacity(first.len() + chunk.len());
                            joined.extend_from_slice(first);
                            joined.extend_from_slice(&chunk);
                            this.more = Some(joined);
                        }
                        (Some(_), Some(joined)) => joined.extend_from_slice(&chunk),
                    }
                    if this.read > this.limit {
                        let body = this.body.take().expect("present until ready");
                        let prefix = take(this.first.take(), this.more.take());
                        return Poll::Ready(Buffered::TooLarge(PrefixedBody::prefixed(
                            prefix, body,
                        )));
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(t) = frame.into_trailers() {
                match &mut this.trailers {
                    Some(existing) => existing.extend(t),
                    None => this.trailers = Some(Box::new(t)),
                }
            }
        }
        this.body = None;
        let data = take(this.first.take(), this.more.take());
        Poll::Ready(Buffered::Complete(ReplayBody {
            data,
            trailers: this.trailers.take(),
        }))
    }
}

fn take(first: Option<Bytes>, more: Option<BytesMut>) -> Bytes {
    match more {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::{collections::VecDeque, convert::Infallible};

    /// A body that yields the given frames one by one, with no size hint.
    struct Chunks(VecDeque<Frame<Bytes>>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn chunks(parts: &[&[u8]], trailers: Option<HeaderMap>) -> Chunks {
        let mut frames: VecDeque<Frame<Bytes>> = parts
            .iter()
            .map(|p| Frame::data(Bytes::copy_from_slice(p)))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Chunks(frames)
    }

    async fn collect<B: Body<Data = Bytes>>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: fmt::Debug,
    {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn complete_body_replays_identically() {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        let body = chunks(&[b"hello ", b"wor", b"ld"], Some(t.clone()));
        let Buffered::Complete(replay) = buffer(body, 64).await else {
            panic!("expected a complete body");
        };
        for _ in 0..3 {
            let (data, trailers) = collect(replay.replay::<Full<Bytes>>()).await;
            assert_eq!(&data[..], b"hello world");
            assert_eq!(trailers.as_ref(), Some(&t));
        }
    }

    #[tokio::test]
    async fn body_at_exactly_the_limit_is_complete() {
        let body = chunks(&[b"abcd", b"ef"], None);
        assert!(matches!(buffer(body, 6).await, Buffered::Complete(_)));
        let body = chunks(&[b"abcd", b"efg"], None);
        assert!(matches!(buffer(body, 6).await, Buffered::TooLarge(_)));
    }

    #[tokio::test]
    async fn oversized_body_is_sent_whole_once() {
        let mut t = HeaderMap::new();
        t.insert("x-end", "1".parse().unwrap());
        let body = chunks(&[b"0123", b"4567", b"89"], Some(t.clone()));
        let Buffered::TooLarge(prefixed) = buffer(body, 5).await else {
            panic!("expected an oversized body");
        };
        assert_eq!(prefixed.prefix(), b"01234567");
        assert!(!prefixed.is_complete());
        let (data, trailers) = collect(prefixed).await;
        assert_eq!(&data[..], b"0123456789");
        assert_eq!(trailers, Some(t));
    }

    #[tokio::test]
    async fn size_hint_over_the_limit_is_not_read() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let Buffered::TooLarge(prefixed) = buffer(body, 4).await else {
            panic!("expected an oversized body");
        };
        assert_eq!(prefixed.prefix(), b"");
        assert_eq!(prefixed.size_hint().exact(), Some(10));
        assert_eq!(&collect(prefixed).await.0[..], b"0123456789");
    }

    #[tokio::test]
    async fn a_prefix_is_read_whatever_the_size_hint_says() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let Buffered::TooLarge(prefixed) = read_prefix(body, 4).await else {
            panic!("expected an oversized body");
        };
        assert_eq!(
            prefixed.prefix(),
            b"0123456789",
            "one chunk read, kept whole"
        );
        assert_eq!(&collect(prefixed).await.0[..], b"0123456789");
    }

    #[tokio::test]
    async fn empty_body_stays_empty_and_ended() {
        let Buffered::Complete(replay) = buffer(Full::new(Bytes::new()), 4).await else {
            panic!("expected a complete body");
        };
        let body = replay.replay::<Full<Bytes>>();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn single_chunk_is_not_copied() {
        let data = Bytes::from(vec![7u8; 1024]);
        let ptr = data.as_ptr();
        let Buffered::Complete(replay) = buffer(Full::new(data), 4096).await else {
            panic!("expected a complete body");
        };
        assert_eq!(replay.data().as_ptr(), ptr);
    }

    /// A body that yields one chunk and then fails.
    struct Breaks(u8);

    impl Body for Breaks {
        type Data = Bytes;
        type Error = &'static str;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            self.0 += 1;
            Poll::Ready(Some(match self.0 {
                1 => Ok(Frame::data(Bytes::from_static(b"partial"))),
                _ => Err("connection reset"),
            }))
        }
    }

    #[tokio::test]
    async fn failing_body_keeps_its_bytes_and_its_error() {
        let Buffered::Failed(mut body) = buffer(Breaks(0), 64).await else {
            panic!("expected a failed body");
        };
        assert!(!body.is_complete());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"partial");
        assert_eq!(body.frame().await.unwrap().unwrap_err(), "connection reset");
        assert!(body.frame().await.is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_round_trips(
            parts in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..8),
            limit in 0usize..200,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let whole: Vec<u8> = parts.concat();
            let got = rt.block_on(async {
                match buffer(chunks(&slices, None), limit).await {
                    Buffered::Complete(r) => {
                        assert!(whole.len() <= limit);
                        collect(r.replay::<Full<Bytes>>()).await.0
                    }
                    Buffered::TooLarge(p) => {
                        assert!(whole.len() > limit);
                        collect(p).await.0
                    }
                    Buffered::Failed(_) => unreachable!("these bodies cannot fail"),
                }
            });
            proptest::prop_assert_eq!(&got[..], &whole[..]);
        }
    }
}
