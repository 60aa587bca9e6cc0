//! What the stream tests share: a strict reading of the providers' streams, as an SDK
//! reads them, and a recorder of what the upstream sent.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// One event of a stream.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a stream into events, strictly: UTF-8, each event `event:` (optional) and
/// one `data:` line, then a blank line; nothing after the last blank line.
pub fn parse_sse(stream: &[u8]) -> Vec<Sse> {
    let text = std::str::from_utf8(stream).expect("SSE is UTF-8");
    assert!(
        text.ends_with("\n\n"),
        "a stream ends with a blank line: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    assert!(event.replace(name.to_owned()).is_none(), "one event line");
                } else if let Some(d) = line.strip_prefix("data: ") {
                    assert!(data.replace(d.to_owned()).is_none(), "one data line");
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            Sse {
                event,
                data: data.expect("every event has data"),
            }
        })
        .collect()
}

/// How an Anthropic stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// `message_delta` then `message_stop`.
    Stop,
    /// An `error` event of this type.
    Error(String),
}

/// What a well-formed Anthropic stream said.
#[derive(Debug)]
pub struct Anthropic {
    pub model: String,
    pub text: String,
    pub blocks: usize,
    pub output_tokens: Option<u64>,
    pub ended: Ended,
    /// The models an `event: brownout` named.
    pub written_by: Option<Vec<String>>,
}

/// Reads an Anthropic stream as an SDK does and checks it is well-formed: one
/// `message_start` first; blocks opened at 0, 1, 2… in order, deltas only for the
/// open block, each closed once; `message_delta` then exactly one `message_stop`
/// last, or an `error` event last; every data JSON whose `type` is the event's
/// name; unknown events (which the SDKs skip) only before the end.
pub fn anthropic(stream: &[u8]) -> Anthropic {
    let events = parse_sse(stream);
    assert!(!events.is_empty());
    let mut model = None;
    let mut text = String::new();
    let mut open: Option<u64> = None;
    let mut next_index = 0u64;
    let mut output_tokens = None;
    let mut ended = None;
    let mut written_by = None;
    let mut saw_delta = false;
    for (i, event) in events.iter().enumerate() {
        assert!(ended.is_none(), "nothing after the end: {event:?}");
        let name = event.event.as_deref().expect("Anthropic events are named");
        let data: Value = serde_json::from_str(&event.data).expect("data is JSON");
        if name != "brownout" {
            assert_eq!(data["type"], name, "the data's type is the event's name");
        }
        match name {
            "message_start" => {
                assert_eq!(i, 0, "message_start comes first, once");
                model = Some(data["message"]["model"].as_str().unwrap().to_owned());
            }
            "ping" => {}
            "content_block_start" => {
                assert!(open.is_none(), "a block starts once the last is closed");
                let index = data["index"].as_u64().unwrap();
                assert_eq!(index, next_index, "indices continue");
                open = Some(index);
                next_index += 1;
            }
            "content_block_delta" => {
                assert_eq!(
                    data["index"].as_u64(),
                    open,
                    "a delta is for the open block"
                );
                if data["delta"]["type"] == "text_delta" {
                    text.push_str(data["delta"]["text"].as_str().unwrap());
                }
                saw_delta = true;
            }
            "content_block_stop" => {
                assert_eq!(data["index"].as_u64(), open, "the open block closes");
                open = None;
            }
            "message_delta" => {
                assert!(open.is_none(), "every block closed before message_delta");
                output_tokens = data["usage"]["output_tokens"].as_u64();
            }
            "message_stop" => {
                assert!(output_tokens.is_some(), "message_delta before message_stop");
                ended = Some(Ended::Stop);
            }
            "error" => {
                ended = Some(Ended::Error(
                    data["error"]["type"].as_str().unwrap().to_owned(),
                ));
            }
            "brownout" => {
                let models = data["models"].as_array().expect("models");
                written_by = Some(
                    models
                        .iter()
                        .map(|m| m.as_str().unwrap().to_owned())
                        .collect(),
                );
            }
            other => panic!("unknown event {other}"),
        }
    }
    let _ = saw_delta;
    Anthropic {
        model: model.expect("a message_start"),
        text,
        blocks: next_index as usize,
        output_tokens,
        ended: ended.expect("the stream ends with message_stop or an error event"),
        written_by,
    }
}

/// What a well-formed OpenAI chat stream said.
#[derive(Debug)]
pub struct Chat {
    pub ids: Vec<String>,
    pub text: String,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    pub completion_tokens: Option<u64>,
    pub written_by: Option<Vec<String>>,
}

/// Reads an OpenAI chat stream: every chunk JSON, `data: [DONE]` last and once, an
/// `{"error":…}` chunk only right before it, and one finish reason at most.
pub fn chat(stream: &[u8]) -> Chat {
    let events = parse_sse(stream);
    let (done, chunks) = events.split_last().expect("events");
    assert_eq!(done.data, "[DONE]", "the stream ends with [DONE]");
    let mut out = Chat {
        ids: Vec::new(),
        text: String::new(),
        finish_reason: None,
        error: None,
        completion_tokens: None,
        written_by: None,
    };
    for chunk in chunks {
        assert!(chunk.event.is_none());
        assert_ne!(chunk.data, "[DONE]", "one [DONE]");
        assert!(out.error.is_none(), "nothing but [DONE] after an error");
        let data: Value = serde_json::from_str(&chunk.data).expect("chunks are JSON");
        if let Some(error) = data.get("error") {
            out.error = Some(error["type"].as_str().unwrap().to_owned());
            continue;
        }
        if let Some(id) = data["id"].as_str() {
            if !out.ids.iter().any(|i| i == id) {
                out.ids.push(id.to_owned());
            }
        }
        if let Some(by) = data.get("brownout") {
            out.written_by = Some(
                by["models"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_owned())
                    .collect(),
            );
        }
        if let Some(usage) = data.get("usage").filter(|u| !u.is_null()) {
            out.completion_tokens = usage["completion_tokens"].as_u64();
        }
        for choice in data["choices"].as_array().unwrap() {
            if let Some(t) = choice["delta"]["content"].as_str() {
                assert!(out.finish_reason.is_none(), "no content after the finish");
                out.text.push_str(t);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                assert!(out.finish_reason.is_none(), "one finish reason");
                out.finish_reason = Some(reason.to_owned());
            }
        }
    }
    out
}

/// The bytes each upstream answer's body carried, in order, as the upstream sent
/// them.
#[derive(Clone, Default)]
pub struct Tape(pub Arc<Mutex<Vec<Answer>>>, pub Arc<Mutex<Vec<Bytes>>>);

/// One answer on the tape: the model asked for, and the bytes sent.
pub type Answer = (String, Vec<u8>);

impl Tape {
    /// `service`, its answers' bodies copied to the tape as they are read, each under
    /// the request's model.
    pub fn record<S>(
        &self,
        service: S,
    ) -> impl tower::Service<
        Request<brownout_core::Body>,
        Response = Response<brownout_core::Body>,
        Error = brownout_core::BoxError,
        Future = impl Send,
    > + Clone
    where
        S: tower::Service<Request<brownout_core::Body>, Response = Response<brownout_sim::SimBody>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<brownout_core::BoxError>,
        S::Future: Send,
    {
        use tower::ServiceExt;
        let tape = self.0.clone();
        let requests = self.1.clone();
        tower::service_fn(move |request: Request<brownout_core::Body>| {
            requests
                .lock()
                .unwrap()
                .push(request.body().bytes().cloned().unwrap_or_default());
            let model = brownout_core::RequestFacts::of(request.extensions())
                .and_then(|f| f.model())
                .unwrap_or("")
                .to_owned();
            let tape = tape.clone();
            let service = service.clone();
            async move {
                let response = service.oneshot(request).await.map_err(Into::into)?;
                let slot = {
                    let mut tape = tape.lock().unwrap();
                    tape.push((model, Vec::new()));
                    tape.len() - 1
                };
                Ok::<_, brownout_core::BoxError>(response.map(move |body| {
                    brownout_core::Body::new(body.map_frame(move |frame| {
                        if let Some(data) = frame.data_ref() {
                            tape.lock().unwrap()[slot].1.extend_from_slice(data);
                        }
                        frame
                    }))
                }))
            }
        })
    }

    /// What the upstream sent for the `n`-th answer: (model, bytes).
    pub fn answer(&self, n: usize) -> (String, Vec<u8>) {
        self.0.lock().unwrap()[n].clone()
    }

    /// The body of the `n`-th request sent upstream.
    pub fn request(&self, n: usize) -> Bytes {
        self.1.lock().unwrap()[n].clone()
    }

    /// How many answers were recorded.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub fn anthropic_request(model: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":1024,"stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}"#
    );
    Request::post("http://sim.test/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-test")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

pub fn openai_request(model: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"Hello"}}]}}"#
    );
    Request::post("http://sim.test/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

pub async fn bytes(body: brownout_core::Body) -> Bytes {
    body.collect()
        .await
        .expect("the body does not fail")
        .to_bytes()
}
