//! `ServiceBuilder` methods for brownout's layers, named for what they do.

#[cfg(feature = "breaker")]
use crate::breaker::CircuitBreakerLayer;
#[cfg(feature = "cache")]
use crate::cache::{CacheConfig, CacheLayer};
#[cfg(feature = "degrade")]
use crate::degrade::{DegradeConfig, DegradeLayer};
#[cfg(feature = "fallback")]
use crate::fallback::{FallbackConfig, FallbackLayer};
#[cfg(feature = "limit")]
use crate::limit::RateLimitLayer;
#[cfg(feature = "queue")]
use crate::queue::QueueLayer;
#[cfg(feature = "retry")]
use crate::retry::{RetryConfig, RetryLayer};
use tower::{layer::util::Stack, ServiceBuilder};

/// Adds brownout's layers to a [`ServiceBuilder`]. Call them in the
/// [recommended order](crate#the-recommended-order): the first call is the outermost
/// layer.
///
/// ```
/// # #[cfg(all(feature = "retry", feature = "breaker", feature = "fallback", feature = "cache"))] {
/// use brownout::{breaker::{BreakerConfig, CircuitBreakerLayer}, cache::CacheConfig,
///     fallback::{FallbackConfig, Target}, retry::RetryConfig, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
/// let cascade = FallbackConfig::new([Target::new("claude-sonnet-4-5"), Target::new("claude-haiku-4-5")])
///     .unwrap()
///     .health(breakers.handle());
/// let builder = ServiceBuilder::new()
///     .response_cache(CacheConfig::new())
///     .model_fallback(cascade)
///     .circuit_breaker(breakers)
///     .retry_with_jitter(RetryConfig::new());
/// # let _ = builder;
/// # }
/// ```
pub trait ServiceBuilderExt<L>: Sized {
    /// Canned answers in the provider's shape when nothing else can answer.
    #[cfg(feature = "degrade")]
    fn degrade(self, config: DegradeConfig) -> ServiceBuilder<Stack<DegradeLayer, L>>;

    /// The last good answer when every live path fails, or fresh hits.
    #[cfg(feature = "cache")]
    fn response_cache(self, config: CacheConfig) -> ServiceBuilder<Stack<CacheLayer, L>>;

    /// The model cascade.
    #[cfg(feature = "fallback")]
    fn model_fallback(self, config: FallbackConfig) -> ServiceBuilder<Stack<FallbackLayer, L>>;

    /// Circuit breakers per model or host. Takes the layer, so that its
    /// [`handle`](crate::breaker::CircuitBreakerLayer::handle) can be given to the
    /// fallback first.
    #[cfg(feature = "breaker")]
    fn circuit_breaker(
        self,
        layer: CircuitBreakerLayer,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>>;

    /// Holds a model's requests through a short overload and drains them with slow
    /// start. Takes the layer, so that its [`handle`](crate::queue::QueueLayer::handle)
    /// can be given to the fallback first (`queue.handle().and(breakers.handle())`) and
    /// kept for shutdown. Goes between the breaker and the retry layer:
    /// `fallback > breaker > queue > retry`.
    ///
    /// ```
    /// # #[cfg(all(feature = "retry", feature = "breaker", feature = "fallback"))] {
    /// use std::time::Duration;
    /// use brownout::{breaker::{BreakerConfig, CircuitBreakerLayer},
    ///     fallback::{FallbackConfig, Target}, queue::{QueueConfig, QueueLayer},
    ///     retry::RetryConfig, ServiceBuilderExt};
    /// use tower::ServiceBuilder;
    ///
    /// let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
    /// let queue = QueueLayer::new(QueueConfig::new().max_wait(Duration::from_millis(800)));
    /// let cascade = FallbackConfig::new([Target::new("claude-sonnet-4-5"), Target::new("claude-haiku-4-5")])
    ///     .unwrap()
    ///     .health(queue.handle().and(breakers.handle()));
    /// let shutdown = queue.handle(); // shutdown.shutdown() answers every queued request
    /// let builder = ServiceBuilder::new()
    ///     .model_fallback(cascade)
    ///     .circuit_breaker(breakers)
    ///     .overload_queue(queue)
    ///     // wait or move: sleep a `retry-after` only as long as the queue would wait
    ///     .retry_with_jitter(RetryConfig::new().max_server_delay(Duration::from_millis(500)));
    /// # let _ = (builder, shutdown);
    /// # }
    /// ```
    #[cfg(feature = "queue")]
    fn overload_queue(self, layer: QueueLayer) -> ServiceBuilder<Stack<QueueLayer, L>>;

    /// Retry with full jitter, server-given delays, a budget and a deadline.
    #[cfg(feature = "retry")]
    fn retry_with_jitter(self, config: RetryConfig) -> ServiceBuilder<Stack<RetryLayer, L>>;

    /// Client-side requests and tokens per minute, counted before sending: stays under
    /// the provider's limits. (Not `rate_limit`, which `tower::ServiceBuilder` has as
    /// its own method, for tower's request-rate limiter.) Takes the
    /// layer, which [`RateLimitLayer::new`] checked, so that its
    /// [`handle`](crate::limit::RateLimitLayer::handle) can be kept. Goes innermost,
    /// right over the HTTP client: each attempt of a retry and each model of a
    /// fallback then counts against the model it is sent to.
    ///
    /// ```
    /// # #[cfg(feature = "retry")] {
    /// use brownout::{limit::{Limits, RateLimitConfig, RateLimitLayer},
    ///     retry::RetryConfig, ServiceBuilderExt};
    /// use tower::ServiceBuilder;
    ///
    /// let limits = RateLimitLayer::new(RateLimitConfig::new().model(
    ///     "claude-sonnet-4-5",
    ///     Limits::new().requests_per_minute(50).output_tokens_per_minute(8_000),
    /// ))
    /// .unwrap();
    /// let handle = limits.handle(); // each key's remaining budget, waits and sheds
    /// let builder = ServiceBuilder::new()
    ///     .retry_with_jitter(RetryConfig::new())
    ///     .provider_limits(limits);
    /// # let _ = (builder, handle);
    /// # }
    /// ```
    #[cfg(feature = "limit")]
    fn provider_limits(self, layer: RateLimitLayer) -> ServiceBuilder<Stack<RateLimitLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "degrade")]
    fn degrade(self, config: DegradeConfig) -> ServiceBuilder<Stack<DegradeLayer, L>> {
        self.layer(DegradeLayer::new(config))
    }

    #[cfg(feature = "cache")]
    fn response_cache(self, config: CacheConfig) -> ServiceBuilder<Stack<CacheLayer, L>> {
        self.layer(CacheLayer::new(config))
    }

    #[cfg(feature = "fallback")]
    fn model_fallback(self, config: FallbackConfig) -> ServiceBuilder<Stack<FallbackLayer, L>> {
        self.layer(FallbackLayer::new(config))
    }

    #[cfg(feature = "breaker")]
    fn circuit_breaker(
        self,
        layer: CircuitBreakerLayer,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "queue")]
    fn overload_queue(self, layer: QueueLayer) -> ServiceBuilder<Stack<QueueLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn retry_with_jitter(self, config: RetryConfig) -> ServiceBuilder<Stack<RetryLayer, L>> {
        self.layer(RetryLayer::new(config))
    }

    #[cfg(feature = "limit")]
    fn provider_limits(self, layer: RateLimitLayer) -> ServiceBuilder<Stack<RateLimitLayer, L>> {
        self.layer(layer)
    }
}
