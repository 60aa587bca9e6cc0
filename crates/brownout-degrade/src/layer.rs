use std::sync::Arc;

use tower_layer::Layer;

use crate::{Degrade, DegradeConfig};

/// Applies [`Degrade`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct DegradeLayer {
    config: Arc<DegradeConfig>,
}

impl DegradeLayer {
    /// A layer with the given rules and settings.
    pub fn new(config: DegradeConfig) -> Self {
        DegradeLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for DegradeLayer {
    type Service = Degrade<S>;

    fn layer(&self, inner: S) -> Degrade<S> {
        Degrade::from_shared(inner, self.config.clone())
    }
}
