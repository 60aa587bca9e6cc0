//! The client stacks every pipeline is compared against.

use std::fmt;

use brownout_retry::{Retry, RetryConfig, RetryLayer};
use tower::Layer;

/// A shipped baseline stack, for [`Runner::run_baseline`](super::Runner::run_baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Baseline {
    /// One attempt per request: [`naive`].
    Naive,
    /// What most guides recommend: [`retry_only`].
    RetryOnly,
}

impl Baseline {
    /// Every baseline, in the order reports show them.
    pub const ALL: [Baseline; 2] = [Baseline::Naive, Baseline::RetryOnly];

    /// Its name in reports and on the command line (`"naive"`, `"retry-only"`).
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Naive => "naive",
            Baseline::RetryOnly => "retry-only",
        }
    }
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The naive client: each request sent once, straight to the upstream.
pub fn naive<S>(upstream: S) -> S {
    upstream
}

/// The retry-only client's settings: up to 6 attempts with exponential backoff and
/// full jitter (brownout-retry's default, 500 ms doubling to 8 s), server-given
/// delays honoured, no retry budget, no fallback; jitter seeded with `seed`.
pub fn retry_only_config(seed: u64) -> RetryConfig {
    RetryConfig::new().max_attempts(6).no_budget().seed(seed)
}

/// The retry-only client over `upstream`: [`retry_only_config`] in a
/// [`RetryLayer`].
pub fn retry_only<S>(upstream: S, seed: u64) -> Retry<S> {
    RetryLayer::new(retry_only_config(seed)).layer(upstream)
}
