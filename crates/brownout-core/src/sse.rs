//! Server-sent events as the providers send them: whole events cut from a byte stream
//! without copying, each event's name and data, and what an event means in each
//! provider's stream (content, the end, an error).
//!
//! A layer that watches a stream ([`Splitter`]) hands its caller whole events only:
//! an event cut across two chunks is held until its blank line arrives, so that a
//! stream that breaks mid-event can still be ended well-formed. Bytes are copied only
//! for such an event; a chunk of whole events is handed on as it is.
//!
//! ```
//! use brownout_core::provider::Api;
//! use brownout_core::sse::{self, Meaning, Splitter};
//! use bytes::Bytes;
//!
//! let mut splitter = Splitter::new();
//! let whole = splitter.push(Bytes::from_static(b"event: message_start\ndata: {}\n\nevent: content_blo"));
//! assert_eq!(whole, "event: message_start\ndata: {}\n\n");
//! assert_eq!(splitter.held(), 18);
//! let whole = splitter.push(Bytes::from_static(
//!     b"ck_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
//! ));
//! let event = sse::events(&whole).next().unwrap();
//! assert_eq!(event.name, Some("content_block_delta"));
//! assert_eq!(sse::meaning(Api::AnthropicMessages, &event), Meaning::Content);
//! ```

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use memchr::memmem;
use serde::Deserialize;

use crate::provider::Api;

/// Cuts a byte stream into whole events. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Splitter {
    tail: BytesMut,
}

impl Splitter {
    /// A splitter holding nothing.
    pub fn new() -> Self {
        Splitter::default()
    }

    /// Takes the next chunk of the stream and returns the bytes of the events it
    /// completes, the bytes held from earlier chunks in front (possibly none). Without
    /// held bytes, the returned bytes are a slice of `chunk`: nothing is copied.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.tail.is_empty() {
            let end = boundary(&chunk);
            if end == chunk.len() {
                return chunk;
            }
            let whole = chunk.slice(..end);
            self.tail.extend_from_slice(&chunk[end..]);
            return whole;
        }
        let seen = self.tail.len();
        self.tail.extend_from_slice(&chunk);
        // A boundary can straddle the old tail and the chunk: look from a little
        // before the join.
        let from = seen.saturating_sub(3);
        let end = match boundary(&self.tail[from..]) {
            0 => 0,
            end => from + end,
        };
        self.tail.split_to(end).freeze()
    }

    /// How many bytes of an unfinished event are held.
    pub fn held(&self) -> usize {
        self.tail.len()
    }

    /// Drops the bytes of an unfinished event.
    pub fn clear(&mut self) {
        self.tail.clear();
    }
}

/// The end of the last whole event in `bytes`: after its last blank line, `0` when it
/// has none.
fn boundary(bytes: &[u8]) -> usize {
    let lf = memmem::rfind(bytes, b"\n\n").map_or(0, |i| i + 2);
    if lf == bytes.len() {
        return lf;
    }
    let crlf = memmem::rfind(bytes, b"\r\n\r\n").map_or(0, |i| i + 4);
    lf.max(crlf)
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// Its `event:` name, when it has one.
    pub name: Option<&'a str>,
    /// Its `data:` lines, joined by `\n`.
    pub data: Cow<'a, [u8]>,
    /// The event's bytes, blank line included.
    pub raw: &'a [u8],
}

/// The events in `bytes`, which holds whole events (a [`Splitter`]'s output). Events
/// without data or name (comments, a lone `retry:`) are skipped.
pub fn events(bytes: &[u8]) -> Events<'_> {
    Events { rest: bytes }
}

/// The iterator of [`events`].
#[derive(Debug, Clone)]
pub struct Events<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Events<'a> {
    type Item = Event<'a>;

    fn next(&mut self) -> Option<Event<'a>> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let start = self.rest;
            let mut name = None;
            let mut data: Option<Cow<'a, [u8]>> = None;
            let mut used = 0;
            let mut ended = false;
            while used < start.len() {
                let line_end =
                    memchr::memchr(b'\n', &start[used..]).map_or(start.len(), |i| used + i);
                let mut line = &start[used..line_end];
                used = (line_end + 1).min(start.len());
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                if line.is_empty() {
                    ended = true;
                    break;
                }
                if line[0] == b':' {
                    continue;
                }
                let (field, value) = match memchr::memchr(b':', line) {
                    Some(i) => {
                        let value = &line[i + 1..];
                        (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
                    }
                    None => (line, &b""[..]),
                };
                match field {
                    b"event" => name = std::str::from_utf8(value).ok(),
                    b"data" => {
                        data = Some(match data.take() {
                            None => Cow::Borrowed(value),
                            Some(before) => {
                                let mut joined = before.into_owned();
                                joined.push(b'\n');
                                joined.extend_from_slice(value);
                                Cow::Owned(joined)
                            }
                        })
                    }
                    _ => {}
                }
            }
            let raw = &start[..used];
            self.rest = &start[used..];
            if !ended && self.rest.is_empty() && data.is_none() && name.is_none() {
                return None;
            }
            if data.is_none() && name.is_none() {
                continue;
            }
            return Some(Event {
                name,
                data: data.unwrap_or(Cow::Borrowed(b"")),
                raw,
            });
        }
    }
}

/// What an event is, in a provider's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// An opening event, a ping, or one that says nothing of the answer yet
    /// (`message_start`, `content_block_start`, OpenAI's role chunk).
    Opening,
    /// Part of the answer: Anthropic's `content_block_delta`, an OpenAI chunk with
    /// content, a tool call or a finish reason, a Responses `*.delta`.
    Content,
    /// The stream's proper end: `message_stop`, `data: [DONE]`,
    /// `response.completed` / `response.incomplete`.
    End,
    /// The provider failed the stream: an `error` event, an OpenAI `{"error":…}`
    /// chunk, a Responses `response.failed`.
    Error,
}

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChatChoice<'a>>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<ChatDelta<'a>>,
    finish_reason: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChatDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    tool_calls: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
}

/// What `event` means in `api`'s stream, reading its data where the name does not
/// say (OpenAI chat chunks).
pub fn meaning(api: Api, event: &Event<'_>) -> Meaning {
    match api {
        Api::OpenAiChat => {
            if &*event.data == b"[DONE]" {
                return Meaning::End;
            }
            if event.name == Some("error") {
                return Meaning::Error;
            }
            match serde_json::from_slice::<ChatChunk<'_>>(&event.data) {
                Ok(chunk) if chunk.error.is_some() => Meaning::Error,
                Ok(chunk) => {
                    let content = chunk.choices.iter().any(|c| {
                        c.finish_reason.is_some()
                            || c.delta.as_ref().is_some_and(|d| {
                                d.content.as_ref().is_some_and(|t| !t.is_empty())
                                    || d.refusal.as_ref().is_some_and(|t| !t.is_empty())
                                    || d.tool_calls.is_some()
                            })
                    });
                    if content {
                        Meaning::Content
                    } else {
                        Meaning::Opening
                    }
                }
                Err(_) => Meaning::Opening,
            }
        }
        Api::OpenAiResponses => match event.name.unwrap_or("") {
            "error" | "response.failed" => Meaning::Error,
            "response.completed" | "response.incomplete" => Meaning::End,
            name if name.ends_with(".delta") => Meaning::Content,
            _ => Meaning::Opening,
        },
        _ => match event.name.unwrap_or("") {
            "content_block_delta" => Meaning::Content,
            "message_stop" => Meaning::End,
            "error" => Meaning::Error,
            _ => Meaning::Opening,
        },
    }
}

/// Whether `event` ends `api`'s stream, properly ([`Meaning::End`]) or with an error
/// ([`Meaning::Error`]); [`Meaning::Content`] for every other event. Cheaper than
/// [`meaning`]: it reads an OpenAI chunk's data only when it names an `"error"`.
pub fn ending(api: Api, event: &Event<'_>) -> Meaning {
    match api {
        Api::OpenAiChat => {
            if &*event.data == b"[DONE]" {
                Meaning::End
            } else if event.name == Some("error")
                || (memmem::find(&event.data, b"\"error\"").is_some()
                    && meaning(api, event) == Meaning::Error)
            {
                Meaning::Error
            } else {
                Meaning::Content
            }
        }
        _ => match meaning(api, event) {
            Meaning::Opening => Meaning::Content,
            other => other,
        },
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorObject>,
    code: Option<String>,
    message: Option<String>,
    response: Option<FailedResponse>,
}

#[derive(Deserialize)]
struct FailedResponse {
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

/// The error answer a stream's error event stands for: the status the provider
/// gives that error type when it answers before streaming, and the error body in
/// the API's shape (Anthropic's event data is that body already; OpenAI's chunk
/// `{"error":…}` too; a Responses `error` or `response.failed` event becomes
/// `{"error":{…}}`). For a layer that turns a stream failing before its content
/// into the failure it is, so that the stack's one classifier judges it.
///
/// ```
/// use brownout_core::provider::Api;
/// use brownout_core::sse::error_answer;
///
/// let data = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
/// let (status, body) = error_answer(Api::AnthropicMessages, data);
/// assert_eq!(status, 529);
/// assert_eq!(body, &data[..]);
/// ```
pub fn error_answer(api: Api, data: &[u8]) -> (StatusCode, Bytes) {
    let parsed: Option<ErrorEnvelope> = serde_json::from_slice(data).ok();
    let (kind, message) = match &parsed {
        Some(ErrorEnvelope {
            error: Some(error), ..
        }) => (
            error.code.clone().or_else(|| error.kind.clone()),
            error.message.clone(),
        ),
        Some(ErrorEnvelope {
            response: Some(FailedResponse {
                error: Some(error), ..
            }),
            ..
        }) => (
            error.code.clone().or_else(|| error.kind.clone()),
            error.message.clone(),
        ),
        Some(envelope) => (envelope.code.clone(), envelope.message.clone()),
        None => (None, None),
    };
    let status = status_of(api, kind.as_deref());
    let keeps_shape = parsed.as_ref().is_some_and(|p| p.error.is_some());
    let body = if keeps_shape {
        Bytes::copy_from_slice(data)
    } else {
        let message = message.as_deref().unwrap_or("the stream failed");
        let kind = kind.as_deref().unwrap_or(if api.is_openai() {
            "server_error"
        } else {
            "api_error"
        });
        Bytes::from(if api.is_openai() {
            crate::shape::openai_error(message, kind, None, Some(kind))
        } else {
            crate::shape::anthropic_error(kind, message)
        })
    };
    (status, body)
}

/// The status the providers answer an error type with.
fn status_of(api: Api, kind: Option<&str>) -> StatusCode {
    let code = match kind.unwrap_or("") {
        "overloaded_error" | "overloaded" => {
            if api.is_openai() {
                503
            } else {
                529
            }
        }
        "service_unavailable" => 503,
        "rate_limit_error"
        | "rate_limit_exceeded"
        | "requests"
        | "tokens"
        | "insufficient_quota" => 429,
        "timeout_error" | "timeout" => 504,
        "invalid_request_error" => 400,
        "authentication_error" | "invalid_api_key" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        _ => 500,
    };
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<(Option<String>, String)> {
        events(bytes)
            .map(|e| {
                (
                    e.name.map(str::to_owned),
                    String::from_utf8(e.data.into_owned()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn splitting_holds_unfinished_events_only() {
        let stream = b"event: a\ndata: 1\n\ndata: 2\n\nevent: b\ndata: x\ndata: y\n\n";
        for cut in 1..stream.len() {
            let mut splitter = Splitter::new();
            let mut out = splitter
                .push(Bytes::copy_from_slice(&stream[..cut]))
                .to_vec();
            out.extend_from_slice(&splitter.push(Bytes::copy_from_slice(&stream[cut..])));
            assert_eq!(out, stream, "cut at {cut}");
            assert_eq!(splitter.held(), 0);
        }
        let chunk = Bytes::from_static(b"data: 1\n\n");
        let mut splitter = Splitter::new();
        let out = splitter.push(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "whole events are not copied");
        assert_eq!(splitter.push(Bytes::from_static(b"data: 2")), "");
        assert_eq!(splitter.held(), 7);
        splitter.clear();
        assert_eq!(splitter.held(), 0);
    }

    #[test]
    fn crlf_boundaries_count() {
        let mut splitter = Splitter::new();
        assert_eq!(
            splitter.push(Bytes::from_static(b"data: 1\r\n\r\ndata: 2\r\n")),
            "data: 1\r\n\r\n"
        );
        assert_eq!(
            splitter.push(Bytes::from_static(b"\r\n")),
            "data: 2\r\n\r\n"
        );
    }

    #[test]
    fn events_have_names_and_joined_data() {
        let got = all(b": comment\n\nevent: a\ndata: 1\n\ndata:2\ndata: 3\n\nretry: 5\n\nevent:b\r\ndata: {}\r\n\r\n");
        assert_eq!(
            got,
            [
                (Some("a".into()), "1".into()),
                (None, "2\n3".into()),
                (Some("b".into()), "{}".into()),
            ]
        );
        let raw: Vec<&[u8]> = events(b"data: 1\n\ndata: 2\n\n").map(|e| e.raw).collect();
        assert_eq!(raw, [&b"data: 1\n\n"[..], b"data: 2\n\n"]);
    }

    #[test]
    fn meanings_per_api() {
        let one = |bytes: &'static [u8]| events(bytes).next().unwrap();
        let a = Api::AnthropicMessages;
        assert_eq!(
            meaning(a, &one(b"event: message_start\ndata: {}\n\n")),
            Meaning::Opening
        );
        assert_eq!(
            meaning(a, &one(b"event: ping\ndata: {}\n\n")),
            Meaning::Opening
        );
        assert_eq!(
            meaning(a, &one(b"event: content_block_delta\ndata: {}\n\n")),
            Meaning::Content
        );
        assert_eq!(
            meaning(a, &one(b"event: message_stop\ndata: {}\n\n")),
            Meaning::End
        );
        assert_eq!(
            meaning(a, &one(b"event: error\ndata: {}\n\n")),
            Meaning::Error
        );
        let c = Api::OpenAiChat;
        let role = one(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
        assert_eq!(meaning(c, &role), Meaning::Opening);
        assert_eq!(ending(c, &role), Meaning::Content);
        let text = one(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \\\"you\\\"\"},\"finish_reason\":null}]}\n\n");
        assert_eq!(meaning(c, &text), Meaning::Content);
        let tool = one(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n");
        assert_eq!(meaning(c, &tool), Meaning::Content);
        let error = one(b"data: {\"error\":{\"type\":\"server_error\"}}\n\n");
        assert_eq!(meaning(c, &error), Meaning::Error);
        assert_eq!(ending(c, &error), Meaning::Error);
        // Content that mentions "error" is still content.
        let mention = one(b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\"\"}}]}\n\n");
        assert_eq!(ending(c, &mention), Meaning::Content);
        assert_eq!(meaning(c, &one(b"data: [DONE]\n\n")), Meaning::End);
        let r = Api::OpenAiResponses;
        assert_eq!(
            meaning(r, &one(b"event: response.created\ndata: {}\n\n")),
            Meaning::Opening
        );
        assert_eq!(
            meaning(r, &one(b"event: response.output_text.delta\ndata: {}\n\n")),
            Meaning::Content
        );
        assert_eq!(
            meaning(r, &one(b"event: response.completed\ndata: {}\n\n")),
            Meaning::End
        );
        assert_eq!(
            meaning(r, &one(b"event: response.failed\ndata: {}\n\n")),
            Meaning::Error
        );
    }

    #[test]
    fn error_events_become_the_providers_error_answers() {
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_answer(Api::AnthropicMessages, overloaded).0, 529);
        let api = br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#;
        assert_eq!(error_answer(Api::AnthropicMessages, api).0, 500);
        let openai =
            br#"{"error":{"message":"busy","type":"server_error","param":null,"code":null}}"#;
        let (status, body) = error_answer(Api::OpenAiChat, openai);
        assert_eq!((status.as_u16(), &body[..]), (500, &openai[..]));
        let limited =
            br#"{"error":{"message":"slow","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(error_answer(Api::OpenAiChat, limited).0, 429);
        let responses =
            br#"{"type":"error","code":"rate_limit_exceeded","message":"slow","param":null}"#;
        let (status, body) = error_answer(Api::OpenAiResponses, responses);
        assert_eq!(status, 429);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "rate_limit_exceeded");
        assert_eq!(json["error"]["message"], "slow");
        let failed = br#"{"type":"response.failed","response":{"error":{"code":"server_error","message":"boom"}}}"#;
        assert_eq!(error_answer(Api::OpenAiResponses, failed).0, 500);
        let (status, body) = error_answer(Api::AnthropicMessages, b"not json");
        assert_eq!(status, 500);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["type"], "api_error");
    }
}

// ---- Whole answers and streams, one from the other ---------------------------------

#[derive(Deserialize)]
struct AnthropicMessage {
    id: String,
    model: String,
    content: Vec<AnthropicBlock>,
    stop_reason: Option<String>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize, Default)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct ChatCompletion {
    id: String,
    #[serde(default)]
    created: u64,
    model: String,
    choices: Vec<ChatCompletionChoice>,
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct ChatCompletionChoice {
    message: ChatMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<String>,
    tool_calls: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn stop_of(reason: Option<&str>) -> Option<crate::shape::Stop> {
    match reason? {
        "end_turn" | "stop" => Some(crate::shape::Stop::EndTurn),
        "max_tokens" | "length" => Some(crate::shape::Stop::MaxTokens),
        _ => None,
    }
}

/// A whole answer (`application/json`) of `api` as the stream the provider would
/// have sent for it: for an answer stored from a request that did not stream,
/// served to one that does. One content delta carries the whole text. `None` for an
/// answer this cannot render faithfully: not a text answer (tool use, several
/// choices), a stop reason other than the end of the turn or the token limit, or an
/// API other than Anthropic Messages and OpenAI chat.
///
/// ```
/// use brownout_core::{provider::Api, sse};
///
/// let message = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"Hi."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":2}}"#;
/// let stream = sse::stream_of(Api::AnthropicMessages, message, false).unwrap();
/// let back = sse::message_of(Api::AnthropicMessages, &stream).unwrap();
/// assert_eq!(back, &message[..]);
/// ```
pub fn stream_of(api: Api, message: &[u8], include_usage: bool) -> Option<Vec<u8>> {
    use crate::shape::{self, Ending, Reply, Style};
    match api {
        Api::AnthropicMessages => {
            let m: AnthropicMessage = serde_json::from_slice(message).ok()?;
            let text = match m.content.as_slice() {
                [] => String::new(),
                blocks => {
                    let mut text = String::new();
                    for block in blocks {
                        if block.kind != "text" {
                            return None;
                        }
                        text.push_str(block.text.as_deref()?);
                    }
                    text
                }
            };
            let usage = m.usage.unwrap_or_default();
            let pieces = [text.as_str()];
            let reply = Reply {
                id: &m.id,
                model: &m.model,
                created: 0,
                pieces: if text.is_empty() { &[] } else { &pieces },
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                stop: stop_of(m.stop_reason.as_deref())?,
            };
            Some(shape::anthropic_sse(
                &reply,
                &Style::default(),
                Ending::Complete,
            ))
        }
        Api::OpenAiChat => {
            let c: ChatCompletion = serde_json::from_slice(message).ok()?;
            let [choice] = c.choices.as_slice() else {
                return None;
            };
            if choice.message.tool_calls.is_some() {
                return None;
            }
            let text = choice.message.content.clone().unwrap_or_default();
            let usage = c.usage.unwrap_or_default();
            let pieces = [text.as_str()];
            let reply = Reply {
                id: &c.id,
                model: &c.model,
                created: c.created,
                pieces: if text.is_empty() { &[] } else { &pieces },
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
                stop: stop_of(choice.finish_reason.as_deref())?,
            };
            Some(shape::openai_sse(
                &reply,
                &Style::default(),
                include_usage,
                Ending::Complete,
            ))
        }
        _ => None,
    }
}

/// A whole stream of `api` (every event, its proper end included) as the answer the
/// provider would have given without streaming: for an answer stored from a streamed
/// request, served to one that does not stream (or kept as one form). `None` for a
/// stream that is not whole (an error event, no end), that is not a text answer, or
/// of an API other than Anthropic Messages and OpenAI chat.
pub fn message_of(api: Api, stream: &[u8]) -> Option<Vec<u8>> {
    use crate::shape::{self, Reply, Style};
    let mut id = None;
    let mut model = None;
    let mut created = 0;
    let mut text = String::new();
    let mut input_tokens = 0;
    let mut output_tokens = 0;
    let mut stop = None;
    let mut ended = false;
    for event in events(stream) {
        if ended {
            break;
        }
        match meaning(api, &event) {
            Meaning::Error => return None,
            Meaning::End => ended = true,
            _ => {}
        }
        if ended && api == Api::OpenAiChat {
            break;
        }
        let data: serde_json::Value = match serde_json::from_slice(&event.data) {
            Ok(data) => data,
            Err(_) => continue,
        };
        match api {
            Api::AnthropicMessages => match event.name.unwrap_or("") {
                "message_start" => {
                    let m = &data["message"];
                    id = m["id"].as_str().map(str::to_owned);
                    model = m["model"].as_str().map(str::to_owned);
                    input_tokens = m["usage"]["input_tokens"].as_u64().unwrap_or(0);
                    output_tokens = m["usage"]["output_tokens"].as_u64().unwrap_or(0);
                }
                "content_block_start" if data["content_block"]["type"] != "text" => return None,
                "content_block_delta" => {
                    if data["delta"]["type"] != "text_delta" {
                        return None;
                    }
                    text.push_str(data["delta"]["text"].as_str()?);
                }
                "message_delta" => {
                    stop = stop_of(data["delta"]["stop_reason"].as_str());
                    if let Some(n) = data["usage"]["output_tokens"].as_u64() {
                        output_tokens = n;
                    }
                    if let Some(n) = data["usage"]["input_tokens"].as_u64() {
                        input_tokens = n;
                    }
                }
                _ => {}
            },
            Api::OpenAiChat => {
                if id.is_none() {
                    id = data["id"].as_str().map(str::to_owned);
                    model = data["model"].as_str().map(str::to_owned);
                    created = data["created"].as_u64().unwrap_or(0);
                }
                let choices = data["choices"].as_array()?;
                if choices.len() > 1 {
                    return None;
                }
                if let Some(choice) = choices.first() {
                    let delta = &choice["delta"];
                    if delta.get("tool_calls").is_some_and(|t| !t.is_null()) {
                        return None;
                    }
                    if let Some(t) = delta["content"].as_str() {
                        text.push_str(t);
                    }
                    if let Some(reason) = choice["finish_reason"].as_str() {
                        stop = stop_of(Some(reason));
                        stop?;
                    }
                }
                if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
                    input_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
                    output_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
                }
            }
            _ => return None,
        }
    }
    if !ended {
        return None;
    }
    let (id, model, stop) = (id?, model?, stop?);
    let pieces = [text.as_str()];
    let reply = Reply {
        id: &id,
        model: &model,
        created,
        pieces: &pieces,
        input_tokens,
        output_tokens,
        stop,
    };
    Some(match api {
        Api::AnthropicMessages => shape::anthropic_message(&reply),
        _ => shape::openai_completion(&reply, &Style::default()),
    })
}

#[cfg(test)]
mod conversion_tests {
    use super::*;
    use crate::shape::{self, Ending, Reply, Stop, Style};

    fn reply(pieces: &'static [&'static str]) -> Reply<'static> {
        Reply {
            id: "id-1",
            model: "m",
            created: 1_700_000_000,
            pieces,
            input_tokens: 5,
            output_tokens: 3,
            stop: Stop::MaxTokens,
        }
    }

    #[test]
    fn streams_and_whole_answers_turn_into_each_other() {
        let r = reply(&["Hello", ", \"world\"", " ü."]);
        let joined = reply(&["Hello, \"world\" ü."]);
        let quirks = Style {
            system_fingerprint: None,
            start_output_tokens: 1,
            spaced_ping: true,
            null_usage: false,
            role_refusal: false,
        };
        let stream = shape::anthropic_sse(&r, &quirks, Ending::Complete);
        let message = message_of(Api::AnthropicMessages, &stream).unwrap();
        assert_eq!(message, shape::anthropic_message(&r));
        let back = stream_of(Api::AnthropicMessages, &message, false).unwrap();
        assert_eq!(
            back,
            shape::anthropic_sse(&joined, &Style::default(), Ending::Complete)
        );

        let stream = shape::openai_sse(&r, &Style::default(), true, Ending::Complete);
        let message = message_of(Api::OpenAiChat, &stream).unwrap();
        assert_eq!(message, shape::openai_completion(&r, &Style::default()));
        let back = stream_of(Api::OpenAiChat, &message, true).unwrap();
        assert_eq!(
            back,
            shape::openai_sse(&joined, &Style::default(), true, Ending::Complete)
        );
    }

    #[test]
    fn what_is_not_whole_or_not_text_is_not_converted() {
        let r = reply(&["a", "b"]);
        let error = shape::anthropic_error("overloaded_error", "x");
        let failed = shape::anthropic_sse(
            &r,
            &Style::default(),
            Ending::Error {
                after: 1,
                body: &error,
            },
        );
        assert_eq!(message_of(Api::AnthropicMessages, &failed), None);
        let whole = shape::anthropic_sse(&r, &Style::default(), Ending::Complete);
        assert_eq!(
            message_of(Api::AnthropicMessages, &whole[..whole.len() - 40]),
            None
        );
        assert_eq!(message_of(Api::OpenAiResponses, &whole), None);
        let tool = br#"{"id":"m1","model":"m","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":1}}"#;
        assert_eq!(stream_of(Api::AnthropicMessages, tool, false), None);
        assert_eq!(stream_of(Api::AnthropicMessages, b"not json", false), None);
    }
}
