//! The error of a configuration that cannot be used: what is wrong, and where.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

/// A configuration that cannot be used: the key at fault, its line, and why.
///
/// Its Display reads like
/// `gateway.toml: line 14, key retry.max_attempts: must be at least 1, not 0`,
/// followed by the line itself. A missing environment variable is named in the
/// message; the value of a variable that is set is never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(Box<Details>);

// Boxed: errors are rare, and `Result<Config, ConfigError>` stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Details {
    message: String,
    key: Option<String>,
    line: Option<usize>,
    column: Option<usize>,
    source_line: Option<String>,
    file: Option<PathBuf>,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError(Box::new(Details {
            message: message.into(),
            key: None,
            line: None,
            column: None,
            source_line: None,
            file: None,
        }))
    }

    /// An error about `key`, at `span` of `input` when it is known.
    pub(crate) fn at(
        key: impl Into<String>,
        message: impl Into<String>,
        input: &str,
        span: Option<Range<usize>>,
    ) -> Self {
        let mut error = ConfigError::new(message);
        let key = key.into();
        error.0.key = (!key.is_empty() && key != ".").then_some(key);
        if let Some(span) = span {
            let start = span.start.min(input.len());
            let line_start = input[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = input[start..].find('\n').map_or(input.len(), |i| start + i);
            error.0.line = Some(input[..start].matches('\n').count() + 1);
            error.0.column = Some(input[line_start..start].chars().count() + 1);
            error.0.source_line = Some(input[line_start..line_end].trim_end().to_owned());
        }
        error
    }

    /// Leaves the line's text out of the message: for a line that holds a secret.
    pub(crate) fn without_source_line(mut self) -> Self {
        self.0.source_line = None;
        self
    }

    pub(crate) fn in_file(mut self, path: &Path) -> Self {
        self.0.file = Some(path.to_owned());
        self
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The key at fault, as a path (`provider[0].base_url`, `retry.max_attempts`), when
    /// the problem is in a value rather than in the TOML syntax.
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// The line of the problem in the configuration file, from 1.
    pub fn line(&self) -> Option<usize> {
        self.0.line
    }

    /// The file, for [`Config::from_file`](crate::Config::from_file).
    pub fn file(&self) -> Option<&Path> {
        self.0.file.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &*self.0;
        if let Some(file) = &d.file {
            write!(f, "{}: ", file.display())?;
        }
        match (d.line, d.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}, ")?,
            (Some(line), None) => write!(f, "line {line}, ")?,
            _ => {}
        }
        if let Some(key) = &d.key {
            write!(f, "key {key}: ")?;
        }
        f.write_str(&d.message)?;
        if let (Some(line), Some(text)) = (d.line, &d.source_line) {
            write!(f, "\n  {line} | {text}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
