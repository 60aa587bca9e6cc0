//! The layers, stacked: the one piece of wiring the proxy, the demo and the benchmark
//! share.
//!
//! Outermost first: degrade → cache → fallback → circuit breaker → retry → the
//! provider's key ([`Credentials`]) → the HTTP client. Each brownout layer documents
//! why it sits where it does; in short, a canned answer is the last resort, a stored
//! answer is better than a canned one and worse than a live one, the cascade asks the
//! breakers which models to skip, and the breaker counts each retried call once.
//!
//! A layer the configuration turns off is replaced by [`Skip`], so a pipeline has
//! one type whichever layers are on. The stack is boxed once, at the top, into a
//! [`Pipeline`]: the fallback, cache and degrade layers already box their futures, and
//! `benches/proxy.rs` measures the whole gateway against a bare proxy.

use brownout_breaker::{BreakerHandle, CircuitBreakerLayer};
use brownout_cache::CacheLayer;
use brownout_core::{body::PrefixedBody, BoxError};
use brownout_degrade::DegradeLayer;
use brownout_fallback::{FallbackConfig, FallbackLayer};
use brownout_retry::RetryLayer;
use http::{Request, Response};
use http_body::Body;
use tower::{util::BoxCloneSyncService, util::Either, Service, ServiceBuilder};

use crate::{config::Provider, credentials::Credentials, skip::Skip, Config};

/// Five [`PrefixedBody`] wrappers around `B`, one per layer: the body the HTTP client
/// receives from a pipeline (with `B` the caller's request body), and the body a
/// pipeline returns (with `B` the client's response body).
pub type Layered<B> = PrefixedBody<PrefixedBody<PrefixedBody<PrefixedBody<PrefixedBody<B>>>>>;

/// A whole pipeline, boxed: takes the caller's `Request<B>`, answers with the layered
/// body of the client's response body `X`.
pub type Pipeline<B, X> = BoxCloneSyncService<Request<B>, Response<Layered<X>>, BoxError>;

/// The layers built from a [`Config`], with their shared state: one set of circuit
/// breakers, one cache store, one retry budget for every route.
#[derive(Debug, Clone)]
pub struct Layers {
    providers: Vec<Provider>,
    degrade: Option<DegradeLayer>,
    cache: Option<CacheLayer>,
    breaker: Option<CircuitBreakerLayer>,
    retry: Option<RetryLayer>,
}

impl Layers {
    /// The layers `config` turns on. Build them inside the runtime that will use them:
    /// the retry budget and the breakers take their start time from tokio's clock.
    pub fn new(config: &Config) -> Layers {
        Layers {
            providers: config.providers.clone(),
            degrade: config.degrade.clone().map(DegradeLayer::new),
            cache: config.cache.clone().map(CacheLayer::new),
            breaker: config.breaker.clone().map(CircuitBreakerLayer::new),
            retry: config.retry.clone().map(RetryLayer::new),
        }
    }

    /// The circuit breakers' handle, when the breaker layer is on: their states, and
    /// manual control.
    pub fn breakers(&self) -> Option<BreakerHandle> {
        self.breaker.as_ref().map(CircuitBreakerLayer::handle)
    }

    /// The response cache layer, when it is on (its usage can be read from it).
    pub fn cache(&self) -> Option<&CacheLayer> {
        self.cache.as_ref()
    }

    /// Stacks the layers over `client`, with a fallback over `cascade` when there is one.
    /// Its fallback asks the breakers which models to skip.
    pub fn pipeline<B, X, C>(&self, cascade: Option<&FallbackConfig>, client: C) -> Pipeline<B, X>
    where
        B: Body + Unpin + Send + 'static,
        B::Error: Send,
        X: Body + Unpin + Send + 'static,
        X::Error: Into<BoxError> + Send,
        C: Service<Request<Layered<B>>, Response = Response<X>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        let fallback = cascade.map(|c| {
            let c = c.clone();
            FallbackLayer::new(match self.breakers() {
                Some(handle) => c.health(handle),
                None => c,
            })
        });
        let stack = ServiceBuilder::new()
            .layer(either(self.degrade.clone()))
            .layer(either(self.cache.clone()))
            .layer(either(fallback))
            .layer(either(self.breaker.clone()))
            .layer(either(self.retry.clone()))
            .service(Credentials::new(client, &self.providers));
        BoxCloneSyncService::new(stack)
    }

    /// The provider's key over `client`, for paths forwarded without the layers.
    pub(crate) fn plain<B, X, C>(
        &self,
        client: C,
    ) -> BoxCloneSyncService<Request<B>, Response<X>, BoxError>
    where
        B: 'static,
        C: Service<Request<B>, Response = Response<X>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_err(Into::into)
                .service(Credentials::new(client, &self.providers)),
        )
    }
}

fn either<L>(layer: Option<L>) -> Either<L, Skip> {
    match layer {
        Some(layer) => Either::Left(layer),
        None => Either::Right(Skip),
    }
}
