//! What the gateway logs, over loopback with brownout-sim as the upstream.
//!
//! Alone in its test binary, with a global subscriber: `tracing` caches which
//! subscribers want each log line, and a subscriber set per thread while other tests
//! log in parallel threads can miss lines (the test failed now and then that way).

mod common;

use std::time::Duration;

use brownout_sim::{Fault, Latency, ModelScript, Script};
use common::{anthropic, client, header, json, Setup};

fn healthy() -> Script {
    let quick = || ModelScript::new().latency(Latency::fixed(Duration::from_millis(5)));
    Script::new()
        .seed(3)
        .model("claude-sonnet-4-5", quick())
        .model("claude-haiku-4-5", quick())
        .model("gpt-4.1", quick())
        .model("gpt-4.1-mini", quick())
}

/// Collects everything the gateway logs.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn keys_never_reach_the_logs() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Global, before anything logs: the gateway, the simulator, the client and any
    // task they spawn all log through it.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    // Sonnet is overloaded: retries and a fallback, each logged.
    let script = healthy().model(
        "claude-sonnet-4-5",
        ModelScript::new().fault(Fault::overloaded()),
    );
    let setup = Setup::start_config(script, |url| {
        let text = format!(
            r#"
            [[provider]]
            name = "anthropic"
            api = "anthropic"
            base_url = "{url}"
            api_key_env = "GATEWAY_KEY"

            [routes."/v1/messages"]
            provider = "anthropic"
            cascade = [{{ model = "claude-sonnet-4-5" }}, {{ model = "claude-haiku-4-5" }}]

            [retry]
            backoff = {{ base = "5ms", cap = "20ms" }}
            "#
        );
        brownout_gateway::Config::from_toml_str_with_env(&text, |name| {
            (name == "GATEWAY_KEY").then(|| "sk-gateway-secret-123".to_owned())
        })
        .unwrap()
    })
    .await;
    let request = anthropic(
        &setup.url("/v1/messages"),
        "claude-sonnet-4-5",
        "Hello",
        false,
    );
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-brownout-model"),
        Some("claude-haiku-4-5")
    );
    drop(json(response).await);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("fallback"),
        "the fallback was logged:\n{text}"
    );
    assert!(
        text.contains("brownout-gateway: answered"),
        "the request was logged:\n{text}"
    );
    assert!(
        !text.contains("sk-gateway-secret-123"),
        "the gateway's key leaked:\n{text}"
    );
    assert!(
        !text.contains("sk-ant-test-caller"),
        "the caller's key leaked:\n{text}"
    );
}
