//! The providers' wire formats: answers, server-sent events and error bodies, in the
//! exact JSON shapes of the Anthropic Messages and OpenAI Chat Completions APIs (as
//! [`brownout_core::shape`] renders them), with the providers' own quirks.

use brownout_core::shape::{self, Ending, Reply, Stop, Style};
use bytes::Bytes;
use http::StatusCode;

use brownout_core::provider::Api;

use crate::script::FaultKind;

/// What an answer says, decided before it is rendered for an API.
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
    #[cfg(test)]
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

/// How the simulator copies the providers: a fingerprint, Anthropic's spaced ping and
/// the `output_tokens: 1` of its `message_start`; no `"usage":null` chunks.
const STYLE: Style<'static> = Style {
    system_fingerprint: Some("fp_b0a5e1c2d3"),
    start_output_tokens: 1,
    spaced_ping: true,
    null_usage: false,
    role_refusal: false,
};

const OVERLOADED_MESSAGE: &str = "The server is overloaded. Please retry your request.";

/// Renders `answer` as a [`Reply`] for `render`.
fn with_reply<T>(answer: &Answer<'_>, render: impl FnOnce(&Reply<'_>) -> T) -> T {
    let deltas: Vec<String> = answer.deltas().collect();
    let pieces: Vec<&str> = deltas.iter().map(String::as_str).collect();
    render(&Reply {
        id: answer.id,
        model: answer.model,
        created: answer.created,
        pieces: &pieces,
        input_tokens: answer.input_tokens.into(),
        output_tokens: answer.words.len() as u64,
        stop: if answer.truncated {
            Stop::MaxTokens
        } else {
            Stop::EndTurn
        },
    })
}

// ---- Both ------------------------------------------------------------------------

/// A whole answer, as JSON.
pub(crate) fn success_json(api: Api, answer: &Answer<'_>) -> Vec<u8> {
    with_reply(answer, |reply| {
        if api.is_openai() {
            shape::openai_completion(reply, &STYLE)
        } else {
            shape::anthropic_message(reply)
        }
    })
}

/// A streamed answer, as server-sent events; with `error_after`, the stream fails with
/// an overload after that many content deltas.
pub(crate) fn success_events(
    api: Api,
    answer: &Answer<'_>,
    include_usage: bool,
    error_after: Option<u32>,
) -> Vec<Bytes> {
    with_reply(answer, |reply| {
        let error_body;
        let ending = match error_after {
            None => Ending::Complete,
            Some(after) => {
                error_body = if api.is_openai() {
                    shape::openai_error(OVERLOADED_MESSAGE, "server_error", None, None)
                } else {
                    shape::anthropic_error("overloaded_error", "Overloaded")
                };
                Ending::Error {
                    after: after as usize,
                    body: &error_body,
                }
            }
        };
        if api.is_openai() {
            shape::openai_chunks(reply, &STYLE, include_usage, ending)
        } else {
            shape::anthropic_events(reply, &STYLE, ending)
        }
    })
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

/// The status and body of an error answer, in OpenAI's shape for its APIs and in
/// Anthropic's for every other. `rpm` and `retry_after` go into rate limit messages.
pub(crate) fn error(
    api: Api,
    failure: Failure<'_>,
    model: &str,
    rpm: u32,
    retry_after: &str,
) -> (StatusCode, Vec<u8>) {
    use FaultKind as K;
    let status = |code: u16| StatusCode::from_u16(code).expect("valid status");
    if !api.is_openai() {
        let (code, kind, message): (u16, &str, String) = match failure {
                Failure::Fault(K::Overloaded) => (529, "overloaded_error", "Overloaded".into()),
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
        return (status(code), shape::anthropic_error(kind, &message));
    }
    let (code, message, kind, param, error_code): (
                u16,
                String,
                &str,
                Option<&str>,
                Option<&str>,
            ) = match failure {
                Failure::Fault(K::Overloaded) => (
                    503,
                    OVERLOADED_MESSAGE.into(),
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
        shape::openai_error(&message, kind, param, error_code),
    )
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
            Api::AnthropicMessages,
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
            Api::OpenAiChat,
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
