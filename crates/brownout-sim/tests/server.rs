//! The simulator over loopback HTTP/1.1 answers as it does in process. Real time,
//! zero latency: a few milliseconds.

mod common;

use std::time::Duration;

use brownout_core::{
    classify::{classify_result, DefaultClassifier, DEFAULT_ERROR_BODY_LIMIT},
    OutcomeKind,
};
use brownout_sim::{Fault, ModelScript, Runner, Script, Sim, SimServer};
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::ServiceExt;

fn script() -> Script {
    Script::new()
        .seed(99)
        .model(
            "flaky",
            ModelScript::new()
                .output_tokens(6)
                .fault(Fault::overloaded().rate(0.4))
                .fault(Fault::rate_limited(Duration::from_secs(3)).rate(0.2)),
        )
        .model("broken", ModelScript::new().fault(Fault::reset()))
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn to(base: &str, request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("{base}{}", parts.uri.path()).parse().unwrap();
    Request::from_parts(parts, body)
}

/// The body with the one field that depends on the wall clock (`created`) removed.
fn normalize(body: &[u8]) -> String {
    fn strip(mut value: serde_json::Value) -> String {
        if let Some(object) = value.as_object_mut() {
            object.remove("created");
        }
        value.to_string()
    }
    if let Ok(value) = serde_json::from_slice(body) {
        return strip(value);
    }
    parse_sse(body)
        .into_iter()
        .map(|e| {
            let data = serde_json::from_str(&e.data).map_or(e.data, strip);
            format!("{:?} {data}\n", e.event)
        })
        .collect()
}

const HEADERS: [&str; 10] = [
    "content-type",
    "request-id",
    "x-request-id",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "retry-after",
    "x-should-retry",
    "cache-control",
];

#[tokio::test]
async fn loopback_answers_as_in_process() {
    let in_process = Sim::new(script());
    let served = Sim::new(script());
    let server = SimServer::bind("127.0.0.1:0", served.clone())
        .await
        .unwrap()
        .spawn()
        .unwrap();
    let base = server.url();
    let client = client();

    let mut statuses = Vec::new();
    for i in 0..12 {
        let request = || match i % 4 {
            0 => anthropic("flaky", ""),
            1 => openai("flaky", ""),
            2 => anthropic("flaky", r#","stream":true"#),
            _ => openai(
                "flaky",
                r#","stream":true,"stream_options":{"include_usage":true}"#,
            ),
        };
        let local = in_process.clone().oneshot(request()).await.unwrap();
        let remote = client.request(to(&base, request())).await.unwrap();
        assert_eq!(local.status(), remote.status(), "request {i}");
        statuses.push(local.status().as_u16());
        for name in HEADERS {
            assert_eq!(
                local.headers().get(name),
                remote.headers().get(name),
                "request {i}: {name}"
            );
        }
        let local = bytes(local.into_body()).await;
        let remote = bytes(remote.into_body()).await;
        assert_eq!(normalize(&local), normalize(&remote), "request {i}");
    }
    // The run covered successes and both faults (an overload is 503 on OpenAI's
    // endpoint).
    for status in [200, 429, 503] {
        assert!(statuses.contains(&status), "{statuses:?}");
    }
    assert_eq!(in_process.stats(), served.stats());
}

#[tokio::test]
async fn a_reset_drops_the_connection() {
    let server = SimServer::bind("127.0.0.1:0", Sim::new(script()))
        .await
        .unwrap()
        .spawn()
        .unwrap();
    let client = client();

    let result = client
        .request(to(&server.url(), anthropic("broken", "")))
        .await;
    let error = result.as_ref().expect_err("no answer");
    let mut reset = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            reset |= io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        source = e.source();
    }
    assert!(reset, "{error:?}");
    let (_, outcome) = classify_result(
        &DefaultClassifier::new(),
        result
            .map(|response| response.map(brownout_core::Body::new))
            .map_err(brownout_core::BoxError::from),
        DEFAULT_ERROR_BODY_LIMIT,
    )
    .await;
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);

    // The server itself is fine.
    let response = client
        .request(to(&server.url(), anthropic("healthy", "")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_runner_drives_a_client_over_the_network() {
    let runner = Runner::new(script())
        .model("flaky")
        .requests(20)
        .concurrency(1)
        .no_spread();
    let in_process = runner.run_stack(&brownout_sim::Stack::naive()).await;

    let sim = Sim::new(script());
    let server = SimServer::bind("127.0.0.1:0", sim.clone())
        .await
        .unwrap()
        .spawn()
        .unwrap();
    let over_network = runner
        .clone()
        .base_url(server.url())
        .run_with("hyper-util", &sim, client())
        .await;

    assert_eq!(over_network.answered, in_process.answered);
    assert_eq!(over_network.errors, in_process.errors);
    assert_eq!(
        over_network.upstream.by_answer,
        in_process.upstream.by_answer
    );
    assert_eq!(over_network.upstream.requests, 20);
    assert!(
        in_process.errors.contains_key("529 overloaded_error"),
        "{in_process}"
    );
}
