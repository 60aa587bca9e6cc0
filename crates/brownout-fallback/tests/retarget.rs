//! The model rewrite the cascade relies on: core's `RequestFacts::retarget`, which
//! replaced this crate's own `rewrite_model`, held to the same properties.

use brownout_core::{json::find_top_level, RequestFacts};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn rewrite_model(body: &[u8], model: &str, max_tokens: Option<u64>) -> Option<Bytes> {
    let parts = http::Request::post("/v1/messages")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let body = Bytes::copy_from_slice(body);
    let facts = RequestFacts::read(&parts, &body, true).ok()?;
    facts
        .retarget(&body, model, max_tokens)
        .map(|(bytes, _)| bytes)
}

#[test]
fn unchanged_bodies_are_not_copied() {
    let parts = http::Request::post("/v1/messages")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let body = Bytes::from_static(br#"{"model":"a","max_tokens":10}"#);
    let facts = RequestFacts::read(&parts, &body, true).unwrap();
    let (same, _) = facts.retarget(&body, "a", Some(100)).unwrap();
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
