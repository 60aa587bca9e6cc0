use std::sync::Arc;

use tower_layer::Layer;

use crate::{Fallback, FallbackConfig};

/// Applies [`Fallback`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct FallbackLayer {
    config: Arc<FallbackConfig>,
}

impl FallbackLayer {
    /// A layer with the given settings.
    pub fn new(config: FallbackConfig) -> Self {
        FallbackLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;

    fn layer(&self, inner: S) -> Fallback<S> {
        Fallback::from_shared(inner, self.config.clone())
    }
}
