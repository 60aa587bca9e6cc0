//! A caller's broken upload is that caller's failure: 400 or 408 to them, and
//! nothing changes for anyone else (no breaker opened, no fallback, no canned answer).

mod common;

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use brownout_gateway::{Config, Router};
use brownout_sim::{Script, Sim};
use bytes::Bytes;
use common::{anthropic, client, config_text, header, json, Setup};
use http::Request;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const DEGRADE: &str = "[degrade]\n";

/// What an upload does after its first bytes.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    Break,
    Stall,
    End,
}

/// A request body that sends its first bytes and then breaks, stalls or ends; its
/// size hint says `declared` bytes.
struct Upload {
    first: Option<Bytes>,
    then: Then,
    declared: u64,
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match self.then {
            Then::Stall => return Poll::Pending,
            Then::End => return Poll::Ready(None),
            Then::Break => {}
        }
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the client hung up",
        ))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.declared)
    }
}

fn upload(then: Then, declared: u64) -> Request<Upload> {
    let start =
        br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":""#;
    let mut first = start.to_vec();
    first.resize(1024, b'x');
    Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-caller")
        .body(Upload {
            first: Some(Bytes::from(first)),
            then,
            declared,
        })
        .unwrap()
}

fn router(sim: &Sim, extra: &str) -> Router<Upload> {
    let config = Config::from_toml_str(&config_text("http://127.0.0.1:9", extra)).unwrap();
    Router::new(&config, sim.clone(), sim.clone())
}

#[tokio::test(start_paused = true)]
async fn cut_uploads_are_400_and_leave_the_breaker_closed() {
    let sim = Sim::new(Script::new().seed(1));
    let gateway = router(&sim, DEGRADE);
    for declared in [2048, 50 * 1024 * 1024] {
        for _ in 0..12 {
            let response = gateway
                .clone()
                .oneshot(upload(Then::Break, declared))
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "declared {declared}");
            assert_eq!(header_of(&response, "x-brownout-degraded"), None);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["type"], "invalid_request_error");
        }
    }
    counted_nowhere(&gateway).await;
}

#[tokio::test(start_paused = true)]
async fn stalled_uploads_are_408_and_leave_the_breaker_closed() {
    let sim = Sim::new(Script::new().seed(1));
    let gateway = router(&sim, "[body]\nidle_timeout = \"5s\"\n[degrade]\n");
    for _ in 0..12 {
        let started = tokio::time::Instant::now();
        let response = gateway
            .clone()
            .oneshot(upload(Then::Stall, 4096))
            .await
            .unwrap();
        assert_eq!(response.status(), 408);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(header_of(&response, "x-brownout-degraded"), None);
    }
    assert_eq!(sim.stats().received, 0, "a truncated body is never sent");
    counted_nowhere(&gateway).await;
}

#[tokio::test(start_paused = true)]
async fn two_model_keys_are_refused_with_400() {
    let sim = Sim::new(Script::new().seed(1));
    let gateway = router(&sim, "");
    let body: &[u8] =
        br#"{"model":"claude-haiku-4-5","max_tokens":8,"messages":[],"model":"claude-sonnet-4-5"}"#;
    let request = Request::post("/v1/messages")
        .body(Upload {
            first: Some(Bytes::from_static(body)),
            then: Then::End,
            declared: body.len() as u64,
        })
        .unwrap();
    let response = gateway.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(sim.stats().received, 0, "nothing is sent");
}

#[tokio::test]
async fn clients_that_hang_up_mid_body_are_answered_400_over_tcp() {
    let setup = Setup::start_with(Script::new().seed(1), DEGRADE).await;
    // Twelve callers, more than the breaker's minimum of calls: had their uploads
    // counted as the model's failures, it would be open for the next caller.
    for _ in 0..12 {
        let mut stream = tokio::net::TcpStream::connect(setup.gateway).await.unwrap();
        let head = "POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\nx-api-key: sk-ant-caller\r\ncontent-length: 52428800\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"cut"#)
            .await
            .unwrap();
        // The caller stops sending (its half of the connection closed) and reads.
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "a 400, never a 200 or a canned answer: {answer}"
        );
        assert!(!answer.contains("x-brownout-degraded"), "{answer}");
    }
    // The model's breaker is still closed: the next caller is served by it.
    let response = client()
        .request(anthropic(
            &setup.url("/v1/messages"),
            "claude-sonnet-4-5",
            "Hello",
            false,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-brownout-model"),
        Some("claude-sonnet-4-5")
    );
    let _ = json(response).await;
}

/// The preferred model's breaker counted none of a caller's broken uploads, and
/// every other caller still gets the first choice.
async fn counted_nowhere(gateway: &Router<Upload>) {
    let breakers = gateway.layers().breakers().unwrap();
    let counted = breakers
        .state("claude-sonnet-4-5")
        .map_or(0, |s| s.total_calls + s.total_rejected);
    assert_eq!(
        counted, 0,
        "a caller's broken uploads count against no breaker"
    );
    let response = gateway.clone().oneshot(good()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header_of(&response, "x-brownout-model"),
        Some("claude-sonnet-4-5")
    );
}

fn good() -> Request<Upload> {
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#;
    Request::post("/v1/messages")
        .header("x-api-key", "sk-ant-other")
        .body(Upload {
            first: Some(Bytes::from_static(body)),
            then: Then::End,
            declared: body.len() as u64,
        })
        .unwrap()
}

fn header_of<'a, B>(response: &'a http::Response<B>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}
