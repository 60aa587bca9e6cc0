//! The providers' response shapes, rendered byte for byte: an Anthropic Messages
//! response and its server-sent events, an OpenAI chat completion and its chunks, an
//! OpenAI Responses API `response` and its events, the error bodies of both
//! providers, and SSE framing.
//!
//! What is said is a [`Reply`]; how closely the rendering copies the providers' own
//! quirks (a `system_fingerprint`, `"usage": null` chunks, the spacing of a ping) is a
//! [`Style`]. Streams come as one buffer (`*_sse`) or as one [`Bytes`] per event
//! (`*_events`, `openai_chunks`), for callers that pace them; an [`Ending`] can cut a
//! stream with an error event after some deltas, as a failing provider does.
//!
//! ```
//! use brownout_core::shape::{self, Reply, Stop};
//!
//! let reply = Reply {
//!     id: "msg_1",
//!     model: "claude-sonnet-4-5",
//!     created: 1_700_000_000,
//!     pieces: &["Hello", ", world."],
//!     input_tokens: 12,
//!     output_tokens: 3,
//!     stop: Stop::EndTurn,
//! };
//! let body = shape::anthropic_message(&reply);
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["content"][0]["text"], "Hello, world.");
//! assert_eq!(json["stop_reason"], "end_turn");
//!
//! let error = shape::openai_error("Slow down.", "requests", None, Some("rate_limit_exceeded"));
//! assert_eq!(
//!     error,
//!     br#"{"error":{"message":"Slow down.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
//! );
//! ```

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;

/// The last frame of an OpenAI stream.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// Why an answer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    /// The model finished: Anthropic's `end_turn`, OpenAI's `stop`.
    #[default]
    EndTurn,
    /// The request's token limit cut the answer: Anthropic's `max_tokens`, OpenAI's
    /// `length`.
    MaxTokens,
}

impl Stop {
    /// The Anthropic `stop_reason`.
    pub fn anthropic(self) -> &'static str {
        match self {
            Stop::EndTurn => "end_turn",
            Stop::MaxTokens => "max_tokens",
        }
    }

    /// The OpenAI `finish_reason`.
    pub fn openai(self) -> &'static str {
        match self {
            Stop::EndTurn => "stop",
            Stop::MaxTokens => "length",
        }
    }
}

/// What an answer says, whatever the provider's shape.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The answer's id (`msg_…`, `chatcmpl-…`).
    pub id: &'a str,
    /// The model that answered.
    pub model: &'a str,
    /// Seconds since the Unix epoch: OpenAI's `created` (Anthropic has none).
    pub created: u64,
    /// The text, as the stream's deltas: one delta per piece. Whole answers hold the
    /// pieces joined.
    pub pieces: &'a [&'a str],
    /// Tokens of the prompt.
    pub input_tokens: u64,
    /// Tokens of the answer.
    pub output_tokens: u64,
    /// Why the answer stopped.
    pub stop: Stop,
}

impl Reply<'_> {
    fn text(&self) -> Cow<'_, str> {
        match self.pieces {
            [] => Cow::Borrowed(""),
            [one] => Cow::Borrowed(one),
            many => Cow::Owned(many.concat()),
        }
    }
}

/// How closely a rendering copies the providers' own quirks. The default copies none
/// of them: every field the official SDKs require, and no more.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style<'a> {
    /// OpenAI's `system_fingerprint`, on completions and every chunk, when set.
    pub system_fingerprint: Option<&'a str>,
    /// The `output_tokens` of Anthropic's `message_start` (Anthropic sends 1).
    pub start_output_tokens: u64,
    /// Anthropic's ping as Anthropic writes it: `{"type": "ping"}`, with a space.
    pub spaced_ping: bool,
    /// With `include_usage`, every OpenAI chunk before the usage chunk carries
    /// `"usage":null`, as OpenAI's do; otherwise they have no `usage`.
    pub null_usage: bool,
    /// OpenAI's first chunk carries `"refusal":null` next to its role.
    pub role_refusal: bool,
}

/// How a stream ends.
#[derive(Debug, Clone, Copy, Default)]
pub enum Ending<'a> {
    /// The answer is whole: the stop reason, the usage and the end of the stream.
    #[default]
    Complete,
    /// After `after` content deltas (or all of them, if there are fewer), the stream
    /// fails with one error event whose data is `body`, and nothing follows it.
    Error {
        /// How many content deltas come before the error.
        after: usize,
        /// The error event's data, such as an [`anthropic_error`] or [`openai_error`].
        body: &'a [u8],
    },
}

impl Ending<'_> {
    /// How many deltas come before the end, at most.
    fn deltas(self) -> usize {
        match self {
            Ending::Complete => usize::MAX,
            Ending::Error { after, .. } => after,
        }
    }
}

// ---- Framing ---------------------------------------------------------------------

/// One server-sent event: `event: {event}\n` when named, then `data: {data}\n\n`.
/// `data` must be one line (serialized JSON is).
pub fn sse_frame(event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    write_sse_frame(&mut out, event, data);
    Bytes::from(out)
}

/// [`sse_frame`], appended to `out`.
pub fn write_sse_frame(out: &mut Vec<u8>, event: Option<&str>, data: &[u8]) {
    open_frame(out, event);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

fn open_frame(out: &mut Vec<u8>, event: Option<&str>) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
}

fn write_json(out: &mut Vec<u8>, value: &impl Serialize) {
    // These plain structs of strings and numbers serialize into a Vec without fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn json(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_json(&mut out, value);
    out
}

/// Where a stream's frames go: one buffer, or one [`Bytes`] each.
trait Frames {
    fn raw(&mut self, event: Option<&str>, data: &[u8]);
    fn json(&mut self, event: Option<&str>, data: &impl Serialize);
    /// [`SSE_DONE`].
    fn done(&mut self);
}

impl Frames for Vec<u8> {
    fn raw(&mut self, event: Option<&str>, data: &[u8]) {
        write_sse_frame(self, event, data);
    }

    fn json(&mut self, event: Option<&str>, data: &impl Serialize) {
        // serde_json escapes every newline inside strings: the JSON is one line.
        open_frame(self, event);
        write_json(self, data);
        self.extend_from_slice(b"\n\n");
    }

    fn done(&mut self) {
        self.extend_from_slice(SSE_DONE);
    }
}

impl Frames for Vec<Bytes> {
    fn raw(&mut self, event: Option<&str>, data: &[u8]) {
        self.push(sse_frame(event, data));
    }

    fn json(&mut self, event: Option<&str>, data: &impl Serialize) {
        let mut frame = Vec::with_capacity(160);
        frame.json(event, data);
        self.push(Bytes::from(frame));
    }

    fn done(&mut self) {
        self.push(Bytes::from_static(SSE_DONE));
    }
}

// ---- Anthropic -------------------------------------------------------------------

#[derive(Serialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [TextBlock<'a>],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: MessageUsage,
}

#[derive(Serialize)]
struct MessageUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: Message<'a>,
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
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicErrorObject<'a>,
}

#[derive(Serialize)]
struct AnthropicErrorObject<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// A whole Anthropic Messages response: one text block of the pieces joined.
pub fn anthropic_message(reply: &Reply<'_>) -> Vec<u8> {
    let text = reply.text();
    json(&Message {
        id: reply.id,
        kind: "message",
        role: "assistant",
        model: reply.model,
        content: &[TextBlock {
            kind: "text",
            text: &text,
        }],
        stop_reason: Some(reply.stop.anthropic()),
        stop_sequence: None,
        usage: MessageUsage {
            input_tokens: reply.input_tokens,
            output_tokens: reply.output_tokens,
        },
    })
}

/// An Anthropic Messages stream, one [`Bytes`] per event: `message_start`,
/// `content_block_start`, `ping`, a `content_block_delta` per piece,
/// `content_block_stop`, `message_delta` (stop reason and usage) and `message_stop`;
/// or, with [`Ending::Error`], an `error` event in place of the deltas' rest and all
/// that follows them.
pub fn anthropic_events(reply: &Reply<'_>, style: &Style<'_>, ending: Ending<'_>) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(reply.pieces.len() + 7);
    anthropic_stream(&mut frames, reply, style, ending);
    frames
}

/// [`anthropic_events`], as one buffer.
pub fn anthropic_sse(reply: &Reply<'_>, style: &Style<'_>, ending: Ending<'_>) -> Vec<u8> {
    let text_len: usize = reply.pieces.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(text_len * 2 + 100 * reply.pieces.len() + 800);
    anthropic_stream(&mut out, reply, style, ending);
    out
}

fn anthropic_stream(
    out: &mut impl Frames,
    reply: &Reply<'_>,
    style: &Style<'_>,
    ending: Ending<'_>,
) {
    let index = 0;
    out.json(
        Some("message_start"),
        &MessageStart {
            kind: "message_start",
            message: Message {
                id: reply.id,
                kind: "message",
                role: "assistant",
                model: reply.model,
                content: &[],
                stop_reason: None,
                stop_sequence: None,
                usage: MessageUsage {
                    input_tokens: reply.input_tokens,
                    output_tokens: style.start_output_tokens,
                },
            },
        },
    );
    out.json(
        Some("content_block_start"),
        &BlockStart {
            kind: "content_block_start",
            index,
            content_block: TextBlock {
                kind: "text",
                text: "",
            },
        },
    );
    if style.spaced_ping {
        out.raw(Some("ping"), br#"{"type": "ping"}"#);
    } else {
        out.json(Some("ping"), &Typed { kind: "ping" });
    }
    for piece in reply.pieces.iter().take(ending.deltas()) {
        out.json(
            Some("content_block_delta"),
            &BlockDelta {
                kind: "content_block_delta",
                index,
                delta: TextBlock {
                    kind: "text_delta",
                    text: piece,
                },
            },
        );
    }
    if let Ending::Error { body, .. } = ending {
        out.raw(Some("error"), body);
        return;
    }
    out.json(
        Some("content_block_stop"),
        &BlockStop {
            kind: "content_block_stop",
            index,
        },
    );
    out.json(
        Some("message_delta"),
        &MessageDelta {
            kind: "message_delta",
            delta: StopDelta {
                stop_reason: reply.stop.anthropic(),
                stop_sequence: None,
            },
            usage: OutputUsage {
                output_tokens: reply.output_tokens,
            },
        },
    );
    out.json(
        Some("message_stop"),
        &Typed {
            kind: "message_stop",
        },
    );
}

/// An Anthropic error body: `{"type":"error","error":{"type":…,"message":…}}`.
pub fn anthropic_error(kind: &str, message: &str) -> Vec<u8> {
    json(&AnthropicError {
        kind: "error",
        error: AnthropicErrorObject { kind, message },
    })
}

// ---- OpenAI ----------------------------------------------------------------------

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: CompletionUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
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
    refusal: Option<()>,
}

#[derive(Serialize, Clone, Copy)]
struct CompletionUsage {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    choices: &'a [ChunkChoice<'a>],
    // `None`: absent; `Some(None)`: `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<CompletionUsage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    // `None`: absent; `Some(None)`: `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorObject<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

fn openai_usage(reply: &Reply<'_>) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: reply.input_tokens,
        completion_tokens: reply.output_tokens,
        total_tokens: reply.input_tokens + reply.output_tokens,
    }
}

/// A whole OpenAI chat completion: one choice, the pieces joined.
pub fn openai_completion(reply: &Reply<'_>, style: &Style<'_>) -> Vec<u8> {
    let text = reply.text();
    json(&Completion {
        id: reply.id,
        object: "chat.completion",
        created: reply.created,
        model: reply.model,
        choices: [Choice {
            index: 0,
            message: ChoiceMessage {
                role: "assistant",
                content: &text,
                refusal: None,
            },
            logprobs: None,
            finish_reason: reply.stop.openai(),
        }],
        usage: openai_usage(reply),
        system_fingerprint: style.system_fingerprint,
    })
}

/// An OpenAI chat completion stream, one [`Bytes`] per event: the role chunk, a
/// content chunk per piece, the finish chunk, with `include_usage` the usage chunk,
/// and `data: [DONE]`; or, with [`Ending::Error`], an error event in place of the
/// pieces' rest and all that follows them.
pub fn openai_chunks(
    reply: &Reply<'_>,
    style: &Style<'_>,
    include_usage: bool,
    ending: Ending<'_>,
) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(reply.pieces.len() + 4);
    openai_stream(&mut frames, reply, style, include_usage, ending);
    frames
}

/// [`openai_chunks`], as one buffer.
pub fn openai_sse(
    reply: &Reply<'_>,
    style: &Style<'_>,
    include_usage: bool,
    ending: Ending<'_>,
) -> Vec<u8> {
    let text_len: usize = reply.pieces.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(text_len * 2 + 200 * reply.pieces.len() + 800);
    openai_stream(&mut out, reply, style, include_usage, ending);
    out
}

fn openai_stream<O: Frames>(
    out: &mut O,
    reply: &Reply<'_>,
    style: &Style<'_>,
    include_usage: bool,
    ending: Ending<'_>,
) {
    // With `include_usage`, OpenAI's chunks have `"usage": null` until the last.
    let usage = (include_usage && style.null_usage).then_some(None);
    let chunk = |out: &mut O, delta, finish_reason| {
        out.json(
            None,
            &Chunk {
                id: reply.id,
                object: "chat.completion.chunk",
                created: reply.created,
                model: reply.model,
                system_fingerprint: style.system_fingerprint,
                choices: &[ChunkChoice {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason,
                }],
                usage,
            },
        );
    };
    let first = ChunkDelta {
        role: Some("assistant"),
        content: Some(""),
        refusal: style.role_refusal.then_some(None),
    };
    chunk(out, first, None);
    for piece in reply.pieces.iter().take(ending.deltas()) {
        let delta = ChunkDelta {
            content: Some(piece),
            ..ChunkDelta::default()
        };
        chunk(out, delta, None);
    }
    if let Ending::Error { body, .. } = ending {
        out.raw(None, body);
        return;
    }
    chunk(out, ChunkDelta::default(), Some(reply.stop.openai()));
    if include_usage {
        out.json(
            None,
            &Chunk {
                id: reply.id,
                object: "chat.completion.chunk",
                created: reply.created,
                model: reply.model,
                system_fingerprint: style.system_fingerprint,
                choices: &[],
                usage: Some(Some(openai_usage(reply))),
            },
        );
    }
    out.done();
}

/// An OpenAI error body: `{"error":{"message":…,"type":…,"param":…,"code":…}}`.
pub fn openai_error(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    json(&OpenAiError {
        error: OpenAiErrorObject {
            message,
            kind,
            param,
            code,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const PIECES: &[&str] = &["line", "\n\"two\"", " ü."];

    fn reply(stop: Stop) -> Reply<'static> {
        Reply {
            id: "id-1",
            model: "m",
            created: 1_700_000_000,
            pieces: PIECES,
            input_tokens: 5,
            output_tokens: 3,
            stop,
        }
    }

    const QUIRKS: Style<'static> = Style {
        system_fingerprint: Some("fp_1"),
        start_output_tokens: 1,
        spaced_ping: true,
        null_usage: true,
        role_refusal: true,
    };

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The (event name, data) of every frame of a stream, checking the framing.
    fn events(stream: &[u8]) -> Vec<(Option<String>, String)> {
        let text = std::str::from_utf8(stream).unwrap();
        assert!(text.ends_with("\n\n"));
        text.split_terminator("\n\n")
            .map(|frame| {
                let mut lines = frame.lines();
                let first = lines.next().unwrap();
                let (event, data) = match first.strip_prefix("event: ") {
                    Some(event) => (Some(event.to_owned()), lines.next().unwrap()),
                    None => (None, first),
                };
                assert!(lines.next().is_none(), "one data line: {frame:?}");
                (event, data.strip_prefix("data: ").unwrap().to_owned())
            })
            .collect()
    }

    #[test]
    fn anthropic_message_has_the_fields() {
        let json = parse(&anthropic_message(&reply(Stop::MaxTokens)));
        assert_eq!(json["id"], "id-1");
        assert_eq!(json["type"], "message");
        assert_eq!(json["role"], "assistant");
        assert_eq!(json["model"], "m");
        assert_eq!(json["content"][0]["type"], "text");
        assert_eq!(json["content"][0]["text"], "line\n\"two\" ü.");
        assert_eq!(json["stop_reason"], "max_tokens");
        assert_eq!(json["stop_sequence"], Value::Null);
        assert_eq!(json["usage"]["input_tokens"], 5);
        assert_eq!(json["usage"]["output_tokens"], 3);
    }

    #[test]
    fn anthropic_stream_has_the_events() {
        for style in [Style::default(), QUIRKS] {
            let sse = anthropic_sse(&reply(Stop::EndTurn), &style, Ending::Complete);
            let frames = anthropic_events(&reply(Stop::EndTurn), &style, Ending::Complete);
            assert_eq!(frames.concat(), sse);
            let events = events(&sse);
            let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
            assert_eq!(
                names,
                [
                    "message_start",
                    "content_block_start",
                    "ping",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ]
            );
            for (name, data) in &events {
                assert_eq!(parse(data.as_bytes())["type"], name.as_deref().unwrap());
            }
            let start = parse(events[0].1.as_bytes());
            assert_eq!(start["message"]["content"], Value::Array(Vec::new()));
            assert_eq!(start["message"]["stop_reason"], Value::Null);
            assert_eq!(start["message"]["usage"]["input_tokens"], 5);
            assert_eq!(
                start["message"]["usage"]["output_tokens"],
                style.start_output_tokens
            );
            assert_eq!(parse(events[1].1.as_bytes())["content_block"]["text"], "");
            let text: String = events[3..6]
                .iter()
                .map(|(_, d)| {
                    let delta = parse(d.as_bytes());
                    assert_eq!(delta["index"], 0);
                    assert_eq!(delta["delta"]["type"], "text_delta");
                    delta["delta"]["text"].as_str().unwrap().to_owned()
                })
                .collect();
            assert_eq!(text, PIECES.concat());
            let delta = parse(events[7].1.as_bytes());
            assert_eq!(delta["delta"]["stop_reason"], "end_turn");
            assert_eq!(delta["usage"]["output_tokens"], 3);
        }
        let ping = |style| {
            events(&anthropic_sse(
                &reply(Stop::EndTurn),
                &style,
                Ending::Complete,
            ))[2]
                .1
                .clone()
        };
        assert_eq!(ping(Style::default()), r#"{"type":"ping"}"#);
        assert_eq!(ping(QUIRKS), r#"{"type": "ping"}"#);
    }

    #[test]
    fn anthropic_stream_can_fail() {
        let body = anthropic_error("overloaded_error", "Overloaded");
        for (after, deltas) in [(0, 0), (2, 2), (9, 3)] {
            let ending = Ending::Error { after, body: &body };
            let events = events(&anthropic_sse(&reply(Stop::EndTurn), &QUIRKS, ending));
            assert_eq!(events.len(), 3 + deltas + 1);
            let (name, data) = events.last().unwrap();
            assert_eq!(name.as_deref(), Some("error"));
            assert_eq!(parse(data.as_bytes())["error"]["type"], "overloaded_error");
        }
    }

    #[test]
    fn openai_completion_has_the_fields() {
        for style in [Style::default(), QUIRKS] {
            let json = parse(&openai_completion(&reply(Stop::MaxTokens), &style));
            assert_eq!(json["id"], "id-1");
            assert_eq!(json["object"], "chat.completion");
            assert_eq!(json["created"], 1_700_000_000);
            assert_eq!(json["model"], "m");
            let choice = &json["choices"][0];
            assert_eq!(choice["index"], 0);
            assert_eq!(choice["message"]["role"], "assistant");
            assert_eq!(choice["message"]["content"], "line\n\"two\" ü.");
            assert_eq!(choice["message"]["refusal"], Value::Null);
            assert_eq!(choice["logprobs"], Value::Null);
            assert_eq!(choice["finish_reason"], "length");
            assert_eq!(json["usage"]["prompt_tokens"], 5);
            assert_eq!(json["usage"]["completion_tokens"], 3);
            assert_eq!(json["usage"]["total_tokens"], 8);
            assert_eq!(
                json.get("system_fingerprint").and_then(Value::as_str),
                style.system_fingerprint
            );
        }
    }

    #[test]
    fn openai_stream_has_the_chunks() {
        for style in [Style::default(), QUIRKS] {
            for include_usage in [false, true] {
                let r = reply(Stop::EndTurn);
                let sse = openai_sse(&r, &style, include_usage, Ending::Complete);
                let frames = openai_chunks(&r, &style, include_usage, Ending::Complete);
                assert_eq!(frames.concat(), sse);
                assert!(sse.ends_with(SSE_DONE));
                let events = events(&sse);
                assert!(events.iter().all(|(name, _)| name.is_none()));
                let (done, chunks) = events.split_last().unwrap();
                assert_eq!(done.1, "[DONE]");
                let chunks: Vec<Value> = chunks.iter().map(|(_, d)| parse(d.as_bytes())).collect();
                assert_eq!(
                    chunks.len(),
                    1 + PIECES.len() + 1 + usize::from(include_usage)
                );
                for chunk in &chunks {
                    assert_eq!(chunk["id"], "id-1");
                    assert_eq!(chunk["object"], "chat.completion.chunk");
                    assert_eq!(chunk["created"], 1_700_000_000);
                    assert_eq!(
                        chunk.get("system_fingerprint").and_then(Value::as_str),
                        style.system_fingerprint
                    );
                }
                let first = &chunks[0]["choices"][0]["delta"];
                assert_eq!(first["role"], "assistant");
                assert_eq!(first["content"], "");
                assert_eq!(first.get("refusal").is_some(), style.role_refusal);
                let text: String = chunks[1..=PIECES.len()]
                    .iter()
                    .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
                    .collect();
                assert_eq!(text, PIECES.concat());
                let finish = &chunks[PIECES.len() + 1];
                assert_eq!(finish["choices"][0]["finish_reason"], "stop");
                assert_eq!(finish["choices"][0]["delta"], serde_json::json!({}));
                assert_eq!(
                    finish.get("usage").is_some(),
                    include_usage && style.null_usage
                );
                if include_usage {
                    let usage = chunks.last().unwrap();
                    assert_eq!(usage["choices"], Value::Array(Vec::new()));
                    assert_eq!(usage["usage"]["total_tokens"], 8);
                }
            }
        }
    }

    #[test]
    fn openai_stream_can_fail() {
        let body = openai_error("Overloaded.", "server_error", None, None);
        for (after, deltas) in [(0, 0), (1, 1), (9, 3)] {
            let ending = Ending::Error { after, body: &body };
            let events = events(&openai_sse(&reply(Stop::EndTurn), &QUIRKS, true, ending));
            assert_eq!(events.len(), 1 + deltas + 1);
            let error = parse(events.last().unwrap().1.as_bytes());
            assert_eq!(error["error"]["type"], "server_error");
        }
    }

    #[test]
    fn error_bodies_are_exact() {
        let anthropic = anthropic_error("overloaded_error", "Over \"loaded\"");
        assert_eq!(
            anthropic,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Over \"loaded\""}}"#
        );
        assert_eq!(parse(&anthropic)["error"]["message"], "Over \"loaded\"");
        let openai = openai_error("No.", "invalid_request_error", Some("messages"), None);
        assert_eq!(
            openai,
            br#"{"error":{"message":"No.","type":"invalid_request_error","param":"messages","code":null}}"#
        );
        assert_eq!(parse(&openai)["error"]["param"], "messages");
    }

    #[test]
    fn frames() {
        assert_eq!(sse_frame(Some("ping"), b"{}"), "event: ping\ndata: {}\n\n");
        assert_eq!(sse_frame(None, b"[DONE]"), SSE_DONE);
        let mut out = b"x".to_vec();
        write_sse_frame(&mut out, None, b"1");
        assert_eq!(out, b"xdata: 1\n\n");
    }

    #[test]
    fn empty_answers_render() {
        let r = Reply {
            pieces: &[],
            ..reply(Stop::EndTurn)
        };
        assert_eq!(parse(&anthropic_message(&r))["content"][0]["text"], "");
        let json = parse(&openai_completion(&r, &Style::default()));
        assert_eq!(json["choices"][0]["message"]["content"], "");
        assert_eq!(
            events(&anthropic_sse(&r, &Style::default(), Ending::Complete)).len(),
            6
        );
    }
}

// ---- OpenAI Responses ------------------------------------------------------------

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<()>,
    incomplete_details: Option<IncompleteDetails>,
    instructions: Option<()>,
    max_output_tokens: Option<()>,
    model: &'a str,
    output: &'a [OutputMessage<'a>],
    parallel_tool_calls: bool,
    previous_response_id: Option<()>,
    temperature: Option<()>,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: Option<()>,
    usage: Option<ResponseUsage>,
    metadata: Empty,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Serialize)]
struct OutputMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: &'a [OutputText<'a>],
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: CachedTokens,
    output_tokens: u64,
    output_tokens_details: ReasoningTokens,
    total_tokens: u64,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

#[derive(Serialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    response: ResponseObject<'a>,
}

#[derive(Serialize)]
struct ItemEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    output_index: u32,
    item: OutputMessage<'a>,
}

#[derive(Serialize)]
struct PartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: OutputText<'a>,
}

#[derive(Serialize)]
struct TextEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    logprobs: [(); 0],
}

/// The id of a Responses answer's one output message: `msg_` and the response id
/// without its `resp_` prefix.
fn response_item_id(id: &str) -> String {
    format!("msg_{}", id.strip_prefix("resp_").unwrap_or(id))
}

/// The `response` object of the Responses API in its state `status`: `output` is
/// empty and `usage` null until it is whole.
fn response_object<'a>(
    reply: &Reply<'a>,
    output: &'a [OutputMessage<'a>],
    whole: bool,
) -> ResponseObject<'a> {
    let incomplete = whole && reply.stop == Stop::MaxTokens;
    ResponseObject {
        id: reply.id,
        object: "response",
        created_at: reply.created,
        status: match (whole, incomplete) {
            (false, _) => "in_progress",
            (true, false) => "completed",
            (true, true) => "incomplete",
        },
        error: None,
        incomplete_details: incomplete.then_some(IncompleteDetails {
            reason: "max_output_tokens",
        }),
        instructions: None,
        max_output_tokens: None,
        model: reply.model,
        output,
        parallel_tool_calls: true,
        previous_response_id: None,
        temperature: None,
        tool_choice: "auto",
        tools: [],
        top_p: None,
        usage: whole.then(|| ResponseUsage {
            input_tokens: reply.input_tokens,
            input_tokens_details: CachedTokens { cached_tokens: 0 },
            output_tokens: reply.output_tokens,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: 0,
            },
            total_tokens: reply.input_tokens + reply.output_tokens,
        }),
        metadata: Empty {},
    }
}

fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        text,
        annotations: [],
    }
}

/// A whole OpenAI Responses API answer (`POST /v1/responses`): a `response` object
/// whose `output` is one assistant message with one `output_text` part, the pieces
/// joined. Its status is `completed`, or `incomplete` (reason `max_output_tokens`)
/// for [`Stop::MaxTokens`]; `reply.created` is its `created_at`.
pub fn openai_response(reply: &Reply<'_>) -> Vec<u8> {
    let text = reply.text();
    let item_id = response_item_id(reply.id);
    let content = [output_text(&text)];
    let output = [OutputMessage {
        kind: "message",
        id: &item_id,
        status: "completed",
        role: "assistant",
        content: &content,
    }];
    json(&response_object(reply, &output, true))
}

/// An OpenAI Responses API stream, one [`Bytes`] per event, each named by its
/// `type` and numbered by `sequence_number`: `response.created`,
/// `response.in_progress`, `response.output_item.added`,
/// `response.content_part.added`, a `response.output_text.delta` per piece,
/// `response.output_text.done`, `response.content_part.done`,
/// `response.output_item.done` and `response.completed` (`response.incomplete` for
/// [`Stop::MaxTokens`]). The Responses API sends no `[DONE]`. With
/// [`Ending::Error`], an `error` event whose data is the given body comes in place of
/// the pieces' rest and all that follows them.
pub fn openai_response_events(reply: &Reply<'_>, ending: Ending<'_>) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(reply.pieces.len() + 8);
    openai_response_stream(&mut frames, reply, ending);
    frames
}

/// [`openai_response_events`], as one buffer.
pub fn openai_response_sse(reply: &Reply<'_>, ending: Ending<'_>) -> Vec<u8> {
    let text_len: usize = reply.pieces.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(text_len * 3 + 200 * reply.pieces.len() + 3000);
    openai_response_stream(&mut out, reply, ending);
    out
}

fn openai_response_stream<O: Frames>(out: &mut O, reply: &Reply<'_>, ending: Ending<'_>) {
    let item_id = response_item_id(reply.id);
    let mut sequence = 0u64;
    let mut next = || {
        sequence += 1;
        sequence - 1
    };
    for kind in ["response.created", "response.in_progress"] {
        let event = ResponseEvent {
            kind,
            sequence_number: next(),
            response: response_object(reply, &[], false),
        };
        out.json(Some(kind), &event);
    }
    let item = |status, content| OutputMessage {
        kind: "message",
        id: &item_id,
        status,
        role: "assistant",
        content,
    };
    let kind = "response.output_item.added";
    out.json(
        Some(kind),
        &ItemEvent {
            kind,
            sequence_number: next(),
            output_index: 0,
            item: item("in_progress", &[]),
        },
    );
    let part = |kind, sequence_number, text| PartEvent {
        kind,
        sequence_number,
        item_id: &item_id,
        output_index: 0,
        content_index: 0,
        part: output_text(text),
    };
    let kind = "response.content_part.added";
    out.json(Some(kind), &part(kind, next(), ""));
    let text_event = |kind, sequence_number, delta, text| TextEvent {
        kind,
        sequence_number,
        item_id: &item_id,
        output_index: 0,
        content_index: 0,
        delta,
        text,
        logprobs: [],
    };
    for piece in reply.pieces.iter().take(ending.deltas()) {
        let kind = "response.output_text.delta";
        out.json(Some(kind), &text_event(kind, next(), Some(*piece), None));
    }
    if let Ending::Error { body, .. } = ending {
        out.raw(Some("error"), body);
        return;
    }
    let text = reply.text();
    let kind = "response.output_text.done";
    out.json(Some(kind), &text_event(kind, next(), None, Some(&text)));
    let kind = "response.content_part.done";
    out.json(Some(kind), &part(kind, next(), &text));
    let content = [output_text(&text)];
    let kind = "response.output_item.done";
    out.json(
        Some(kind),
        &ItemEvent {
            kind,
            sequence_number: next(),
            output_index: 0,
            item: item("completed", &content),
        },
    );
    let output = [item("completed", &content)];
    let kind = match reply.stop {
        Stop::EndTurn => "response.completed",
        Stop::MaxTokens => "response.incomplete",
    };
    out.json(
        Some(kind),
        &ResponseEvent {
            kind,
            sequence_number: next(),
            response: response_object(reply, &output, true),
        },
    );
}

#[cfg(test)]
mod responses_tests {
    use serde_json::Value;

    use super::*;

    const PIECES: &[&str] = &["line", "\n\"two\"", " ü."];

    fn reply(stop: Stop) -> Reply<'static> {
        Reply {
            id: "resp_abc",
            model: "gpt-4.1",
            created: 1_700_000_000,
            pieces: PIECES,
            input_tokens: 5,
            output_tokens: 3,
            stop,
        }
    }

    /// Each event of an SSE text: its `event:` name and its `data:` JSON.
    fn events(text: &str) -> Vec<(String, Value)> {
        assert!(text.ends_with("\n\n"), "{text}");
        text.split_terminator("\n\n")
            .map(|frame| {
                let mut lines = frame.lines();
                let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                assert!(lines.next().is_none(), "{frame}");
                (name.to_owned(), serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_whole_response_is_a_completed_response_object_with_one_message() {
        let json: Value = serde_json::from_slice(&openai_response(&reply(Stop::EndTurn))).unwrap();
        assert_eq!(json["object"], "response");
        assert_eq!(json["id"], "resp_abc");
        assert_eq!(json["created_at"], 1_700_000_000);
        assert_eq!(json["status"], "completed");
        assert_eq!(json["model"], "gpt-4.1");
        assert_eq!(json["incomplete_details"], Value::Null);
        assert_eq!(json["output"].as_array().unwrap().len(), 1);
        let message = &json["output"][0];
        assert_eq!(message["type"], "message");
        assert_eq!(message["id"], "msg_abc");
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["status"], "completed");
        assert_eq!(message["content"][0]["type"], "output_text");
        assert_eq!(message["content"][0]["text"], "line\n\"two\" ü.");
        assert_eq!(message["content"][0]["annotations"], serde_json::json!([]));
        assert_eq!(json["usage"]["input_tokens"], 5);
        assert_eq!(json["usage"]["output_tokens"], 3);
        assert_eq!(json["usage"]["total_tokens"], 8);
        assert_eq!(json["tools"], serde_json::json!([]));

        let cut: Value = serde_json::from_slice(&openai_response(&reply(Stop::MaxTokens))).unwrap();
        assert_eq!(cut["status"], "incomplete");
        assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
    }

    #[test]
    fn a_stream_has_every_event_in_order_named_by_its_type_and_numbered() {
        let text = String::from_utf8(openai_response_sse(&reply(Stop::EndTurn), Ending::Complete))
            .unwrap();
        let events = events(&text);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], i as u64);
        }
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[0].1["response"]["output"], serde_json::json!([]));
        assert_eq!(events[0].1["response"]["usage"], Value::Null);
        assert_eq!(events[2].1["item"]["id"], "msg_abc");
        let deltas: String = events
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .map(|(_, d)| {
                assert_eq!(d["item_id"], "msg_abc");
                d["delta"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(deltas, "line\n\"two\" ü.");
        assert_eq!(events[7].1["text"], deltas.as_str());
        assert_eq!(events[8].1["part"]["text"], deltas.as_str());
        assert_eq!(events[9].1["item"]["content"][0]["text"], deltas.as_str());
        let done = &events[10].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());
        assert_eq!(done["usage"]["total_tokens"], 8);
        assert!(!text.contains("[DONE]"));
        // One buffer or one frame per event: the same bytes.
        let frames = openai_response_events(&reply(Stop::EndTurn), Ending::Complete);
        assert_eq!(frames.len(), 11);
        assert_eq!(frames.concat(), text.as_bytes());

        let cut = String::from_utf8(openai_response_sse(
            &reply(Stop::MaxTokens),
            Ending::Complete,
        ))
        .unwrap();
        let last = events_last(&cut);
        assert_eq!(last.0, "response.incomplete");
        assert_eq!(
            last.1["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    fn events_last(text: &str) -> (String, Value) {
        events(text).pop().unwrap()
    }

    #[test]
    fn a_failing_stream_ends_with_one_error_event_after_its_deltas() {
        let body = br#"{"type":"error","code":"server_error","message":"boom","param":null}"#;
        let text = String::from_utf8(openai_response_sse(
            &reply(Stop::EndTurn),
            Ending::Error { after: 1, body },
        ))
        .unwrap();
        let events = events(&text);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "error",
            ]
        );
        assert_eq!(events[5].1["message"], "boom");
    }
}
