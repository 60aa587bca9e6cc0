//! Canned answers in the provider's own shapes: an Anthropic Messages response, an
//! OpenAI chat completion, and the SSE stream of each.
//!
//! The shapes carry every field the official SDKs require, and no more. Token counts
//! are estimates (a quarter of the answer's characters, rounded up): nothing was billed,
//! and no tokenizer is at hand. Whole streams are rendered at once and sent as one
//! chunk; SSE readers do not depend on how events are split.

use bytes::Bytes;
use serde::Serialize;

/// Which API the request was for, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    /// Anthropic Messages (and anything not on a `/chat/completions` path).
    Anthropic,
    /// OpenAI chat completions.
    OpenAi,
}

impl Provider {
    pub(crate) fn of_path(path: &str) -> Self {
        if path.trim_end_matches('/').ends_with("/chat/completions") {
            Provider::OpenAi
        } else {
            Provider::Anthropic
        }
    }

    pub(crate) fn id_prefix(self) -> &'static str {
        match self {
            Provider::Anthropic => "msg_",
            Provider::OpenAi => "chatcmpl-",
        }
    }
}

/// One answer to render.
pub(crate) struct Answer<'a> {
    pub(crate) provider: Provider,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) id: &'a str,
    pub(crate) model: &'a str,
    /// Seconds since the Unix epoch (OpenAI's `created`).
    pub(crate) created: u64,
    pub(crate) text: &'a str,
}

impl Answer<'_> {
    pub(crate) fn render(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.text.len() * 2 + 512);
        match (self.provider, self.stream) {
            (Provider::Anthropic, false) => write_json(&mut out, &self.anthropic_message(true)),
            (Provider::Anthropic, true) => self.anthropic_stream(&mut out),
            (Provider::OpenAi, false) => write_json(&mut out, &self.openai_completion()),
            (Provider::OpenAi, true) => self.openai_stream(&mut out),
        }
        Bytes::from(out)
    }

    fn output_tokens(&self) -> u64 {
        (self.text.chars().count() as u64).div_ceil(4).max(1)
    }

    fn anthropic_message(&self, complete: bool) -> AnthropicMessage<'_> {
        AnthropicMessage {
            id: self.id,
            kind: "message",
            role: "assistant",
            model: self.model,
            content: if complete {
                Some(TextBlock {
                    kind: "text",
                    text: self.text,
                })
            } else {
                None
            },
            stop_reason: complete.then_some("end_turn"),
            stop_sequence: None,
            usage: AnthropicUsage {
                input_tokens: 0,
                output_tokens: if complete { self.output_tokens() } else { 0 },
            },
        }
    }

    fn anthropic_stream(&self, out: &mut Vec<u8>) {
        let index = 0;
        sse_event(
            out,
            "message_start",
            &MessageStart {
                kind: "message_start",
                message: self.anthropic_message(false),
            },
        );
        sse_event(
            out,
            "content_block_start",
            &BlockStart {
                kind: "content_block_start",
                index,
                content_block: TextBlock {
                    kind: "text",
                    text: "",
                },
            },
        );
        sse_event(out, "ping", &Typed { kind: "ping" });
        sse_event(
            out,
            "content_block_delta",
            &BlockDelta {
                kind: "content_block_delta",
                index,
                delta: TextBlock {
                    kind: "text_delta",
                    text: self.text,
                },
            },
        );
        sse_event(
            out,
            "content_block_stop",
            &BlockStop {
                kind: "content_block_stop",
                index,
            },
        );
        sse_event(
            out,
            "message_delta",
            &MessageDelta {
                kind: "message_delta",
                delta: StopDelta {
                    stop_reason: "end_turn",
                    stop_sequence: None,
                },
                usage: OutputUsage {
                    output_tokens: self.output_tokens(),
                },
            },
        );
        sse_event(
            out,
            "message_stop",
            &Typed {
                kind: "message_stop",
            },
        );
    }

    fn openai_usage(&self) -> OpenAiUsage {
        let completion_tokens = self.output_tokens();
        OpenAiUsage {
            prompt_tokens: 0,
            completion_tokens,
            total_tokens: completion_tokens,
        }
    }

    fn openai_completion(&self) -> Completion<'_> {
        Completion {
            id: self.id,
            object: "chat.completion",
            created: self.created,
            model: self.model,
            choices: [Choice {
                index: 0,
                message: ChoiceMessage {
                    role: "assistant",
                    content: self.text,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: "stop",
            }],
            usage: self.openai_usage(),
        }
    }

    fn chunk<'s>(&'s self, delta: Delta<'s>, finish_reason: Option<&'static str>) -> Chunk<'s> {
        Chunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            // With `include_usage`, every chunk has `"usage": null` until the last.
            usage: self.include_usage.then_some(None),
        }
    }

    fn openai_stream(&self, out: &mut Vec<u8>) {
        let chunk = |delta, finish_reason| self.chunk(delta, finish_reason);
        let first = Delta {
            role: Some("assistant"),
            content: Some(""),
            refusal: Some(None),
        };
        sse_data(out, &chunk(first, None));
        let text = Delta {
            role: None,
            content: Some(self.text),
            refusal: None,
        };
        sse_data(out, &chunk(text, None));
        sse_data(out, &chunk(Delta::default(), Some("stop")));
        if self.include_usage {
            let mut usage = chunk(Delta::default(), None);
            usage.choices.clear();
            usage.usage = Some(Some(self.openai_usage()));
            sse_data(out, &usage);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

fn write_json(out: &mut Vec<u8>, value: &impl Serialize) {
    // Serializing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn sse_event(out: &mut Vec<u8>, name: &str, data: &impl Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    sse_data(out, data);
}

fn sse_data(out: &mut Vec<u8>, data: &impl Serialize) {
    // serde_json escapes every newline inside strings: the JSON is one line.
    out.extend_from_slice(b"data: ");
    write_json(out, data);
    out.extend_from_slice(b"\n\n");
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct AnthropicMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    // Serialized as a list of zero or one block.
    #[serde(serialize_with = "as_list")]
    content: Option<TextBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: AnthropicUsage,
}

fn as_list<S: serde::Serializer>(block: &Option<TextBlock<'_>>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(block.iter())
}

#[derive(Serialize)]
struct AnthropicUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: AnthropicMessage<'a>,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: TextBlock<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: TextBlock<'a>,
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: OutputUsage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: OpenAiUsage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: ChoiceMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChoiceMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'static str>,
}

#[derive(Serialize, Clone, Copy)]
struct OpenAiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    // `None`: absent; `Some(None)`: `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<OpenAiUsage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'static str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(provider: Provider, stream: bool) -> Answer<'static> {
        Answer {
            provider,
            stream,
            include_usage: false,
            id: "id-1",
            model: "m",
            created: 1_700_000_000,
            text: "line\n\"two\"",
        }
    }

    #[test]
    fn anthropic_json_is_exact() {
        let body = answer(Provider::Anthropic, false).render();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"id-1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"line\n\"two\""}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":3}}"#
        );
    }

    #[test]
    fn openai_json_is_exact() {
        let body = answer(Provider::OpenAi, false).render();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"id-1","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"line\n\"two\"","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":0,"completion_tokens":3,"total_tokens":3}}"#
        );
    }

    #[test]
    fn every_sse_data_line_is_one_line() {
        for provider in [Provider::Anthropic, Provider::OpenAi] {
            let body = answer(provider, true).render();
            let text = std::str::from_utf8(&body).unwrap();
            assert!(text.ends_with("\n\n"));
            for event in text.split_terminator("\n\n") {
                assert!(event
                    .lines()
                    .all(|l| l.starts_with("event: ") || l.starts_with("data: ")));
            }
        }
    }

    #[test]
    fn providers_by_path() {
        assert_eq!(Provider::of_path("/v1/chat/completions"), Provider::OpenAi);
        assert_eq!(
            Provider::of_path("/openai/v1/chat/completions/"),
            Provider::OpenAi
        );
        assert_eq!(Provider::of_path("/v1/messages"), Provider::Anthropic);
        assert_eq!(Provider::of_path("/"), Provider::Anthropic);
    }
}
