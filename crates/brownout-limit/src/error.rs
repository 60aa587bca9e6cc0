//! The layer's refusals.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::error::Rejected;

use crate::Resource;

/// The request would exceed a limit for longer than it may wait: it was not sent.
///
/// Its [`source`](std::error::Error::source) is a [`Rejected`], so the default
/// classifier reads it as [`Rejected`](brownout_core::OutcomeKind::Rejected) with
/// [`retry_after`](Self::retry_after) as the server-given delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    key: Arc<str>,
    resource: Option<Resource>,
    rejected: Rejected,
}

impl RateLimited {
    /// `key` has room for the request only after `retry_after`; `resource` is the
    /// limit that binds (`None` while the key is paused by a provider's 429).
    pub fn new(key: Arc<str>, resource: Option<Resource>, retry_after: Duration) -> Self {
        RateLimited {
            key,
            resource,
            rejected: Rejected::new(Some(retry_after)),
        }
    }

    /// The key (model and credential fingerprint, or yours).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The limit that binds, when one does (else the key is paused).
    pub fn resource(&self) -> Option<Resource> {
        self.resource
    }

    /// When the key has room for the request.
    pub fn retry_after(&self) -> Duration {
        self.rejected.retry_after().unwrap_or_default()
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.resource {
            Some(r) => write!(f, "rate limit of {r} per minute reached for {}", self.key)?,
            None => write!(f, "rate limited by the provider for {}", self.key)?,
        }
        write!(f, "; retry after {:.3}s", self.retry_after().as_secs_f64())
    }
}

impl std::error::Error for RateLimited {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}

/// The request needs more than a whole minute's limit: it can never be sent under
/// this limit, and is refused at once. The caller's error (it is not retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyTokens {
    key: Arc<str>,
    resource: Resource,
    need: u64,
    limit: u64,
}

impl TooManyTokens {
    /// The request needs `need` of `resource`, whose limit is `limit` a minute.
    pub fn new(key: Arc<str>, resource: Resource, need: u64, limit: u64) -> Self {
        TooManyTokens {
            key,
            resource,
            need,
            limit,
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The limit it is over.
    pub fn resource(&self) -> Resource {
        self.resource
    }

    /// What the request needs.
    pub fn need(&self) -> u64 {
        self.need
    }

    /// The limit per minute.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl fmt::Display for TooManyTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request needs {} {}, more than the limit of {} per minute for {}: lower max_tokens or shorten the prompt",
            self.need, self.resource, self.limit, self.key
        )
    }
}

impl std::error::Error for TooManyTokens {}
