//! The code behind the runnable examples, kept in a library so that the tests in
//! `examples/tests` exercise exactly what `cargo run -p examples --example NAME` runs.
//!
//! Every example talks to [`brownout_sim`], in process or on loopback (over TLS, with
//! a CA made at run time: [`tls_sim`]): no network and no API key are needed. Those
//! over TLS reach the real provider by changing only the URL: run them with
//! `ANTHROPIC_BASE_URL=https://api.anthropic.com` and `ANTHROPIC_API_KEY` set.

pub mod axum_app;
pub mod hyper_client;
pub mod middleware_client;
pub mod reqwest_client;

use std::time::Duration;

use brownout::{
    breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, OpenDuration},
    fallback::{FallbackConfig, Target},
    retry::{Backoff, RetryConfig},
};
use brownout_sim::{Fault, Latency, ModelScript, Script, Sim, SimServer, SimServerHandle, SimTls};

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

impl Answer {
    /// What `response` says: its status and `x-brownout-model`.
    pub fn of<B>(response: &http::Response<B>) -> Answer {
        Answer {
            status: response.status().as_u16(),
            model: response
                .headers()
                .get("x-brownout-model")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// The simulator with `script`, served over TLS (HTTP/2 by ALPN) on a loopback port,
/// and the PEM of the CA made now that signed its certificate.
pub async fn tls_sim(script: Script) -> std::io::Result<(SimServerHandle, String)> {
    let tls = SimTls::self_signed()?;
    let ca = tls.ca_pem().unwrap_or_default().to_owned();
    let server = SimServer::bind("127.0.0.1:0", Sim::new(script))
        .await?
        .tls(tls);
    Ok((server.spawn()?, ca))
}

/// Where the examples send: `ANTHROPIC_BASE_URL` and no extra CA when it is set (a
/// real provider), else [`tls_sim`] with the outage script and its CA. The handle
/// keeps the simulator running.
pub async fn target() -> std::io::Result<(String, Option<String>, Option<SimServerHandle>)> {
    match std::env::var("ANTHROPIC_BASE_URL") {
        Ok(url) => Ok((url.trim_end_matches('/').to_owned(), None, None)),
        Err(_) => {
            let (server, ca) = tls_sim(outage_script()).await?;
            Ok((server.url(), Some(ca), Some(server)))
        }
    }
}
