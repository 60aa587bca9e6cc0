//! The proxy on a socket: HTTP/1.1 in, hyper-util's pooled client out, and a graceful
//! stop.
//!
//! On the shutdown signal the listener is closed at once (new connections are
//! refused), idle keep-alive connections are closed, and requests in flight are given
//! up to the configured grace period to finish, streams included (with `[queue]` on,
//! every request waiting in the queue is answered at once with a shed answer in the
//! provider's shape, so that none is left waiting out the grace); what is still
//! running then is cut off, and [`Stopped`] says how many connections were (the
//! binary then exits with status 1).
//!
//! A caller's request head must arrive within 30 s, and its whole body within the
//! configuration's `body_timeout` (else `408`). Open connections are capped per
//! client address and in all (`[connections]`): a connection beyond a cap is answered
//! `503` with `retry-after` and closed.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpListener;

use crate::{config::Connections, drain::Drain, Config, Router, UpstreamClient};

/// hyper-util's pooled HTTP/1.1 client over plain TCP, sending [`brownout::Body`]:
/// for plain-HTTP upstreams and benchmarks. The gateway itself sends with an
/// [`UpstreamClient`] (HTTPS and HTTP).
pub type HttpClient = Client<HttpConnector, brownout::Body>;

/// How long a caller may take to send a request's head before its connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway: the [`Router`] over hyper-util's client, served by hyper.
///
/// ```no_run
/// use brownout_gateway::{shutdown_signal, Config, Gateway};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::from_file("gateway.toml")?;
/// let listener = tokio::net::TcpListener::bind(config.listen()).await?;
/// Gateway::new(&config).serve(listener, shutdown_signal()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Gateway {
    router: Router<Incoming>,
    grace: Duration,
    caps: Connections,
}

/// How a [`Gateway::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Whether every connection finished within the grace period.
    pub drained: bool,
    /// The connections still busy when the grace period ended, cut off.
    pub cut: usize,
}

/// How long a refused connection's client is asked to wait.
const REFUSED_RETRY_AFTER: &str = "1";

/// The open connections, in all and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One open connection, counted until it is dropped.
struct Counted {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Counted {
    /// Counts a connection from `client`, unless a cap is reached.
    fn admit(open: &Arc<Mutex<Open>>, client: IpAddr, caps: Connections) -> Option<Counted> {
        let mut state = open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = state.per_client.get(&client).copied().unwrap_or(0);
        if state.total >= caps.total || mine >= caps.per_client {
            return None;
        }
        state.total += 1;
        *state.per_client.entry(client).or_insert(0) += 1;
        Some(Counted {
            open: open.clone(),
            client,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut state = self.open.lock().unwrap_or_else(|e| e.into_inner());
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                state.per_client.remove(&self.client);
            }
        }
    }
}

/// The answer on a connection over a cap: `503` with `retry-after`, then close.
fn refused() -> http::Response<brownout::Body> {
    let body = brownout::provider::Api::AnthropicMessages.error_body(
        brownout::provider::ErrorKind::Overloaded,
        "brownout-gateway: too many open connections; try again shortly",
    );
    let mut response = http::Response::new(brownout::Body::from(body));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static(REFUSED_RETRY_AFTER),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

impl Gateway {
    /// The gateway `config` describes, with its own connection pools. Call it inside
    /// the runtime that will serve.
    pub fn new(config: &Config) -> Gateway {
        // One set of clients (and of trust roots, read once) for the pipelines and the
        // forwarded paths: the same upstreams, so one pool of connections.
        let client = UpstreamClient::new(config);
        Gateway {
            router: Router::new(config, client.clone(), client),
            grace: config.shutdown_grace(),
            caps: config.connections(),
        }
    }

    /// The routes, as a `tower::Service`.
    pub fn router(&self) -> &Router<Incoming> {
        &self.router
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish for up to the grace period.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<Stopped> {
        let addr = listener.local_addr()?;
        let graceful = Drain::default();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        tokio::pin!(shutdown);
        tracing::info!(%addr, "brownout-gateway: listening");
        let open = Arc::new(Mutex::new(Open::default()));
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let Some(counted) = Counted::admit(&open, peer.ip(), self.caps) else {
                            tracing::warn!(client = %peer.ip(), "brownout-gateway: connection cap reached; answering 503");
                            let mut once = http1::Builder::new();
                            once.timer(TokioTimer::new())
                                .header_read_timeout(HEADER_READ_TIMEOUT)
                                .keep_alive(false);
                            let service = hyper::service::service_fn(|_| async {
                                Ok::<_, Infallible>(refused())
                            });
                            let connection = once.serve_connection(TokioIo::new(stream), service);
                            let connection = graceful.watch(connection);
                            tokio::spawn(async move {
                                let _ = connection.await;
                            });
                            continue;
                        };
                        // The router with this connection's own pipelines.
                        let service = self.router.for_connection();
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        let connection = graceful.watch(connection);
                        tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                tracing::debug!(%peer, %error, "brownout-gateway: connection ended with an error");
                            }
                            drop(counted);
                        });
                    }
                    Err(error) => {
                        // Out of file descriptors, most likely: wait a little rather
                        // than spin.
                        tracing::warn!(%error, "brownout-gateway: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        if let Some(queue) = self.router.layers().queue() {
            // Nothing waits out the grace period in the queue: every waiting request
            // is answered now (a shed answer, `x-should-retry: false`).
            tracing::info!(
                queued = queue.total_depth(),
                "brownout-gateway: answering the queued requests"
            );
            queue.shutdown();
        }
        tracing::info!(
            connections = graceful.count(),
            grace_s = self.grace.as_secs_f64(),
            "brownout-gateway: shutting down; finishing requests in flight"
        );
        let drained = tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_ok();
        // Connections drop their count as their tasks end; a cut one is still counted.
        let cut = if drained {
            0
        } else {
            open.lock().unwrap_or_else(|e| e.into_inner()).total.max(1)
        };
        if drained {
            tracing::info!("brownout-gateway: stopped");
        } else {
            tracing::warn!(
                cut,
                "brownout-gateway: grace period over; closing the connections left"
            );
        }
        Ok(Stopped { drained, cut })
    }
}

/// hyper-util's pooled client, with Nagle off and a connect timeout.
///
/// An [`HttpClient`] sends [`brownout::Body`]; `B` is open so that the benchmark's bare
/// proxy can send hyper's own body. The gateway itself sends with an
/// [`UpstreamClient`].
pub fn http_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Completes on ctrl-c, or on SIGTERM on Unix. Call it inside the runtime: the
/// handlers are installed by the call, not at the first poll, so that a signal that
/// comes as soon as the gateway answers is never missed (it would end the process
/// without a graceful stop). Where a handler cannot be installed, that signal is not
/// waited for.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => tracing::info!("brownout-gateway: ctrl-c received"),
                () = wait(terminate) => tracing::info!("brownout-gateway: SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!("brownout-gateway: ctrl-c received");
        }
    }
}
