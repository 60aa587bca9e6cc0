use std::sync::Arc;

use brownout_core::error::InvalidConfig;
use tower_layer::Layer;

use crate::{handle::LimitHandle, shared::Shared, RateLimit, RateLimitConfig};

/// Applies [`RateLimit`] to a service. See the [crate docs](crate).
///
/// Every service the layer builds, and all their clones, share one set of keys:
/// read it through [`handle`](Self::handle).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A layer with these settings. Fails on a zero limit, a margin outside `[0, 1]`,
    /// fewer than 0.5 bytes a token, a `max_wait` over an hour, or no room for keys.
    pub fn new(config: RateLimitConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(RateLimitLayer {
            shared: Arc::new(Shared::new(config)),
        })
    }

    /// The handle to the layer's keys.
    pub fn handle(&self) -> LimitHandle {
        LimitHandle::new(self.shared.clone())
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::from_shared(inner, self.shared.clone())
    }
}
