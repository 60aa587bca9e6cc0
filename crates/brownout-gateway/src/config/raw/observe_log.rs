//! `[observe]`: the SQLite availability log and the alert rules; see [`ObserveLog`].

use std::{path::PathBuf, sync::Arc, time::Duration};

use brownout::observe::{
    alert::{AlertConfig, AlertRule, Condition},
    SqliteConfig,
};
use http::Uri;
use serde::Deserialize;
use toml::Spanned;

use super::{Check, NonZero, Positive};
use crate::config::ConfigError;

/// `[observe]` as written: the keys of the availability log and the alerts.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawObserveLog {
    /// `GET /metrics`, Prometheus text.
    #[serde(default)]
    metrics: bool,
    /// `GET /brownout/status` and `/brownout/status.json`.
    #[serde(default)]
    status: bool,
    sqlite: Option<Spanned<String>>,
    retain_for: Option<Positive>,
    retain_rows: Option<NonZero>,
    log_buffer: Option<NonZero>,
    webhook_timeout: Option<Positive>,
    webhook_retries: Option<u32>,
    command_timeout: Option<Positive>,
    #[serde(default, rename = "alert")]
    alerts: Vec<Spanned<RawAlert>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum When {
    ConsecutiveFailures,
    AvailabilityBelow,
    BreakerOpen,
    DegradedAbove,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    name: Spanned<String>,
    when: When,
    count: Option<Spanned<NonZero>>,
    percent: Option<Spanned<f64>>,
    window: Option<Spanned<Positive>>,
    min_requests: Option<Spanned<NonZero>>,
    cooldown: Option<super::Dur>,
    webhook: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
}

/// `[observe]`, checked: the SQLite availability log and the alert rules
/// (brownout-observe), each off when the file has none.
///
/// ```toml
/// [observe]
/// sqlite = "brownout.db"      # every attempt and every answer; relative to this file
/// retain_for = "168h"         # rows older than this are deleted (default 7 days)
/// retain_rows = 10000000      # and the oldest beyond this many (default 10 million)
/// log_buffer = 65536          # records waiting for the writer; beyond, dropped and counted
/// webhook_timeout = "5s"      # per try of an alert webhook
/// webhook_retries = 3         # more tries after a 5xx, 408, 429, timeout or connection error
/// command_timeout = "10s"     # an alert command still running then is killed
///
/// [[observe.alert]]
/// name = "sonnet-failing"
/// when = "consecutive_failures"   # upstream calls to one model that failed in a row
/// count = 5
/// cooldown = "10m"            # at most one notice per rule and model within this (default 10m)
/// webhook = "https://hooks.example.com/brownout"   # POST of the notice as JSON
/// command = ["/usr/local/bin/page-oncall", "--team", "llm"]   # the JSON on stdin, BROWNOUT_ALERT_* env
///
/// [[observe.alert]]
/// name = "availability"
/// when = "availability_below" # or "degraded_above": percent, window and min_requests
/// percent = 95
/// window = "5m"
/// min_requests = 20
///
/// [[observe.alert]]
/// name = "breaker"
/// when = "breaker_open"       # a circuit breaker opened; resolved when it closes
/// ```
///
/// The log is off unless `sqlite` is set; the alerts are off unless a rule is there.
/// A rule sends to its `webhook` and/or runs its `command`; with neither it is only
/// listed (the status page's recent alerts). A webhook may be `https://` (brownout's
/// HTTPS client) or `http://`; it is never logged, as such URLs often hold a token.
#[derive(Debug, Clone, Default)]
pub struct ObserveLog {
    pub(crate) sqlite: Option<SqliteConfig>,
    pub(crate) alerts: Option<AlertConfig>,
}

impl RawObserveLog {
    /// The pages `[observe]` serves, and whether it logs or alerts (then the pipeline
    /// records every request for them).
    pub(in crate::config) fn pages(&self) -> crate::config::Observe {
        crate::config::Observe {
            metrics: self.metrics,
            status: self.status,
            log: self.sqlite.is_some() || !self.alerts.is_empty(),
        }
    }
}

impl ObserveLog {
    /// The SQLite availability log's settings (`sqlite = "…"`), when it is on.
    pub fn sqlite(&self) -> Option<&SqliteConfig> {
        self.sqlite.as_ref()
    }

    /// The alert rules (`[[observe.alert]]`), when there is one.
    pub fn alerts(&self) -> Option<&AlertConfig> {
        self.alerts.as_ref()
    }
}

impl Check<'_> {
    /// `[observe]`'s log and alert keys, checked.
    pub(super) fn observe_log(&self, raw: &RawObserveLog) -> Result<ObserveLog, ConfigError> {
        let sqlite = match &raw.sqlite {
            None => {
                for (key, set) in [
                    ("retain_for", raw.retain_for.is_some()),
                    ("retain_rows", raw.retain_rows.is_some()),
                    ("log_buffer", raw.log_buffer.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::at(
                            format!("observe.{key}"),
                            format!("observe.{key} is a setting of the SQLite log: set observe.sqlite = \"brownout.db\" too, or remove it"),
                            self.text,
                            None,
                        ));
                    }
                }
                None
            }
            Some(file) => {
                if file.get_ref().trim().is_empty() {
                    return Err(self.error(
                        "observe.sqlite",
                        file.span(),
                        "needs a file name, such as \"brownout.db\"",
                    ));
                }
                let path = match self.dir {
                    Some(dir) => dir.join(file.get_ref()),
                    None => PathBuf::from(file.get_ref()),
                };
                let mut config = SqliteConfig::new(path);
                if let Some(age) = raw.retain_for {
                    config = config.max_age(Some(age.0));
                }
                if let Some(rows) = raw.retain_rows {
                    config = config.max_rows(Some(rows.0));
                }
                if let Some(buffer) = raw.log_buffer {
                    config = config.buffer(buffer.usize());
                }
                Some(config)
            }
        };
        let mut rules = Vec::with_capacity(raw.alerts.len());
        let mut names = std::collections::HashSet::new();
        for (i, spanned) in raw.alerts.iter().enumerate() {
            let rule = self.alert_rule(i, spanned)?;
            if !names.insert(rule.name().to_owned()) {
                let name = &spanned.get_ref().name;
                return Err(self.error(
                    format!("observe.alert[{i}].name"),
                    name.span(),
                    format!("`{}` is the name of an earlier rule", name.get_ref()),
                ));
            }
            rules.push(rule);
        }
        let alerts = (!rules.is_empty()).then(|| {
            let mut config = AlertConfig::new(rules);
            if let Some(timeout) = raw.webhook_timeout {
                config = config.webhook_timeout(timeout.0);
            }
            if let Some(retries) = raw.webhook_retries {
                config = config.retries(retries);
            }
            if let Some(timeout) = raw.command_timeout {
                config = config.command_timeout(timeout.0);
            }
            config
        });
        Ok(ObserveLog { sqlite, alerts })
    }

    fn alert_rule(&self, i: usize, spanned: &Spanned<RawAlert>) -> Result<AlertRule, ConfigError> {
        let raw = spanned.get_ref();
        let key = |field: &str| format!("observe.alert[{i}].{field}");
        let whole = spanned.span();
        let when_name = match raw.when {
            When::ConsecutiveFailures => "consecutive_failures",
            When::AvailabilityBelow => "availability_below",
            When::BreakerOpen => "breaker_open",
            When::DegradedAbove => "degraded_above",
        };
        // Each condition's own keys: a missing one is named, one of another condition refused.
        let needs: &[&str] = match raw.when {
            When::ConsecutiveFailures => &["count"],
            When::AvailabilityBelow | When::DegradedAbove => &["percent", "window", "min_requests"],
            When::BreakerOpen => &[],
        };
        let present = [
            ("count", raw.count.as_ref().map(Spanned::span)),
            ("percent", raw.percent.as_ref().map(Spanned::span)),
            ("window", raw.window.as_ref().map(Spanned::span)),
            ("min_requests", raw.min_requests.as_ref().map(Spanned::span)),
        ];
        for (field, span) in &present {
            match (needs.contains(field), span) {
                (true, None) => {
                    return Err(self.error(
                        key(field),
                        whole.clone(),
                        format!("when = \"{when_name}\" needs {}", needs.join(", ")),
                    ))
                }
                (false, Some(span)) => {
                    return Err(self.error(
                        key(field),
                        span.clone(),
                        format!(
                            "{field} is not a setting of when = \"{when_name}\" (it takes {})",
                            if needs.is_empty() {
                                "none".into()
                            } else {
                                needs.join(", ")
                            }
                        ),
                    ))
                }
                _ => {}
            }
        }
        let window = || {
            raw.window
                .as_ref()
                .map_or(Duration::ZERO, |w| w.get_ref().0)
        };
        let min_requests = || raw.min_requests.as_ref().map_or(1, |n| n.get_ref().0);
        let percent = || raw.percent.as_ref().map_or(0.0, |p| *p.get_ref());
        let condition = match raw.when {
            When::ConsecutiveFailures => Condition::ConsecutiveFailures {
                count: raw.count.as_ref().map_or(1, |n| n.get_ref().u32()),
            },
            When::AvailabilityBelow => Condition::AvailabilityBelow {
                percent: percent(),
                window: window(),
                min_requests: min_requests(),
            },
            When::BreakerOpen => Condition::BreakerOpen,
            When::DegradedAbove => Condition::DegradedAbove {
                percent: percent(),
                window: window(),
                min_requests: min_requests(),
            },
        };
        let mut rule = AlertRule::new(Arc::<str>::from(raw.name.get_ref().as_str()), condition)
            .map_err(|e| {
                let span = match e.key() {
                    "name" => raw.name.span(),
                    "percent" => raw.percent.as_ref().map_or(whole.clone(), Spanned::span),
                    _ => whole.clone(),
                };
                self.error(key(e.key()), span, e.reason())
            })?;
        if let Some(cooldown) = raw.cooldown {
            rule = rule.cooldown(cooldown.0);
        }
        if let Some(url) = &raw.webhook {
            rule = rule.webhook(self.webhook(url, &key("webhook"))?);
        }
        if let Some(command) = &raw.command {
            if command
                .get_ref()
                .first()
                .is_none_or(|p| p.trim().is_empty())
            {
                return Err(self.error(
                    key("command"),
                    command.span(),
                    "needs a program and its arguments, such as [\"/usr/local/bin/page-oncall\", \"--team\", \"llm\"]",
                ));
            }
            rule = rule.command(command.get_ref().iter().cloned());
        }
        Ok(rule)
    }

    /// A webhook URL: http or https with a host. Its text is never repeated: such URLs
    /// often carry a token.
    fn webhook(&self, raw: &Spanned<String>, key: &str) -> Result<Uri, ConfigError> {
        let fail = |message: &str| self.error(key, raw.span(), message).without_source_line();
        let uri: Uri = raw
            .get_ref()
            .trim()
            .parse()
            .map_err(|_| fail("is not a URL such as \"https://hooks.example.com/brownout\""))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(fail("needs the scheme https:// or http://"));
        }
        match uri.authority() {
            None => Err(fail("needs a host")),
            Some(authority) if authority.as_str().contains('@') => Err(fail(
                "holds a user name or password: put a token in the path or query instead",
            )),
            Some(_) => Ok(uri),
        }
    }
}
