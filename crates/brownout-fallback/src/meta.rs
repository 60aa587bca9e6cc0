//! What the fallback layer records in a response's [`http::Extensions`].

use std::sync::Arc;

/// Which target of a model fallback cascade answered. Inserted by the fallback layer.
///
/// ```
/// use brownout_fallback::ServedBy;
///
/// let served = ServedBy::new("claude-sonnet-4-5".into(), 1);
/// assert_eq!(served.model(), "claude-sonnet-4-5");
/// assert!(served.is_fallback());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedBy {
    model: Arc<str>,
    position: usize,
}

impl ServedBy {
    /// `model` answered; it is the target at `position` in the cascade (0 is the
    /// preferred one).
    pub fn new(model: Arc<str>, position: usize) -> Self {
        ServedBy { model, position }
    }

    /// The model that answered.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model that answered, as a shared string (no copy).
    pub fn model_arc(&self) -> Arc<str> {
        self.model.clone()
    }

    /// Its position in the cascade: 0 for the preferred target.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Whether a fallback target answered rather than the preferred one.
    pub fn is_fallback(&self) -> bool {
        self.position > 0
    }
}
