//! A `reqwest::Client` as a `tower::Service<http::Request<B>>` (under brownout's layers,
//! `B` is [`brownout::Body`](crate::Body)), so that every brownout layer stacks on it.
//!
//! reqwest's `Client` is a service of `reqwest::Request`; tower layers speak
//! `http::Request`. [`ReqwestService`] converts one into the other with no copy of the
//! body (a body held in memory goes as its `Bytes`), and returns `http::Response<reqwest::Body>`, whose body streams as reqwest
//! receives it.
//!
//! ```no_run
//! use std::time::Duration;
//! use brownout::reqwest_bridge::ReqwestService;
//! use brownout::retry::{RetryConfig, RetryLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), brownout::BoxError> {
//! let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
//! let api = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryConfig::new()))
//!     .service(ReqwestService::new(client));
//! let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!     .header("x-api-key", std::env::var("ANTHROPIC_API_KEY")?)
//!     .header("anthropic-version", "2023-06-01")
//!     .body(http_body_util::Full::new(bytes::Bytes::from(
//!         r#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#,
//!     )))?;
//! let response = api.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```
//!
//! # Errors keep their kind
//!
//! A reqwest timeout (the client's or the request's) comes back as an
//! [`io::Error`](std::io::Error) of kind `TimedOut` wrapping the reqwest error (reach it
//! with `get_ref`), so that brownout's classification reads it as a
//! [`Timeout`](crate::OutcomeKind::Timeout); a refused or failed connection is the
//! reqwest error itself, a [`ConnectionFailed`](crate::OutcomeKind::ConnectionFailed).
//! A request reqwest cannot express (a relative URI) fails with reqwest's builder
//! error without being sent.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use std::sync::Mutex;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower_service::Service;

use crate::BoxError;

/// A `reqwest::Client` that serves `http::Request`s. Cheap to clone: clones share the
/// client's connection pool.
#[derive(Debug, Clone, Default)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Serves requests with `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl From<reqwest::Client> for ReqwestService {
    fn from(client: reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

/// Response future of [`ReqwestService`].
pub struct ReqwestFuture {
    inner: Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, BoxError>> + Send>>,
}

impl Future for ReqwestFuture {
    type Output = Result<http::Response<reqwest::Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ReqwestFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestFuture").finish_non_exhaustive()
    }
}

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = BoxError;
    type Future = ReqwestFuture;

    /// Always ready: reqwest queues requests in its pool.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let request = request.map(|body| to_reqwest_body(crate::Body::new(body)));
        let sent = reqwest::Request::try_from(request).map(|r| self.client.execute(r));
        ReqwestFuture {
            inner: Box::pin(async move {
                let response = sent.map_err(kind)?.await.map_err(kind)?;
                Ok(http::Response::from(response))
            }),
        }
    }
}

/// A body in memory as its bytes (reqwest sets its content-length); one that streams
/// through [`Streamed`], since reqwest wants a `Sync` body.
pub(crate) fn to_reqwest_body(body: crate::Body) -> reqwest::Body {
    match body.bytes() {
        Some(bytes) => reqwest::Body::from(bytes.clone()),
        None => reqwest::Body::wrap(Streamed(Mutex::new(body))),
    }
}

/// Keeps the error's kind readable by brownout's classification.
pub(crate) fn kind(error: reqwest::Error) -> BoxError {
    if error.is_timeout() {
        Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, error))
    } else {
        Box::new(error)
    }
}

/// A streamed [`crate::Body`] made `Sync` for reqwest. The body is only ever polled
/// through `&mut`, so the mutex is never locked: `get_mut` reaches it for free.
pub(crate) struct Streamed(pub(crate) Mutex<crate::Body>);

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut().0.get_mut() {
            Ok(body) => Pin::new(body).poll_frame(cx),
            Err(_) => Poll::Ready(Some(Err("request body poisoned".into()))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .map(|body| body.size_hint())
            .unwrap_or_default()
    }
}
