use std::{fmt, sync::Arc, time::Duration};

use brownout_core::health::Health;

use crate::{state::Shared, Choice};

/// Reads the queues of one [`QueueLayer`](crate::QueueLayer) and every service it
/// built, and shuts them down. Cheap to clone.
///
/// It is also a [`Health`] view applying the layer's wait-or-move rule
/// ([`prefer_wait`](crate::QueueConfig::prefer_wait)): a fallback given it skips a key
/// only when its expected wait is longer than the rule allows, or unknown, and
/// otherwise sends the request in to wait for it.
#[derive(Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
}

impl QueueHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        QueueHandle { shared }
    }

    /// How many requests wait for `key`.
    pub fn depth(&self, key: &str) -> usize {
        self.shared.depth(key)
    }

    /// How many requests wait, over every key.
    pub fn total_depth(&self) -> usize {
        self.shared.keys().iter().map(|(_, depth, _)| depth).sum()
    }

    /// Every key the queue tracks now (unavailable, waited for, or recovering), with
    /// its depth and its admission limit, by key.
    pub fn keys(&self) -> Vec<(Arc<str>, usize, Option<u32>)> {
        self.shared.keys()
    }

    /// How many requests of `key` may be in flight now: `None` when it is not
    /// limited (it is healthy, or back to normal).
    pub fn admission(&self, key: &str) -> Option<u32> {
        self.shared.limit(key)
    }

    /// How long a new request for `key` would be expected to wait (zero: it would
    /// pass at once); `None` when unknown (its health view says no, with no hint of
    /// how long).
    pub fn expected_wait(&self, key: &str) -> Option<Duration> {
        self.shared.expected(key)
    }

    /// The wait-or-move rule applied to [`expected_wait`](Self::expected_wait).
    pub fn choose(&self, key: &str) -> Choice {
        self.shared
            .config
            .prefer_wait
            .choose(self.expected_wait(key))
    }

    /// Answers every waiting request with a shed answer
    /// ([`Shutdown`](crate::ShedReason::Shutdown)), and from now on sheds at once every
    /// request that would have to wait; requests that need not wait still pass.
    /// For a gateway's graceful shutdown: no queued request is left unanswered.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.is_shut_down()
    }
}

impl QueueHandle {
    /// A [`Health`] view that says yes only when both this handle's wait-or-move rule
    /// and `other` (a breaker's handle) do: for a fallback outside both layers, in the
    /// order `fallback > breaker > queue > retry`.
    pub fn and(self, other: impl Health) -> Both {
        Both {
            queue: self,
            other: std::sync::Arc::new(other),
        }
    }
}

/// The [`Health`] view of [`QueueHandle::and`].
#[derive(Clone)]
pub struct Both {
    queue: QueueHandle,
    other: Arc<dyn Health>,
}

impl Health for Both {
    fn is_available(&self, key: &str) -> bool {
        self.other.is_available(key) && self.queue.is_available(key)
    }
}

impl fmt::Debug for Both {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Both")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Health for QueueHandle {
    fn is_available(&self, key: &str) -> bool {
        self.choose(key).is_wait()
    }
}

impl fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueHandle")
            .field("keys", &self.shared.keys())
            .finish()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
