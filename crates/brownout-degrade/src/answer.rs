//! Canned answers in the provider's own shapes: an Anthropic Messages response, an
//! OpenAI chat completion, and the SSE stream of each.
//!
//! The shapes carry every field the official SDKs require, and no more. Token counts
//! are estimates (a quarter of the answer's characters, rounded up): nothing was billed,
//! and no tokenizer is at hand. Whole streams are rendered at once and sent as one
//! chunk; SSE readers do not depend on how events are split. The shapes themselves are
//! [`brownout_core::shape`]'s.

use brownout_core::shape::{self, Ending, Reply, Stop, Style};
use bytes::Bytes;

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
        let out = match (self.provider, self.stream) {
            (Provider::Anthropic, false) => shape::anthropic_message(&reply),
            (Provider::Anthropic, true) => shape::anthropic_sse(&reply, &STYLE, Ending::Complete),
            (Provider::OpenAi, false) => shape::openai_completion(&reply, &STYLE),
            (Provider::OpenAi, true) => {
                shape::openai_sse(&reply, &STYLE, self.include_usage, Ending::Complete)
            }
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
