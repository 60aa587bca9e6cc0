//! Streams and whole answers, one served as the other.
//!
//! The store holds whole answers (`application/json`), whichever way they arrived: a
//! streamed answer is read as it passes to the caller, and once it has ended whole
//! (its `message_stop` / `[DONE]`, no error event) it is stored as the message it
//! amounts to ([`sse::message_of`]). A stored answer served to a request that streams
//! is rendered as the stream the provider would have sent for it
//! ([`sse::stream_of`]: one content delta for the whole text); served to one that
//! does not, it is the stored JSON as it is. So a request that streams and one that
//! does not, otherwise the same, share one entry (the key leaves `stream` and
//! `stream_options` out). Answers neither form renders faithfully (tool use, a stop
//! sequence, the Responses API) are neither stored from a stream nor served as one.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use brownout_core::{provider::Api, sse, Body, BoxError};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use http_body::{Frame, SizeHint};
use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    key::CacheKey,
    store::{CachedResponse, Store},
};

/// Whether a request that streams asked for OpenAI's usage chunk.
pub(crate) fn include_usage(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Request {
        stream_options: Option<Options>,
    }
    #[derive(Deserialize)]
    struct Options {
        #[serde(default)]
        include_usage: bool,
    }
    serde_json::from_slice::<Request>(body)
        .ok()
        .and_then(|r| r.stream_options)
        .is_some_and(|o| o.include_usage)
}

/// The stored answer as a stream, for a request that streams: its head with an
/// event-stream content type, and the events. `None` when it cannot be rendered.
pub(crate) fn as_stream(
    api: Api,
    entry: &CachedResponse,
    include_usage: bool,
) -> Option<(HeaderMap, Bytes)> {
    let events = sse::stream_of(api, &entry.body, include_usage)?;
    let mut headers = entry.headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    Some((headers, Bytes::from(events)))
}

/// A streamed answer on its way to the caller, copied (up to the entry limit) so
/// that, once it has ended whole, the message it amounts to is stored.
pub(crate) struct Recording {
    inner: Body,
    copy: Option<BytesMut>,
    api: Api,
    store: Arc<Store>,
    key: CacheKey,
    head: Option<(StatusCode, Version, HeaderMap)>,
    storing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl Recording {
    pub(crate) fn new(
        inner: Body,
        api: Api,
        store: Arc<Store>,
        key: CacheKey,
        head: (StatusCode, Version, HeaderMap),
    ) -> Self {
        Recording {
            inner,
            copy: Some(BytesMut::new()),
            api,
            store,
            key,
            head: Some(head),
            storing: None,
        }
    }

    /// The stream ended: its message, stored if it was whole.
    fn store_message(&mut self) {
        let (Some(copy), Some((status, version, mut headers))) =
            (self.copy.take(), self.head.take())
        else {
            return;
        };
        let Some(message) = sse::message_of(self.api, &copy) else {
            return;
        };
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let entry = CachedResponse {
            status,
            version,
            headers,
            body: Bytes::from(message),
            stored_at: Instant::now(),
        };
        let store = self.store.clone();
        let key = self.key;
        self.storing = Some(Box::pin(async move { store.insert(key, entry).await }));
    }
}

impl http_body::Body for Recording {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(storing) = this.storing.as_mut() {
            ready!(storing.as_mut().poll(cx));
            this.storing = None;
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(data), Some(copy)) = (frame.data_ref(), this.copy.as_mut()) {
                    if copy.len() + data.len() > this.store.max_entry_bytes {
                        this.copy = None;
                    } else {
                        copy.extend_from_slice(data);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.copy = None;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                this.store_message();
                match this.storing.as_mut() {
                    Some(storing) => {
                        ready!(storing.as_mut().poll(cx));
                        this.storing = None;
                        Poll::Ready(None)
                    }
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.storing.is_none() && self.copy.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
