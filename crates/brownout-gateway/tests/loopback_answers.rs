//! The final answers through the served gateway on loopback, with brownout-sim as the
//! upstream: what an SDK with its default two retries costs during an outage, the
//! statuses of the "all failed" cases, the gateway's own paths, and requests refused
//! before they reach a route.

mod common;

use std::time::Duration;

use brownout_gateway::Config;
use brownout_sim::{Fault, ModelScript, Script};
use common::{anthropic, client, config_text, header, json, openai, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NO_DEGRADE: &str = "[degrade]\nenabled = false\n";

fn all_down(fault: impl Fn() -> Fault) -> Script {
    let down = || ModelScript::new().fault(fault());
    Script::new()
        .seed(3)
        .model("claude-sonnet-4-5", down())
        .model("claude-haiku-4-5", down())
        .model("gpt-4.1", down())
        .model("gpt-4.1-mini", down())
}

/// An SDK's default policy: two retries on 408, 409, 429 and 5xx, unless told
/// `x-should-retry: false`. Returns the last status and the header.
async fn sdk_call(setup: &Setup, anthropic_api: bool) -> (u16, Option<String>) {
    for attempt in 1..=3 {
        let request = if anthropic_api {
            anthropic(
                &setup.url("/v1/messages"),
                "claude-sonnet-4-5",
                "Hello",
                false,
            )
        } else {
            openai(&setup.url("/v1/chat/completions"), "gpt-4.1", "Hello")
        };
        let response = client().request(request).await.unwrap();
        let status = response.status().as_u16();
        let should_retry = header(&response, "x-should-retry").map(str::to_owned);
        let retryable = matches!(status, 408 | 409 | 429) || status >= 500;
        if attempt == 3 || !retryable || should_retry.as_deref() == Some("false") {
            return (status, should_retry);
        }
    }
    unreachable!()
}

#[tokio::test]
async fn an_sdk_call_during_a_total_outage_makes_only_the_gateways_attempts() {
    let setup = Setup::start_with(all_down(Fault::overloaded), NO_DEGRADE).await;
    let (status, should_retry) = sdk_call(&setup, true).await;
    assert_eq!(status, 529);
    assert_eq!(should_retry.as_deref(), Some("false"));
    // Two models, two attempts each; twelve if the SDK retried on top.
    assert_eq!(setup.sim.stats().received, 4);
    let (status, should_retry) = sdk_call(&setup, false).await;
    assert_eq!(status, 503);
    assert_eq!(should_retry.as_deref(), Some("false"));
    assert_eq!(setup.sim.stats().received, 8);
}

#[tokio::test]
async fn every_breaker_open_is_529_with_retry_after_on_loopback() {
    let breaker = "[breaker]\nconsecutive_failures = 1\nopen_for = \"30s\"\n";
    let setup = Setup::start_with(
        all_down(Fault::overloaded),
        &format!("{NO_DEGRADE}{breaker}"),
    )
    .await;
    let request = || {
        anthropic(
            &setup.url("/v1/messages"),
            "claude-sonnet-4-5",
            "Hello",
            false,
        )
    };
    let first = client().request(request()).await.unwrap();
    assert_eq!(first.status(), 529, "the upstream's own overload");
    let received = setup.sim.stats().received;
    let response = client().request(request()).await.unwrap();
    assert_eq!(response.status(), 529);
    let wait: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
    let error = json(response).await;
    assert_eq!(error["error"]["type"], "overloaded_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("circuit open"));
    assert_eq!(setup.sim.stats().received, received, "no upstream call");
}

#[tokio::test]
async fn every_target_timed_out_is_504_on_loopback() {
    let setup = Setup::start_config(all_down(Fault::hang), |url| {
        let text = config_text(url, NO_DEGRADE)
            .replace("attempt_timeout = \"5s\"", "attempt_timeout = \"100ms\"");
        Config::from_toml_str(&text).unwrap()
    })
    .await;
    let request = openai(&setup.url("/v1/chat/completions"), "gpt-4.1", "Hello");
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
    let error = json(response).await;
    assert_eq!(error["error"]["code"], "timeout");
}

/// Sends `head` as it is on a fresh connection and returns the status line and the
/// rest of the answer.
async fn raw(setup: &Setup, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(setup.gateway).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    read.await.unwrap().unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn odd_methods_and_paths_are_refused_at_the_door_and_health_is_the_gateways_own() {
    let setup = Setup::start(Script::new().seed(1)).await;
    let answer = raw(
        &setup,
        "CONNECT api.anthropic.com:443 HTTP/1.1\r\nhost: api.anthropic.com:443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    for path in ["/v1/../v1/models", "/v1/models%2F..%2Fadmin"] {
        let answer = raw(
            &setup,
            &format!("GET {path} HTTP/1.1\r\nhost: gw\r\nx-api-key: sk-ant-caller\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("invalid_request_error"), "{answer}");
    }
    for path in ["/healthz", "/readyz"] {
        let response = client()
            .request(
                http::Request::get(setup.url(path))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(setup.sim.stats().received, 0, "nothing was forwarded");
}
