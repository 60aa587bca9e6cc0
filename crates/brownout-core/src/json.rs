//! Finding the top-level `model` of a JSON request body without parsing all of it.
//!
//! Breakers key on the model and fallback rewrites it, on every request. A full
//! `serde_json` parse of a chat request costs time in proportion to the whole body
//! (conversations and inline images run to hundreds of kilobytes), while `model`
//! usually comes first. [`find_top_level`] crosses nested values by their brackets
//! and strings (strings `memchr` at a time), without building anything, and reports
//! the exact byte range of the value, so that a rewrite can replace those bytes and
//! keep every other byte.
//!
//! The scan goes on to the end of the object: a key that appears twice is refused
//! (`None`), since parsers disagree on which one wins and the upstream might read the
//! other. Anything it cannot understand yields `None`, never a panic.

use std::{borrow::Cow, ops::Range};

/// A top-level string member of a JSON object, found by [`find_top_level`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    /// The decoded string value: borrowed from the body unless it had escapes.
    pub value: Cow<'a, str>,
    /// The byte range of the value in the body, quotes included.
    pub span: Range<usize>,
}

/// Finds the first member named `key` at the top level of the JSON object in `body`.
///
/// Returns `None` when the body is not a JSON object, has no such member before a
/// malformed spot, or the first such member's value is not a string.
///
/// ```
/// use brownout_core::json::find_top_level;
///
/// let body = br#"{"messages":[{"role":"user","content":"the \"model\": x"}], "model" : "claude-haiku-4-5"}"#;
/// let model = find_top_level(body, "model").unwrap();
/// assert_eq!(model.value, "claude-haiku-4-5");
/// assert_eq!(&body[model.span], br#""claude-haiku-4-5""#);
///
/// assert_eq!(find_top_level(br#"{"metadata":{"model":"nested"}}"#, "model"), None);
/// assert_eq!(find_top_level(b"not json", "model"), None);
/// ```
pub fn find_top_level<'a>(body: &'a [u8], key: &str) -> Option<Member<'a>> {
    let span = find_top_level_span(body, key)?;
    if body[span.start] != b'"' {
        return None;
    }
    let value = decode_string(&body[span.clone()])?;
    Some(Member { value, span })
}

/// The byte range of the value of the first member named `key` at the top level of
/// the JSON object in `body`, whatever its type (a string's quotes included).
///
/// ```
/// use brownout_core::json::find_top_level_span;
///
/// let body = br#"{"model":"m","max_tokens": 4096 ,"stream":true}"#;
/// let span = find_top_level_span(body, "max_tokens").unwrap();
/// assert_eq!(&body[span], b"4096");
/// ```
pub fn find_top_level_span(body: &[u8], key: &str) -> Option<Range<usize>> {
    scan(body, key, true)
}

/// Like [`find_top_level`], for the first bytes of a body cut at a read limit: the
/// first member named `key` is taken without looking further, since the rest of the
/// object is not there to look at.
///
/// ```
/// use brownout_core::json::find_in_prefix;
///
/// let start = br#"{"model":"claude-opus-4-1","messages":[{"role":"user","content":"a very long"#;
/// assert_eq!(find_in_prefix(start, "model").unwrap().value, "claude-opus-4-1");
/// ```
pub fn find_in_prefix<'a>(prefix: &'a [u8], key: &str) -> Option<Member<'a>> {
    let span = find_span_in_prefix(prefix, key)?;
    if prefix[span.start] != b'"' {
        return None;
    }
    let value = decode_string(&prefix[span.clone()])?;
    Some(Member { value, span })
}

/// Like [`find_top_level_span`], for the first bytes of a body cut at a read limit:
/// the first member named `key` is taken without looking further.
pub fn find_span_in_prefix(prefix: &[u8], key: &str) -> Option<Range<usize>> {
    scan(prefix, key, false)
}

fn scan(body: &[u8], key: &str, whole: bool) -> Option<Range<usize>> {
    let mut s = Scanner {
        bytes: body,
        pos: 0,
    };
    s.skip_ws();
    s.expect(b'{')?;
    s.skip_ws();
    if s.peek()? == b'}' {
        return None;
    }
    let mut found = None;
    loop {
        s.skip_ws();
        let key_span = s.string()?;
        s.skip_ws();
        s.expect(b':')?;
        s.skip_ws();
        let start = s.pos;
        s.value()?;
        if key_matches(&body[key_span], key) {
            if !whole {
                return Some(start..s.pos);
            }
            if found.is_some() {
                // Parsers disagree on which of two members wins: neither does here.
                return None;
            }
            found = Some(start..s.pos);
        }
        s.skip_ws();
        match s.next()? {
            b',' => continue,
            b'}' => return found,
            _ => return None,
        }
    }
}

pub(crate) fn key_matches(raw: &[u8], key: &str) -> bool {
    // `key` has no escapes: bytes of its length between the quotes match it or not,
    // and an escaped key is longer than its text, so only a longer one is decoded.
    // The length decides most keys at once (a search for a backslash per key and
    // name was most of this function's cost).
    if raw.len() < 2 {
        return false;
    }
    let inner = raw.len() - 2;
    if inner == key.len() {
        return &raw[1..raw.len() - 1] == key.as_bytes();
    }
    inner > key.len() && raw.contains(&b'\\') && decode_string(raw).is_some_and(|k| k == key)
}

pub(crate) fn decode_string(raw: &[u8]) -> Option<Cow<'_, str>> {
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(&raw[1..raw.len() - 1])
            .ok()
            .map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

pub(crate) struct Scanner<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
}

impl Scanner<'_> {
    pub(crate) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    pub(crate) fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    pub(crate) fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    pub(crate) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// A string, quotes included; escapes are skipped, not decoded, and the contents
    /// are not validated. Most of a chat request's bytes are inside strings: `memchr`
    /// crosses them many bytes at a time.
    pub(crate) fn string(&mut self) -> Option<Range<usize>> {
        let start = self.pos;
        self.expect(b'"')?;
        loop {
            let i = memchr::memchr2(b'"', b'\\', &self.bytes[self.pos..])?;
            self.pos += i;
            match self.next()? {
                b'"' => return Some(start..self.pos),
                _ => {
                    self.next()?;
                }
            }
        }
    }

    /// Any value, skipped.
    pub(crate) fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => self.nested(),
            _ => {
                // A number, true, false or null: up to the next delimiter.
                let start = self.pos;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                let token = &self.bytes[start..self.pos];
                let valid = matches!(token, b"true" | b"false" | b"null")
                    || (!token.is_empty()
                        && token
                            .iter()
                            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(b)));
                valid.then_some(())
            }
        }
    }

    /// An object or array, skipped by counting brackets outside strings.
    fn nested(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    #[test]
    fn finds_model_anywhere_at_the_top_level() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (br#"{"model":"a"}"#, Some("a")),
            (br#"  {  "model"  :  "a b" , "x": 1 }"#, Some("a b")),
            (br#"{"x":[1,{"model":"no"}],"model":"yes"}"#, Some("yes")),
            (br#"{"x":"}{][\"","model":"yes"}"#, Some("yes")),
            (br#"{"mod\u0065l":"escaped-key"}"#, Some("escaped-key")),
            (br#"{"model":"caf\u00e9"}"#, Some("café")),
            (br#"{"model":42}"#, None),
            (br#"{"model":null,"model":"second"}"#, None),
            (br#"{"model":"a","x":1,"model":"b"}"#, None),
            (br#"{"models":"a"}"#, None),
            (br#"{}"#, None),
            (br#"[{"model":"a"}]"#, None),
            (br#"{"x":tru,"model":"a"}"#, None),
            (br#"{"x" 1,"model":"a"}"#, None),
            (br#"{"model":"unterminated}"#, None),
            (b"", None),
            (b"\xff\xfe", None),
            (br#"{"model":"ok"} trailing garbage"#, Some("ok")),
            (br#"{"model":"ok","x":"#, None),
        ];
        for (body, want) in cases {
            let got = find_top_level(body, "model").map(|m| m.value.into_owned());
            assert_eq!(got.as_deref(), *want, "{}", String::from_utf8_lossy(body));
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(Value::String),
        ]
    }

    pub(crate) fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn a_key_matches_by_its_text_escaped_or_not() {
        assert!(key_matches(br#""model""#, "model"));
        assert!(key_matches(br#""mod\u0065l""#, "model"));
        assert!(key_matches(br#""\u006dodel""#, "model"));
        assert!(!key_matches(br#""models""#, "model"));
        assert!(!key_matches(br#""mode""#, "model"));
        assert!(!key_matches(br#""mod\u0065ls""#, "model"));
        assert!(!key_matches(br#""modex""#, "model"));
        assert!(!key_matches(b"\"", "model"));
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json(
            before in prop::collection::vec(("[a-z]{1,6}", value()), 0..4),
            model in "\\PC{0,16}",
            after in prop::collection::vec(("[a-z]{1,6}", value()), 0..4),
            pretty in any::<bool>(),
        ) {
            let mut map = Map::new();
            for (k, v) in before {
                if k != "model" { map.insert(k, v); }
            }
            map.insert("model".into(), Value::String(model.clone()));
            for (k, v) in after {
                if k != "model" { map.insert(k, v); }
            }
            let value = Value::Object(map);
            let body = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            let found = find_top_level(&body, "model").expect("model is found");
            prop_assert_eq!(&found.value, &model);
            let raw: String = serde_json::from_slice(&body[found.span.clone()]).unwrap();
            prop_assert_eq!(raw, model);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = find_top_level(&body, "model");
        }
    }
}
