//! Resume: a stream that fails after content reached the caller is continued on the
//! next model and stitched into one valid stream. Against the simulator, in paused
//! time.

mod common;

use std::{collections::VecDeque, io, pin::Pin, task::Poll, time::Duration};

use brownout_core::Body;
use brownout_fallback::{
    stream::{AfterFirstByte, StreamConfig, StreamGuardLayer, StreamResumes},
    FallbackConfig, FallbackLayer, Target,
};
use brownout_sim::{Fault, ModelScript, Script, Sim};
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use serde_json::Value;
use tower::{Layer, ServiceExt};

const SONNET: &str = "claude-sonnet-4-5";
const HAIKU: &str = "claude-haiku-4-5";
const GPT: &str = "gpt-4.1";
const MINI: &str = "gpt-4.1-mini";

fn sim(first: &str, first_fault: Fault, second: &str, second_faults: &[Fault]) -> Sim {
    let model = || {
        ModelScript::new()
            .output_tokens(12)
            .stream_interval(Duration::from_millis(20))
    };
    let mut second_script = model();
    for fault in second_faults {
        second_script = second_script.fault(fault.clone());
    }
    Sim::new(
        Script::new()
            .seed(5)
            .model(first, model().fault(first_fault))
            .model(second, second_script),
    )
}

fn guard() -> StreamGuardLayer {
    StreamGuardLayer::new(StreamConfig::new().idle_timeout(Some(Duration::from_secs(10))))
}

fn resuming(first: &str, second: &str) -> FallbackLayer {
    FallbackLayer::new(
        FallbackConfig::new([Target::new(first), Target::new(second)])
            .unwrap()
            .served_header_default()
            .after_first_byte(AfterFirstByte::Resume),
    )
}

#[tokio::test(start_paused = true)]
async fn an_anthropic_stream_failing_after_content_is_finished_by_the_next_model() {
    for fault in [
        Fault::stream_error(4),
        Fault::stream_stall(4),
        Fault::stream_cut(4),
    ] {
        let kind = fault.kind();
        let sim = sim(SONNET, fault, HAIKU, &[]);
        let tape = Tape::default();
        let client = resuming(SONNET, HAIKU).layer(guard().layer(tape.record(sim.clone())));
        let response = client.oneshot(anthropic_request(SONNET)).await.unwrap();
        assert_eq!(response.status(), 200);
        let resumes = response
            .extensions()
            .get::<StreamResumes>()
            .unwrap()
            .clone();
        let body = bytes(response.into_body()).await;
        // Parsed as an SDK does: one message_start, indices that continue, one stop.
        let stream = anthropic(&body);
        assert_eq!(stream.ended, Ended::Stop, "{kind}");
        assert_eq!(stream.model, SONNET, "the message the caller started");
        assert_eq!(stream.blocks, 1, "{kind}: the text block goes on");
        let (_, first) = tape.answer(0);
        let first_text = anthropic_text(&first);
        let (model, second) = tape.answer(1);
        assert_eq!(model, HAIKU);
        let second_text = anthropic_text(&second);
        assert_eq!(stream.text, format!("{first_text}{second_text}"), "{kind}");
        assert_eq!(first_text.split_whitespace().count(), 4);
        // Output tokens summed: four deltas from Sonnet, twelve words from Haiku.
        assert_eq!(stream.output_tokens, Some(4 + 12));
        assert_eq!(
            stream.written_by,
            Some(vec![SONNET.to_owned(), HAIKU.to_owned()])
        );
        let models: Vec<String> = resumes.models().iter().map(|m| m.to_string()).collect();
        assert_eq!(models, [SONNET, HAIKU]);
        assert!(resumes.resumed());
        // Haiku was asked to go on from the text so far, as an assistant prefill.
        let continuation: Value = serde_json::from_slice(&tape.request(1)).unwrap();
        assert_eq!(continuation["model"], HAIKU);
        let messages = continuation["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(messages[1]["content"], first_text.trim_end());
    }
}

fn anthropic_text(stream: &[u8]) -> String {
    parse_sse(stream)
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .map(|e| {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            data["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_openai_stream_failing_after_content_is_finished_by_the_next_model() {
    for fault in [Fault::stream_error(4), Fault::stream_cut(4)] {
        let sim = sim(GPT, fault, MINI, &[]);
        let tape = Tape::default();
        let client = resuming(GPT, MINI).layer(guard().layer(tape.record(sim.clone())));
        let response = client.oneshot(openai_request(GPT)).await.unwrap();
        let body = bytes(response.into_body()).await;
        let stream = chat(&body);
        assert_eq!(stream.error, None);
        assert_eq!(stream.finish_reason.as_deref(), Some("stop"));
        assert_eq!(stream.ids.len(), 1, "one completion id throughout");
        assert_eq!(stream.completion_tokens, Some(4 + 12), "usage summed");
        assert_eq!(
            stream.written_by,
            Some(vec![GPT.to_owned(), MINI.to_owned()])
        );
        let first = chat_text(&tape.answer(0).1);
        let second = chat_text(&tape.answer(1).1);
        assert_eq!(first.split_whitespace().count(), 4);
        assert_eq!(stream.text, format!("{first}{second}"));
        let continuation: Value = serde_json::from_slice(&tape.request(1)).unwrap();
        let messages = continuation["messages"].as_array().unwrap();
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(messages[2]["role"], "user");
    }
}

#[tokio::test(start_paused = true)]
async fn when_the_next_model_fails_too_the_stream_ends_well_formed() {
    // Haiku fails before its first content: no part to stitch, so the caller gets
    // Sonnet's own error event as the end.
    let sim = sim(
        SONNET,
        Fault::stream_error(4),
        HAIKU,
        &[Fault::stream_error(0)],
    );
    let client = resuming(SONNET, HAIKU).layer(guard().layer(sim.clone()));
    let response = client.oneshot(anthropic_request(SONNET)).await.unwrap();
    let stream = anthropic(&bytes(response.into_body()).await);
    assert_eq!(stream.ended, Ended::Error("overloaded_error".into()));
    assert_eq!(sim.stats().by_model[HAIKU], 1);
}

/// The text of an OpenAI stream as sent, whole or not.
fn chat_text(stream: &[u8]) -> String {
    let mut text = String::new();
    for event in parse_sse(stream) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        if let Some(t) = data["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    text
}

/// A body of these frames (an error is the connection cut).
struct Frames(VecDeque<Result<Bytes, io::Error>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.pop_front().map(|f| f.map(http_body::Frame::data)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_tool_use_cut_mid_way_is_ended_not_resumed() {
    let events = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me look."}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"search","input":{}}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\": \"wea"}}"#,
        ),
    ];
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let upstream = tower::service_fn(move |_: Request<Body>| {
        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let mut frames: VecDeque<Result<Bytes, io::Error>> = events
                .iter()
                .map(|(name, data)| Ok(Bytes::from(format!("event: {name}\ndata: {data}\n\n"))))
                .collect();
            frames.push_back(Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut")));
            let _ = n;
            Ok::<_, io::Error>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Frames(frames))
                    .unwrap(),
            )
        }
    });
    let client = resuming(SONNET, HAIKU).layer(guard().layer(upstream));
    let response = client.oneshot(anthropic_request(SONNET)).await.unwrap();
    let stream = anthropic(&bytes(response.into_body()).await);
    assert_eq!(stream.ended, Ended::Error("api_error".into()));
    assert_eq!(stream.written_by, None);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no second model"
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_that_never_ends_is_not_held_whole() {
    let start = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        ),
    ];
    let end = [
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let polled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let polls = polled.clone();
    let upstream = tower::service_fn(move |_: Request<Body>| {
        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let polls = polls.clone();
        async move {
            let event = |(name, data): &(&str, &str)| -> Result<Bytes, io::Error> {
                Ok(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
            };
            let mut frames: VecDeque<Result<Bytes, io::Error>> = start.iter().map(event).collect();
            if n == 0 {
                // Then 4 MiB of one event that never ends, in 64 KiB frames.
                for _ in 0..64 {
                    frames.push_back(Ok(Bytes::from(vec![b'x'; 64 * 1024])));
                }
            } else {
                frames.extend(end.iter().map(event));
            }
            Ok::<_, io::Error>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Polled(
                        Frames(frames),
                        if n == 0 { Some(polls) } else { None },
                    ))
                    .unwrap(),
            )
        }
    });
    let client = resuming(SONNET, HAIKU).layer(guard().layer(upstream));
    let response = client.oneshot(anthropic_request(SONNET)).await.unwrap();
    let body = bytes(response.into_body()).await;
    assert!(
        body.len() < 64 * 1024,
        "the endless event was not passed on"
    );
    let stream = anthropic(&body);
    assert_eq!(stream.ended, Ended::Stop, "finished by the next model");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    let read = polled.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        read < 3 + 32,
        "given up after about 1 MiB of the endless event, not read whole: {read} frames"
    );
}

/// Frames, counting how many were read.
struct Polled(
    Frames,
    Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
);

impl http_body::Body for Polled {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        if let Some(count) = &self.1 {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Pin::new(&mut self.0).poll_frame(cx)
    }
}
