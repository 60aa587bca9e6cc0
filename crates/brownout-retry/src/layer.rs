use std::sync::Arc;

use tower_layer::Layer;

use crate::{Retry, RetryConfig};

/// Applies [`Retry`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone, Default)]
pub struct RetryLayer {
    config: Arc<RetryConfig>,
}

impl RetryLayer {
    /// A layer with the given settings.
    pub fn new(config: RetryConfig) -> Self {
        RetryLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::from_shared(inner, self.config.clone())
    }
}
