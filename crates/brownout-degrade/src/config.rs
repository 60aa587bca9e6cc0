//! The degrade layer's answers and when it gives them.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    classify::Outcome,
    event::{Events, Listener},
};
use http::{HeaderValue, StatusCode};

use crate::{
    error::{duplicate, invalid, InRule, InvalidConfig},
    id::Ids,
    rules::{first_duplicate, Rule},
};

/// The answer given when no rule matches, unless [`generic`](DegradeConfig::generic)
/// sets another.
pub const DEFAULT_GENERIC_ANSWER: &str =
    "The assistant is briefly unavailable because of high demand. Please try again in a few minutes.";

/// The degrade layer's settings. Every setter takes and returns `self`.
///
/// | setting | default |
/// |---|---|
/// | rules | given to [`new`](Self::new) or read by [`from_toml_str`](Self::from_toml_str), first match wins |
/// | [`generic`](Self::generic) | [`DEFAULT_GENERIC_ANSWER`] |
/// | [`status`](Self::status) | 200 |
/// | [`retry_after`](Self::retry_after) | none |
/// | [`degrade_when`](Self::degrade_when) | [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable): rate limited, overloaded, server error, timeout, connection failure, refused by a layer |
/// | [`seed`](Self::seed) | random: answer ids differ between runs |
///
/// The id sequence is shared by everything built from one config and its clones.
///
/// Two settings are the stack's, not the layer's: how much of a request body is kept
/// is [`BodyLimits`](brownout_core::body::BodyLimits) (4 MiB by default), and what
/// counts as which failure is the stack's classifier
/// ([`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the HTTP client,
/// else [`DefaultClassifier`](brownout_core::classify::DefaultClassifier)).
#[derive(Clone)]
pub struct DegradeConfig {
    pub(crate) rules: Arc<[Rule]>,
    pub(crate) generic: Arc<str>,
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) retry_after_header: Option<HeaderValue>,
    pub(crate) degrade_when: Arc<dyn Fn(&Outcome) -> bool + Send + Sync>,
    pub(crate) events: Events,
    pub(crate) ids: Ids,
}

impl DegradeConfig {
    /// Answers with the first of `rules` whose pattern matches the last user message,
    /// else with the generic answer. Fails when two rules have the same name.
    pub fn new(rules: impl IntoIterator<Item = Rule>) -> Result<Self, InvalidConfig> {
        let rules: Vec<Rule> = rules.into_iter().collect();
        if let Some(i) = first_duplicate(&rules) {
            return Err(duplicate(&rules[i].name).in_rule(i + 1, &rules[i].name));
        }
        Ok(DegradeConfig {
            rules: rules.into(),
            generic: DEFAULT_GENERIC_ANSWER.into(),
            status: StatusCode::OK,
            retry_after: None,
            retry_after_header: None,
            degrade_when: Arc::new(|outcome: &Outcome| outcome.kind().is_unavailable()),
            events: Events::new(),
            ids: Ids::new(),
        })
    }

    /// The answer when no rule matches (or the request's text cannot be read). Fails
    /// when it is empty.
    pub fn generic(mut self, answer: impl Into<Arc<str>>) -> Result<Self, InvalidConfig> {
        let answer = answer.into();
        if answer.trim().is_empty() {
            return Err(invalid("generic", "the answer is empty"));
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
            return Err(invalid(
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

    /// Which failures get a degraded answer; by default those for which
    /// [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable) holds.
    /// Never asked about successes, which always pass through, nor about the caller's
    /// own broken or invalid request (a [`BrokenBody`](brownout_core::error::BrokenBody)
    /// or [`InvalidRequest`](brownout_core::error::InvalidRequest)), which is never
    /// answered with a canned reply. Other client errors should not be degraded
    /// either: the caller needs to know that its request is wrong.
    pub fn degrade_when(mut self, when: impl Fn(&Outcome) -> bool + Send + Sync + 'static) -> Self {
        self.degrade_when = Arc::new(when);
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
            .finish_non_exhaustive()
    }
}
