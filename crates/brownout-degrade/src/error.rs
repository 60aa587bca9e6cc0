//! The error of a degrade setting or rules file.

use std::fmt;

/// A degrade setting or rules file that was given nonsense: names the setting, and
/// for a rule its name (or position) and the line of the rules file at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    key: &'static str,
    reason: String,
    rule_index: Option<usize>,
    rule_name: Option<String>,
    line: Option<usize>,
}

impl InvalidConfig {
    pub(crate) fn new(key: &'static str, reason: impl Into<String>) -> Self {
        InvalidConfig {
            key,
            reason: reason.into(),
            rule_index: None,
            rule_name: None,
            line: None,
        }
    }

    pub(crate) fn duplicate(name: &str) -> Self {
        InvalidConfig::new(
            "rule.name",
            format!("`{name}` is already the name of an earlier rule"),
        )
    }

    /// Says which rule is at fault: its position from 1 and its name, when it has one.
    pub(crate) fn in_rule(mut self, index: usize, name: &str) -> Self {
        self.rule_index = Some(index);
        if !name.trim().is_empty() {
            self.rule_name = Some(name.to_owned());
        }
        self
    }

    pub(crate) fn named(mut self, name: &str) -> Self {
        if !name.trim().is_empty() {
            self.rule_name = Some(name.to_owned());
        }
        self
    }

    pub(crate) fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    /// The setting at fault: `generic`, `status`, `retry_after`, `rule.name`,
    /// `rule.pattern`, `rule.answer`, `toml` for what the TOML parser rejected (syntax,
    /// unknown keys, wrong types) and `file` when the file cannot be read.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The name of the rule at fault, when it has one.
    pub fn rule_name(&self) -> Option<&str> {
        self.rule_name.as_deref()
    }

    /// The position of the rule at fault, from 1, when the rule is one of a list or a
    /// file.
    pub fn rule_index(&self) -> Option<usize> {
        self.rule_index
    }

    /// The line of the rules file at fault, from 1.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// Why the setting was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid degrade setting `{}`", self.key)?;
        match (&self.rule_name, self.rule_index) {
            (Some(name), _) => write!(f, " in rule `{name}`")?,
            (None, Some(index)) => write!(f, " in rule #{index}")?,
            (None, None) => {}
        }
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for InvalidConfig {}
