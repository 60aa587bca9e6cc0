use super::*;
use crate::error::BrokenBody;
use http_body_util::{BodyExt, Full};
use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

/// A body that yields the given frames one by one, with no size hint, and counts
/// its polls.
struct Chunks(VecDeque<Frame<Bytes>>, Arc<AtomicUsize>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.1.fetch_add(1, Ordering::Relaxed);
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
    Chunks(frames, Arc::default())
}

async fn collect(body: Body) -> (Bytes, Option<HeaderMap>) {
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn complete_body_replays_identically() {
    let mut t = HeaderMap::new();
    t.insert("x-checksum", "abc".parse().unwrap());
    let body = chunks(&[b"hello ", b"wor", b"ld"], Some(t.clone()));
    let replay = Body::new(body).buffer(64).await;
    assert!(replay.is_replayable());
    for _ in 0..3 {
        let (data, trailers) = collect(replay.try_clone().unwrap()).await;
        assert_eq!(&data[..], b"hello world");
        assert_eq!(trailers.as_ref(), Some(&t));
    }
}

#[test]
fn a_body_is_never_wrapped_twice() {
    let body = Body::from("abc");
    let again = Body::new(Body::new(body));
    assert_eq!(again.bytes().map(|b| &b[..]), Some(&b"abc"[..]));
}

#[tokio::test]
async fn body_at_exactly_the_limit_is_complete() {
    let body = Body::new(chunks(&[b"abcd", b"ef"], None)).buffer(6).await;
    assert!(body.is_replayable());
    let body = Body::new(chunks(&[b"abcd", b"efg"], None)).buffer(6).await;
    assert_eq!(body.over_limit(), Some(6));
}

#[tokio::test]
async fn oversized_body_is_sent_whole_once_and_never_read_again() {
    let mut t = HeaderMap::new();
    t.insert("x-end", "1".parse().unwrap());
    let inner = chunks(&[b"0123", b"4567", b"89"], Some(t.clone()));
    let polls = inner.1.clone();
    let body = Body::new(inner).buffer(5).await;
    assert_eq!(body.prefix(), b"01234567");
    assert!(!body.is_replayable());
    let before = polls.load(Ordering::Relaxed);
    // A layer further in buffers again: handed back at once, not read.
    let body = body.buffer(5).await;
    assert_eq!(polls.load(Ordering::Relaxed), before);
    let (data, trailers) = collect(body).await;
    assert_eq!(&data[..], b"0123456789");
    assert_eq!(trailers, Some(t));
}

#[tokio::test]
async fn size_hint_over_the_limit_is_not_read() {
    // Not a `Full` (which is taken as bytes at once): a body that streams, with a
    // size hint.
    let body = Body::new(Full::new(Bytes::from_static(b"0123456789")).map_err(|e| e))
        .buffer(4)
        .await;
    assert_eq!(body.prefix(), b"");
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(10));
    assert_eq!(&collect(body).await.0[..], b"0123456789");
}

#[tokio::test]
async fn a_prefix_is_read_whatever_the_size_hint_says() {
    let body = Body::new(Full::new(Bytes::from_static(b"0123456789")).map_err(|e| e))
        .read_prefix(4)
        .await;
    assert_eq!(body.prefix(), b"0123456789", "one chunk read, kept whole");
    assert_eq!(&collect(body).await.0[..], b"0123456789");
}

#[tokio::test]
async fn empty_body_stays_empty_and_ended() {
    let body = Body::new(Full::new(Bytes::new())).buffer(4).await;
    let body = body.try_clone().unwrap();
    assert!(http_body::Body::is_end_stream(&body));
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(0));
}

#[tokio::test]
async fn single_chunk_is_not_copied() {
    let data = Bytes::from(vec![7u8; 1024]);
    let ptr = data.as_ptr();
    let body = Body::new(Full::new(data.clone())).buffer(4096).await;
    assert_eq!(body.bytes().unwrap().as_ptr(), ptr);
    let body = Body::new(Full::new(data).map_err(|e| e)).buffer(4096).await;
    assert_eq!(body.bytes().unwrap().as_ptr(), ptr);
}

#[test]
fn a_full_body_is_taken_as_bytes_without_reading() {
    let body = Body::new(Full::new(Bytes::from_static(b"abc")));
    assert!(body.is_replayable());
    assert_eq!(body.bytes().map(|b| &b[..]), Some(&b"abc"[..]));
}

/// A body that yields one chunk and then fails.
struct Breaks(u8);

impl http_body::Body for Breaks {
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
    let mut body = Body::new(Breaks(0)).buffer(64).await;
    assert!(!body.is_replayable());
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"partial");
    assert_eq!(
        body.frame().await.unwrap().unwrap_err().to_string(),
        "connection reset"
    );
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn a_broken_upload_is_the_callers_error_and_never_sent() {
    let request = Request::post("/v1/messages").body(Breaks(0)).unwrap();
    let error = prepare(request, Need::Replay).await.unwrap_err();
    let broken = error.downcast_ref::<BrokenBody>().expect("a BrokenBody");
    assert!(!broken.is_stalled());
}

/// A body that yields one chunk and then never another.
struct Stalls(bool);

impl http_body::Body for Stalls {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"model\":")))))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upload_fails_after_the_idle_timeout() {
    let mut request = Request::post("/v1/messages").body(Stalls(false)).unwrap();
    request
        .extensions_mut()
        .insert(BodyLimits::new().idle_timeout(Some(Duration::from_secs(5))));
    let started = tokio::time::Instant::now();
    let error = prepare(request, Need::Facts).await.unwrap_err();
    assert!(error.downcast_ref::<BrokenBody>().unwrap().is_stalled());
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn prepare_reads_facts_once_and_inner_layers_find_them() {
    let inner = chunks(
        &[br#"{"model":"m","max_tokens":5,"#, br#""stream":true}"#],
        None,
    );
    let polls = inner.1.clone();
    let request = Request::post("/v1/messages").body(inner).unwrap();
    let request = prepare(request, Need::Facts).await.unwrap();
    let facts = RequestFacts::of(request.extensions()).unwrap().clone();
    assert_eq!(facts.model(), Some("m"));
    assert!(facts.is_stream());
    let read = polls.load(Ordering::Relaxed);
    // The next layer in: nothing more is read.
    let request = prepare(request, Need::Facts).await.unwrap();
    assert_eq!(polls.load(Ordering::Relaxed), read);
    assert_eq!(RequestFacts::of(request.extensions()), Some(&facts));
}

#[tokio::test]
async fn two_models_are_refused() {
    let request = Request::post("/v1/messages")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"a","model":"b"}"#,
        )))
        .unwrap();
    let error = prepare(request, Need::Facts).await.unwrap_err();
    assert!(error.is::<crate::error::InvalidRequest>());
}

proptest::proptest! {
    #[test]
    fn any_chunking_round_trips(
        parts in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..8),
        limit in 0usize..200,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let whole: Vec<u8> = parts.concat();
        let got = rt.block_on(async {
            let body = Body::new(chunks(&slices, None)).buffer(limit).await;
            assert_eq!(body.is_replayable(), whole.len() <= limit);
            collect(body).await.0
        });
        proptest::prop_assert_eq!(&got[..], &whole[..]);
    }
}

/// A body whose size hint says far more than it has: a 50 MB upload cut after 1 KB.
struct Declared(Option<Bytes>, usize);

impl http_body::Body for Declared {
    type Data = Bytes;
    type Error = &'static str;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        if let Some(first) = self.0.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.1 == 0 {
            return Poll::Ready(Some(Err("the client hung up")));
        }
        self.1 -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(50 * 1024 * 1024)
    }
}

#[tokio::test]
async fn a_body_over_the_limit_still_gives_its_facts_and_its_failure_is_the_callers() {
    let mut first =
        br#"{"model":"claude-opus-4-1","messages":[{"role":"user","content":""#.to_vec();
    first.resize(1024, b'x');
    let first = Bytes::from(first);
    // Cut after 1 KB: the caller's error, found while the start is read.
    let cut = Request::post("/v1/messages")
        .body(Declared(Some(first.clone()), 0))
        .unwrap();
    let error = prepare(cut, Need::Facts).await.unwrap_err();
    assert!(error.is::<BrokenBody>(), "{error}");
    // Cut after 100 KB: the start is read for the facts, the rest streams.
    let request = Request::post("/v1/messages")
        .body(Declared(Some(first), 100))
        .unwrap();
    let request = prepare(request, Need::Facts).await.unwrap();
    let facts = RequestFacts::of(request.extensions()).unwrap();
    assert_eq!(facts.model(), Some("claude-opus-4-1"));
    assert!(!facts.is_whole());
    assert_eq!(request.body().over_limit(), Some(DEFAULT_REPLAY_LIMIT));
    // Sent on, it fails as the caller's failure.
    let error = request.into_body().collect().await.unwrap_err();
    assert!(error.is::<BrokenBody>(), "{error}");
}

#[tokio::test]
async fn from_caller_marks_failures_without_reading() {
    let request = from_caller(Request::post("/").body(Breaks(0)).unwrap());
    assert_eq!(request.body().prefix(), b"", "nothing read");
    let error = request.into_body().collect().await.unwrap_err();
    assert!(error.is::<BrokenBody>());
}

#[tokio::test]
async fn a_body_in_memory_over_the_limit_is_still_sent_once() {
    let body = Body::new(Full::new(Bytes::from_static(b"0123456789")))
        .buffer(4)
        .await;
    assert!(
        !body.is_replayable(),
        "the stack's limit holds for every body"
    );
    assert!(body.try_clone().is_none());
    assert_eq!(body.over_limit(), Some(4));
    assert_eq!(&collect(body).await.0[..], b"0123456789");
}
