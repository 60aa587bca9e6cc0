//! The connector under hyper-util's pool: TCP (with keepalive and Nagle off), then
//! rustls through hyper-rustls, under one connect timeout, with errors that say what
//! failed.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tokio::net::TcpStream;
use tower_service::Service;

use super::error::ConnectError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, ConnectError>> + Send>>;

/// A connection the client made: TLS for `https://`, plain TCP for `http://`.
pub(crate) type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// hyper-rustls over [`Tcp`], under the connect timeout.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    inner: HttpsConnector<Tcp>,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(inner: HttpsConnector<Tcp>, timeout: Duration) -> Self {
        Connector { inner, timeout }
    }
}

/// `host:port` of `uri`, the port told by the scheme when the URI has none.
fn host_port(uri: &Uri) -> (Arc<str>, u16) {
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    (host.into(), port)
}

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = ConnectError;
    type Future = BoxFuture<Stream>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both layers below are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (host, port) = host_port(&uri);
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(stream)) => Ok(stream),
                Err(_) => Err(ConnectError::timed_out(
                    format!("{host}:{port}").into(),
                    timeout,
                )),
                Ok(Err(error)) => Err(match error.downcast::<ConnectError>() {
                    // The TCP connect's own failure, already told.
                    Ok(tcp) => *tcp,
                    Err(error) => {
                        if error.to_string().starts_with("unsupported scheme")
                            || error.to_string() == "missing scheme"
                        {
                            ConnectError::uri(error.to_string())
                        } else {
                            ConnectError::tls(host, port, Arc::from(error))
                        }
                    }
                }),
            }
        })
    }
}

/// hyper-util's TCP connector, whose errors name the address it tried.
#[derive(Clone, Debug)]
pub(crate) struct Tcp {
    inner: HttpConnector,
}

impl Tcp {
    pub(crate) fn new(keepalive: Option<Duration>) -> Self {
        let mut inner = HttpConnector::new();
        // https:// URIs come through here too; hyper-rustls adds the TLS.
        inner.enforce_http(false);
        inner.set_nodelay(true);
        inner.set_keepalive(keepalive);
        // The connect timeout is the Connector's, over TCP and TLS together.
        inner.set_connect_timeout(None);
        Tcp { inner }
    }
}

impl Service<Uri> for Tcp {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = BoxFuture<TokioIo<TcpStream>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| ConnectError::tcp("".into(), Arc::new(e)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (host, port) = host_port(&uri);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            connecting
                .await
                .map_err(|e| ConnectError::tcp(format!("{host}:{port}").into(), Arc::new(e)))
        })
    }
}
