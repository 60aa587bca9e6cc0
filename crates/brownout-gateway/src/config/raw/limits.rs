//! `[limits]`: client-side rate limits per provider and model (brownout-limit), off
//! unless the section has a `[[limits.model]]` entry.
//!
//! ```toml
//! [limits]
//! max_wait = "30s"            # a request waits for room up to this (or its deadline), else 429
//! default_max_tokens = 4096   # output tokens reserved for a request that names no max_tokens
//! on_limit = "respond"        # 429 rate_limit_error in the provider's shape, or "error"
//! estimate = { bytes_per_token = 3.5, margin = 0.03 }   # Claude's input token estimate
//!
//! [[limits.model]]
//! provider = "anthropic"      # optional: every provider when left out
//! model = "claude-sonnet-4-5" # or a prefix: "claude-sonnet-4*"; "*" for every model
//! requests_per_minute = 50
//! input_tokens_per_minute = 30000
//! output_tokens_per_minute = 8000
//! # tokens_per_minute = 30000 # input and output together (OpenAI's TPM)
//! ```
//!
//! Each provider with an entry gets its own limiter, holding that provider's entries
//! (and those without a `provider`) in the file's order: the first entry whose model
//! matches gives a request its limits. An entry with no number only learns the
//! limits the provider's headers announce. Requests to a provider without an entry
//! are not limited.

use std::time::Duration;

use brownout::limit::{EstimateConfig, Limits, OnLimit, RateLimitConfig, RateLimitLayer};
use serde::Deserialize;
use toml::Spanned;

use super::{Check, Dur, NonZero, Positive, RawFallback, RawRetry};
use crate::config::{ConfigError, Provider};

/// `[limits]` as written. `replay_limit` and `body_idle_timeout` are the body settings
/// the table held before they moved to `[body]`: read only to be refused with their
/// new key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawLimits {
    pub(in crate::config) replay_limit: Option<Spanned<toml::Value>>,
    pub(in crate::config) body_idle_timeout: Option<Spanned<toml::Value>>,
    #[serde(default = "super::yes")]
    enabled: bool,
    max_wait: Option<Dur>,
    default_max_tokens: Option<NonZero>,
    on_limit: Option<OnLimitValue>,
    estimate: Option<RawEstimate>,
    #[serde(default)]
    model: Vec<Spanned<RawModelLimits>>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            replay_limit: None,
            body_idle_timeout: None,
            enabled: true,
            max_wait: None,
            default_max_tokens: None,
            on_limit: None,
            estimate: None,
            model: Vec::new(),
        }
    }
}

impl RawLimits {
    /// Whether the file wrote a rate-limit setting (not only a moved body key).
    pub(in crate::config) fn is_set(&self) -> bool {
        !self.enabled
            || self.max_wait.is_some()
            || self.default_max_tokens.is_some()
            || self.on_limit.is_some()
            || self.estimate.is_some()
            || !self.model.is_empty()
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum OnLimitValue {
    Respond,
    Error,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEstimate {
    bytes_per_token: Option<Spanned<f64>>,
    margin: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelLimits {
    provider: Option<Spanned<String>>,
    model: Spanned<String>,
    requests_per_minute: Option<NonZero>,
    input_tokens_per_minute: Option<NonZero>,
    output_tokens_per_minute: Option<NonZero>,
    tokens_per_minute: Option<NonZero>,
}

/// One `[[limits.model]]` entry, checked: for `check` to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitEntry {
    /// The provider it applies to; `None`: every provider.
    pub provider: Option<String>,
    /// The model, or a prefix ending in `*`.
    pub model: String,
    /// The per-minute limits (any subset).
    pub limits: Limits,
}

impl std::fmt::Display for LimitEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use brownout::limit::Resource;
        write!(
            f,
            "{} {}:",
            self.provider.as_deref().unwrap_or("every provider"),
            self.model
        )?;
        let mut any = false;
        for (resource, name) in [
            (Resource::Requests, "requests"),
            (Resource::InputTokens, "input tokens"),
            (Resource::OutputTokens, "output tokens"),
            (Resource::Tokens, "tokens"),
        ] {
            if let Some(n) = self.limits.get(resource) {
                write!(f, "{} {n} {name}", if any { "," } else { "" })?;
                any = true;
            }
        }
        if any {
            f.write_str(" a minute")
        } else {
            f.write_str(" learned from the provider's headers")
        }
    }
}

/// The `[limits]` section, checked: a rate limiter's settings per provider, and the
/// deadline a request has in the gateway (the shorter of `retry.deadline` and
/// `fallback.deadline`), which bounds a wait for room too.
///
/// What a caller gets when there is no room in time: with `on_limit = "respond"` (the
/// default) the limiter's `429` `rate_limit_error` in the provider's shape, with
/// `retry-after` and `x-should-retry: true`, as the provider would answer: the
/// gateway has not retried it, and an SDK coming back after `retry-after` finds room.
/// When the gateway did retry or fall back on it, the router's rule makes it
/// `x-should-retry: false`, as for every answer it handled. The retry layer sleeps a
/// limiter's `retry-after` up to `retry.max_server_delay` (60 s by default) and tries
/// again, so the longest wait is `max_wait` plus that; a cascade moves to its next
/// model, and a stale-if-error cache may answer in its place. A request larger than a
/// whole minute's limit is `429` at once with `x-should-retry: false` and is never
/// sent. With `on_limit = "error"` every refusal is the gateway's own final answer: the
/// same `429` shape, with `retry-after` when room will come, and `x-should-retry:
/// false` (unless `[headers] should_retry = false`).
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub(crate) providers: Vec<(usize, RateLimitConfig)>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) entries: Vec<LimitEntry>,
    pub(crate) on_limit: OnLimit,
}

impl RateLimits {
    /// The entries, in the file's order.
    pub fn entries(&self) -> &[LimitEntry] {
        &self.entries
    }

    /// What a refused request gets (`on_limit`).
    pub fn on_limit(&self) -> OnLimit {
        self.on_limit
    }

    /// The deadline a request has in the gateway, if any: no wait for room lasts
    /// past it.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

impl Check<'_> {
    /// `[limits]`, checked against the providers; `None` when it is off.
    pub(super) fn rate_limits(
        &self,
        raw: &RawLimits,
        providers: &[Provider],
        retry: Option<&RawRetry>,
        fallback: Option<&RawFallback>,
    ) -> Result<Option<RateLimits>, ConfigError> {
        if !raw.enabled {
            return Ok(None);
        }
        if raw.model.is_empty() {
            if raw.is_set() {
                return Err(ConfigError::at(
                    "limits.model",
                    "[limits] has no [[limits.model]] entry, so it limits nothing: add one with a model and its requests_per_minute, input_tokens_per_minute, output_tokens_per_minute or tokens_per_minute (or enabled = false)",
                    self.text,
                    None,
                ));
            }
            return Ok(None);
        }
        let mut base = RateLimitConfig::new();
        if let Some(Dur(d)) = raw.max_wait {
            base = base.max_wait(d);
        }
        if let Some(n) = raw.default_max_tokens {
            base = base.default_max_tokens(n.0);
        }
        let on_limit = match raw.on_limit {
            Some(OnLimitValue::Error) => OnLimit::Error,
            Some(OnLimitValue::Respond) | None => OnLimit::Respond,
        };
        base = base.on_limit(on_limit);
        let mut estimate = EstimateConfig::new();
        if let Some(e) = &raw.estimate {
            if let Some(b) = &e.bytes_per_token {
                estimate = estimate.bytes_per_token(*b.get_ref());
            }
            if let Some(m) = &e.margin {
                estimate = estimate.margin(*m.get_ref());
            }
        }
        base = base.estimate(estimate);
        // The crate's own check of the shared settings, pointed at the key it names.
        RateLimitLayer::new(base.clone()).map_err(|e| {
            let span = match e.key() {
                "estimate.bytes_per_token" => raw
                    .estimate
                    .as_ref()
                    .and_then(|e| e.bytes_per_token.as_ref())
                    .map(Spanned::span),
                "estimate.margin" => raw
                    .estimate
                    .as_ref()
                    .and_then(|e| e.margin.as_ref())
                    .map(Spanned::span),
                _ => None,
            };
            ConfigError::at(
                format!("limits.{}", e.key()),
                e.reason().to_owned(),
                self.text,
                span,
            )
        })?;

        let mut entries = Vec::with_capacity(raw.model.len());
        let mut scoped: Vec<(Option<usize>, String, Limits)> = Vec::new();
        for (i, spanned) in raw.model.iter().enumerate() {
            let m = spanned.get_ref();
            let key = |field: &str| format!("limits.model[{i}].{field}");
            let model = m.model.get_ref().trim();
            if model.is_empty() {
                return Err(self.error(key("model"), m.model.span(), "names no model"));
            }
            if model.trim_end_matches('*').contains('*') {
                return Err(self.error(
                    key("model"),
                    m.model.span(),
                    format!("`{model}`: only a trailing `*` (a prefix) is understood"),
                ));
            }
            let provider = match &m.provider {
                Some(name) => Some(self.provider_index(name, &key("provider"), providers)?),
                None => None,
            };
            if scoped
                .iter()
                .any(|(p, name, _)| *p == provider && name == model)
            {
                return Err(self.error(
                    key("model"),
                    m.model.span(),
                    format!("an earlier entry already limits `{model}` for this provider"),
                ));
            }
            let mut limits = Limits::new();
            if let Some(n) = m.requests_per_minute {
                limits = limits.requests_per_minute(n.0);
            }
            if let Some(n) = m.input_tokens_per_minute {
                limits = limits.input_tokens_per_minute(n.0);
            }
            if let Some(n) = m.output_tokens_per_minute {
                limits = limits.output_tokens_per_minute(n.0);
            }
            if let Some(n) = m.tokens_per_minute {
                limits = limits.tokens_per_minute(n.0);
            }
            entries.push(LimitEntry {
                provider: provider.map(|p| providers[p].name.clone()),
                model: model.to_owned(),
                limits,
            });
            scoped.push((provider, model.to_owned(), limits));
        }

        // One limiter per provider with an entry: its own entries and the shared ones,
        // in the file's order.
        let mut per_provider = Vec::new();
        for p in 0..providers.len() {
            let mine: Vec<&(Option<usize>, String, Limits)> = scoped
                .iter()
                .filter(|(scope, _, _)| scope.is_none_or(|s| s == p))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let config = mine
                .iter()
                .fold(base.clone(), |config, (_, model, limits)| {
                    config.model(model.as_str(), *limits)
                });
            per_provider.push((p, config));
        }
        let deadline = [
            retry.and_then(|r| r.deadline).map(|Positive(d)| d),
            fallback.and_then(|f| f.deadline).map(|Positive(d)| d),
        ]
        .into_iter()
        .flatten()
        .min();
        Ok(Some(RateLimits {
            providers: per_provider,
            deadline,
            entries,
            on_limit,
        }))
    }
}
