//! Writing another model into a JSON body, keeping every other byte.

use std::ops::Range;

use brownout_core::json::{find_top_level, find_top_level_span};
use bytes::{Bytes, BytesMut};

/// Where a request body's `model` and `max_tokens` are, found once and used for every
/// target of the cascade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelBody {
    body: Bytes,
    model: String,
    model_span: Range<usize>,
    max_tokens: Option<(Range<usize>, u64)>,
}

impl ModelBody {
    /// Finds the top-level `model` (a string) and `max_tokens` (a whole number, if
    /// there is one) of a JSON body; `None` when there is no string `model`.
    pub fn parse(body: Bytes) -> Option<Self> {
        let member = find_top_level(&body, "model")?;
        let model = member.value.into_owned();
        let model_span = member.span;
        let max_tokens = find_top_level_span(&body, "max_tokens").and_then(|span| {
            let raw = std::str::from_utf8(&body[span.clone()]).ok()?;
            raw.parse::<u64>().ok().map(|n| (span, n))
        });
        Some(ModelBody {
            body,
            model,
            model_span,
            max_tokens,
        })
    }

    /// The model the request asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The request's `max_tokens`, if it is a whole number.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens.as_ref().map(|(_, n)| *n)
    }

    /// The body for `model`, with `max_tokens` lowered to `limit` when it is above it.
    /// Only those values change; every other byte is kept, order and whitespace
    /// included. The original bytes are returned, uncopied, when nothing changes.
    pub fn for_target(&self, model: &str, limit: Option<u64>) -> Bytes {
        let clamp = match (&self.max_tokens, limit) {
            (Some((span, n)), Some(limit)) if *n > limit => Some((span.clone(), limit)),
            _ => None,
        };
        if model == self.model && clamp.is_none() {
            return self.body.clone();
        }
        let model_json = serde_json::to_string(model).expect("a string serializes");
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
        if model != self.model {
            edits.push((self.model_span.clone(), model_json.into_bytes()));
        }
        if let Some((span, limit)) = clamp {
            edits.push((span, limit.to_string().into_bytes()));
        }
        edits.sort_by_key(|(span, _)| span.start);
        let mut out = BytesMut::with_capacity(self.body.len() + 64);
        let mut at = 0;
        for (span, bytes) in edits {
            out.extend_from_slice(&self.body[at..span.start]);
            out.extend_from_slice(&bytes);
            at = span.end;
        }
        out.extend_from_slice(&self.body[at..]);
        out.freeze()
    }
}

/// Rewrites the top-level `model` of a JSON body (and lowers `max_tokens` to
/// `max_tokens` when given and exceeded), keeping every other byte; `None` when the
/// body has no string `model`.
///
/// ```
/// use brownout_fallback::rewrite_model;
///
/// let body = br#"{ "model" : "claude-opus-4-1",  "max_tokens": 32000, "x": [1, 2] }"#;
/// let out = rewrite_model(body, "claude-haiku-4-5", Some(8192)).unwrap();
/// assert_eq!(&out[..], br#"{ "model" : "claude-haiku-4-5",  "max_tokens": 8192, "x": [1, 2] }"#);
/// ```
pub fn rewrite_model(body: &[u8], model: &str, max_tokens: Option<u64>) -> Option<Bytes> {
    let parsed = ModelBody::parse(Bytes::copy_from_slice(body))?;
    Some(parsed.for_target(model, max_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    #[test]
    fn unchanged_bodies_are_not_copied() {
        let body = Bytes::from_static(br#"{"model":"a","max_tokens":10}"#);
        let parsed = ModelBody::parse(body.clone()).unwrap();
        let same = parsed.for_target("a", Some(100));
        assert_eq!(same.as_ptr(), body.as_ptr());
    }

    #[test]
    fn escapes_in_model_names_are_written_as_json() {
        let out = rewrite_model(br#"{"model":"a"}"#, "we\"ird\\name", None).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "we\"ird\\name");
    }

    #[test]
    fn max_tokens_is_only_ever_lowered() {
        let out = rewrite_model(br#"{"max_tokens":100,"model":"a"}"#, "b", Some(500)).unwrap();
        assert_eq!(&out[..], br#"{"max_tokens":100,"model":"b"}"#);
        let out = rewrite_model(br#"{"max_tokens":1e3,"model":"a"}"#, "b", Some(5)).unwrap();
        assert_eq!(
            &out[..],
            br#"{"max_tokens":1e3,"model":"b"}"#,
            "not a whole number: kept"
        );
        let out = rewrite_model(br#"{"model":"a"}"#, "b", Some(5)).unwrap();
        assert_eq!(&out[..], br#"{"model":"b"}"#, "absent: not added");
    }

    #[test]
    fn bodies_without_a_model_are_refused() {
        for body in [&b"not json"[..], b"{}", br#"{"model":1}"#, b"[]", b"\xff"] {
            assert_eq!(rewrite_model(body, "b", None), None);
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "\\PC{0,10}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 20, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn only_the_model_and_max_tokens_change(
            members in prop::collection::vec(("[a-z_]{1,8}", value()), 0..6),
            position in 0usize..6,
            old in "\\PC{0,12}",
            new in "\\PC{0,12}",
            tokens in proptest::option::of(0u64..100_000),
            limit in proptest::option::of(0u64..100_000),
            pretty in any::<bool>(),
        ) {
            let mut map = Map::new();
            let mut members: Vec<(String, Value)> = members
                .into_iter()
                .filter(|(k, _)| k != "model" && k != "max_tokens")
                .collect();
            if let Some(t) = tokens {
                members.push(("max_tokens".into(), json!(t)));
            }
            members.insert(position.min(members.len()), ("model".into(), json!(old)));
            for (k, v) in members {
                map.insert(k, v);
            }
            let original = Value::Object(map);
            let body = if pretty {
                serde_json::to_vec_pretty(&original).unwrap()
            } else {
                serde_json::to_vec(&original).unwrap()
            };
            let out = rewrite_model(&body, &new, limit).unwrap();

            // The result is the original with those two values replaced…
            let mut expected = original.clone();
            expected["model"] = json!(new);
            if let (Some(t), Some(l)) = (tokens, limit) {
                expected["max_tokens"] = json!(t.min(l));
            }
            let got: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(got, expected);

            // …and byte for byte, everything around them is the same.
            let model_span = find_top_level(&body, "model").unwrap().span;
            let out_span = find_top_level(&out, "model").unwrap().span;
            if tokens.zip(limit).is_none_or(|(t, l)| t <= l) {
                prop_assert_eq!(&body[..model_span.start], &out[..out_span.start]);
                prop_assert_eq!(&body[model_span.end..], &out[out_span.end..]);
            }
        }
    }
}
