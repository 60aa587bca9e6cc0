//! The layers, stacked: the one piece of wiring the proxy, the demo and the benchmark
//! share.
//!
//! Outermost first: degrade → cache → fallback → circuit breaker → queue → retry →
//! the stream guard (`[streams]`) → the provider's key ([`Credentials`]) → the rate limits (`[limits]`, when on) → the
//! HTTP client. Each brownout layer
//! documents why it sits where it does; in short, a canned answer is the last resort,
//! a stored answer is better than a canned one and worse than a live one, the cascade
//! asks the breakers (and the queue, when it is on) which models to skip, the breaker
//! counts each retried or held call once, and the queue holds a model's requests
//! through a short overload instead of sending them into it.
//!
//! A layer the configuration turns off is left out with `option_layer`: every layer
//! takes any request body and hands on [`Body`], so a pipeline has one type
//! whichever layers are on. The stack is boxed once, at the top, into a
//! [`Pipeline`]: one allocation per request for the whole stack's future. Inside it
//! the layers box only what their docs say (a body still to be read, a retry, the
//! cascade after its first target, the cache's fresh-hit mode). The price of one
//! type for every configuration is that a layer turned off still sizes the future
//! it is left out of, so each `option_layer` is one more move of that future per
//! request.
//! `benches/proxy.rs` measures the whole gateway against a bare proxy.

use brownout::{
    breaker::{BreakerHandle, CircuitBreakerLayer},
    cache::CacheLayer,
    degrade::DegradeLayer,
    fallback::{
        stream::{AfterFirstByte, StreamConfig, StreamGuardLayer},
        FallbackConfig, FallbackLayer,
    },
    queue::{QueueHandle, QueueLayer},
    retry::RetryLayer,
    Body, BoxError,
};
use http::{Request, Response};
use tower::{util::BoxCloneSyncService, Service, ServiceBuilder};

use crate::{
    config::Provider,
    credentials::Credentials,
    limits::{set_deadline, Limited, ProviderLimits},
    observe::Observability,
    state::{self, SharedStores},
    Config,
};

/// A whole pipeline, boxed: takes the caller's `Request<B>`, answers `Response<Body>`.
pub type Pipeline<B> = BoxCloneSyncService<Request<B>, Response<Body>, BoxError>;

/// The layers built from a [`Config`], with their shared state: one set of circuit
/// breakers, one cache store, one retry budget for every route.
#[derive(Debug, Clone)]
pub struct Layers {
    providers: Vec<Provider>,
    degrade: Option<DegradeLayer>,
    cache: Option<CacheLayer>,
    breaker: Option<CircuitBreakerLayer>,
    queue: Option<QueueLayer>,
    retry: Option<RetryLayer>,
    rate_limits: Option<ProviderLimits>,
    streams: StreamGuardLayer,
    after_first_byte: AfterFirstByte,
    observe: Option<Observability>,
    shared: Option<SharedStores>,
}

impl Layers {
    /// The layers `config` turns on. Build them inside the runtime that will use them:
    /// the retry budget and the breakers take their start time from tokio's clock.
    pub fn new(config: &Config) -> Layers {
        // `[observe]`: the layers' events go to its sinks too.
        let observe = Observability::new(config);
        let listener = observe.as_ref().map(Observability::listener);
        // `[state]`: the breakers, the cache and the retry budget in Redis (see
        // `state.rs`).
        let (breaker, cache, retry, shared) = match &config.state {
            Some(state) => {
                let s = state::shared(
                    state,
                    config.breaker.clone(),
                    config.cache.clone(),
                    config.retry.clone(),
                );
                (s.breaker, s.cache, s.retry, Some(s.stores))
            }
            None => (
                config.breaker.clone(),
                config.cache.clone(),
                config.retry.clone(),
                None,
            ),
        };
        // `[limits]`, with their Redis stores counted among the shared ones.
        let mut shared = shared;
        let rate_limits = config.rate_limits.as_ref().map(|limits| {
            let (limits, stores) =
                ProviderLimits::new(&config.providers, limits, config.state.as_ref());
            if let Some(shared) = &mut shared {
                shared.add_limits(stores);
            }
            limits
        });
        let layers = Layers {
            providers: config.providers.clone(),
            degrade: config.degrade.clone().map(|c| {
                DegradeLayer::new(match listener.clone() {
                    Some(l) => c.listener(l),
                    None => c,
                })
            }),
            cache: cache.map(|c| {
                CacheLayer::new(match listener.clone() {
                    Some(l) => c.listener(l),
                    None => c,
                })
            }),
            breaker: breaker.map(|c| {
                CircuitBreakerLayer::new(match listener.clone() {
                    Some(l) => c.listener(l),
                    None => c,
                })
            }),
            queue: config.queue.clone().map(|c| {
                QueueLayer::new(match listener.clone() {
                    Some(l) => c.listener(l),
                    None => c,
                })
            }),
            retry: retry.map(|c| {
                RetryLayer::new(match listener.clone() {
                    Some(l) => c.listener(l),
                    None => c,
                })
            }),
            rate_limits,
            streams: stream_guard(config),
            after_first_byte: config.stream_after_first_byte(),
            observe,
            shared,
        };
        if let Some(observe) = &layers.observe {
            observe.watch(layers.breakers(), layers.queue(), &layers.rate_limits());
        }
        layers
    }

    /// `[observe]`'s sinks and pages, when the section is on.
    pub fn observability(&self) -> Option<&Observability> {
        self.observe.as_ref()
    }

    /// The stores shared through Redis, when `[state]` is on.
    pub fn shared_state(&self) -> Option<&SharedStores> {
        self.shared.as_ref()
    }

    /// The circuit breakers' handle, when the breaker layer is on: their states, and
    /// manual control.
    pub fn breakers(&self) -> Option<BreakerHandle> {
        self.breaker.as_ref().map(CircuitBreakerLayer::handle)
    }

    /// The queue's handle, when the queue layer is on: each model's depth and
    /// admission, and [`shutdown`](QueueHandle::shutdown), which the gateway calls on
    /// a graceful shutdown so that every queued request is answered.
    pub fn queue(&self) -> Option<QueueHandle> {
        self.queue.as_ref().map(QueueLayer::handle)
    }

    /// The rate limiters of `[limits]`, one per limited provider: its name, and the
    /// handle to its keys (remaining budget, waits, sheds, estimate error).
    pub fn rate_limits(&self) -> Vec<(String, brownout::limit::LimitHandle)> {
        self.rate_limits
            .as_ref()
            .map_or_else(Vec::new, ProviderLimits::handles)
    }

    /// The response cache layer, when it is on (its usage can be read from it).
    pub fn cache(&self) -> Option<&CacheLayer> {
        self.cache.as_ref()
    }

    /// Stacks the layers over `client`, with a fallback over `cascade` when there is one.
    /// Its fallback asks the breakers which models to skip, and with the queue on the
    /// queue's wait-or-move rule too (`queue.handle().and(breakers.handle())`): a model
    /// is skipped when its breaker is open or its expected wait is longer than
    /// `prefer_wait`.
    pub fn pipeline<B, X, C>(&self, cascade: Option<&FallbackConfig>, client: C) -> Pipeline<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        X: http_body::Body + Send + 'static,
        X::Data: Send,
        X::Error: Into<BoxError>,
        C: Service<Request<Body>, Response = Response<X>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        self.stack(cascade, client, true)
    }

    /// [`pipeline`](Self::pipeline), with the degrade layer left out when `degrade`
    /// is false: for a route whose callers must get the provider's own error. (Every
    /// route has it now: the degrade layer renders the Anthropic Messages, Chat
    /// Completions and Responses shapes.)
    pub(crate) fn stack<B, X, C>(
        &self,
        cascade: Option<&FallbackConfig>,
        client: C,
        degrade: bool,
    ) -> Pipeline<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        X: http_body::Body + Send + 'static,
        X::Data: Send,
        X::Error: Into<BoxError>,
        C: Service<Request<Body>, Response = Response<X>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        let fallback = cascade.map(|c| {
            let c = c.clone().after_first_byte(self.after_first_byte);
            let c = match &self.observe {
                Some(observe) => c.listener(observe.listener()),
                None => c,
            };
            FallbackLayer::new(match (self.queue(), self.breakers()) {
                (Some(queue), Some(breakers)) => c.health(queue.and(breakers)),
                (Some(queue), None) => c.health(queue),
                (None, Some(breakers)) => c.health(breakers),
                (None, None) => c,
            })
        });
        let stack = ServiceBuilder::new()
            // With every layer off, the caller's body still becomes a `Body`.
            .map_request(|request: Request<B>| request.map(Body::new))
            // `[observe]`: one record and one span per request, outermost.
            .option_layer(self.observe.as_ref().map(Observability::outer))
            // The gateway's deadline, for the rate limiter's waits.
            .option_layer(
                self.rate_limits
                    .as_ref()
                    .and_then(ProviderLimits::deadline)
                    .map(|d| tower::util::MapRequestLayer::new(set_deadline(d))),
            )
            .option_layer(self.degrade.clone().filter(|_| degrade))
            .option_layer(self.cache.clone())
            .option_layer(fallback)
            .option_layer(self.breaker.clone())
            .option_layer(self.queue.clone())
            .option_layer(self.retry.clone())
            // Each attempt's stream judged before it reaches the caller (`[streams]`).
            .layer(self.streams.clone())
            // Innermost, under the provider's key: `[limits]` (see `limits.rs`).
            .service(Credentials::new(
                Limited::new(
                    // `[observe]`: one record per upstream call, right over the client.
                    ServiceBuilder::new()
                        .option_layer(self.observe.as_ref().map(Observability::inner))
                        .map_err(Into::<BoxError>::into)
                        .map_response(|response: Response<X>| response.map(Body::new))
                        .service(client),
                    self.rate_limits.clone(),
                ),
                &self.providers,
            ));
        BoxCloneSyncService::new(stack)
    }

    /// The provider's key over `client`, for paths forwarded without the layers.
    pub(crate) fn plain<B, X, C>(&self, client: C) -> Pipeline<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        X: http_body::Body + Send + 'static,
        X::Data: Send,
        X::Error: Into<BoxError>,
        C: Service<Request<Body>, Response = Response<X>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_request(|request: Request<B>| request.map(Body::new))
                .map_err(Into::<BoxError>::into)
                .map_response(|response: Response<X>| response.map(Body::new))
                .service(Credentials::new(client, &self.providers)),
        )
    }
}

/// The stream guard of `[streams]`: a stream is held until its first content within
/// `first_event_timeout`. With `after_first_byte = "resume"` it also ends a stream
/// silent for `idle_timeout` itself, inside the cascade, so that the cascade resumes
/// it; its timer starts before the router's own idle timer, which reads through it,
/// so it acts first. Otherwise the router's idle timer ends silent streams, as it
/// always has (and counts them).
fn stream_guard(config: &Config) -> StreamGuardLayer {
    let guard = StreamConfig::new()
        .first_event_timeout(config.stream_first_event_timeout())
        .unwrap_or_default();
    let idle = (config.stream_after_first_byte() == AfterFirstByte::Resume)
        .then(|| config.stream_idle_timeout());
    StreamGuardLayer::new(guard.idle_timeout(idle))
}
