//! The rate limiter's behaviour, in paused time.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_core::{
    classify::{recorded, OutcomeKind},
    event::Event,
    testing::{Step, Upstream},
    Body,
};
use brownout_limit::{
    Deadline, LimitEvent, LimitHandle, Limits, OnLimit, RateLimitConfig, RateLimitLayer,
    RateLimited, Resource, TooManyTokens,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const MODEL: &str = "claude-sonnet-4-5";

fn anthropic(max_tokens: u64, text: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": MODEL, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    });
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "sk-ant-test")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn openai(stream: bool, extra: serde_json::Value) -> Request<Full<Bytes>> {
    let mut body = serde_json::json!({
        "model": "gpt-4o", "max_tokens": 100, "stream": stream,
        "messages": [{"role": "user", "content": "hello world"}],
    });
    if let serde_json::Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

struct Stack<S> {
    service: S,
    handle: LimitHandle,
    events: Arc<Mutex<Vec<Event>>>,
}

fn stack(
    config: RateLimitConfig,
    upstream: Upstream,
) -> Stack<
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<Body>,
            Error = brownout_core::BoxError,
            Future: Send,
        > + Clone,
> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer =
        RateLimitLayer::new(config.listener(move |e: &Event| sink.lock().unwrap().push(e.clone())))
            .unwrap();
    let handle = layer.handle();
    Stack {
        service: tower::ServiceBuilder::new().layer(layer).service(upstream),
        handle,
        events,
    }
}

fn remaining(handle: &LimitHandle, resource: Resource) -> f64 {
    let keys = handle.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0]
        .remaining
        .iter()
        .find(|r| r.resource == resource)
        .unwrap_or_else(|| panic!("no {resource:?} bucket in {keys:?}"))
        .remaining
}

async fn send<S>(s: &S, request: Request<Full<Bytes>>) -> (http::StatusCode, http::HeaderMap, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = brownout_core::BoxError>
        + Clone,
{
    let response = s.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(start_paused = true)]
async fn rpm_waits_smoothly_then_sheds_past_max_wait() {
    let s = stack(
        RateLimitConfig::new()
            .limits(Limits::new().requests_per_minute(60))
            .max_wait(Duration::from_secs(2)),
        Upstream::new(),
    );
    let start = Instant::now();
    for _ in 0..60 {
        assert_eq!(send(&s.service, anthropic(10, "hi")).await.0, 200);
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "a minute's budget at once");
    // One a second from here, each waiting its turn.
    assert_eq!(send(&s.service, anthropic(10, "hi")).await.0, 200);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // Three at once: the third would wait 3 s, past max_wait.
    let (a, b, c) = tokio::join!(
        send(&s.service, anthropic(10, "hi")),
        send(&s.service, anthropic(10, "hi")),
        send(&s.service, anthropic(10, "hi")),
    );
    assert_eq!((a.0.as_u16(), b.0.as_u16()), (200, 200));
    assert_eq!(c.0, 429);
    assert_eq!(c.1["retry-after"], "3");
    assert_eq!(c.1["x-should-retry"], "true");
    let body: serde_json::Value = serde_json::from_slice(&c.2).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let key = &s.handle.keys()[0];
    assert_eq!((key.waits, key.sheds), (3, 1));
    assert!(s.events.lock().unwrap().iter().any(|e| matches!(
        e.data::<LimitEvent>(),
        Some(LimitEvent::Shed {
            resource: Some(Resource::Requests),
            ..
        })
    )));
}

#[tokio::test(start_paused = true)]
async fn reservations_are_settled_from_json_usage() {
    let upstream = Upstream::scripted([Step::Answer(
        200,
        vec![],
        r#"{"type":"message","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":40,"output_tokens":25}}"#,
    )]);
    let s = stack(
        RateLimitConfig::new().limits(
            Limits::new()
                .input_tokens_per_minute(100_000)
                .output_tokens_per_minute(10_000),
        ),
        upstream,
    );
    let response = s
        .service
        .clone()
        .oneshot(anthropic(1000, "hello there"))
        .await
        .unwrap();
    // Reserved while the body has not been read.
    assert!(remaining(&s.handle, Resource::OutputTokens) <= 9_000.0);
    response.into_body().collect().await.unwrap();
    // Settled to the 25 tokens used; the input estimate to the 40 reported.
    assert_eq!(
        remaining(&s.handle, Resource::OutputTokens),
        10_000.0 - 25.0
    );
    assert_eq!(
        remaining(&s.handle, Resource::InputTokens),
        100_000.0 - 40.0
    );
    let error = s.handle.estimate_error(MODEL).unwrap();
    assert_eq!(error.samples, 1);
}

const ANTHROPIC_STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

const OPENAI_STREAM: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":7,\"total_tokens\":16}}\n\ndata: [DONE]\n\n";

#[tokio::test(start_paused = true)]
async fn streams_settle_from_their_final_usage() {
    let upstream = Upstream::scripted([Step::Answer(200, vec![], ANTHROPIC_STREAM)]);
    let s = stack(
        RateLimitConfig::new().limits(Limits::new().output_tokens_per_minute(10_000)),
        upstream,
    );
    let mut request = anthropic(2000, "hi");
    *request.body_mut() = Full::new(Bytes::from(format!(
        r#"{{"model":"{MODEL}","max_tokens":2000,"stream":true,"messages":[]}}"#
    )));
    send(&s.service, request).await;
    assert_eq!(
        remaining(&s.handle, Resource::OutputTokens),
        10_000.0 - 12.0
    );

    // OpenAI: the layer asks for the usage chunk, and settles the shared TPM from it.
    let upstream = Upstream::scripted([Step::Answer(200, vec![], OPENAI_STREAM)]);
    let s = stack(
        RateLimitConfig::new().limits(Limits::new().tokens_per_minute(10_000)),
        upstream.clone(),
    );
    send(&s.service, openai(true, serde_json::json!({}))).await;
    assert_eq!(remaining(&s.handle, Resource::Tokens), 10_000.0 - 16.0);
    let sent: serde_json::Value = serde_json::from_slice(&upstream.seen()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(
        upstream.seen()[0].facts.as_ref().unwrap().model(),
        Some("gpt-4o")
    );

    // A caller who said anything about stream_options is left alone.
    let upstream = Upstream::scripted([Step::Answer(200, vec![], "data: [DONE]\n\n")]);
    let s = stack(
        RateLimitConfig::new().limits(Limits::new().tokens_per_minute(10_000)),
        upstream.clone(),
    );
    send(
        &s.service,
        openai(
            true,
            serde_json::json!({"stream_options": {"include_usage": false}}),
        ),
    )
    .await;
    let sent: serde_json::Value = serde_json::from_slice(&upstream.seen()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], false);
    // No usage: the whole reservation (9 input + 100 output) stays taken.
    assert_eq!(remaining(&s.handle, Resource::Tokens), 10_000.0 - 109.0);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_short_keeps_its_output_reservation() {
    let cut = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n";
    let s = stack(
        RateLimitConfig::new().limits(Limits::new().output_tokens_per_minute(10_000)),
        Upstream::scripted([Step::Answer(200, vec![], cut)]),
    );
    let mut request = anthropic(500, "hi");
    *request.body_mut() = Full::new(Bytes::from(format!(
        r#"{{"model":"{MODEL}","max_tokens":500,"stream":true,"messages":[]}}"#
    )));
    send(&s.service, request).await;
    assert_eq!(
        remaining(&s.handle, Resource::OutputTokens),
        10_000.0 - 500.0
    );
}

#[tokio::test(start_paused = true)]
async fn learned_headers_tighten_but_never_loosen() {
    let h = |limit: &str, remaining: &str| {
        vec![
            ("anthropic-ratelimit-requests-limit", limit.to_owned()),
            (
                "anthropic-ratelimit-requests-remaining",
                remaining.to_owned(),
            ),
        ]
    };
    let upstream = Upstream::scripted([
        Step::Answer(200, h("50", "3"), "{}"),
        Step::Answer(200, h("5000", "4999"), "{}"),
    ]);
    let s = stack(
        RateLimitConfig::new().limits(Limits::new().requests_per_minute(1000)),
        upstream,
    );
    send(&s.service, anthropic(10, "hi")).await;
    let key = &s.handle.keys()[0];
    let r = key
        .remaining
        .iter()
        .find(|r| r.resource == Resource::Requests)
        .unwrap();
    assert_eq!((r.limit, r.remaining), (50, 3.0));
    send(&s.service, anthropic(10, "hi")).await;
    let key = &s.handle.keys()[0];
    let r = key
        .remaining
        .iter()
        .find(|r| r.resource == Resource::Requests)
        .unwrap();
    assert_eq!(r.limit, 1000, "never above the configured limit");
    assert!(r.remaining <= 2.0 + 1e-9, "{r:?}");
    assert!(s
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.name() == "limit_learned"));

    // With no configured limit, the learned one holds: 1 remaining, then a wait.
    let upstream = Upstream::scripted([Step::Answer(
        200,
        vec![
            ("x-ratelimit-limit-requests", "60".into()),
            ("x-ratelimit-remaining-requests", "0".into()),
        ],
        "{}",
    )]);
    let s = stack(RateLimitConfig::new(), upstream);
    send(&s.service, openai(false, serde_json::json!({}))).await;
    let start = Instant::now();
    send(&s.service, openai(false, serde_json::json!({}))).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_429_retry_after_pauses_the_key() {
    let upstream = Upstream::scripted([Step::Answer(
        429,
        vec![("retry-after", "7".into())],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
    )]);
    let s = stack(
        RateLimitConfig::new()
            .limits(Limits::new().requests_per_minute(600))
            .max_wait(Duration::from_secs(30)),
        upstream.clone(),
    );
    assert_eq!(send(&s.service, anthropic(10, "hi")).await.0, 429);
    assert!(s.handle.keys()[0].paused_for.is_some());
    let start = Instant::now();
    assert_eq!(send(&s.service, anthropic(10, "hi")).await.0, 200);
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    assert_eq!(upstream.calls(), 2);
    assert!(s
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.name() == "limit_paused"));
}

#[tokio::test(start_paused = true)]
async fn an_oversized_request_is_refused_at_once() {
    let upstream = Upstream::new();
    let s = stack(
        RateLimitConfig::new()
            .limits(Limits::new().output_tokens_per_minute(8_000))
            .on_limit(OnLimit::Respond),
        upstream.clone(),
    );
    let start = Instant::now();
    let response = s
        .service
        .clone()
        .oneshot(anthropic(16_000, "hi"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert!(!response.headers().contains_key("retry-after"));
    assert_eq!(
        recorded(&response).unwrap().kind(),
        OutcomeKind::ClientError
    );
    let refused = response.extensions().get::<TooManyTokens>().unwrap();
    assert_eq!((refused.need(), refused.limit()), (16_000, 8_000));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("needs 16000 output tokens, more than the limit of 8000"),
        "{text}"
    );
    assert_eq!(upstream.calls(), 0);

    // As an error.
    let s = stack(
        RateLimitConfig::new()
            .limits(Limits::new().output_tokens_per_minute(8_000))
            .on_limit(OnLimit::Error),
        Upstream::new(),
    );
    let error = s
        .service
        .clone()
        .oneshot(anthropic(16_000, "hi"))
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<TooManyTokens>().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_bounded_by_the_deadline() {
    let s = stack(
        RateLimitConfig::new()
            .limits(Limits::new().requests_per_minute(6))
            .max_wait(Duration::from_secs(60))
            .on_limit(OnLimit::Error),
        Upstream::new(),
    );
    for _ in 0..6 {
        send(&s.service, anthropic(10, "hi")).await;
    }
    // The next has room in 10 s; a caller with 5 s left is refused at once.
    let mut request = anthropic(10, "hi");
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(5)));
    let start = Instant::now();
    let error = s.service.clone().oneshot(request).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let limited = error.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Duration::from_secs(10));
    let outcome = brownout_core::classify::classify_error(
        &brownout_core::classify::DefaultClassifier::new(),
        error.as_ref(),
    );
    assert_eq!(outcome.kind(), OutcomeKind::Rejected);
    // The SDK's own timeout header counts as a deadline too.
    let mut request = anthropic(10, "hi");
    request
        .headers_mut()
        .insert("x-stainless-timeout", "3".parse().unwrap());
    assert!(s.service.clone().oneshot(request).await.is_err());
    // With 15 s, it waits its 10.
    let mut request = anthropic(10, "hi");
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(15)));
    s.service.clone().oneshot(request).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_caller_who_gives_up_gets_its_tokens_back() {
    let s = stack(
        RateLimitConfig::new().limits(Limits::new().requests_per_minute(1)),
        Upstream::new(),
    );
    send(&s.service, anthropic(10, "hi")).await;
    let waiting = s.service.clone().oneshot(anthropic(10, "hi"));
    let _ = tokio::time::timeout(Duration::from_secs(1), waiting).await;
    // The abandoned one no longer holds a place: -1 + 1/60 refilled... nothing owed.
    assert!(remaining(&s.handle, Resource::Requests) >= 0.0);
}

#[tokio::test(start_paused = true)]
async fn keys_are_per_model_and_credential() {
    let s = stack(
        RateLimitConfig::new().limits(Limits::new().requests_per_minute(1)),
        Upstream::new(),
    );
    send(&s.service, anthropic(10, "hi")).await;
    let mut other = anthropic(10, "hi");
    other
        .headers_mut()
        .insert("x-api-key", "sk-ant-other".parse().unwrap());
    let start = Instant::now();
    send(&s.service, other).await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "another credential, another budget"
    );
    let keys = s.handle.keys();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.key.starts_with("claude-sonnet-4-5/")));
    assert!(keys.iter().all(|k| !k.key.contains("sk-ant")));
}

#[tokio::test]
async fn zero_limits_are_refused() {
    let error = RateLimitLayer::new(
        RateLimitConfig::new().model("m", Limits::new().requests_per_minute(0)),
    )
    .unwrap_err();
    assert!(error.to_string().contains("`m`"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn facts_read_in_the_estimate_s_pass_still_refuse_a_model_named_twice() {
    let upstream = Upstream::new();
    let s = stack(
        RateLimitConfig::new().model(MODEL, Limits::new().requests_per_minute(10)),
        upstream.clone(),
    );
    let twice = Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "sk-ant-test")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[],"model":"claude-haiku-4-5"}"#,
        )))
        .unwrap();
    let error = s.service.clone().oneshot(twice).await.unwrap_err();
    assert!(
        error
            .downcast_ref::<brownout_core::error::InvalidRequest>()
            .is_some(),
        "{error}"
    );
    assert_eq!(upstream.calls(), 0);
    assert!(s.handle.keys().is_empty(), "{:?}", s.handle.keys());
    // A body read in one pass is keyed and limited by its model as before.
    let (status, _, _) = send(&s.service, anthropic(5, "hi")).await;
    assert_eq!(status, 200);
    let keys = s.handle.keys();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].key.starts_with("claude-sonnet-4-5/"),
        "{}",
        keys[0].key
    );
    assert_eq!(remaining(&s.handle, Resource::Requests), 9.0);
}
