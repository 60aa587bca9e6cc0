//! The errors of degrade settings and rules files: brownout-core's
//! [`InvalidConfig`], the one error of every layer's settings, with the rule at fault.

pub use brownout_core::error::InvalidConfig;

/// The `key` setting of the degrade layer is refused because of `reason`.
pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> InvalidConfig {
    InvalidConfig::new("degrade", key, reason)
}

/// A second rule named `name`.
pub(crate) fn duplicate(name: &str) -> InvalidConfig {
    invalid(
        "rule.name",
        format!("`{name}` is already the name of an earlier rule"),
    )
}

/// Says which rule an error is about.
pub(crate) trait InRule {
    /// The rule at `index` (from 1), named `name`.
    fn in_rule(self, index: usize, name: &str) -> Self;
    /// The rule named `name`.
    fn named(self, name: &str) -> Self;
}

impl InRule for InvalidConfig {
    fn in_rule(self, index: usize, name: &str) -> Self {
        self.in_item("rule", Some(index), name)
    }

    fn named(self, name: &str) -> Self {
        self.in_item("rule", None, name)
    }
}
