//! The code behind the runnable examples, kept in a library so that the tests in
//! `examples/tests` exercise exactly what `cargo run -p examples --example NAME` runs.
//!
//! Every example talks to [`brownout_sim`], in process or on loopback: no network and
//! no API key are needed.

pub mod axum_app;
pub mod hyper_client;
pub mod reqwest_client;

use std::time::Duration;

use brownout::{
    breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, OpenDuration},
    fallback::{FallbackConfig, Target},
    retry::{Backoff, RetryConfig},
};
use brownout_sim::{Fault, Latency, ModelScript, Script};

/// The preferred model, overloaded in the examples' script.
pub const PRIMARY: &str = "claude-sonnet-4-5";
/// The lighter model, healthy in the examples' script.
pub const LIGHTER: &str = "claude-haiku-4-5";

/// A script where the preferred model answers every request with a 529
/// `overloaded_error` and the lighter one answers in 20 ms.
pub fn outage_script() -> Script {
    Script::new()
        .seed(11)
        .model(
            PRIMARY,
            ModelScript::new()
                .latency(Latency::fixed(Duration::from_millis(20)))
                .fault(Fault::overloaded()),
        )
        .model(
            LIGHTER,
            ModelScript::new().latency(Latency::fixed(Duration::from_millis(20))),
        )
}

/// A chat request body for `model`.
pub fn chat_body(model: &str, question: &str) -> bytes::Bytes {
    let body = serde_json::json!({
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": question}],
    });
    bytes::Bytes::from(body.to_string())
}

/// The breakers the examples use: open after 2 failures in a row, for 30 s.
pub fn breakers() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::consecutive(2).expect("2 is a valid streak"))
            .open_duration(OpenDuration::Fixed(Duration::from_secs(30))),
    )
}

/// The cascade the examples use: the preferred model, then the lighter one, skipping
/// any whose breaker is open.
pub fn cascade(breakers: &CircuitBreakerLayer) -> FallbackConfig {
    FallbackConfig::new([Target::new(PRIMARY), Target::new(LIGHTER)])
        .expect("two distinct targets")
        .health(breakers.handle())
        .served_header_default()
}

/// Retry as the examples use it: 3 attempts, short waits so the examples run quickly.
pub fn retry() -> RetryConfig {
    RetryConfig::new().max_attempts(3).backoff(
        Backoff::full_jitter(Duration::from_millis(50), Duration::from_millis(400))
            .expect("base below cap"),
    )
}

/// What one request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status the caller saw.
    pub status: u16,
    /// The model that answered, from `x-brownout-model`.
    pub model: Option<String>,
}
