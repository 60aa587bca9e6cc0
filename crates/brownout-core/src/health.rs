//! A view of which targets can take requests now, for layers that choose a target.
//!
//! A model fallback skips a target whose circuit breaker is open without sending it
//! anything. It asks a [`Health`] view: the breaker layer's handle implements it, and
//! so does any closure `Fn(&str) -> bool`, so that another source of health (a status
//! page poller, a shared store) can take its place.

/// Whether requests for a key (a model name, a host…) would be admitted now.
pub trait Health: Send + Sync + 'static {
    /// `false` when a request for `key` would be refused without being sent.
    fn is_available(&self, key: &str) -> bool;
}

impl<F> Health for F
where
    F: Fn(&str) -> bool + Send + Sync + 'static,
{
    fn is_available(&self, key: &str) -> bool {
        self(key)
    }
}
