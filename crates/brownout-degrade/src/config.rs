//! The degrade layer's answers and when it gives them.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use brownout_core::{
    classify::{Classifier, Classify, Outcome, OutcomeKind, DEFAULT_ERROR_BODY_LIMIT},
    event::{Events, Listener},
};
use http::{HeaderValue, StatusCode};

use crate::{id::Ids, rules::Rule};

/// The answer given when no rule matches, unless [`generic`](DegradeConfig::generic)
/// sets another.
pub const DEFAULT_GENERIC_ANSWER: &str =
    "The assistant is briefly unavailable because of high demand. Please try again in a few minutes.";

/// The default size of the request buffer: 4 MiB, as for the retry and fallback layers.
/// A longer request body is sent on as it is, and a failure gets the generic answer.
pub const DEFAULT_REPLAY_LIMIT: usize = 4 * 1024 * 1024;

/// The degrade layer's settings. Every setter takes and returns `self`.
///
/// | setting | default |
/// |---|---|
/// | rules | given to [`new`](Self::new) or read by [`from_toml_str`](Self::from_toml_str), first match wins |
/// | [`generic`](Self::generic) | [`DEFAULT_GENERIC_ANSWER`] |
/// | [`status`](Self::status) | 200 |
/// | [`retry_after`](Self::retry_after) | none |
/// | [`degrade_when`](Self::degrade_when) | overloaded, rate limited, server error, timeout, connection failure, refused by a breaker |
/// | [`classifier`](Self::classifier) | [`DefaultClassifier`](brownout_core::classify::DefaultClassifier) |
/// | [`replay_limit`](Self::replay_limit) | [`DEFAULT_REPLAY_LIMIT`] (4 MiB) |
/// | [`error_body_limit`](Self::error_body_limit) | [`DEFAULT_ERROR_BODY_LIMIT`] (4 KiB) |
/// | [`seed`](Self::seed) | random: answer ids differ between runs |
///
/// The id sequence is shared by everything built from one config and its clones.
#[derive(Clone)]
pub struct DegradeConfig {
    pub(crate) rules: Arc<[Rule]>,
    pub(crate) generic: Arc<str>,
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) retry_after_header: Option<HeaderValue>,
    pub(crate) degrade_when: Arc<dyn Fn(&Outcome) -> bool + Send + Sync>,
    pub(crate) classifier: Classifier,
    pub(crate) replay_limit: usize,
    pub(crate) error_body_limit: usize,
    pub(crate) events: Events,
    pub(crate) ids: Ids,
}

impl DegradeConfig {
    /// Answers with the first of `rules` whose pattern matches the last user message,
    /// else with the generic answer. Fails when two rules have the same name.
    pub fn new(rules: impl IntoIterator<Item = Rule>) -> Result<Self, InvalidConfig> {
        let rules: Vec<Rule> = rules.into_iter().collect();
        if let Some(i) = first_duplicate(&rules) {
            return Err(InvalidConfig::duplicate(&rules[i].name).in_rule(i + 1, &rules[i].name));
        }
        Ok(DegradeConfig {
            rules: rules.into(),
            generic: DEFAULT_GENERIC_ANSWER.into(),
            status: StatusCode::OK,
            retry_after: None,
            retry_after_header: None,
            degrade_when: Arc::new(|outcome: &Outcome| {
                matches!(
                    outcome.kind(),
                    OutcomeKind::Overloaded
                        | OutcomeKind::RateLimited
                        | OutcomeKind::ServerError
                        | OutcomeKind::Timeout
                        | OutcomeKind::ConnectionFailed
                        | OutcomeKind::Rejected
                )
            }),
            classifier: Classifier::default(),
            replay_limit: DEFAULT_REPLAY_LIMIT,
            error_body_limit: DEFAULT_ERROR_BODY_LIMIT,
            events: Events::new(),
            ids: Ids::new(),
        })
    }

    /// Reads rules and answers from TOML; see the [crate docs](crate#rules-files) for
    /// the format. Errors name the rule and the line at fault.
    pub fn from_toml_str(toml: &str) -> Result<Self, InvalidConfig> {
        crate::rules::from_toml_str(toml)
    }

    /// Reads rules and answers from a TOML file; see
    /// [`from_toml_str`](Self::from_toml_str).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, InvalidConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            InvalidConfig::new("file", format!("cannot read {}: {e}", path.display()))
        })?;
        DegradeConfig::from_toml_str(&text)
    }

    /// The answer when no rule matches (or the request's text cannot be read). Fails
    /// when it is empty.
    pub fn generic(mut self, answer: impl Into<Arc<str>>) -> Result<Self, InvalidConfig> {
        let answer = answer.into();
        if answer.trim().is_empty() {
            return Err(InvalidConfig::new("generic", "the answer is empty"));
        }
        self.generic = answer;
        Ok(self)
    }

    /// The status of degraded answers. 200 lets the official SDKs read the answer like
    /// any other; with an error status such as 503 they raise an error instead, and
    /// retry it on their own. Fails for statuses that cannot carry a body (1xx, 204,
    /// 205, 304) and for redirects.
    pub fn status(mut self, status: StatusCode) -> Result<Self, InvalidConfig> {
        let code = status.as_u16();
        if status.is_informational()
            || status.is_redirection()
            || code == 204
            || code == 205
            || code >= 600
        {
            return Err(InvalidConfig::new(
                "status",
                format!("{code} cannot carry an answer: use 2xx, 4xx or 5xx"),
            ));
        }
        self.status = status;
        Ok(self)
    }

    /// Sends `retry-after` with degraded answers: whole seconds, rounded up.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        self.retry_after = Some(delay);
        self.retry_after_header = Some(HeaderValue::from(secs));
        self
    }

    /// Which failures get a degraded answer. Never asked about successes, which always
    /// pass through. Client errors should not be degraded: the caller needs to know
    /// that its request is wrong.
    pub fn degrade_when(mut self, when: impl Fn(&Outcome) -> bool + Send + Sync + 'static) -> Self {
        self.degrade_when = Arc::new(when);
        self
    }

    /// Decides what happened to each request.
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Classifier::new(classifier);
        self
    }

    /// The largest request body, in bytes, kept to match rules after a failure. A
    /// longer body is sent on as it is; if the request fails, it gets the generic
    /// answer.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// How many bytes of an error body the classifier may read.
    pub fn error_body_limit(mut self, bytes: usize) -> Self {
        self.error_body_limit = bytes;
        self
    }

    /// Where decisions go besides `tracing`.
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }

    /// Fixes the seed of answer ids (`msg_…`, `chatcmpl-…`), for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.ids = Ids::with_seed(seed);
        self
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The answer when no rule matches.
    pub fn generic_answer(&self) -> &str {
        &self.generic
    }

    /// The rule that answers a last user message of `text`: the first that matches,
    /// or `None` for the generic answer.
    pub fn rule_for(&self, text: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.is_match(text))
    }
}

impl Default for DegradeConfig {
    /// No rules: every degraded request gets the generic answer.
    fn default() -> Self {
        DegradeConfig::new([]).expect("no rules, no duplicates")
    }
}

impl fmt::Debug for DegradeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DegradeConfig")
            .field("rules", &self.rules)
            .field("generic", &self.generic)
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("replay_limit", &self.replay_limit)
            .field("error_body_limit", &self.error_body_limit)
            .finish_non_exhaustive()
    }
}

/// The position of the first rule whose name an earlier rule already has.
pub(crate) fn first_duplicate(rules: &[Rule]) -> Option<usize> {
    (1..rules.len()).find(|&i| rules[..i].iter().any(|r| r.name == rules[i].name))
}

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
