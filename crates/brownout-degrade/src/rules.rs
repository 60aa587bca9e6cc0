//! Rules: a name, a pattern tried on the last user message, and the canned answer.

use std::{fmt, sync::Arc};

use http::HeaderValue;
use regex::Regex;

use crate::error::{invalid, InRule, InvalidConfig};

/// A canned answer for requests whose last user message matches a regular expression.
///
/// The answer is sent as it is: nothing of the request is ever put into it.
///
/// ```
/// use brownout_degrade::Rule;
///
/// let rule = Rule::new("refunds", r"(?i)\brefund", "You can request a refund from Settings › Billing.")?;
/// assert!(rule.is_match("How do I get a Refund?"));
/// assert!(Rule::new("broken", "(unclosed", "answer").is_err());
/// # Ok::<(), brownout_degrade::InvalidConfig>(())
/// ```
#[derive(Clone)]
pub struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) header: HeaderValue,
    pub(crate) regex: Regex,
    pub(crate) answer: Arc<str>,
}

impl Rule {
    /// A rule named `name` (sent in the `x-brownout-degraded-rule` header, so printable
    /// ASCII) that answers `answer` when `pattern` (a [`regex`] expression) matches the
    /// last user message. Fails on an empty or non-ASCII name, an empty or invalid
    /// pattern, and an empty answer.
    pub fn new(name: &str, pattern: &str, answer: &str) -> Result<Rule, InvalidConfig> {
        if name.trim().is_empty() {
            return Err(invalid("rule.name", "the name is empty"));
        }
        // HeaderValue would take any byte above 0x7f; a name must read the same in a
        // header as in the file.
        let header = name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b))
            .then(|| HeaderValue::from_str(name).ok())
            .flatten()
            .ok_or_else(|| {
                invalid(
                    "rule.name",
                    format!(
                        "`{}` is not printable ASCII, as a header value must be",
                        name.escape_debug()
                    ),
                )
            })?;
        if pattern.is_empty() {
            return Err(invalid(
                "rule.pattern",
                "the pattern is empty and would match everything: use `generic` for a catch-all",
            )
            .named(name));
        }
        let regex = Regex::new(pattern).map_err(|e| {
            invalid(
                "rule.pattern",
                format!("not a valid regular expression: {e}"),
            )
            .named(name)
        })?;
        if answer.trim().is_empty() {
            return Err(invalid("rule.answer", "the answer is empty").named(name));
        }
        Ok(Rule {
            name: name.into(),
            header,
            regex,
            answer: answer.into(),
        })
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The regular expression, as written.
    pub fn pattern(&self) -> &str {
        self.regex.as_str()
    }

    /// The canned answer.
    pub fn answer(&self) -> &str {
        &self.answer
    }

    /// Whether the pattern matches `text` (a last user message).
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("pattern", &self.regex.as_str())
            .field("answer", &self.answer)
            .finish()
    }
}

/// The position of the first rule whose name an earlier rule already has.
pub(crate) fn first_duplicate(rules: &[Rule]) -> Option<usize> {
    (1..rules.len()).find(|&i| rules[..i].iter().any(|r| r.name == rules[i].name))
}
