//! `[state]`: the state the replicas of a deployment share through Redis, off unless
//! the section names a `redis_url`.
//!
//! ```toml
//! [state]
//! redis_url = "redis://127.0.0.1:6379"  # redis://[user:password@]host:port[/db]
//! deployment = "prod"                   # every key under brownout:prod:  ("default")
//! timeout = "100ms"                     # every Redis call; past it, local state
//! poll_interval = "500ms"               # how often shared state is read back / Redis pinged
//! limits = "fail-open"                  # the rate limits when Redis is away: "fail-closed" refuses
//! ```
//!
//! With it, the circuit breakers (`brownout::redis::RedisBreakerStore`), the
//! response cache (`RedisCacheStore`), the retry budget (`RedisRetryBudget`) and the
//! rate limits of `[limits]` (`RedisLimitStore`) keep their state in Redis, each with
//! a local view in front; without it every layer's state stays in the process,
//! exactly as before. Redis away or slow is never an outage: each store goes on with
//! its local state (the rate limits as `limits` says) and logs `shared_state_lost`,
//! then `shared_state_resumed`.

use std::time::Duration;

use brownout::redis::RedisConfig;
use serde::Deserialize;
use toml::Spanned;

use super::{Check, Positive};
use crate::config::ConfigError;

/// `[state]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawState {
    #[serde(default = "super::yes")]
    enabled: bool,
    redis_url: Option<Spanned<String>>,
    deployment: Option<Spanned<String>>,
    timeout: Option<Positive>,
    poll_interval: Option<Positive>,
    limits: Option<OnRedisError>,
}

/// What the rate limits do while Redis is away (`[state] limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRedisError {
    /// Admit on the local buckets alone (the default): the fleet may exceed the
    /// provider's limits N-fold for as long as Redis is away.
    #[default]
    FailOpen,
    /// Refuse what the shared buckets cannot confirm.
    FailClosed,
}

/// The shared state of `[state]`: where Redis is, and the deployment's name.
#[derive(Clone)]
pub struct SharedState {
    pub(crate) redis: RedisConfig,
    pub(crate) deployment: String,
    pub(crate) limits: OnRedisError,
}

impl SharedState {
    /// How the stores reach Redis (the URL's password is never printed).
    pub fn redis(&self) -> &RedisConfig {
        &self.redis
    }

    /// The deployment: every key lives under `brownout:{deployment}:`.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// What the rate limits do while Redis is away (`[state] limits`), for the rate
    /// limiter's shared store.
    pub fn limits(&self) -> OnRedisError {
        self.limits
    }
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // RedisConfig's Debug shows the address only, never the password.
        f.debug_struct("SharedState")
            .field("redis", &self.redis)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The default `[state] deployment`.
pub(in crate::config) const DEFAULT_DEPLOYMENT: &str = "default";

impl Check<'_> {
    pub(in crate::config) fn state(
        &self,
        raw: Option<&Spanned<RawState>>,
    ) -> Result<Option<SharedState>, ConfigError> {
        let Some(spanned) = raw else {
            return Ok(None);
        };
        let raw = spanned.get_ref();
        if !raw.enabled {
            return Ok(None);
        }
        let Some(url) = &raw.redis_url else {
            return Err(ConfigError::at(
                "state.redis_url",
                "[state] needs a redis_url such as \"redis://127.0.0.1:6379\" (or enabled = false)",
                self.text,
                None,
            ));
        };
        let deployment = raw
            .deployment
            .as_ref()
            .map_or(DEFAULT_DEPLOYMENT, |d| d.get_ref().as_str());
        let valid = url.get_ref().starts_with("redis://") || url.get_ref().starts_with("rediss://");
        let redis = match RedisConfig::new(url.get_ref(), deployment) {
            Ok(redis) if valid => redis,
            Err(e) if e.key() == "deployment" => {
                let span = raw
                    .deployment
                    .as_ref()
                    .map_or(spanned.span(), Spanned::span);
                return Err(self.error(
                    "state.deployment",
                    span,
                    "must be 1 to 64 letters, digits, '.', '_' or '-'",
                ));
            }
            // Neither the URL nor its line is quoted back: it may carry a password.
            _ => {
                return Err(ConfigError::at(
                    "state.redis_url",
                    "not a Redis URL: write redis://[user:password@]host:port[/db]",
                    self.text,
                    None,
                ))
            }
        };
        let mut redis = redis;
        if let Some(Positive(timeout)) = raw.timeout {
            if timeout > Duration::from_secs(5) {
                return Err(ConfigError::at(
                    "state.timeout",
                    "must be at most 5s: a Redis call waits at most this before the gateway goes on with local state",
                    self.text,
                    None,
                ));
            }
            redis = redis.timeout(timeout);
        }
        if let Some(Positive(poll)) = raw.poll_interval {
            redis = redis.poll_interval(poll);
        }
        Ok(Some(SharedState {
            redis,
            deployment: deployment.to_owned(),
            limits: raw.limits.unwrap_or_default(),
        }))
    }
}
