//! brownout-breaker: work in progress.
