//! brownout-sim: work in progress.
