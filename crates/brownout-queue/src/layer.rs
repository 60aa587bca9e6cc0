use std::sync::Arc;

use tower_layer::Layer;

use crate::{state::Shared, Queue, QueueConfig, QueueHandle};

/// Applies [`Queue`] to a service. See the [crate docs](crate).
///
/// Every service the layer builds, and all their clones, share one set of queues:
/// read them and shut them down through [`handle`](Self::handle).
#[derive(Debug, Clone)]
pub struct QueueLayer {
    shared: Arc<Shared>,
}

impl QueueLayer {
    /// A layer with the given settings.
    pub fn new(config: QueueConfig) -> Self {
        QueueLayer {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// The handle to the layer's queues.
    pub fn handle(&self) -> QueueHandle {
        QueueHandle::new(self.shared.clone())
    }
}

impl<S> Layer<S> for QueueLayer {
    type Service = Queue<S>;

    fn layer(&self, inner: S) -> Queue<S> {
        Queue::from_shared(inner, self.shared.clone())
    }
}
