//! The degrade layer's event, and the mark it leaves on the answers it serves.

use std::{fmt, sync::Arc};

use brownout_core::{
    classify::Outcome,
    event::{EventData, Value},
};

/// What a degrade layer decided: the data of the [`Event`](brownout_core::event::Event)s
/// the degrade layer emits, with layer `"degrade"`.
///
/// ```
/// use brownout_core::event::Event;
/// use brownout_degrade::DegradeEvent;
///
/// fn rule(event: &Event) -> Option<&str> {
///     match event.data::<DegradeEvent>()? {
///         DegradeEvent::Degraded { rule, .. } => rule.as_deref(),
///         _ => None,
///     }
/// }
/// # let _ = rule;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DegradeEvent {
    /// A canned answer was served because nothing live could answer.
    Degraded {
        /// The name of the rule that matched; `None` for the generic answer.
        rule: Option<Arc<str>>,
        /// What the live path did, when it answered with an outcome.
        outcome: Option<Outcome>,
    },
}

impl fmt::Display for DegradeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DegradeEvent::Degraded { .. } => f.write_str("served a degraded answer"),
        }
    }
}

impl EventData for DegradeEvent {
    fn name(&self) -> &'static str {
        match self {
            DegradeEvent::Degraded { .. } => "degraded",
        }
    }

    /// `INFO`: a caller got a canned answer (the answer counts say how many).
    fn level(&self) -> tracing::Level {
        // The caller got an answer; the status page and metrics count them.
        tracing::Level::INFO
    }

    fn outcome(&self) -> Option<&Outcome> {
        match self {
            DegradeEvent::Degraded { outcome, .. } => outcome.as_ref(),
        }
    }

    fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        match self {
            DegradeEvent::Degraded { rule, .. } => {
                if let Some(rule) = rule {
                    field("rule", Value::Str(rule));
                }
            }
        }
    }
}

/// The response is a canned answer, not the upstream's. Inserted by the degrade layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Degraded {
    rule: Option<Arc<str>>,
}

impl Degraded {
    /// A canned answer from the rule named `rule`, or the generic answer.
    pub fn new(rule: Option<Arc<str>>) -> Self {
        Degraded { rule }
    }

    /// The name of the rule that matched; `None` for the generic answer.
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use brownout_core::event::Event;

    use super::*;

    #[test]
    fn a_degraded_answer_logs_its_rule() {
        let event = Event::detached(
            "degrade",
            DegradeEvent::Degraded {
                rule: Some("refunds".into()),
                outcome: None,
            },
        );
        assert_eq!(event.name(), "degraded");
        assert_eq!(event.kind().level(), tracing::Level::INFO);
        assert_eq!(event.fields_text(), "rule=refunds");
        assert_eq!(event.kind().to_string(), "served a degraded answer");
        let generic = Event::detached(
            "degrade",
            DegradeEvent::Degraded {
                rule: None,
                outcome: None,
            },
        );
        assert_eq!(generic.fields_text(), "");
    }
}
