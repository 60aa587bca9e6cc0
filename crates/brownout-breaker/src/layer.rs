use tower_layer::Layer;

use crate::{
    shared::{Shared, SharedRef},
    BreakerConfig, BreakerHandle, CircuitBreaker,
};

/// Applies [`CircuitBreaker`] to a service. See the [crate docs](crate).
///
/// Every service the layer builds, and all their clones, share one set of breakers:
/// read and steer it through [`handle`](Self::handle).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    shared: SharedRef,
}

impl CircuitBreakerLayer {
    /// A layer with the given settings, and breakers kept in this process.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreakerLayer {
            shared: Shared::new_ref(config),
        }
    }

    /// The handle to the layer's breakers.
    pub fn handle(&self) -> BreakerHandle {
        self.shared.handle()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::from_shared(inner, self.shared.clone())
    }
}
