//! What the layers record in a response's [`http::Extensions`].

use http::Extensions;

/// How many times the request was sent upstream before this response came back, the
/// first attempt included.
///
/// The retry layer inserts it only when it sent a request more than once, so that the
/// success path allocates nothing; read it with [`Attempts::of`], which counts a
/// response without it as one attempt.
///
/// ```
/// use brownout_core::meta::Attempts;
///
/// let mut response = http::Response::new(());
/// assert_eq!(Attempts::of(response.extensions()), 1);
/// response.extensions_mut().insert(Attempts(3));
/// assert_eq!(Attempts::of(response.extensions()), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempts(pub u32);

impl Attempts {
    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The attempt count recorded in `extensions`: one when none was recorded.
    pub fn of(extensions: &Extensions) -> u32 {
        extensions.get::<Attempts>().map_or(1, |a| a.0)
    }
}

/// Which target of a model fallback cascade answered. Inserted by the fallback layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedBy {
    model: std::sync::Arc<str>,
    position: usize,
}

impl ServedBy {
    /// `model` answered; it is the target at `position` in the cascade (0 is the
    /// preferred one).
    pub fn new(model: std::sync::Arc<str>, position: usize) -> Self {
        ServedBy { model, position }
    }

    /// The model that answered.
    pub fn model(&self) -> &str {
        &self.model
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

/// How a cache layer answered. Inserted by the cache layer on the responses it serves
/// from its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// A fresh entry, served without going live.
    Hit,
    /// An entry past its freshness, served because the live path failed.
    Stale,
}

impl CacheStatus {
    /// `"hit"` or `"stale"`, as in the `x-brownout-cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Stale => "stale",
        }
    }
}

/// The response is a canned answer, not the upstream's. Inserted by the degrade layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Degraded {
    rule: Option<std::sync::Arc<str>>,
}

impl Degraded {
    /// A canned answer from the rule named `rule`, or the generic answer.
    pub fn new(rule: Option<std::sync::Arc<str>>) -> Self {
        Degraded { rule }
    }

    /// The name of the rule that matched; `None` for the generic answer.
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }
}
