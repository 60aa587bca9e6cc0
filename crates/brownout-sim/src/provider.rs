//! The providers' wire formats: answers, server-sent events and error bodies, in the
//! exact JSON shapes of the Anthropic Messages and OpenAI Chat Completions APIs.

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use serde::Serialize;

use crate::script::{Endpoint, FaultKind};

/// What an answer says, decided before it is rendered for an endpoint.
pub(crate) struct Answer<'a> {
    pub(crate) model: &'a str,
    pub(crate) id: &'a str,
    pub(crate) created: u64,
    pub(crate) input_tokens: u32,
    pub(crate) words: &'a [&'static str],
    /// The answer was cut by the request's `max_tokens`.
    pub(crate) truncated: bool,
}

impl Answer<'_> {
    fn output_tokens(&self) -> u32 {
        self.words.len() as u32
    }

    fn text(&self) -> String {
        let mut text = String::with_capacity(self.words.len() * 8);
        for (i, word) in self.words.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(word);
        }
        if !self.words.is_empty() {
            text.push('.');
        }
        text
    }

    /// The text as stream deltas: one word each, the spaces and final full stop
    /// included, so that the deltas join into [`Self::text`].
    fn deltas(&self) -> impl Iterator<Item = String> + '_ {
        let last = self.words.len().saturating_sub(1);
        self.words.iter().enumerate().map(move |(i, word)| {
            let mut delta = String::with_capacity(word.len() + 2);
            if i > 0 {
                delta.push(' ');
            }
            delta.push_str(word);
            if i == last {
                delta.push('.');
            }
            delta
        })
    }
}

/// The words answers are made of.
pub(crate) const WORDS: &[&str] = &[
    "the",
    "service",
    "kept",
    "answering",
    "while",
    "its",
    "provider",
    "was",
    "overloaded",
    "and",
    "every",
    "request",
    "found",
    "a",
    "model",
    "that",
    "could",
    "reply",
    "in",
    "time",
    "so",
    "users",
    "saw",
    "nothing",
    "but",
    "slightly",
    "slower",
    "pages",
    "during",
    "outage",
    "retries",
    "waited",
    "for",
    "jitter",
    "breakers",
    "opened",
    "fallbacks",
    "served",
    "cached",
    "answers",
    "stayed",
    "fresh",
    "enough",
    "load",
    "fell",
    "back",
    "under",
    "budget",
];

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("the simulator's answers serialize")
}

// ---- Anthropic -------------------------------------------------------------------

#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<TextBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: MessageUsage,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct MessageUsage {
    input_tokens: u32,
    output_tokens: u32,
}

fn anthropic_stop(answer: &Answer<'_>) -> &'static str {
    if answer.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn anthropic_message(answer: &Answer<'_>) -> Vec<u8> {
    let text = answer.text();
    json(&Message {
        id: answer.id,
        kind: "message",
        role: "assistant",
        model: answer.model,
        content: vec![TextBlock {
            kind: "text",
            text: &text,
        }],
        stop_reason: Some(anthropic_stop(answer)),
        stop_sequence: None,
        usage: MessageUsage {
            input_tokens: answer.input_tokens,
            output_tokens: answer.output_tokens(),
        },
    })
}

fn sse(event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"data: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
    out.freeze()
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: Message<'a>,
}

#[derive(Serialize)]
struct BlockStart {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: TextBlock<'static>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: TextDelta<'a>,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
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
    output_tokens: u32,
}

const ANTHROPIC_OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;

fn anthropic_events(answer: &Answer<'_>, error_after: Option<u32>) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(answer.words.len() + 7);
    events.push(sse(
        Some("message_start"),
        &json(&MessageStart {
            kind: "message_start",
            message: Message {
                id: answer.id,
                kind: "message",
                role: "assistant",
                model: answer.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: MessageUsage {
                    input_tokens: answer.input_tokens,
                    output_tokens: 1,
                },
            },
        }),
    ));
    events.push(sse(
        Some("content_block_start"),
        &json(&BlockStart {
            kind: "content_block_start",
            index: 0,
            content_block: TextBlock {
                kind: "text",
                text: "",
            },
        }),
    ));
    // Anthropic writes this one with a space.
    events.push(sse(Some("ping"), br#"{"type": "ping"}"#));
    for (i, delta) in answer.deltas().enumerate() {
        if error_after == Some(i as u32) {
            events.push(sse(Some("error"), ANTHROPIC_OVERLOADED.as_bytes()));
            return events;
        }
        events.push(sse(
            Some("content_block_delta"),
            &json(&BlockDelta {
                kind: "content_block_delta",
                index: 0,
                delta: TextDelta {
                    kind: "text_delta",
                    text: &delta,
                },
            }),
        ));
    }
    if error_after.is_some() {
        events.push(sse(Some("error"), ANTHROPIC_OVERLOADED.as_bytes()));
        return events;
    }
    events.push(sse(
        Some("content_block_stop"),
        br#"{"type":"content_block_stop","index":0}"#,
    ));
    events.push(sse(
        Some("message_delta"),
        &json(&MessageDelta {
            kind: "message_delta",
            delta: StopDelta {
                stop_reason: anthropic_stop(answer),
                stop_sequence: None,
            },
            usage: OutputUsage {
                output_tokens: answer.output_tokens(),
            },
        }),
    ));
    events.push(sse(Some("message_stop"), br#"{"type":"message_stop"}"#));
    events
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

fn anthropic_error(kind: &str, message: &str) -> Vec<u8> {
    json(&AnthropicError {
        kind: "error",
        error: AnthropicErrorObject { kind, message },
    })
}

// ---- OpenAI ----------------------------------------------------------------------

const FINGERPRINT: &str = "fp_b0a5e1c2d3";

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: CompletionUsage,
    system_fingerprint: &'static str,
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

#[derive(Serialize)]
struct CompletionUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

fn openai_finish(answer: &Answer<'_>) -> &'static str {
    if answer.truncated {
        "length"
    } else {
        "stop"
    }
}

fn openai_usage(answer: &Answer<'_>) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: answer.input_tokens,
        completion_tokens: answer.output_tokens(),
        total_tokens: answer.input_tokens + answer.output_tokens(),
    }
}

fn openai_completion(answer: &Answer<'_>) -> Vec<u8> {
    let text = answer.text();
    json(&Completion {
        id: answer.id,
        object: "chat.completion",
        created: answer.created,
        model: answer.model,
        choices: [Choice {
            index: 0,
            message: ChoiceMessage {
                role: "assistant",
                content: &text,
                refusal: None,
            },
            logprobs: None,
            finish_reason: openai_finish(answer),
        }],
        usage: openai_usage(answer),
        system_fingerprint: FINGERPRINT,
    })
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<CompletionUsage>,
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
}

const OPENAI_STREAM_ERROR: &str = r#"{"error":{"message":"The server is overloaded. Please retry your request.","type":"server_error","param":null,"code":null}}"#;

fn openai_events(answer: &Answer<'_>, include_usage: bool, error_after: Option<u32>) -> Vec<Bytes> {
    let chunk = |delta: ChunkDelta<'_>, finish_reason| {
        sse(
            None,
            &json(&Chunk {
                id: answer.id,
                object: "chat.completion.chunk",
                created: answer.created,
                model: answer.model,
                system_fingerprint: FINGERPRINT,
                choices: vec![ChunkChoice {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason,
                }],
                usage: None,
            }),
        )
    };
    let mut events = Vec::with_capacity(answer.words.len() + 4);
    events.push(chunk(
        ChunkDelta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    ));
    for (i, delta) in answer.deltas().enumerate() {
        if error_after == Some(i as u32) {
            events.push(sse(None, OPENAI_STREAM_ERROR.as_bytes()));
            return events;
        }
        events.push(chunk(
            ChunkDelta {
                role: None,
                content: Some(&delta),
            },
            None,
        ));
    }
    if error_after.is_some() {
        events.push(sse(None, OPENAI_STREAM_ERROR.as_bytes()));
        return events;
    }
    events.push(chunk(ChunkDelta::default(), Some(openai_finish(answer))));
    if include_usage {
        events.push(sse(
            None,
            &json(&Chunk {
                id: answer.id,
                object: "chat.completion.chunk",
                created: answer.created,
                model: answer.model,
                system_fingerprint: FINGERPRINT,
                choices: Vec::new(),
                usage: Some(openai_usage(answer)),
            }),
        ));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
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

fn openai_error(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    json(&OpenAiError {
        error: OpenAiErrorObject {
            message,
            kind,
            param,
            code,
        },
    })
}

// ---- Both ------------------------------------------------------------------------

/// A whole answer, as JSON.
pub(crate) fn success_json(endpoint: Endpoint, answer: &Answer<'_>) -> Vec<u8> {
    match endpoint {
        Endpoint::Anthropic => anthropic_message(answer),
        Endpoint::OpenAi => openai_completion(answer),
    }
}

/// A streamed answer, as server-sent events; with `error_after`, the stream fails with
/// an overload after that many content deltas.
pub(crate) fn success_events(
    endpoint: Endpoint,
    answer: &Answer<'_>,
    include_usage: bool,
    error_after: Option<u32>,
) -> Vec<Bytes> {
    match endpoint {
        Endpoint::Anthropic => anthropic_events(answer, error_after),
        Endpoint::OpenAi => openai_events(answer, include_usage, error_after),
    }
}

/// Why the simulator answers with an error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure<'a> {
    /// A scripted fault that answers with an HTTP error.
    Fault(FaultKind),
    /// The request is malformed: the message says how.
    Invalid(&'a str),
    /// No such path.
    NotFound,
    /// Not a POST.
    MethodNotAllowed,
    /// The request body is over the limit.
    TooLarge,
}

/// The status and body of an error answer. `rpm` and `retry_after_secs` go into rate
/// limit messages.
pub(crate) fn error(
    endpoint: Endpoint,
    failure: Failure<'_>,
    model: &str,
    rpm: u32,
    retry_after: &str,
) -> (StatusCode, Vec<u8>) {
    use FaultKind as K;
    let status = |code: u16| StatusCode::from_u16(code).expect("valid status");
    match endpoint {
        Endpoint::Anthropic => {
            let (code, kind, message): (u16, &str, String) = match failure {
                Failure::Fault(K::Overloaded) => {
                    return (status(529), ANTHROPIC_OVERLOADED.as_bytes().to_vec())
                }
                Failure::Fault(K::Unavailable) => (503, "api_error", "Service unavailable".into()),
                Failure::Fault(K::BadGateway) => (502, "api_error", "Bad gateway".into()),
                Failure::Fault(K::RateLimited) => (
                    429,
                    "rate_limit_error",
                    format!(
                        "This request would exceed your organization's rate limit of {rpm} requests per minute. Please try again in {retry_after}."
                    ),
                ),
                Failure::Fault(K::QuotaExceeded) => (
                    400,
                    "invalid_request_error",
                    "Your credit balance is too low for this request. Add credits to continue."
                        .into(),
                ),
                Failure::Fault(K::BadRequest) => (
                    400,
                    "invalid_request_error",
                    "messages: at least one message is required".into(),
                ),
                Failure::Fault(K::Unauthorized) => {
                    (401, "authentication_error", "invalid x-api-key".into())
                }
                Failure::Fault(_) => (500, "api_error", "Internal server error".into()),
                Failure::Invalid(message) => (400, "invalid_request_error", message.into()),
                Failure::NotFound => (404, "not_found_error", "Not found".into()),
                Failure::MethodNotAllowed => {
                    (405, "invalid_request_error", "Method not allowed".into())
                }
                Failure::TooLarge => (
                    413,
                    "request_too_large",
                    "Request exceeds the maximum allowed number of bytes".into(),
                ),
            };
            (status(code), anthropic_error(kind, &message))
        }
        Endpoint::OpenAi => {
            let (code, message, kind, param, error_code): (
                u16,
                String,
                &str,
                Option<&str>,
                Option<&str>,
            ) = match failure {
                Failure::Fault(K::Overloaded) => (
                    503,
                    "The server is overloaded. Please retry your request.".into(),
                    "server_error",
                    None,
                    None,
                ),
                Failure::Fault(K::Unavailable) => (
                    503,
                    "The service is unavailable. Please retry your request.".into(),
                    "server_error",
                    None,
                    None,
                ),
                Failure::Fault(K::BadGateway) => (
                    502,
                    "Bad gateway.".into(),
                    "server_error",
                    None,
                    None,
                ),
                Failure::Fault(K::RateLimited) => (
                    429,
                    format!(
                        "Rate limit reached for {model} on requests per min (RPM): limit {rpm}. Please try again in {retry_after}."
                    ),
                    "requests",
                    None,
                    Some("rate_limit_exceeded"),
                ),
                Failure::Fault(K::QuotaExceeded) => (
                    429,
                    "You have used up your current quota. Check your plan and billing details."
                        .into(),
                    "insufficient_quota",
                    None,
                    Some("insufficient_quota"),
                ),
                Failure::Fault(K::BadRequest) => (
                    400,
                    "'messages' must contain at least one message.".into(),
                    "invalid_request_error",
                    Some("messages"),
                    None,
                ),
                Failure::Fault(K::Unauthorized) => (
                    401,
                    "Incorrect API key provided.".into(),
                    "invalid_request_error",
                    None,
                    Some("invalid_api_key"),
                ),
                Failure::Fault(_) => (
                    500,
                    "The server had an error while processing your request.".into(),
                    "server_error",
                    None,
                    None,
                ),
                Failure::Invalid(message) => {
                    (400, message.into(), "invalid_request_error", None, None)
                }
                Failure::NotFound => (
                    404,
                    "Unknown request URL.".into(),
                    "invalid_request_error",
                    None,
                    Some("unknown_url"),
                ),
                Failure::MethodNotAllowed => (
                    405,
                    "Method not allowed.".into(),
                    "invalid_request_error",
                    None,
                    None,
                ),
                Failure::TooLarge => (
                    413,
                    "The request body is too large.".into(),
                    "invalid_request_error",
                    None,
                    None,
                ),
            };
            (
                status(code),
                openai_error(&message, kind, param, error_code),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer<'a>(words: &'a [&'static str]) -> Answer<'a> {
        Answer {
            model: "m",
            id: "msg_1",
            created: 1,
            input_tokens: 5,
            words,
            truncated: false,
        }
    }

    #[test]
    fn deltas_join_into_the_text() {
        let a = answer(&["the", "service", "kept"]);
        assert_eq!(a.text(), "the service kept.");
        assert_eq!(a.deltas().collect::<String>(), a.text());
        assert_eq!(answer(&[]).text(), "");
    }

    #[test]
    fn error_bodies_are_byte_exact() {
        let (status, body) = error(
            Endpoint::Anthropic,
            Failure::Fault(FaultKind::Overloaded),
            "m",
            50,
            "1s",
        );
        assert_eq!(status, 529);
        assert_eq!(
            body,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
        );
        let (status, body) = error(
            Endpoint::OpenAi,
            Failure::Fault(FaultKind::QuotaExceeded),
            "m",
            50,
            "1s",
        );
        assert_eq!(status, 429);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"error":{"message":"You have used up your current quota. Check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#
        );
    }
}
