//! The client the gateway sends upstream with: brownout's HTTPS client (hyper-util's
//! pool over rustls, HTTP/2 by ALPN), one per distinct TLS setting of the providers.
//!
//! A provider with a `ca_file` or `http2 = false` gets a client of its own, chosen by
//! the request's authority (a cascade sends one route's requests to several
//! providers through the same pipeline); every other request goes through the
//! shared client, which trusts the platform's authorities. Plain `http://` base URLs
//! go through the same clients, without TLS.
//!
//! A connection that cannot be made fails with brownout's
//! [`ConnectError`](brownout::client::ConnectError), whose message (`tls handshake
//! with api.anthropic.com failed: invalid peer certificate: UnknownIssuer`) reaches
//! the gateway's log line and the caller's error body.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
};

use brownout::{
    client::{HttpsClient, HttpsConfig, ResponseFuture},
    error::InvalidConfig,
    Body, BoxError,
};
use http::{Request, Response};
use tower::Service;

use crate::{config::Provider, Config};

/// The client the gateway sends upstream with: brownout's HTTPS client (hyper-util's
/// pool over rustls, HTTP/2 by ALPN), one per distinct TLS setting of the providers.
/// Cheap to clone.
///
/// A provider with a `ca_file` or `http2 = false` gets a client of its own, chosen by
/// the request's authority; every other request goes through the shared client, which
/// trusts the platform's authorities. Plain `http://` base URLs go through the same
/// clients, without TLS. A connection that cannot be made fails with brownout's
/// [`ConnectError`](brownout::client::ConnectError), whose message reaches the
/// gateway's log line and the caller's error body.
///
/// Cloning it is one reference count: every layer that holds the service for a later
/// attempt clones the stack under it, the client included, once per request.
#[derive(Clone, Debug)]
pub struct UpstreamClient(Arc<Clients>);

#[derive(Debug)]
struct Clients {
    shared: Result<HttpsClient, Arc<InvalidConfig>>,
    /// By lowercase authority, the providers whose TLS settings are not the defaults.
    own: HashMap<String, HttpsClient>,
}

impl UpstreamClient {
    /// The clients `config`'s providers need.
    ///
    /// The providers' CA files were read and checked with the configuration, so
    /// building cannot fail in practice; if it did, the requests it concerns fail
    /// with the reason, and nothing panics.
    pub fn new(config: &Config) -> UpstreamClient {
        let shared = HttpsClient::new().map_err(Arc::new);
        let mut own = HashMap::new();
        for provider in config.providers() {
            let Some(config) = settings(provider) else {
                continue;
            };
            let Some(authority) = provider.base_url().authority() else {
                continue;
            };
            match config.build() {
                Ok(client) => {
                    own.insert(authority.as_str().to_ascii_lowercase(), client);
                }
                Err(error) => tracing::error!(
                    provider = provider.name(),
                    %error,
                    "brownout-gateway: cannot build the provider's client; its requests use the shared one"
                ),
            }
        }
        UpstreamClient(Arc::new(Clients { shared, own }))
    }

    fn client_for<B>(&self, request: &Request<B>) -> Result<&HttpsClient, &Arc<InvalidConfig>> {
        let Clients { shared, own } = &*self.0;
        if !own.is_empty() {
            if let Some(authority) = request.uri().authority() {
                let found = match own.get(authority.as_str()) {
                    Some(found) => Some(found),
                    None => own.get(&authority.as_str().to_ascii_lowercase()),
                };
                if let Some(client) = found {
                    return Ok(client);
                }
            }
        }
        shared.as_ref()
    }
}

/// The client settings of a provider that does not take the defaults.
fn settings(provider: &Provider) -> Option<HttpsConfig> {
    if provider.ca_file().is_none() && provider.http2() {
        return None;
    }
    let mut config = HttpsConfig::new().http2(provider.http2());
    if let Some(ca) = provider.ca_file() {
        config = config.ca_pem(ca.pem());
    }
    Some(config)
}

impl Service<Request<Body>> for UpstreamClient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Sending;

    /// Always ready: hyper-util's pool queues requests for a connection.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Sending {
        match self.client_for(&request) {
            Ok(client) => Sending::Client(client.send(request)),
            Err(error) => Sending::Failed(Some(Box::new(InvalidConfig::clone(error)))),
        }
    }
}

/// The response future of [`UpstreamClient`].
#[derive(Debug)]
pub enum Sending {
    /// Sent through brownout's client.
    Client(ResponseFuture),
    /// The client could not be built: the reason, once.
    Failed(Option<BoxError>),
}

impl std::future::Future for Sending {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Sending::Client(future) => std::pin::Pin::new(future).poll(cx),
            Sending::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "response future polled after completion".into()))),
        }
    }
}
