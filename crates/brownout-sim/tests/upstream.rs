//! The in-process simulator: formats, faults, timing and determinism, in paused time.

mod common;

use std::time::Duration;

use brownout_core::{
    classify::{classify_response, DefaultClassifier, DEFAULT_ERROR_BODY_LIMIT},
    OutcomeKind,
};
use brownout_sim::{Fault, FaultKind, Latency, ModelScript, Script, Sim};
use common::*;
use http::{Request, Response};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;

fn sim_with(model: ModelScript) -> Sim {
    Sim::new(Script::new().seed(11).model("m", model))
}

async fn send(
    sim: &Sim,
    request: Request<http_body_util::Full<bytes::Bytes>>,
) -> Response<brownout_sim::SimBody> {
    sim.clone().oneshot(request).await.expect("an answer")
}

#[tokio::test(start_paused = true)]
async fn anthropic_answers_echo_the_model_with_usage_and_headers() {
    let sim = sim_with(ModelScript::new().output_tokens(12).requests_per_minute(50));
    let response = send(&sim, anthropic("m", "")).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_01"));
    assert_eq!(headers["anthropic-ratelimit-requests-limit"], "50");
    assert_eq!(headers["anthropic-ratelimit-requests-remaining"], "49");
    let reset = headers["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap();
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && reset.as_bytes()[10] == b'T',
        "{reset}"
    );

    let message: Message = serde_json::from_slice(&bytes(response.into_body()).await).unwrap();
    assert_eq!(message.model, "m");
    assert_eq!(
        (message.kind.as_str(), message.role.as_str()),
        ("message", "assistant")
    );
    assert!(
        message.id.starts_with("msg_01") && message.id.len() == 28,
        "{}",
        message.id
    );
    assert_eq!(message.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(message.usage.output_tokens, 12);
    assert!(message.usage.input_tokens > 10);
    assert_eq!(message.content[0].kind, "text");
    assert_eq!(message.content[0].text.split(' ').count(), 12);

    // The second request in the same minute has one fewer left.
    let response = send(&sim, anthropic("m", "")).await;
    assert_eq!(
        response.headers()["anthropic-ratelimit-requests-remaining"],
        "48"
    );
}

#[tokio::test(start_paused = true)]
async fn openai_answers_echo_the_model_with_usage_and_headers() {
    let sim = sim_with(ModelScript::new().output_tokens(7));
    let response = send(&sim, openai("m", r#","max_completion_tokens":5"#)).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-request-id"].to_str().unwrap().len(), 36);
    assert_eq!(headers["x-ratelimit-limit-requests"], "4000");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "3999");
    let reset = brownout_core::classify::parse_go_duration(
        headers["x-ratelimit-reset-requests"].to_str().unwrap(),
    )
    .unwrap();
    assert_eq!(reset, Duration::from_secs(60), "a minute from the start");

    let completion: Completion =
        serde_json::from_slice(&bytes(response.into_body()).await).unwrap();
    assert_eq!(completion.model, "m");
    assert_eq!(completion.object, "chat.completion");
    assert!(completion.id.starts_with("chatcmpl-"));
    // max_completion_tokens cuts the answer.
    assert_eq!(completion.choices[0].finish_reason, "length");
    assert_eq!(completion.choices[0].message.role, "assistant");
    assert_eq!(completion.usage.completion_tokens, 5);
    assert_eq!(
        completion.usage.total_tokens,
        completion.usage.prompt_tokens + 5
    );
}

/// Every HTTP error fault, on both endpoints: status, the provider's error shape,
/// and what brownout-core's classifier makes of it.
#[tokio::test(start_paused = true)]
async fn error_faults_answer_in_each_providers_shape() {
    use FaultKind as K;
    use OutcomeKind as O;
    let cases = [
        (
            K::Overloaded,
            529,
            "overloaded_error",
            503,
            "server_error",
            O::Overloaded,
        ),
        (
            K::Unavailable,
            503,
            "api_error",
            503,
            "server_error",
            O::Overloaded,
        ),
        (
            K::ServerError,
            500,
            "api_error",
            500,
            "server_error",
            O::ServerError,
        ),
        (
            K::BadGateway,
            502,
            "api_error",
            502,
            "server_error",
            O::ServerError,
        ),
        (
            K::RateLimited,
            429,
            "rate_limit_error",
            429,
            "requests",
            O::RateLimited,
        ),
        (
            K::QuotaExceeded,
            400,
            "invalid_request_error",
            429,
            "insufficient_quota",
            O::ClientError,
        ),
        (
            K::BadRequest,
            400,
            "invalid_request_error",
            400,
            "invalid_request_error",
            O::ClientError,
        ),
        (
            K::Unauthorized,
            401,
            "authentication_error",
            401,
            "invalid_request_error",
            O::ClientError,
        ),
    ];
    for (kind, a_status, a_type, o_status, o_type, outcome) in cases {
        let sim = sim_with(ModelScript::new().fault(Fault::new(kind)));

        let response = send(&sim, anthropic("m", "")).await;
        assert_eq!(response.status(), a_status, "{kind}");
        assert!(response.headers().contains_key("request-id"));
        let (response, classified) = classify_response(
            &DefaultClassifier::new(),
            response.map(brownout_core::Body::new),
            DEFAULT_ERROR_BODY_LIMIT,
        )
        .await;
        assert_eq!(classified.kind(), outcome, "{kind} on /v1/messages");
        let body = bytes(response.into_body()).await;
        let error: AnthropicError = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (error.kind.as_str(), error.error.kind.as_str()),
            ("error", a_type),
            "{kind}"
        );
        if kind == K::Overloaded {
            assert_eq!(body, OVERLOADED, "byte for byte");
        }

        let response = send(&sim, openai("m", "")).await;
        assert_eq!(response.status(), o_status, "{kind}");
        assert!(response.headers().contains_key("x-request-id"));
        let (response, classified) = classify_response(
            &DefaultClassifier::new(),
            response.map(brownout_core::Body::new),
            DEFAULT_ERROR_BODY_LIMIT,
        )
        .await;
        assert_eq!(classified.kind(), outcome, "{kind} on /v1/chat/completions");
        let error: OpenAiError =
            serde_json::from_slice(&bytes(response.into_body()).await).unwrap();
        assert_eq!(error.error.kind, o_type, "{kind}");
        let expected_code = match kind {
            K::RateLimited => Some("rate_limit_exceeded"),
            K::QuotaExceeded => Some("insufficient_quota"),
            K::Unauthorized => Some("invalid_api_key"),
            _ => None,
        };
        assert_eq!(error.error.code.as_deref(), expected_code, "{kind}");
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limits_say_when_to_come_back() {
    let sim = sim_with(ModelScript::new().fault(Fault::rate_limited(Duration::from_millis(1500))));
    let response = send(&sim, anthropic("m", "")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.headers()["retry-after"],
        "2",
        "whole seconds, rounded up"
    );
    assert_eq!(response.headers()["x-should-retry"], "true");
    assert_eq!(
        response.headers()["anthropic-ratelimit-requests-remaining"],
        "0"
    );
    // The reset header alone gives about the same delay.
    let mut headers = response.headers().clone();
    headers.remove("retry-after");
    let without_retry_after = Response::builder().status(429).body(String::new()).unwrap();
    let (mut parts, body) = without_retry_after.into_parts();
    parts.headers = headers;
    let (_, outcome) = classify_response(
        &DefaultClassifier::new(),
        Response::from_parts(parts, brownout_core::Body::from(body)),
        DEFAULT_ERROR_BODY_LIMIT,
    )
    .await;
    let delay = outcome
        .server_delay()
        .expect("the reset header gives a delay");
    assert!(
        delay <= Duration::from_secs(3) && delay >= Duration::from_millis(500),
        "{delay:?}"
    );

    let response = send(&sim, openai("m", "")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-ratelimit-reset-requests"], "1.5s");
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
    let (_, outcome) = classify_response(
        &DefaultClassifier::new(),
        response.map(brownout_core::Body::new),
        DEFAULT_ERROR_BODY_LIMIT,
    )
    .await;
    assert_eq!(outcome.kind(), OutcomeKind::RateLimited);
    assert_eq!(outcome.server_delay(), Some(Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn faults_keep_to_their_windows_and_the_model_recovers() {
    let sim = sim_with(
        ModelScript::new()
            .fault(Fault::overloaded().between(Duration::from_secs(10), Duration::from_secs(60))),
    );
    let start = Instant::now();
    let mut statuses = Vec::new();
    for at in [0, 9, 10, 59, 60, 600] {
        tokio::time::sleep_until(start + Duration::from_secs(at)).await;
        statuses.push(send(&sim, anthropic("m", "")).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 529, 529, 200, 200]);
    // Another model is not affected.
    assert_eq!(send(&sim, anthropic("other", "")).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn rates_hold_within_two_points_over_a_seeded_run() {
    let sim = sim_with(
        ModelScript::new()
            .fault(Fault::overloaded().rate(0.3))
            .fault(Fault::rate_limited(Duration::from_secs(1)).rate(0.1))
            .fault(Fault::server_error().rate(0.05)),
    );
    let n = 4000;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let status = send(&sim, anthropic("m", "")).await.status().as_u16();
        *counts.entry(status).or_insert(0u32) += 1;
    }
    let share = |status| f64::from(counts.get(&status).copied().unwrap_or(0)) / f64::from(n);
    for (status, expected) in [(529, 0.3), (429, 0.1), (500, 0.05), (200, 0.55)] {
        let got = share(status);
        assert!(
            (got - expected).abs() < 0.02,
            "{status}: {got} vs {expected}"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.received, 4000);
    assert_eq!(stats.by_model["m"], 4000);
    assert_eq!(u64::from(counts[&529]), stats.by_answer["overloaded"]);
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_outcomes() {
    let script = |seed| {
        Script::new().seed(seed).model(
            "m",
            ModelScript::new()
                .latency(Latency::lognormal(Duration::from_millis(300), 0.8).unwrap())
                .fault(Fault::overloaded().rate(0.3))
                .fault(Fault::reset().rate(0.1)),
        )
    };
    async fn outcomes(sim: Sim) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..200 {
            let start = Instant::now();
            let outcome = match sim.clone().oneshot(anthropic("m", "")).await {
                Ok(response) => {
                    let status = response.status();
                    let id = response.headers()["request-id"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let body = bytes(response.into_body()).await;
                    format!("{status} {id} {}", String::from_utf8_lossy(&body))
                }
                Err(error) => format!("{:?}", error.kind()),
            };
            seen.push(format!("{outcome} after {:?}", start.elapsed()));
        }
        seen
    }
    let first = outcomes(Sim::new(script(5))).await;
    let second = outcomes(Sim::new(script(5))).await;
    let other = outcomes(Sim::new(script(6))).await;
    assert_eq!(first, second);
    assert_ne!(first, other);
    assert!(first.iter().any(|o| o.starts_with("529")));
    assert!(first.iter().any(|o| o.starts_with("ConnectionReset")));
}

#[tokio::test(start_paused = true)]
async fn latency_is_drawn_on_tokios_clock() {
    let sim = sim_with(ModelScript::new().latency(Latency::fixed(Duration::from_millis(800))));
    let start = Instant::now();
    send(&sim, anthropic("m", "")).await;
    assert_eq!(start.elapsed(), Duration::from_millis(800));

    let sim = sim_with(ModelScript::new().latency(
        Latency::uniform(Duration::from_millis(100), Duration::from_millis(200)).unwrap(),
    ));
    for _ in 0..20 {
        let start = Instant::now();
        send(&sim, anthropic("m", "")).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took <= Duration::from_millis(200),
            "{took:?}"
        );
    }

    // An error answers after its own latency, not the model's.
    let sim = sim_with(
        ModelScript::new()
            .latency(Latency::fixed(Duration::from_secs(5)))
            .fault(Fault::overloaded().latency(Latency::fixed(Duration::from_millis(30)))),
    );
    let start = Instant::now();
    assert_eq!(send(&sim, anthropic("m", "")).await.status(), 529);
    assert_eq!(start.elapsed(), Duration::from_millis(30));
}

#[tokio::test(start_paused = true)]
async fn a_hang_ends_when_the_clients_timeout_fires() {
    let sim = sim_with(ModelScript::new().fault(Fault::hang()));
    let mut client = tower::ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .service(sim.clone());
    let start = Instant::now();
    let error = ServiceExt::<Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut client)
        .await
        .unwrap()
        .call(anthropic("m", ""))
        .await
        .unwrap_err();
    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(sim.stats().by_answer["hang"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_reset_is_a_connection_error_in_process() {
    let sim = sim_with(
        ModelScript::new()
            .fault(Fault::reset().latency(Latency::fixed(Duration::from_millis(200)))),
    );
    let start = Instant::now();
    let error = sim.clone().oneshot(openai("m", "")).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    let outcome = brownout_core::classify::classify_result(
        &DefaultClassifier::new(),
        Err::<Response<brownout_core::Body>, _>(brownout_core::BoxError::from(error)),
        DEFAULT_ERROR_BODY_LIMIT,
    )
    .await
    .1;
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
}

#[tokio::test(start_paused = true)]
async fn anthropic_streams_follow_the_real_event_sequence() {
    let sim = sim_with(
        ModelScript::new()
            .output_tokens(4)
            .latency(Latency::fixed(Duration::from_millis(500)))
            .stream_interval(Duration::from_millis(20)),
    );
    let start = Instant::now();
    let response = send(&sim, anthropic("m", r#","stream":true"#)).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(500),
        "headers after the latency"
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let events = parse_sse(&bytes(response.into_body()).await);
    // 10 events, 20 ms apart after the first.
    assert_eq!(events.len(), 10);
    assert_eq!(start.elapsed(), Duration::from_millis(500 + 9 * 20));

    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[2].data, r#"{"type": "ping"}"#);
    let mut text = String::new();
    for event in &events {
        let parsed: StreamEvent = serde_json::from_str(&event.data).unwrap();
        match parsed {
            StreamEvent::MessageStart { message } => {
                assert_eq!(message.model, "m");
                assert!(message.content.is_empty());
                assert_eq!(message.stop_reason, None);
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                assert_eq!((index, delta.kind.as_str()), (0, "text_delta"));
                text.push_str(&delta.text);
            }
            StreamEvent::MessageDelta { delta, usage } => {
                assert_eq!(delta.stop_reason, "end_turn");
                assert_eq!(usage.output_tokens, 4);
            }
            StreamEvent::Error { .. } => panic!("no error in a healthy stream"),
            _ => {}
        }
    }
    assert_eq!(text.split(' ').count(), 4);
    assert!(text.ends_with('.'));
}

#[tokio::test(start_paused = true)]
async fn openai_streams_end_with_done() {
    let sim = sim_with(ModelScript::new().output_tokens(3));
    let response = send(
        &sim,
        openai(
            "m",
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    let events = parse_sse(&bytes(response.into_body()).await);
    assert!(events.iter().all(|e| e.event.is_none()));
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Chunk> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    // role, 3 words, finish, usage
    assert_eq!(chunks.len(), 6);
    assert!(chunks
        .iter()
        .all(|c| c.object == "chat.completion.chunk" && c.model == "m"));
    assert!(chunks.windows(2).all(|w| w[0].id == w[1].id));
    assert_eq!(
        chunks[0].choices[0].delta.role.as_deref(),
        Some("assistant")
    );
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c.choices[0].delta.content.clone().unwrap())
        .collect();
    assert_eq!(text.split(' ').count(), 3);
    assert_eq!(chunks[4].choices[0].finish_reason.as_deref(), Some("stop"));
    assert!(chunks[5].choices.is_empty());
    assert_eq!(chunks[5].usage.as_ref().unwrap().completion_tokens, 3);
}

#[tokio::test(start_paused = true)]
async fn a_stream_can_fail_after_a_200() {
    let sim = sim_with(
        ModelScript::new()
            .output_tokens(10)
            .fault(Fault::stream_error(2)),
    );

    // Requests that do not stream are not hit.
    assert_eq!(send(&sim, anthropic("m", "")).await.status(), 200);

    let response = send(&sim, anthropic("m", r#","stream":true"#)).await;
    assert_eq!(response.status(), 200);
    let events = parse_sse(&bytes(response.into_body()).await);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(events[5].data, OVERLOADED);
    assert!(matches!(
        serde_json::from_str(&events[5].data).unwrap(),
        StreamEvent::Error { error } if error.kind == "overloaded_error"
    ));

    let response = send(&sim, openai("m", r#","stream":true"#)).await;
    let events = parse_sse(&bytes(response.into_body()).await);
    assert_eq!(events.len(), 4, "role, two deltas, the error; no [DONE]");
    let error: OpenAiError = serde_json::from_str(&events[3].data).unwrap();
    assert_eq!(error.error.kind, "server_error");
    assert_eq!(sim.stats().by_answer["stream_error"], 2);
}

#[tokio::test(start_paused = true)]
async fn malformed_requests_get_the_providers_errors() {
    let sim = sim_with(ModelScript::new());
    let post = |path: &str, body: &'static str| {
        Request::post(path)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    };

    let response = send(&sim, post("/v1/complete", "{}")).await;
    assert_eq!(response.status(), 404);
    let error: AnthropicError = serde_json::from_slice(&bytes(response.into_body()).await).unwrap();
    assert_eq!(error.error.kind, "not_found_error");

    let response = send(&sim, post("/v1/messages", "{not json")).await;
    assert_eq!(response.status(), 400);
    let error: AnthropicError = serde_json::from_slice(&bytes(response.into_body()).await).unwrap();
    assert_eq!(error.error.kind, "invalid_request_error");

    let response = send(&sim, post("/v1/chat/completions", r#"{"messages":[]}"#)).await;
    assert_eq!(response.status(), 400);
    let error: OpenAiError = serde_json::from_slice(&bytes(response.into_body()).await).unwrap();
    assert!(
        error.error.message.contains("model"),
        "{}",
        error.error.message
    );

    let get = Request::get("/v1/messages")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(&sim, get).await.status(), 405);
    assert_eq!(sim.stats().by_answer["rejected"], 4);
    assert!(sim.stats().by_model.is_empty());
}

/// What a brownout stack hands the simulator when the caller's upload breaks while it
/// streams: the first bytes, then a `BrokenBody`.
struct BrokenUpload(bool);

impl http_body::Body for BrokenUpload {
    type Data = bytes::Bytes;
    type Error = brownout_core::error::BrokenBody;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            let error = brownout_core::error::BrokenBody::cut("client went away".into());
            return std::task::Poll::Ready(Some(Err(error)));
        }
        let start = bytes::Bytes::from_static(br#"{"model":"m","messages":["#);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(start))))
    }
}

#[tokio::test]
async fn a_callers_broken_upload_stays_the_callers_error() {
    let sim = sim_with(ModelScript::new());
    let request = Request::post("/v1/messages")
        .body(BrokenUpload(false))
        .unwrap();
    let error = sim
        .clone()
        .oneshot(request)
        .await
        .expect_err("no answer to a broken upload");
    // The simulator's io::Error wraps it; the chain still finds it, and the stack
    // classifies it as the caller's failure, not the upstream's.
    let error = brownout_core::BoxError::from(error);
    assert!(
        brownout_core::error::find::<brownout_core::error::BrokenBody>(error.as_ref()).is_some(),
        "{error}"
    );
    let outcome =
        brownout_core::classify::classify_error(&DefaultClassifier::new(), error.as_ref());
    assert_eq!(outcome.kind(), OutcomeKind::ClientError);
    assert_eq!(sim.stats().received, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stream_can_stall_or_be_cut_before_or_after_its_first_content() {
    use http_body_util::BodyExt;
    for (fault, deltas) in [
        (Fault::stream_cut(0), 0),
        (Fault::stream_cut(2), 2),
        (Fault::stream_stall(0), 0),
        (Fault::stream_stall(3), 3),
    ] {
        let kind = fault.kind();
        let sim = sim_with(ModelScript::new().output_tokens(10).fault(fault));
        // Requests that do not stream are not hit.
        assert_eq!(send(&sim, anthropic("m", "")).await.status(), 200);
        for api in ["anthropic", "openai"] {
            let request = if api == "anthropic" {
                anthropic("m", r#","stream":true"#)
            } else {
                openai("m", r#","stream":true"#)
            };
            let response = send(&sim, request).await;
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut seen = Vec::new();
            let ended = loop {
                match tokio::time::timeout(Duration::from_secs(600), body.frame()).await {
                    Err(_) => break "stalled",
                    Ok(None) => break "ended",
                    Ok(Some(Err(error))) => {
                        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
                        break "cut";
                    }
                    Ok(Some(Ok(frame))) => seen.extend_from_slice(&frame.into_data().unwrap()),
                }
            };
            let expected = if kind == FaultKind::StreamCut {
                "cut"
            } else {
                "stalled"
            };
            assert_eq!(ended, expected, "{kind} {api}");
            let events = parse_sse(&seen);
            let opening = if api == "anthropic" { 3 } else { 1 };
            assert_eq!(events.len(), opening + deltas, "{kind} {api}");
        }
        assert_eq!(sim.stats().by_answer[kind.as_str()], 2);
    }
}
