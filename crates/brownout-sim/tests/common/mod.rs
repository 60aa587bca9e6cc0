//! What the tests share: requests, and the providers' formats as serde structs, strict
//! about unknown fields so that a shape drifting from the provider's fails a test.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

pub fn anthropic(model: &str, extra: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":1024,"messages":[{{"role":"user","content":"Hello"}}]{extra}}}"#
    );
    Request::post("http://sim.test/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

pub fn openai(model: &str, extra: &str) -> Request<Full<Bytes>> {
    let body =
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Hello"}}]{extra}}}"#);
    Request::post("http://sim.test/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

pub async fn bytes<B>(body: B) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.unwrap().to_bytes()
}

// ---- Anthropic ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicError {
    #[serde(rename = "type")]
    pub kind: String,
    pub error: AnthropicErrorObject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicErrorObject {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub role: String,
    pub model: String,
    pub content: Vec<TextBlock>,
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextBlock {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// The events of an Anthropic stream.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamEvent {
    MessageStart {
        message: Message,
    },
    ContentBlockStart {
        index: u32,
        content_block: TextBlock,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: TextDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta,
        usage: OutputUsage,
    },
    MessageStop,
    Error {
        error: AnthropicErrorObject,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextDelta {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopDelta {
    pub stop_reason: String,
    pub stop_sequence: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputUsage {
    pub output_tokens: u32,
}

// ---- OpenAI ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiError {
    pub error: OpenAiErrorObject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: CompletionUsage,
    pub system_fingerprint: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub index: u32,
    pub message: ChoiceMessage,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceMessage {
    pub role: String,
    pub content: String,
    pub refusal: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<CompletionUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: ChunkDelta,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkDelta {
    pub role: Option<String>,
    pub content: Option<String>,
}

// ---- Server-sent events ----

/// One server-sent event: its `event:` name, if any, and its data.
#[derive(Debug, PartialEq)]
pub struct Sse {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a stream into events, checking the framing: every event ends with a blank
/// line and has exactly one `data:` line.
pub fn parse_sse(stream: &[u8]) -> Vec<Sse> {
    let text = std::str::from_utf8(stream).expect("SSE is UTF-8");
    assert!(text.ends_with("\n\n"), "a stream ends with a blank line");
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
