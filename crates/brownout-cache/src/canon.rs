//! The canonical form of a JSON body, written in one pass over its bytes.
//!
//! [`write`] writes exactly the bytes that parsing the body into a tree
//! (`key::Node`) and hashing that tree writes (the property tests below check it
//! against the tree on generated bodies), without the tree: no allocation per object,
//! array or unescaped string, and no second walk over it. Each object's members are written in
//! the order they come and then put in key order in place (a copy of the object's
//! bytes, not a sort of values); an array's count is put before its items once they
//! are written.
//!
//! Numbers other than plain integers of 64 bits, and strings or keys with escapes,
//! are read by serde_json, token by token, inside the pass (so they are written as
//! the tree writes them). The pass gives up, and leaves the body to the tree (which
//! writes the same bytes wherever both answer), on an object naming a key twice (the
//! tree's order of the two is its sort's), on nesting deeper than 100, and on a body
//! that is not JSON, which the tree's parse then refuses.

use std::cell::Cell;

use crate::key::Canon;

/// Nesting deeper than this is left to the tree (serde_json refuses past 128).
const MAX_DEPTH: usize = 100;

/// Where one member of an object being written lies in the output: its key's bytes,
/// and the whole member (key field and value).
#[derive(Clone, Copy)]
struct Member {
    key: (usize, usize),
    member: (usize, usize),
}

/// The working lists, kept per thread between bodies.
#[derive(Default)]
struct Scratch {
    members: Vec<Member>,
    bytes: Vec<u8>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = const {
        Cell::new(Scratch {
            members: Vec::new(),
            bytes: Vec::new(),
        })
    };
}

/// Writes the canonical form of `body` (after a `J`) into `out` and returns `true`,
/// or writes nothing and returns `false` when the tree must decide (see the module
/// docs). The top-level `stream` and `stream_options` members are left out.
pub(crate) fn write(out: &mut Canon, body: &[u8]) -> bool {
    let start = out.0.len();
    let mut scratch = SCRATCH.take();
    scratch.members.clear();
    let done = {
        let mut walk = Walk {
            bytes: body,
            pos: 0,
            out,
            scratch: &mut scratch,
        };
        walk.out.0.push(b'J');
        walk.ws();
        walk.value(0).is_some() && {
            walk.ws();
            walk.pos == body.len()
        }
    };
    // Kept for the next body unless a large one grew it. The caller's prompt was
    // copied into `bytes`: all of its capacity is wiped before it is kept.
    if scratch.bytes.capacity() <= 64 * 1024 && scratch.members.capacity() <= 4096 {
        crate::key::wipe(&mut scratch.bytes);
        scratch.members.clear();
        SCRATCH.set(scratch);
    }
    if !done {
        out.0.truncate(start);
    }
    done
}

struct Walk<'a, 'o> {
    bytes: &'a [u8],
    pos: usize,
    out: &'o mut Canon,
    scratch: &'o mut Scratch,
}

impl Walk<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn literal(&mut self, text: &[u8], tag: &[u8]) -> Option<()> {
        self.bytes[self.pos..].starts_with(text).then(|| {
            self.pos += text.len();
            self.out.update(tag);
        })
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string(b's').map(drop),
            b't' => self.literal(b"true", b"t"),
            b'f' => self.literal(b"false", b"f"),
            b'n' => self.literal(b"null", b"n"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A string, written as a field with `tag`: its bytes as they are when it has no
    /// escapes (checked as serde_json checks them: no control character, valid
    /// UTF-8), else decoded by serde_json. Returns how many bytes the text took (the
    /// field's last bytes).
    fn string(&mut self, tag: u8) -> Option<usize> {
        let start = self.pos;
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            let i = memchr::memchr2(b'"', b'\\', &self.bytes[self.pos..])?;
            self.pos += i + 1;
            if self.bytes[self.pos - 1] == b'"' {
                break;
            }
            escaped = true;
            // The escaped character; serde_json checks the escape below.
            self.pos += 1;
            if self.pos >= self.bytes.len() {
                return None;
            }
        }
        let raw = self.bytes.get(start..self.pos)?;
        if escaped {
            let decoded: String = serde_json::from_slice(raw).ok()?;
            crate::key::field(self.out, tag, decoded.as_bytes());
            Some(decoded.len())
        } else {
            let inner = &raw[1..raw.len() - 1];
            // One branch-free pass for both checks (it vectorises), and UTF-8 checked
            // only where a byte is not ASCII.
            let (control, high) = inner.iter().fold((false, false), |(c, h), &b| {
                (c | (b < 0x20), h | (b >= 0x80))
            });
            if control || (high && std::str::from_utf8(inner).is_err()) {
                return None;
            }
            crate::key::field(self.out, tag, inner);
            Some(inner.len())
        }
    }

    /// A number: a plain integer that fits 64 bits as it is written (which is how
    /// serde_json writes it back); anything else as serde_json reads and writes it.
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut plain = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.some_digits()?;
            plain = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
            plain = false;
        }
        let token = &self.bytes[start..self.pos];
        // An integer serde_json reads as a u64 or an i64 and writes back as it is;
        // `-0` it reads as a float (-0.0).
        let integer = plain && token != b"-0" && {
            let digits = &token[usize::from(negative)..];
            let magnitude = digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            match magnitude {
                Some(m) if negative => m <= 1 << 63,
                Some(_) => true,
                None => false,
            }
        };
        if integer {
            crate::key::field(self.out, b'd', token);
        } else {
            let n: serde_json::Number = serde_json::from_slice(token).ok()?;
            crate::key::number(self.out, &n);
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    /// After an item or a member: `Some(false)` past a comma (another follows),
    /// `Some(true)` past `close`, `None` on anything else.
    fn after_one(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let next = self.peek()?;
        self.pos += 1;
        match next {
            b',' => Some(false),
            _ if next == close => Some(true),
            _ => None,
        }
    }

    /// An array: its items written, then `a` and their count put before them.
    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        let start = self.out.0.len();
        // The tag and a one-byte count, filled in once the count is known.
        self.out.0.extend_from_slice(&[b'a', 0]);
        let mut count = 0usize;
        self.ws();
        if self.eat(b']').is_none() {
            loop {
                self.ws();
                self.value(depth)?;
                count += 1;
                if self.after_one(b']')? {
                    break;
                }
            }
        }
        self.head(start, b'a', count);
        Some(())
    }

    /// Writes `tag` and `count` (LEB128, as [`Canon::length`] writes it) into the two
    /// bytes left for them at `start`. A count of 128 or more takes more than one
    /// byte: the items are moved up by hand for those (`Vec::splice` costs several
    /// times this for a few bytes); a shorter one moves nothing.
    fn head(&mut self, start: usize, tag: u8, count: usize) {
        let out = &mut self.out.0;
        out[start] = tag;
        if count < 0x80 {
            out[start + 1] = count as u8;
            return;
        }
        let (count, len) = crate::key::leb128(count);
        let end = out.len();
        out.resize(end + len - 1, 0);
        out.copy_within(start + 2..end, start + 1 + len);
        out[start + 1..start + 1 + len].copy_from_slice(&count[..len]);
    }

    /// An object: its members written as they come, then put in key order behind `o`
    /// and their count. At the top level, `stream` and `stream_options` are left out.
    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        let start = self.out.0.len();
        // The tag and a one-byte count, filled in once the count is known.
        self.out.0.extend_from_slice(&[b'o', 0]);
        let content = start + 2;
        let base = self.scratch.members.len();
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                self.ws();
                let member_start = self.out.0.len();
                let key_len = self.string(b'k')?;
                let key_end = self.out.0.len();
                let key = (key_end - key_len, key_end);
                self.ws();
                self.eat(b':')?;
                self.ws();
                self.value(depth)?;
                let member_end = self.out.0.len();
                let dropped = depth == 1
                    && matches!(&self.out.0[key.0..key.1], b"stream" | b"stream_options");
                if dropped {
                    // How the answer is delivered, not what it says (see `key`).
                    self.out.0.truncate(member_start);
                } else {
                    self.scratch.members.push(Member {
                        key,
                        member: (member_start, member_end),
                    });
                }
                if self.after_one(b'}')? {
                    break;
                }
            }
        }
        let out = &mut self.out.0;
        let Scratch { members, bytes } = &mut *self.scratch;
        let count = members.len() - base;
        let mine = &mut members[base..];
        let key = |m: &Member| m.key.0..m.key.1;
        if !mine.windows(2).all(|w| out[key(&w[0])] < out[key(&w[1])]) {
            mine.sort_unstable_by(|a, b| out[key(a)].cmp(&out[key(b)]));
            if mine.windows(2).any(|w| out[key(&w[0])] == out[key(&w[1])]) {
                // A key named twice: the tree's sort decides their order.
                return None;
            }
            bytes.clear();
            bytes.extend_from_slice(&out[content..]);
            out.truncate(content);
            for m in mine.iter() {
                out.extend_from_slice(&bytes[m.member.0 - content..m.member.1 - content]);
            }
        }
        members.truncate(base);
        self.head(start, b'o', count);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use crate::key::{canonical_body, canonical_tree, Canon};

    /// The bytes the one pass writes (or the tree, where it gives up), and the tree's.
    fn both(body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut fast = Canon(Vec::new());
        canonical_body(&mut fast, body);
        let mut tree = Canon(Vec::new());
        canonical_tree(&mut tree, body);
        (fast.0, tree.0)
    }

    fn one_pass(body: &[u8]) -> bool {
        super::write(&mut Canon(Vec::new()), body)
    }

    #[test]
    fn written_bodies_agree_with_the_tree() {
        for body in [
            r#"{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Hi"}]}"#,
            r#" { "b" : [1, 2, {"z": null, "a": true}], "a": false, "stream": true } "#,
            r#"{"stream_options":{"include_usage":true},"x":[]}"#,
            r#"{"nested":{"stream":true}}"#,
            r#"[]"#,
            r#"{}"#,
            r#""text""#,
            r#"0"#,
            r#"-0"#,
            r#"[1.0, 1, 1e2, 1E-2, -1.5e+3, 18446744073709551615, 18446744073709551616]"#,
            r#"[-9223372036854775808, -9223372036854775809, 9223372036854775808]"#,
            r#"{"s":"line\nbreak \"quoted\" \u00e9 \ud83d\ude00","k\u0065y":1}"#,
            r#"{"é":"ü","e":"u"}"#,
            "{\"a\":1}\n",
        ] {
            let (fast, tree) = both(body.as_bytes());
            assert_eq!(fast, tree, "{body}");
            assert_eq!(fast[0], b'J', "{body}: read as JSON");
        }
        // Read in one pass, not left to the tree.
        assert!(one_pass(
            br#"{"model":"m","messages":[{"role":"user","content":"a\nb"}]}"#
        ));
        assert!(one_pass(br#"[1,-2,3.5,"x",true,false,null,{}]"#));
    }

    #[test]
    fn what_is_not_json_is_left_to_the_tree_and_refused_there() {
        for body in [
            &br#"{"a":1,}"#[..],
            br#"[1,]"#,
            br#"{"a" 1}"#,
            br#"{"a":01}"#,
            br#"{"a":1."#,
            br#"{"a":-}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\ud800"}"#,
            b"{\"a\":\"tab\there\"}",
            b"{\"a\":\"\xff\"}",
            br#"{"a":tru}"#,
            br#"{"a":1} x"#,
            br#"{"a":1}{"b":2}"#,
            br#"{"a":"unterminated}"#,
            br#"{"a":"\"#,
            br#"[1e999]"#,
            b"",
            b"   ",
            br#"{1:2}"#,
        ] {
            let (fast, tree) = both(body);
            assert_eq!(fast, tree, "{}", String::from_utf8_lossy(body));
            assert!(!one_pass(body), "{}", String::from_utf8_lossy(body));
        }
        // A key named twice, and nesting past the one pass's depth: the tree decides.
        for body in [
            br#"{"a":1,"a":2}"#.to_vec(),
            format!("{}1{}", "[".repeat(101), "]".repeat(101)).into_bytes(),
        ] {
            let (fast, tree) = both(&body);
            assert_eq!(fast, tree);
            assert!(!one_pass(&body));
        }
    }

    #[test]
    fn long_fields_many_members_and_deep_nesting_agree_with_the_tree() {
        let long = "x".repeat(200);
        let items = (0..200)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..150)
            .rev()
            .map(|i| format!("\"k{i:03}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let deep_objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        for (body, by_one_pass) in [
            (format!(r#"{{"{long}":"{long}","a":[{items}]}}"#), true),
            (format!("{{{members}}}"), true),
            (deep(100), true),
            (deep_objects(100), true),
            (deep(101), false),
            (deep_objects(101), false),
            (deep(200), false),
        ] {
            let (fast, tree) = both(body.as_bytes());
            assert_eq!(fast, tree, "{}", &body[..body.len().min(80)]);
            assert_eq!(
                one_pass(body.as_bytes()),
                by_one_pass,
                "{}",
                &body[..body.len().min(80)]
            );
        }
    }

    #[test]
    fn keys_stream_and_odd_bytes_agree_with_the_tree() {
        for body in [
            &br#"{"str\u0065am":1,"a":2}"#[..],
            br#"{"stream":1,"stream":2}"#,
            br#"[{"stream":1}]"#,
            br#"{"o":{"a":1,"a":2}}"#,
            br#"{"b":1,"\u0061":2}"#,
            b"{\"a\":\"\x7f\"}",
            b"{\"a\":\"\xc0\x80\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"\x0c{}",
            b"\xef\xbb\xbf{}",
            br#"[1e05, 1E+0, -0.0, 0e0, 1e-400, 123456789012345678901234567890, 1e309]"#,
            br#"[0.1, 100000000000000000000, -100000000000000000000, 5e-324]"#,
        ] {
            let (fast, tree) = both(body);
            assert_eq!(fast, tree, "{}", String::from_utf8_lossy(body));
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[a-z\\n\"\\\\\\t/é😀]{0,8}".prop_map(Value::String),
        ]
    }

    /// JSON text with objects' members in any order (serde_json's own maps are
    /// sorted) and whitespace anywhere it may go; each key once per object.
    fn text() -> impl Strategy<Value = String> {
        let ws = prop_oneof![Just(""), Just(""), Just(" "), Just("\n  "), Just("\t")];
        let leaf = (leaf(), ws.clone()).prop_map(|(v, w)| format!("{w}{v}{w}"));
        leaf.prop_recursive(4, 32, 5, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..5), ws.clone())
                    .prop_map(|(items, w)| format!("[{w}{}]", items.join(","))),
                (
                    prop::collection::vec(
                        ("[a-c_]{0,2}|stream|stream_options|\\PC{0,4}", inner),
                        0..6
                    ),
                    ws
                )
                    .prop_map(|(members, w)| {
                        let mut seen = std::collections::HashSet::new();
                        let members: Vec<String> = members
                            .into_iter()
                            .filter(|(k, _)| seen.insert(k.clone()))
                            .map(|(k, v)| {
                                format!("{w}{}{w}:{v}", serde_json::to_string(&k).unwrap())
                            })
                            .collect();
                        format!("{{{}{w}}}", members.join(","))
                    }),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_one_pass_writes_what_the_tree_writes(body in text()) {
            let (fast, tree) = both(body.as_bytes());
            prop_assert_eq!(fast, tree);
            // Valid JSON, no key twice, shallow: the one pass reads it all itself.
            prop_assert!(one_pass(body.as_bytes()), "{}", body);
        }

        #[test]
        fn any_bytes_are_keyed_as_the_tree_keys_them(body in prop::collection::vec(
            prop_oneof![
                Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'), Just(b':'),
                Just(b','), Just(b'1'), Just(b'0'), Just(b'-'), Just(b'+'), Just(b'.'),
                Just(b'e'), Just(b'E'), Just(b' '), Just(b'\t'), Just(b'\n'), Just(b'\\'),
                Just(b'a'), Just(b'n'), Just(b'u'), Just(b't'), Just(b'r'), Just(b'l'),
                Just(b's'), Just(b'f'), Just(0xc3), Just(0xa9), Just(0xff), Just(0x01),
            ],
            0..40,
        )) {
            let (fast, tree) = both(&body);
            prop_assert_eq!(fast, tree);
        }
    }
}
