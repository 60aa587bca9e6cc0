//! What a failed request said: the text of its last user message (`messages`, or an
//! OpenAI Responses request's `input`: a string, or items whose content is a string
//! or `input_text` parts), and whether an OpenAI stream asked for a usage chunk.
//!
//! This runs only on the degrade path, over a body that is all in memory. Its model,
//! whether it streams and its API are the [`RequestFacts`](brownout_core::RequestFacts)
//! read once for the whole stack; only the message text, which no other layer needs,
//! is read here. The body is parsed with `serde_json` into types that take only what
//! is needed and borrow strings that have no escapes; a body that does not fit them
//! (not JSON, an unexpected shape) has no text.

use std::{borrow::Cow, fmt};

use serde::{
    de::{self, IgnoredAny, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

/// What the degraded answer is chosen and shaped by, besides the request's facts.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Said<'a> {
    /// OpenAI `"stream_options": {"include_usage": true}`: a usage chunk ends the
    /// stream.
    pub(crate) include_usage: bool,
    /// The text of the last user message; `None` when it cannot be read.
    pub(crate) text: Option<Cow<'a, str>>,
}

/// Reads a whole request body.
pub(crate) fn read(body: &[u8]) -> Said<'_> {
    let Ok(wire) = serde_json::from_slice::<Wire<'_>>(body) else {
        return Said::default();
    };
    let messages = match wire.input {
        // The Responses API: `input` is the user's text, or the conversation's items.
        Some(Input::Text(text)) if wire.messages.is_empty() => {
            return Said {
                include_usage: false,
                text: Some(text.0),
            }
        }
        Some(Input::Items(items)) if wire.messages.is_empty() => items,
        _ => wire.messages,
    };
    let text = messages
        .into_iter()
        .rev()
        .find(|m| m.role.as_ref().is_some_and(|r| r.0 == "user"))
        .map(|m| match m.content {
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => parts,
            Some(Content::Other) | None => Cow::Borrowed(""),
        });
    Said {
        include_usage: wire
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        text,
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
    #[serde(borrow, default)]
    input: Option<Input<'a>>,
}

/// A Responses API `input`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Input<'a> {
    Text(#[serde(borrow)] Str<'a>),
    Items(#[serde(borrow)] Vec<Message<'a>>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// A string, borrowed from the body when it has no escapes. (`Cow<str>` itself
/// borrows only as a direct field, not inside an `Option`.)
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// A message's content: a string, or the text of its `text` blocks (parts) joined
/// with newlines. Anything else (an object, a number) has no text.
enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Cow<'a, str>),
    Other,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content<'de>, A::Error> {
                let mut joined: Option<Cow<'de, str>> = None;
                while let Some(part) = seq.next_element::<Part<'de>>()? {
                    let (Some(kind), Some(text)) = (part.kind, part.text) else {
                        continue;
                    };
                    if kind.0 != "text" && kind.0 != "input_text" {
                        continue;
                    }
                    joined = Some(match joined {
                        None => text.0,
                        Some(before) => {
                            let mut s = before.into_owned();
                            s.push('\n');
                            s.push_str(&text.0);
                            Cow::Owned(s)
                        }
                    });
                }
                Ok(Content::Parts(joined.unwrap_or(Cow::Borrowed(""))))
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Content<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Content::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_responses_input_is_read_as_a_string_or_its_last_user_item() {
        assert_eq!(
            text(r#"{"model":"gpt-4.1","input":"refund please"}"#).as_deref(),
            Some("refund please")
        );
        let items = r#"{"model":"gpt-4.1","input":[
            {"role":"user","content":"first"},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"ok"}]},
            {"role":"user","content":[{"type":"input_image","image_url":"x"},{"type":"input_text","text":"line one"},{"type":"input_text","text":"line two"}]},
            {"type":"function_call_output","call_id":"c","output":"42"}]}"#;
        assert_eq!(text(items).as_deref(), Some("line one\nline two"));
        assert_eq!(
            text(r#"{"input":[{"type":"function_call_output","call_id":"c","output":"42"}]}"#),
            None
        );
        assert_eq!(text(r#"{"input":7}"#), None);
    }

    use super::*;

    fn text(body: &str) -> Option<String> {
        read(body.as_bytes()).text.map(Cow::into_owned)
    }

    #[test]
    fn the_last_user_message_in_every_form() {
        let anthropic = r#"{"model":"m","messages":[
            {"role":"user","content":"refund please"},
            {"role":"assistant","content":[{"type":"text","text":"sure"}]},
            {"role":"user","content":[{"type":"image","source":{}},{"type":"text","text":"line one"},{"type":"text","text":"line \"two\""}]},
            {"role":"assistant","content":"after"}]}"#;
        assert_eq!(text(anthropic).as_deref(), Some("line one\nline \"two\""));
        let openai = r#"{"messages":[{"role":"system","content":"be nice"},{"role":"user","content":"caf\u00e9"},{"role":"assistant","content":null,"tool_calls":[]}],"model":"gpt"}"#;
        assert_eq!(text(openai).as_deref(), Some("café"));
        let tool_only = r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"42"}]}]}"#;
        assert_eq!(text(tool_only).as_deref(), Some(""));
        assert_eq!(
            text(r#"{"messages":[{"role":"assistant","content":"x"}]}"#),
            None
        );
        assert_eq!(text(r#"{"model":"m"}"#), None);
    }

    #[test]
    fn unescaped_text_is_borrowed() {
        let body = br#"{"messages":[{"role":"user","content":"plain"}],"model":"m"}"#;
        let said = read(body);
        assert!(matches!(said.text, Some(Cow::Borrowed("plain"))));
    }

    #[test]
    fn stream_flags() {
        let said =
            read(br#"{"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#);
        assert!(said.include_usage);
        let said = read(br#"{"stream":false,"messages":[]}"#);
        assert!(!said.include_usage);
    }

    #[test]
    fn odd_bodies_have_no_text() {
        assert_eq!(read(b"not json"), Said::default());
        assert_eq!(read(b""), Said::default());
        // `messages` has an unexpected shape.
        let said = read(br#"{"model":"m","stream":true,"messages":"oops"}"#);
        assert_eq!(said.text, None);
    }
}
