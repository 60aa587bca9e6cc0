//! The gateway's final answers as an official SDK sees them: provider-shaped, with the
//! status that says what happened, `retry-after` where a wait is known, and
//! `x-should-retry: false` once the gateway has retried or fallen back, so that the
//! SDK's own retries do not multiply the upstream's load. Streams and uploads are
//! bounded in time.
//!
//! The gateway runs in process over the simulator, on tokio's paused clock.

mod common;

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use brownout_gateway::{Config, Router};
use brownout_sim::{Fault, ModelScript, Script, Sim};
use bytes::Bytes;
use common::config_text;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::ServiceExt;

const NO_DEGRADE: &str = "[degrade]\nenabled = false\n";

fn router(sim: &Sim, extra: &str) -> Router<Full<Bytes>> {
    let config = Config::from_toml_str(&config_text("http://127.0.0.1:9", extra)).unwrap();
    Router::new(&config, sim.clone(), sim.clone())
}

fn anthropic(model: &str) -> Request<Full<Bytes>> {
    common::anthropic("/v1/messages", model, "Hello", false)
}

fn openai(model: &str) -> Request<Full<Bytes>> {
    common::openai("/v1/chat/completions", model, "Hello")
}

fn header<'a, B>(response: &'a Response<B>, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn json(response: Response<brownout::Body>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

/// What an official SDK does with its default two retries: send again on 408, 409,
/// 429 and 5xx unless the answer says `x-should-retry: false`.
async fn sdk_call(
    gateway: &Router<Full<Bytes>>,
    request: impl Fn() -> Request<Full<Bytes>>,
) -> Response<brownout::Body> {
    let mut tries = 0;
    loop {
        let response = gateway.clone().oneshot(request()).await.unwrap();
        tries += 1;
        let status = response.status().as_u16();
        let retryable = matches!(status, 408 | 409 | 429) || status >= 500;
        let told_not_to = header(&response, "x-should-retry") == Some("false");
        if tries == 3 || !retryable || told_not_to {
            return response;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn all_down(fault: impl Fn() -> Fault) -> Script {
    let down = || ModelScript::new().fault(fault());
    Script::new()
        .seed(3)
        .model("claude-sonnet-4-5", down())
        .model("claude-haiku-4-5", down())
        .model("gpt-4.1", down())
        .model("gpt-4.1-mini", down())
}

#[tokio::test(start_paused = true)]
async fn during_a_total_outage_an_sdk_call_costs_only_the_gateways_own_attempts() {
    let sim = Sim::new(all_down(Fault::overloaded));
    let gateway = router(&sim, NO_DEGRADE);
    let response = sdk_call(&gateway, || anthropic("claude-sonnet-4-5")).await;
    // Two models, two attempts each: four, not twelve.
    assert_eq!(sim.stats().received, 4);
    assert_eq!(response.status(), 529);
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
    assert_eq!(json(response).await["error"]["type"], "overloaded_error");

    let response = sdk_call(&gateway, || openai("gpt-4.1")).await;
    assert_eq!(sim.stats().received, 8);
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_can_be_turned_off_and_is_absent_when_nothing_was_retried() {
    let sim = Sim::new(all_down(Fault::overloaded));
    let gateway = router(
        &sim,
        &format!("{NO_DEGRADE}[headers]\nshould_retry = false\n"),
    );
    let response = gateway
        .clone()
        .oneshot(anthropic("claude-sonnet-4-5"))
        .await
        .unwrap();
    assert_eq!(response.status(), 529);
    // The upstream's own header, untouched.
    assert_ne!(header(&response, "x-should-retry"), Some("false"));

    // A client error is the caller's and goes through once, as the upstream said it.
    let sim = Sim::new(
        Script::new()
            .seed(3)
            .default_model(ModelScript::new().fault(Fault::bad_request())),
    );
    let gateway = router(&sim, NO_DEGRADE);
    let response = gateway
        .clone()
        .oneshot(anthropic("claude-sonnet-4-5"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(sim.stats().received, 1);
}

#[tokio::test(start_paused = true)]
async fn every_breaker_open_is_529_on_anthropic_and_503_on_openai_with_retry_after() {
    let sim = Sim::new(all_down(Fault::overloaded));
    let breaker = "[breaker]\nconsecutive_failures = 1\nopen_for = \"30s\"\n";
    let gateway = router(&sim, &format!("{NO_DEGRADE}{breaker}"));
    // The first calls open every breaker.
    for request in [anthropic("claude-sonnet-4-5"), openai("gpt-4.1")] {
        let response = gateway.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_server_error());
    }
    let received = sim.stats().received;
    tokio::time::advance(Duration::from_secs(10)).await;

    let breakers = gateway.layers().breakers().unwrap();
    let earliest = |models: [&str; 2]| {
        let wait = models
            .iter()
            .filter_map(|m| breakers.state(m).unwrap().open_for)
            .min()
            .unwrap();
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
    };

    let response = gateway
        .clone()
        .oneshot(anthropic("claude-sonnet-4-5"))
        .await
        .unwrap();
    assert_eq!(response.status(), 529);
    let wait: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert_eq!(wait, earliest(["claude-sonnet-4-5", "claude-haiku-4-5"]));
    assert!((1..=20).contains(&wait), "{wait}");
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
    let error = json(response).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "overloaded_error");

    let response = gateway.clone().oneshot(openai("gpt-4.1")).await.unwrap();
    assert_eq!(response.status(), 503);
    let wait: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert_eq!(wait, earliest(["gpt-4.1", "gpt-4.1-mini"]));
    let error = json(response).await;
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(error["error"]["code"], "service_unavailable");
    assert_eq!(
        sim.stats().received,
        received,
        "nothing reached the upstream"
    );
}

#[tokio::test(start_paused = true)]
async fn every_target_timed_out_is_504() {
    let sim = Sim::new(all_down(Fault::hang));
    let gateway = router(&sim, NO_DEGRADE);
    let started = Instant::now();
    let response = gateway
        .clone()
        .oneshot(anthropic("claude-sonnet-4-5"))
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    // Two models, two attempts of 5 s each, and the backoffs between them.
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
    assert_eq!(json(response).await["error"]["type"], "timeout_error");

    let response = gateway.clone().oneshot(openai("gpt-4.1")).await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(json(response).await["error"]["code"], "timeout");
}

#[tokio::test(start_paused = true)]
async fn an_upstream_429_that_was_not_retried_reaches_the_caller_with_its_retry_after() {
    // A wait longer than the retry layer's limit: not retried, the cascade moves on,
    // and its last model says the same.
    let sim = Sim::new(all_down(|| Fault::rate_limited(Duration::from_secs(120))));
    let gateway = router(&sim, NO_DEGRADE);
    let response = gateway
        .clone()
        .oneshot(anthropic("claude-sonnet-4-5"))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), Some("120"));
    assert_eq!(sim.stats().received, 2, "one attempt per model");
    assert_eq!(json(response).await["error"]["type"], "rate_limit_error");

    // A route without a cascade: the 429 as it came, the SDK free to wait and retry.
    let text = r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://127.0.0.1:9"
pass_through_key = true

[routes."/v1/messages"]
provider = "anthropic"

[degrade]
enabled = false
"#;
    let sim = Sim::new(all_down(|| Fault::rate_limited(Duration::from_secs(120))));
    let gateway: Router<Full<Bytes>> = Router::new(
        &Config::from_toml_str(text).unwrap(),
        sim.clone(),
        sim.clone(),
    );
    let response = gateway
        .clone()
        .oneshot(anthropic("claude-sonnet-4-5"))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), Some("120"));
    assert_ne!(header(&response, "x-should-retry"), Some("false"));
    assert_eq!(sim.stats().received, 1);
}

/// A streamed answer that sends its first event and then nothing, ever.
struct Stalled {
    first: Option<Bytes>,
}

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
            None => Poll::Pending,
        }
    }
}

/// An upstream whose streams stall after their first event.
#[derive(Clone)]
struct StallingUpstream;

impl tower::Service<Request<brownout::Body>> for StallingUpstream {
    type Response = Response<Stalled>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Stalled>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<brownout::Body>) -> Self::Future {
        // The stream stalls after its first content has gone out: a stall before it
        // is a failed attempt (the stream guard's `first_event_timeout`), not this.
        let first = if request.uri().path().ends_with("/messages") {
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n"
        } else {
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n"
        };
        let mut response = Response::new(Stalled {
            first: Some(Bytes::from_static(first.as_bytes())),
        });
        response
            .headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        std::future::ready(Ok(response))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_stalls_is_ended_with_an_error_event_in_the_providers_shape() {
    let config = Config::from_toml_str(&config_text(
        "http://127.0.0.1:9",
        "[streams]\nidle_timeout = \"2s\"\n",
    ))
    .unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, StallingUpstream, StallingUpstream);
    for (request, stream_api) in [
        (
            common::anthropic("/v1/messages", "claude-sonnet-4-5", "Hi", true),
            "anthropic",
        ),
        (
            {
                let body = r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
                Request::post("/v1/chat/completions")
                    .header("authorization", "Bearer sk-test-caller")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            },
            "openai",
        ),
    ] {
        let started = Instant::now();
        let response = gateway.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        // Without the idle timeout this would wait for ever (an SDK: 600 s).
        let collected =
            tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
                .await
                .expect("the gateway ended the stalled stream")
                .unwrap()
                .to_bytes();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let text = String::from_utf8(collected.to_vec()).unwrap();
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        let data = last
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no data line in {last:?}"));
        let error: serde_json::Value = serde_json::from_str(data).unwrap();
        if stream_api == "anthropic" {
            assert!(last.starts_with("event: error\n"), "{last}");
            assert_eq!(error["type"], "error");
            assert_eq!(error["error"]["type"], "overloaded_error");
        } else {
            assert!(error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("sent nothing"));
        }
    }
    assert_eq!(gateway.stalled_streams(), 2);
}

/// A body that sends one byte a second, for ever.
struct Trickle {
    sent: usize,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Trickle {
    fn new() -> Self {
        Trickle {
            sent: 0,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::ready!(self.sleep.as_mut().poll(cx));
        let next = Instant::now() + Duration::from_secs(1);
        self.sleep.as_mut().reset(next);
        let prefix = br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":""#;
        let byte = prefix.get(self.sent).copied().unwrap_or(b'x');
        self.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![byte])))))
    }
}

use std::future::Future as _;

#[tokio::test(start_paused = true)]
async fn an_upload_trickled_a_byte_a_second_is_cut_off_at_the_body_timeout_with_408() {
    // A top-level key, before the tables.
    let text = format!(
        "body_timeout = \"5s\"\n{}",
        config_text("http://127.0.0.1:9", "")
    );
    let config = Config::from_toml_str(&text).unwrap();
    // Forwarded paths stream the body on: this client reads it, as hyper's does.
    let reader = tower::service_fn(|request: Request<brownout::Body>| async move {
        let bytes = request.into_body().collect().await?.to_bytes();
        Ok::<_, brownout::BoxError>(Response::new(Full::new(bytes)))
    });
    let gateway: Router<Trickle> = Router::new(&config, reader, reader);
    // Through a pipeline, and forwarded as it arrives.
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let request = Request::post(path)
            .header("x-api-key", "sk-ant-caller")
            .body(Trickle::new())
            .unwrap();
        let started = Instant::now();
        let response =
            tokio::time::timeout(Duration::from_secs(120), gateway.clone().oneshot(request))
                .await
                .expect("the gateway cut the upload off")
                .unwrap();
        assert_eq!(response.status(), 408, "{path}");
        assert_eq!(started.elapsed(), Duration::from_secs(5), "{path}");
        let error = json(response).await;
        assert_eq!(error["error"]["type"], "timeout_error", "{path}");
    }
    let breakers = gateway.layers().breakers().unwrap();
    assert!(
        breakers
            .state("claude-sonnet-4-5")
            .is_none_or(|s| s.total_failures == 0),
        "the caller's slow upload counts against no breaker"
    );
}
