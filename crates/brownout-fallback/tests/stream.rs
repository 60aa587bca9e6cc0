//! Streams that fail half-way, against the simulator, in paused time: before the
//! first content the attempt fails and the cascade moves on; after it the stream is
//! ended well-formed (or resumed, see `resume.rs`).

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_core::{event::Event, BoxError};
use brownout_fallback::{
    stream::{StreamConfig, StreamEvent, StreamFailed, StreamFailure, StreamGuardLayer},
    FallbackConfig, FallbackLayer, Target,
};
use brownout_sim::{Fault, ModelScript, Script, Sim};
use common::*;
use tower::{Layer, ServiceExt};

const SONNET: &str = "claude-sonnet-4-5";
const HAIKU: &str = "claude-haiku-4-5";
const GPT: &str = "gpt-4.1";
const MINI: &str = "gpt-4.1-mini";

fn sim(first: &str, second: &str, fault: Fault) -> Sim {
    let model = || {
        ModelScript::new()
            .output_tokens(12)
            .stream_interval(Duration::from_millis(20))
    };
    Sim::new(
        Script::new()
            .seed(3)
            .model(first, model().fault(fault))
            .model(second, model()),
    )
}

fn guard() -> StreamGuardLayer {
    StreamGuardLayer::new(
        StreamConfig::new()
            .first_event_timeout(Duration::from_secs(5))
            .unwrap()
            .idle_timeout(Some(Duration::from_secs(10))),
    )
}

fn cascade(first: &str, second: &str) -> FallbackLayer {
    FallbackLayer::new(
        FallbackConfig::new([Target::new(first), Target::new(second)])
            .unwrap()
            .served_header_default(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_first_content_falls_back_to_one_clean_stream() {
    for fault in [
        Fault::stream_error(0),
        Fault::stream_stall(0),
        Fault::stream_cut(0),
    ] {
        for (first, second) in [(SONNET, HAIKU), (GPT, MINI)] {
            let kind = fault.kind();
            let sim = sim(first, second, fault.clone());
            let tape = Tape::default();
            let client = cascade(first, second).layer(guard().layer(tape.record(sim.clone())));
            let request = if first == SONNET {
                anthropic_request(first)
            } else {
                openai_request(first)
            };
            let response = client.oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200, "{kind} {first}");
            assert_eq!(response.headers()["x-brownout-model"], second);
            let body = bytes(response.into_body()).await;
            assert_eq!(tape.len(), 2, "{kind}: the first model, then the second");
            let (model, sent) = tape.answer(1);
            assert_eq!(model, second);
            assert_eq!(
                &body[..],
                &sent[..],
                "{kind}: byte for byte what {second} sent"
            );
            if first == SONNET {
                let stream = anthropic(&body);
                assert_eq!(stream.ended, Ended::Stop);
                assert_eq!(stream.model, second);
            } else {
                let stream = chat(&body);
                assert_eq!(stream.error, None);
                assert_eq!(stream.finish_reason.as_deref(), Some("stop"));
            }
            assert_eq!(sim.stats().by_answer[kind.as_str()], 1);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_attempts_failure_is_classified_like_any_other() {
    use brownout_core::classify::{classify_error, DefaultClassifier};
    use brownout_core::OutcomeKind;
    for (fault, expected, failure) in [
        (
            Fault::stream_stall(0),
            OutcomeKind::Timeout,
            StreamFailure::Stalled,
        ),
        (
            Fault::stream_cut(0),
            OutcomeKind::ConnectionFailed,
            StreamFailure::Cut,
        ),
    ] {
        let sim = sim(SONNET, HAIKU, fault);
        let error = guard()
            .layer(sim)
            .oneshot(anthropic_request(SONNET))
            .await
            .unwrap_err();
        let failed = error
            .downcast_ref::<StreamFailed>()
            .expect("a StreamFailed");
        assert_eq!(failed.failure(), failure);
        assert_eq!(
            classify_error(&DefaultClassifier::new(), &*error).kind(),
            expected
        );
    }
    // An overloaded_error event is the 529 it stands for.
    let sim = sim(SONNET, HAIKU, Fault::stream_error(0));
    let response = guard()
        .layer(sim)
        .oneshot(anthropic_request(SONNET))
        .await
        .unwrap();
    assert_eq!(response.status(), 529);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(
        response.headers().contains_key("request-id"),
        "the head's own headers stay"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_and_breaker_see_a_failure_before_the_first_content() {
    use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy};
    use brownout_retry::{RetryConfig, RetryLayer};
    let sim = sim(SONNET, HAIKU, Fault::stream_error(0));
    let breakers = CircuitBreakerLayer::new(
        BreakerConfig::new().policy(FailurePolicy::consecutive(3).unwrap()),
    );
    let handle = breakers.handle();
    let client = FallbackLayer::new(
        FallbackConfig::new([Target::new(SONNET), Target::new(HAIKU)])
            .unwrap()
            .health(breakers.handle())
            .served_header_default(),
    )
    .layer(
        breakers.layer(
            RetryLayer::new(RetryConfig::new().max_attempts(3).no_budget().seed(1))
                .layer(guard().layer(sim.clone())),
        ),
    );
    let response = client
        .clone()
        .oneshot(anthropic_request(SONNET))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-brownout-model"], HAIKU);
    assert_eq!(
        anthropic(&bytes(response.into_body()).await).ended,
        Ended::Stop
    );
    // Three attempts at Sonnet (retried as overloads), then Haiku.
    assert_eq!(sim.stats().by_model[SONNET], 3);
    assert_eq!(sim.stats().by_model[HAIKU], 1);
    let _ = handle;
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_content_ends_the_stream_well_formed() {
    for fault in [
        Fault::stream_error(4),
        Fault::stream_stall(4),
        Fault::stream_cut(4),
    ] {
        let kind = fault.kind();
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let seen = events.clone();
        let guard = StreamGuardLayer::new(
            StreamConfig::new()
                .idle_timeout(Some(Duration::from_secs(10)))
                .listener(move |event: &Event| seen.lock().unwrap().push(event.clone())),
        );
        // Anthropic: the stream ends with one error event of the provider's type.
        let sim = sim(SONNET, HAIKU, fault.clone());
        let client = cascade(SONNET, HAIKU).layer(guard.clone().layer(sim.clone()));
        let response = client
            .clone()
            .oneshot(anthropic_request(SONNET))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-brownout-model"], SONNET);
        let stream = anthropic(&bytes(response.into_body()).await);
        let expected = match kind.as_str() {
            "stream_error" => "overloaded_error",
            "stream_stall" => "timeout_error",
            _ => "api_error",
        };
        assert_eq!(stream.ended, Ended::Error(expected.into()), "{kind}");
        assert_eq!(stream.text.split_whitespace().count(), 4);
        assert_eq!(
            sim.stats().by_model.get(HAIKU),
            None,
            "no fallback after content"
        );

        // OpenAI chat: an error chunk, then [DONE].
        let sim = self::sim(GPT, MINI, fault);
        let client = cascade(GPT, MINI).layer(guard.layer(sim));
        let response = client.oneshot(openai_request(GPT)).await.unwrap();
        let stream = chat(&bytes(response.into_body()).await);
        assert_eq!(stream.error.as_deref(), Some("server_error"), "{kind}");
        assert_eq!(stream.finish_reason, None);
        assert_eq!(stream.text.split_whitespace().count(), 4);

        let events = events.lock().unwrap();
        assert_eq!(events.len(), 2);
        for event in events.iter() {
            assert!(matches!(
                event.data::<StreamEvent>(),
                Some(StreamEvent::EndedAfterContent { .. })
            ));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn whole_streams_and_other_answers_pass_untouched() {
    let sim = Sim::new(
        Script::new().model(
            SONNET,
            ModelScript::new()
                .output_tokens(5)
                .stream_interval(Duration::from_millis(5)),
        ),
    );
    let tape = Tape::default();
    let client = guard().layer(tape.record(sim));
    for request in [
        anthropic_request(SONNET),
        openai_request(SONNET),
        // Not a stream: the JSON answer as it is.
        http::Request::post("http://sim.test/v1/messages")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                r#"{{"model":"{SONNET}","max_tokens":64,"messages":[]}}"#
            ))))
            .unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let (i, request) = request;
        let request = request.map(brownout_core::Body::new);
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = bytes(response.into_body()).await;
        assert_eq!(&body[..], &tape.answer(i).1[..]);
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_byte_waits_for_the_first_content_and_no_longer() {
    use http_body_util::BodyExt;
    use tokio::time::Instant;
    let sim = Sim::new(
        Script::new().model(
            SONNET,
            ModelScript::new()
                .output_tokens(5)
                .stream_interval(Duration::from_millis(30)),
        ),
    );
    let start = Instant::now();
    let response = guard()
        .layer(sim)
        .oneshot(anthropic_request(SONNET))
        .await
        .unwrap();
    // message_start at 0, content_block_start at 30 ms, ping at 60 ms, the first
    // delta at 90 ms: the head and the held events come with the delta.
    assert_eq!(start.elapsed(), Duration::from_millis(90));
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"event: message_start"));
    assert_eq!(start.elapsed(), Duration::from_millis(90));
}

#[test]
fn a_zero_first_event_timeout_is_refused() {
    let error = StreamConfig::new()
        .first_event_timeout(Duration::ZERO)
        .unwrap_err();
    assert_eq!(error.key(), "first_event_timeout");
    let _: Option<BoxError> = None;
}
