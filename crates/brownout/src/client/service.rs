//! The client as a `tower::Service`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{uri::Authority, Request, Response};
use hyper_util::client::legacy::{self, Client};
use tower_service::Service;

use super::{
    connect::Connector,
    error::{ConnectError, RequestError},
    HttpsConfig,
};
use crate::{error::InvalidConfig, Body, BoxError};

/// hyper-util's pooled client over rustls: HTTPS (HTTP/2 by ALPN, HTTP/1.1
/// otherwise) and plain HTTP, as a `tower::Service` of `http::Request<B>` answering
/// `http::Response<brownout::Body>`. Cheap to clone: clones share the pool.
///
/// See the [module docs](super).
#[derive(Clone, Debug)]
pub struct HttpsClient {
    inner: Client<Connector, Body>,
}

impl HttpsClient {
    /// A client with the [defaults](HttpsConfig::new): the platform's roots, HTTP/2
    /// by ALPN, connect timeout 10 s. Call it inside a tokio runtime.
    pub fn new() -> Result<HttpsClient, InvalidConfig> {
        HttpsConfig::new().build()
    }

    /// The settings, to change before [`build`](HttpsConfig::build).
    pub fn config() -> HttpsConfig {
        HttpsConfig::new()
    }

    pub(crate) fn from_client(inner: Client<Connector, Body>) -> Self {
        HttpsClient { inner }
    }

    /// Sends `request`, as [`Service::call`] does, through a shared reference.
    pub fn send<B>(&self, request: Request<B>) -> ResponseFuture
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let Some(authority) = request.uri().authority().cloned() else {
            return ResponseFuture {
                state: State::Failed(Some(Box::new(crate::error::InvalidRequest::new(
                    "the client needs an absolute URI, such as https://api.anthropic.com/v1/messages",
                )))),
            };
        };
        ResponseFuture {
            state: State::Sending {
                future: self.inner.request(request.map(Body::new)),
                authority,
            },
        }
    }
}

impl<B> Service<Request<B>> for HttpsClient
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: the pool queues requests for a connection.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        self.send(request)
    }
}

/// The response future of [`HttpsClient`].
#[derive(Debug)]
pub struct ResponseFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    Sending {
        future: legacy::ResponseFuture,
        authority: Authority,
    },
    Failed(Option<BoxError>),
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Sending { future, authority } => match Pin::new(future).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(response)) => Poll::Ready(Ok(response.map(Body::new))),
                Poll::Ready(Err(error)) => Poll::Ready(Err(failure(error, authority))),
            },
            State::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "response future polled after completion".into()))),
        }
    }
}

/// A connect failure as the connector told it; anything else with the upstream's name.
fn failure(error: legacy::Error, authority: &Authority) -> BoxError {
    if error.is_connect() {
        let told = std::error::Error::source(&error).and_then(|s| s.downcast_ref::<ConnectError>());
        if let Some(connect) = told {
            return Box::new(connect.clone());
        }
    }
    Box::new(RequestError::new(
        // Host and port only: an authority's user info is a secret.
        match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()).into(),
            None => authority.host().into(),
        },
        Box::new(error),
    ))
}
