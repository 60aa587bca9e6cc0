//! `[observe]`: what the gateway shows of itself, off unless the section is there.
//!
//! ```toml
//! [observe]
//! metrics = true              # GET /metrics, Prometheus text
//! status = true               # GET /brownout/status (HTML) and /brownout/status.json
//! ```
//!
//! The section is one struct so that further keys (an availability log, alert rules)
//! join it; an unknown key is refused by name.

use serde::Deserialize;

/// `[observe]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawObserve {
    #[serde(default = "super::yes")]
    pub(in crate::config) metrics: bool,
    #[serde(default = "super::yes")]
    pub(in crate::config) status: bool,
}

impl RawObserve {
    /// The settings the gateway runs with.
    pub(in crate::config) fn config(&self) -> crate::config::Observe {
        crate::config::Observe {
            metrics: self.metrics,
            status: self.status,
        }
    }
}
