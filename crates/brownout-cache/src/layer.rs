use std::sync::Arc;

use tower_layer::Layer;

use crate::{serve::Shared, store::Store, Cache, CacheConfig};

/// Applies [`Cache`] to a service. See the [crate docs](crate).
///
/// Every service the layer builds shares one store.
#[derive(Debug, Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl CacheLayer {
    /// A layer with the given settings and an empty store.
    pub fn new(config: CacheConfig) -> Self {
        let store = Arc::new(Store::new(&config));
        CacheLayer {
            shared: Arc::new(Shared { config, store }),
        }
    }

    /// How many entries are stored, and their weight in bytes.
    pub async fn usage(&self) -> (u64, u64) {
        self.shared.store.usage().await
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache::from_shared(inner, self.shared.clone())
    }
}
