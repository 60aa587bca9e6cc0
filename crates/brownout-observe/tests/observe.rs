//! The layers' records and the sinks, against in-process services.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_core::{classify::OutcomeKind, Body, BoxError};
use brownout_observe::{
    Answer, Attempt, AttemptLayer, Exchange, MetricsConfig, MetricsSink, ObserveLayer, Sink,
    StatusBoard,
};
use http::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{ServiceBuilder, ServiceExt};

#[derive(Default)]
struct Recorded {
    exchanges: Mutex<Vec<Exchange>>,
    attempts: Mutex<Vec<Attempt>>,
}

impl Sink for Recorded {
    fn exchange(&self, exchange: &Exchange) {
        self.exchanges.lock().unwrap().push(exchange.clone());
    }
    fn attempt(&self, attempt: &Attempt) {
        self.attempts.lock().unwrap().push(attempt.clone());
    }
}

fn request(model: &str) -> Request<Body> {
    Request::post("/v1/messages")
        .header("x-api-key", "sk-secret")
        .body(Body::from(format!(
            r#"{{"model":"{model}","max_tokens":5}}"#
        )))
        .unwrap()
}

fn answer(status: u16) -> Result<Response<Body>, BoxError> {
    let mut response = Response::new(Body::from(
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(response)
}

#[tokio::test]
async fn an_exchange_and_its_attempt_are_recorded_with_model_status_and_outcome() {
    let sink = Arc::new(Recorded::default());
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .layer(AttemptLayer::new(sink.clone()))
        .service(tower::service_fn(|_: Request<Body>| async { answer(529) }));
    let response = service.oneshot(request("claude-opus-4-1")).await.unwrap();
    assert_eq!(response.status(), 529);
    let exchanges = sink.exchanges.lock().unwrap();
    assert_eq!(exchanges.len(), 1);
    let exchange = &exchanges[0];
    assert_eq!(&*exchange.route, "anthropic.messages");
    assert_eq!(exchange.requested_model.as_deref(), Some("claude-opus-4-1"));
    assert_eq!(exchange.answer, Answer::Failed);
    assert_eq!(exchange.status, 529);
    assert_eq!(exchange.attempts, 1);
    let attempts = sink.attempts.lock().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, OutcomeKind::Overloaded);
    assert_eq!(attempts[0].model.as_deref(), Some("claude-opus-4-1"));
    assert_eq!(attempts[0].status, Some(529));
    assert_eq!(attempts[0].attempt, 1);
}

#[tokio::test(start_paused = true)]
async fn a_retried_request_numbers_its_attempts() {
    let sink = Arc::new(Recorded::default());
    let calls = Arc::new(Mutex::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_: Request<Body>| {
            let calls = calls.clone();
            async move {
                let mut n = calls.lock().unwrap();
                *n += 1;
                answer(if *n < 3 { 503 } else { 200 })
            }
        })
    };
    let retry = brownout_retry::RetryLayer::new(
        brownout_retry::RetryConfig::new().max_attempts(3).backoff(
            brownout_retry::Backoff::full_jitter(
                Duration::from_millis(1),
                Duration::from_millis(1),
            )
            .unwrap(),
        ),
    );
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .layer(retry)
        .layer(AttemptLayer::new(sink.clone()))
        .service(upstream);
    let response = service.oneshot(request("m")).await.unwrap();
    assert_eq!(response.status(), 200);
    // A 2xx is recorded once its body is done with (for the tokens it reports).
    drop(response);
    let attempts = sink.attempts.lock().unwrap();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let outcomes: Vec<OutcomeKind> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            OutcomeKind::Overloaded,
            OutcomeKind::Overloaded,
            OutcomeKind::Success
        ]
    );
    let exchange = &sink.exchanges.lock().unwrap()[0];
    assert_eq!(exchange.answer, Answer::Live);
    assert_eq!(exchange.attempts, 3);
}

#[tokio::test]
async fn an_error_of_the_stack_is_recorded_and_handed_back() {
    let sink = Arc::new(Recorded::default());
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .service(tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, BoxError>(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            )))
        }));
    let error = service.oneshot(request("m")).await.unwrap_err();
    assert!(error.to_string().contains("refused"));
    let exchange = &sink.exchanges.lock().unwrap()[0];
    assert_eq!(exchange.answer, Answer::Failed);
    assert_eq!(exchange.status, 502);
}

#[tokio::test]
async fn a_caller_error_is_not_counted_as_a_failure() {
    let sink = Arc::new(Recorded::default());
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .layer(AttemptLayer::new(sink.clone()))
        .service(tower::service_fn(|_: Request<Body>| async {
            let mut response = Response::new(Body::from(
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
            ));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            Ok::<_, BoxError>(response)
        }));
    service.oneshot(request("m")).await.unwrap();
    assert_eq!(
        sink.exchanges.lock().unwrap()[0].answer,
        Answer::CallerError
    );
    assert_eq!(
        sink.attempts.lock().unwrap()[0].outcome,
        OutcomeKind::ClientError
    );
}

#[test]
fn ten_thousand_model_names_keep_the_series_bounded() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let sink = MetricsSink::with_recorder(
        MetricsConfig::new().models(["claude-haiku-4-5", "claude-sonnet-4-5"]),
        Arc::new(recorder),
    );
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(&handle.render());
    for i in 0..10_000 {
        let model: Arc<str> = Arc::from(format!("caller-model-{i}"));
        let mut exchange = Exchange::new(
            Arc::from("anthropic.messages"),
            if i % 2 == 0 {
                Answer::Live
            } else {
                Answer::Fallback
            },
            200,
            Duration::from_millis(3),
        );
        exchange.requested_model = Some(model.clone());
        exchange.served_by = Some(Arc::from(format!("served-{i}")));
        sink.exchange(&exchange);
        let mut attempt = Attempt::new(
            Arc::from(format!("/path/{i}")),
            1,
            OutcomeKind::Success,
            Duration::from_millis(2),
        );
        attempt.model = Some(model);
        sink.attempt(&attempt);
    }
    let text = handle.render();
    assert_eq!(series(&text), before, "no series added by callers' names");
    assert!(!text.contains("caller-model"));
    assert!(text.contains(
        r#"brownout_requests_total{route="anthropic.messages",model="other",outcome="live"} 5000"#
    ));
    assert!(text.contains(
        r#"brownout_requests_total{route="anthropic.messages",model="other",outcome="fallback"} 5000"#
    ));
    assert!(text.contains(r#"brownout_fallbacks_total{from="other",to="other"} 5000"#));
    assert!(text.contains(r#"brownout_attempts_total{model="other",outcome="success"} 10000"#));
}

#[tokio::test(start_paused = true)]
async fn the_board_keeps_an_hour_of_minutes() {
    let board = StatusBoard::new(["m"]);
    let attempt = |outcome| {
        let mut a = Attempt::new(Arc::from("anthropic.messages"), 1, outcome, Duration::ZERO);
        a.model = Some(Arc::from("m"));
        a
    };
    board.attempt(&attempt(OutcomeKind::Success));
    board.attempt(&attempt(OutcomeKind::Overloaded));
    tokio::time::advance(Duration::from_secs(120)).await;
    board.attempt(&attempt(OutcomeKind::Success));
    // A caller's own error says nothing of the upstream.
    board.attempt(&attempt(OutcomeKind::ClientError));
    let status = board.snapshot();
    let m = &status.models[0];
    assert_eq!(m.calls, 3);
    assert_eq!(m.ok[59], 1);
    assert_eq!(m.ok[57], 1);
    assert_eq!(m.failed[57], 1);
    assert!((m.availability.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    // An hour later the old minutes have left the window.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let status = board.snapshot();
    assert_eq!(status.models[0].calls, 0);
    assert_eq!(status.models[0].availability, None);
}

#[test]
fn the_page_escapes_what_callers_name() {
    let board = StatusBoard::new(["<b>m</b>"]);
    let page = board.html();
    assert!(page.contains("&lt;b&gt;m&lt;/b&gt;"));
    assert!(!page.contains("<b>m</b>"));
}

#[tokio::test]
async fn a_breaker_refusal_is_shed_with_the_status_the_gateway_answers() {
    let sink = Arc::new(Recorded::default());
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .service(tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, BoxError>(Box::new(brownout_breaker::CircuitOpen::new(
                Arc::from("m"),
                Some(Duration::from_secs(3)),
            )))
        }));
    let error = service.oneshot(request("m")).await.unwrap_err();
    assert!(
        error.is::<brownout_breaker::CircuitOpen>(),
        "handed back as it was"
    );
    let exchange = &sink.exchanges.lock().unwrap()[0];
    assert_eq!(exchange.answer, Answer::Shed);
    assert_eq!(
        exchange.status, 529,
        "Anthropic's overload status on its route"
    );
    assert_eq!(exchange.attempts, 0);
}

#[tokio::test]
async fn the_tokens_an_answer_reports_are_recorded_when_its_body_ends() {
    use http_body_util::BodyExt;
    let sink = Arc::new(Recorded::default());
    let json = r#"{"type":"message","model":"claude-opus-4-1","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":21,"output_tokens":7}}"#;
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .service(tower::service_fn(move |_: Request<Body>| async move {
            Ok::<_, BoxError>(Response::new(streamed(json)))
        }));
    let response = service.oneshot(request("claude-opus-4-1")).await.unwrap();
    assert!(
        sink.exchanges.lock().unwrap().is_empty(),
        "recorded once the body is read"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, json.as_bytes(), "the bytes pass unchanged");
    let exchanges = sink.exchanges.lock().unwrap();
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0].answer, Answer::Live);
    assert_eq!(
        (exchanges[0].input_tokens, exchanges[0].output_tokens),
        (Some(21), Some(7))
    );
}

/// A body of `text` that is not in memory for the layers: frames to poll.
fn streamed(text: &'static str) -> Body {
    use http_body_util::BodyExt;
    Body::new(
        http_body_util::Full::new(bytes::Bytes::from_static(text.as_bytes())).map_frame(|f| f),
    )
}

#[tokio::test]
async fn a_whole_answer_in_memory_is_recorded_at_once_with_its_tokens() {
    use http_body_util::BodyExt;
    let sink = Arc::new(Recorded::default());
    let json = r#"{"type":"message","content":[{"type":"tool_use","input":{"usage":{"input_tokens":1}}}],"usage":{"input_tokens":21,"output_tokens":7}}"#;
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .service(tower::service_fn(move |_: Request<Body>| async move {
            Ok::<_, BoxError>(Response::new(Body::from(json)))
        }));
    let response = service.oneshot(request("claude-opus-4-1")).await.unwrap();
    {
        let exchanges = sink.exchanges.lock().unwrap();
        assert_eq!(
            exchanges.len(),
            1,
            "recorded with the head: nothing to wait for"
        );
        assert_eq!(
            (exchanges[0].input_tokens, exchanges[0].output_tokens),
            (Some(21), Some(7)),
            "the answer's own usage, not the tool input's"
        );
    }
    let body = response.into_body();
    assert!(body.is_replayable(), "handed on as it was, still in memory");
    let body = body.collect().await.unwrap().to_bytes();
    assert_eq!(body, json.as_bytes(), "the bytes pass unchanged");
    assert_eq!(sink.exchanges.lock().unwrap().len(), 1, "recorded once");
}

#[tokio::test]
async fn a_streamed_answer_s_final_usage_is_recorded_and_a_dropped_one_still_counts() {
    use http_body_util::BodyExt;
    let sink = Arc::new(Recorded::default());
    let events = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .service(tower::service_fn(move |_: Request<Body>| async move {
            Ok::<_, BoxError>(Response::new(streamed(events)))
        }));
    let streamed = || {
        Request::post("/v1/messages")
            .body(Body::from(
                r#"{"model":"claude-opus-4-1","max_tokens":5,"stream":true}"#,
            ))
            .unwrap()
    };
    let response = service.clone().oneshot(streamed()).await.unwrap();
    response.into_body().collect().await.unwrap();
    // A caller who hangs up before reading: recorded when the body is dropped.
    drop(service.oneshot(streamed()).await.unwrap());
    let exchanges = sink.exchanges.lock().unwrap();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(
        (exchanges[0].input_tokens, exchanges[0].output_tokens),
        (Some(40), Some(12))
    );
    assert_eq!(exchanges[1].output_tokens, None);
}

#[tokio::test(start_paused = true)]
async fn a_caller_who_hangs_up_is_recorded_as_its_own_doing() {
    let sink = Arc::new(Recorded::default());
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .service(tower::service_fn(|_: Request<Body>| {
            std::future::pending::<Result<Response<Body>, BoxError>>()
        }));
    let call = service.oneshot(request("claude-opus-4-1"));
    assert!(
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .is_err(),
        "the upstream never answers"
    );
    let exchanges = sink.exchanges.lock().unwrap();
    assert_eq!(exchanges.len(), 1, "recorded once, when the caller left");
    assert_eq!(exchanges[0].answer, Answer::CallerError);
    assert_eq!(exchanges[0].status, 499);
}

/// A body that sends the start of an answer, then fails (a cut connection).
struct CutShort(bool);

impl http_body::Body for CutShort {
    type Data = bytes::Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let first = !std::mem::replace(&mut self.0, true);
        std::task::Poll::Ready(Some(if first {
            Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"{\"type\":",
            )))
        } else {
            Err("connection reset".into())
        }))
    }
}

#[tokio::test]
async fn an_answer_that_fails_half_way_is_a_failure() {
    use http_body_util::BodyExt;
    let sink = Arc::new(Recorded::default());
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(sink.clone()))
        .service(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, BoxError>(Response::new(Body::new(CutShort(false))))
        }));
    let response = service.oneshot(request("claude-opus-4-1")).await.unwrap();
    assert!(response.into_body().collect().await.is_err());
    let exchanges = sink.exchanges.lock().unwrap();
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0].answer, Answer::Failed);
}
