//! Canned answers in the provider's own shapes: an Anthropic Messages response, an
//! OpenAI chat completion, an OpenAI Responses API `response`, and the SSE stream of
//! each.
//!
//! The shapes carry every field the official SDKs require, and no more. Token counts
//! are estimates (a quarter of the answer's characters, rounded up): nothing was billed,
//! and no tokenizer is at hand. Whole streams are rendered at once and sent as one
//! chunk; SSE readers do not depend on how events are split. The shapes themselves are
//! [`brownout_core::shape`]'s.

use brownout_core::{
    provider::Api,
    shape::{self, Ending, Reply, Stop, Style},
};
use bytes::Bytes;

/// The shape of answers to requests of `api`: OpenAI's chat completion or Responses
/// API `response`; every other API (Anthropic Messages, and any path brownout does
/// not know) gets the Anthropic Messages shape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Anthropic,
    OpenAiChat,
    OpenAiResponses,
}

fn shape_of(api: Api) -> Shape {
    match api {
        Api::OpenAiChat => Shape::OpenAiChat,
        Api::OpenAiResponses => Shape::OpenAiResponses,
        _ => Shape::Anthropic,
    }
}

/// The prefix of an answer's id in the shape of `api`: `chatcmpl-`, `resp_` or
/// `msg_`.
pub(crate) fn id_prefix(api: Api) -> &'static str {
    match shape_of(api) {
        Shape::OpenAiChat => "chatcmpl-",
        Shape::OpenAiResponses => "resp_",
        Shape::Anthropic => "msg_",
    }
}

/// How canned answers copy the providers: OpenAI's `"refusal":null` and
/// `"usage":null`, no fingerprint, Anthropic's compact ping.
const STYLE: Style<'static> = Style {
    system_fingerprint: None,
    start_output_tokens: 0,
    spaced_ping: false,
    null_usage: true,
    role_refusal: true,
};

/// One answer to render.
pub(crate) struct Answer<'a> {
    /// The API of the request, told by its path.
    pub(crate) api: Api,
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
        let pieces = [self.text];
        let reply = Reply {
            id: self.id,
            model: self.model,
            created: self.created,
            pieces: &pieces,
            input_tokens: 0,
            output_tokens: self.output_tokens(),
            stop: Stop::EndTurn,
        };
        let out = match (shape_of(self.api), self.stream) {
            (Shape::Anthropic, false) => shape::anthropic_message(&reply),
            (Shape::Anthropic, true) => shape::anthropic_sse(&reply, &STYLE, Ending::Complete),
            (Shape::OpenAiChat, false) => shape::openai_completion(&reply, &STYLE),
            (Shape::OpenAiChat, true) => {
                shape::openai_sse(&reply, &STYLE, self.include_usage, Ending::Complete)
            }
            (Shape::OpenAiResponses, false) => shape::openai_response(&reply),
            (Shape::OpenAiResponses, true) => shape::openai_response_sse(&reply, Ending::Complete),
        };
        Bytes::from(out)
    }

    fn output_tokens(&self) -> u64 {
        (self.text.chars().count() as u64).div_ceil(4).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(api: Api, stream: bool) -> Answer<'static> {
        Answer {
            api,
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
        let body = answer(Api::AnthropicMessages, false).render();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"id-1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"line\n\"two\""}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":3}}"#
        );
    }

    #[test]
    fn openai_json_is_exact() {
        let body = answer(Api::OpenAiChat, false).render();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"id-1","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"line\n\"two\"","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":0,"completion_tokens":3,"total_tokens":3}}"#
        );
    }

    #[test]
    fn responses_json_is_a_completed_response() {
        let body = answer(Api::OpenAiResponses, false).render();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["object"], "response");
        assert_eq!(json["id"], "id-1");
        assert_eq!(json["status"], "completed");
        assert_eq!(json["model"], "m");
        assert_eq!(json["output"][0]["role"], "assistant");
        assert_eq!(json["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(json["output"][0]["content"][0]["text"], "line\n\"two\"");
        assert_eq!(json["usage"]["output_tokens"], 3);
    }

    #[test]
    fn a_responses_stream_runs_from_created_to_completed() {
        let body = answer(Api::OpenAiResponses, true).render();
        let text = std::str::from_utf8(&body).unwrap();
        let mut names = Vec::new();
        let mut deltas = String::new();
        for event in text.split_terminator("\n\n") {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap();
            let data: serde_json::Value =
                serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name);
            if name == "response.output_text.delta" {
                deltas.push_str(data["delta"].as_str().unwrap());
            }
            names.push(name.to_owned());
        }
        assert_eq!(names.first().map(String::as_str), Some("response.created"));
        assert_eq!(names.last().map(String::as_str), Some("response.completed"));
        assert_eq!(deltas, "line\n\"two\"");
        assert!(!text.contains("[DONE]"));
    }

    #[test]
    fn every_sse_data_line_is_one_line() {
        for api in [
            Api::AnthropicMessages,
            Api::OpenAiChat,
            Api::OpenAiResponses,
        ] {
            let body = answer(api, true).render();
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
    fn shapes_by_path() {
        let prefix = |path| id_prefix(Api::from_path(path));
        assert_eq!(prefix("/v1/chat/completions"), "chatcmpl-");
        assert_eq!(prefix("/openai/v1/chat/completions/"), "chatcmpl-");
        assert_eq!(prefix("/v1/messages"), "msg_");
        assert_eq!(prefix("/v1/responses"), "resp_");
        assert_eq!(prefix("/"), "msg_");
    }
}
