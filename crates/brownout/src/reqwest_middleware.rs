//! A [reqwest-middleware](::reqwest_middleware) `Middleware` that sends each request
//! through a brownout stack, so that an application on `ClientWithMiddleware` adds
//! brownout with one `.with(...)` and keeps every call site.
//!
//! ```no_run
//! use brownout::{reqwest_middleware::Brownout, retry::RetryConfig, ServiceBuilderExt};
//! use tower::ServiceBuilder;
//!
//! # async fn run() -> Result<(), brownout::BoxError> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(Brownout::new(
//!         ServiceBuilder::new().retry_with_jitter(RetryConfig::new()).into_inner(),
//!     ))
//!     .build();
//! let response = client
//!     .post("https://api.anthropic.com/v1/messages")
//!     .header("x-api-key", std::env::var("ANTHROPIC_API_KEY")?)
//!     .header("anthropic-version", "2023-06-01")
//!     .body(r#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#)
//!     .send()
//!     .await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```
//!
//! # How it works, and where it goes
//!
//! [`Brownout::new`] takes the layers (a `ServiceBuilder`'s `into_inner()`) and puts
//! them over [`NextService`], which hands each attempt on to the rest of the
//! middleware chain: the middlewares added after this one, then the client. Each
//! attempt the layers make (a retry, a fallback to another model) goes down the chain
//! once more, with a copy of the call's extensions. The layers keep their state (the
//! breakers, the budget, the cache) across calls: build the middleware once.
//!
//! # With reqwest-retry
//!
//! Use one retry loop, not two: brownout's retry knows the providers' delays, its
//! budget and deadline, and the breaker counts each retried call once. If
//! `RetryTransientMiddleware` stays, add it *after* this middleware only with a
//! policy of no retries, or drop it; two loops multiply the attempts an overloaded
//! provider sees (3 × 3 = 9).
//!
//! # On failure
//!
//! An error the layers create (an open circuit, an exhausted cascade, a deadline)
//! comes back as `reqwest_middleware::Error::Middleware`, whose chain holds brownout's
//! error: read it with [`Error::of`](crate::Error::of). An error of reqwest itself
//! comes back as `reqwest_middleware::Error::Reqwest`, as without the middleware.

use std::{
    fmt,
    future::{poll_fn, Future},
    pin::{pin, Pin},
    task::{Context, Poll},
};

use ::reqwest_middleware::{Middleware, Next};
use http::Extensions;
use tokio::sync::{mpsc, oneshot};
use tower::{util::BoxCloneSyncService, Layer, ServiceExt};
use tower_service::Service;

use crate::{
    reqwest_bridge::{kind, to_reqwest_body},
    Body, BoxError,
};

type Stack = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;
type Reply = ::reqwest_middleware::Result<reqwest::Response>;

/// The middleware: brownout's layers over the rest of the chain. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Brownout {
    stack: Stack,
}

impl fmt::Debug for Brownout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Brownout").finish_non_exhaustive()
    }
}

impl Brownout {
    /// The layers `layer` over the rest of the middleware chain.
    pub fn new<L>(layer: L) -> Brownout
    where
        L: Layer<NextService>,
        L::Service: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<http::Request<Body>>>::Future: Send + 'static,
    {
        Brownout {
            stack: BoxCloneSyncService::new(layer.layer(NextService { _private: () })),
        }
    }
}

/// The innermost service of a [`Brownout`] stack: it sends each attempt on to the
/// rest of the middleware chain.
#[derive(Clone, Debug)]
pub struct NextService {
    _private: (),
}

/// An attempt for the call's chain, and where its answer goes.
struct Attempt {
    request: reqwest::Request,
    reply: oneshot::Sender<Reply>,
}

/// How [`NextService`] reaches the call it serves: put in the request's extensions.
#[derive(Clone)]
struct Chain(mpsc::UnboundedSender<Attempt>);

/// The chain was called outside [`Brownout`], or the call ended.
#[derive(Debug)]
struct NoChain;

impl fmt::Display for NoChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no reqwest-middleware chain for this request (NextService is only for Brownout)",
        )
    }
}

impl std::error::Error for NoChain {}

impl Service<http::Request<Body>> for NextService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let chain = request.extensions_mut().remove::<Chain>();
        let sent = chain.ok_or(NoChain).and_then(|Chain(chain)| {
            let request =
                reqwest::Request::try_from(request.map(to_reqwest_body)).map_err(|_| NoChain)?;
            let (reply, answer) = oneshot::channel();
            chain
                .send(Attempt { request, reply })
                .map_err(|_| NoChain)?;
            Ok(answer)
        });
        Box::pin(async move {
            let answer = sent?.await.map_err(|_| NoChain)?;
            match answer {
                Ok(response) => Ok(http::Response::from(response).map(Body::new)),
                Err(::reqwest_middleware::Error::Reqwest(error)) => Err(kind(error)),
                Err(error) => Err(Box::new(error) as BoxError),
            }
        })
    }
}

#[async_trait::async_trait]
impl Middleware for Brownout {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Reply {
        let mut request = match http::Request::<reqwest::Body>::try_from(request) {
            Ok(request) => request.map(Body::new),
            Err(error) => return Err(::reqwest_middleware::Error::Reqwest(error)),
        };
        let (chain, mut attempts) = mpsc::unbounded_channel();
        request.extensions_mut().insert(Chain(chain));
        let mut stack = pin!(self.stack.clone().oneshot(request));
        let mut current: Option<(
            Pin<Box<dyn Future<Output = Reply> + Send + '_>>,
            oneshot::Sender<Reply>,
        )> = None;
        // The stack and the attempt it waits for are polled together, so that the
        // layers' timers (an attempt timeout, a deadline) run while an attempt is out.
        let result = poll_fn(|cx| loop {
            if current.is_none() {
                if let Poll::Ready(Some(attempt)) = attempts.poll_recv(cx) {
                    let next = next.clone();
                    let mut copied = extensions.clone();
                    let sending: Pin<Box<dyn Future<Output = Reply> + Send + '_>> =
                        Box::pin(async move { next.run(attempt.request, &mut copied).await });
                    current = Some((sending, attempt.reply));
                }
            }
            let mut progressed = false;
            if let Some((sending, reply)) = current.as_mut() {
                if reply.poll_closed(cx).is_ready() {
                    // The layers gave up on this attempt (a timeout): drop it.
                    current = None;
                    progressed = true;
                } else if let Poll::Ready(answer) = sending.as_mut().poll(cx) {
                    if let Some((_, reply)) = current.take() {
                        let _ = reply.send(answer);
                    }
                    progressed = true;
                }
            }
            if let Poll::Ready(result) = stack.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            if !progressed {
                return Poll::Pending;
            }
        })
        .await;
        match result {
            Ok(response) => Ok(reqwest::Response::from(response.map(to_reqwest_body))),
            Err(error) => Err(match error.downcast::<reqwest::Error>() {
                Ok(error) => ::reqwest_middleware::Error::Reqwest(*error),
                Err(error) => ::reqwest_middleware::Error::middleware(FromStack(error)),
            }),
        }
    }
}

/// An error of the layers, as reqwest-middleware carries it. reqwest-middleware's
/// error is transparent (its `source` is the source of what it holds): holding the
/// layers' error as this one's source keeps it in the chain, for
/// [`Error::of`](crate::Error::of) and `find`.
#[derive(Debug)]
struct FromStack(BoxError);

impl fmt::Display for FromStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for FromStack {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
