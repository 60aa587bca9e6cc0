//! What makes two requests the same.

use std::{borrow::Cow, fmt, sync::Arc};

use brownout_core::provider::CREDENTIAL_HEADERS;
use http::{header::HeaderName, request::Parts};
use std::hash::Hasher as _;

use siphasher::sip128::{Hasher128, SipHasher13};

/// A cache key: a BLAKE3 digest of everything that identifies the request. A
/// collision-resistant digest, because a collision would hand one caller another
/// caller's answer; BLAKE3 rather than SHA-256 because the key is computed on every
/// request, and BLAKE3 hashes a 2 KB body in a tenth of the instructions (the
/// `stack_instructions` bench).
pub type CacheKey = [u8; 32];

/// The digest of a request's exact form: see [`Keying::exact`].
pub(crate) type Exact = u128;

/// The secret key of [`Keying::exact`]'s digests, random per store.
#[derive(Clone, Copy)]
pub(crate) struct ExactSecret(u64, u64);

impl ExactSecret {
    /// A key no caller can know: drawn from std's randomly keyed hasher, which the
    /// operating system seeds.
    pub(crate) fn random() -> Self {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        ExactSecret(state.hash_one(0u8), state.hash_one(1u8))
    }
}

impl fmt::Debug for ExactSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExactSecret(..)")
    }
}

type KeyFn = dyn Fn(&Parts, &[u8]) -> Vec<u8> + Send + Sync;

/// How keys are made.
#[derive(Clone)]
pub(crate) struct Keying {
    pub(crate) headers: Arc<[HeaderName]>,
    pub(crate) partition: Partition,
    pub(crate) custom: Option<Arc<KeyFn>>,
}

/// Whose entries a request may see.
#[derive(Clone)]
pub(crate) enum Partition {
    /// The caller's: the providers' credential headers, hashed into the key.
    Caller,
    /// The caller's, by the hashed values of these headers.
    Headers(Arc<[HeaderName]>),
    /// Everyone's.
    Shared,
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Caller => f.write_str("Caller"),
            Partition::Headers(headers) => f.debug_tuple("Headers").field(headers).finish(),
            Partition::Shared => f.write_str("Shared"),
        }
    }
}

impl Keying {
    /// The key of a request whose whole body is `body`: its JSON in canonical form
    /// (member order and whitespace do not matter).
    ///
    /// The canonical form is written into one buffer and hashed in one call: BLAKE3
    /// costs about as much per call as per 64 bytes, and a request is dozens of short
    /// fields (the gateway bench: a third fewer instructions than hashing field by
    /// field). The bytes hashed, and so the keys, are the same either way.
    pub(crate) fn key(&self, parts: &Parts, body: &[u8]) -> CacheKey {
        let mut hasher = Canon(Vec::with_capacity(body.len() + 256));
        match &self.custom {
            Some(custom) => field(&mut hasher, b'k', &custom(parts, body)),
            None => {
                self.head(&mut hasher, parts);
                canonical_body(&mut hasher, body);
            }
        }
        self.partition(&mut hasher, parts);
        blake3::hash(&hasher.0).into()
    }

    /// A digest of the request exactly as it is, body bytes included, for remembering
    /// which [`key`](Self::key) a byte form has: a caller who sends the same bytes
    /// again (the common case: the same call, retried or repeated) is keyed without
    /// parsing its JSON again. `None` with a key function of the user's own, which is
    /// used as it is.
    ///
    /// This digest is 128 bits of SipHash-1-3 keyed with `secret`, a random key of the
    /// store's: a keyed pseudo-random function, so a caller who does not know the key
    /// cannot aim a request at another's digest, and it costs a third of BLAKE3's
    /// instructions on a 2 KB body (the `stack_instructions` bench). The entries
    /// themselves are stored under the BLAKE3 [`key`](Self::key).
    pub(crate) fn exact(&self, secret: &ExactSecret, parts: &Parts, body: &[u8]) -> Option<Exact> {
        if self.custom.is_some() {
            return None;
        }
        let mut hasher = SipHasher13::new_with_keys(secret.0, secret.1);
        let mut feed = |tag: u8, bytes: &[u8]| {
            hasher.write_u8(tag);
            hasher.write_u64(bytes.len() as u64);
            hasher.write(bytes);
        };
        feed(b'm', parts.method.as_str().as_bytes());
        feed(b'p', parts.uri.path().as_bytes());
        feed(b'q', parts.uri.query().unwrap_or_default().as_bytes());
        for name in self.headers.iter() {
            for value in parts.headers.get_all(name) {
                feed(b'h', name.as_str().as_bytes());
                feed(b'v', value.as_bytes());
            }
        }
        for name in self.partition_headers() {
            for value in parts.headers.get_all(name) {
                feed(b'c', name.as_str().as_bytes());
                feed(b'v', value.as_bytes());
            }
        }
        feed(b'R', body);
        Some(hasher.finish128().as_u128())
    }

    /// The headers that partition the cache.
    fn partition_headers(&self) -> &[HeaderName] {
        static CREDENTIALS: [HeaderName; 3] = CREDENTIAL_HEADERS;
        match &self.partition {
            // The providers' credential headers, hashed into the key itself rather
            // than through the facts' `Fingerprint`: one digest per request, not two.
            Partition::Caller => &CREDENTIALS,
            Partition::Headers(credentials) => credentials,
            Partition::Shared => &[],
        }
    }

    /// Method, path, query and the selected headers.
    fn head(&self, hasher: &mut Canon, parts: &Parts) {
        field(hasher, b'm', parts.method.as_str().as_bytes());
        field(hasher, b'p', parts.uri.path().as_bytes());
        field(
            hasher,
            b'q',
            parts.uri.query().unwrap_or_default().as_bytes(),
        );
        for name in self.headers.iter() {
            for value in parts.headers.get_all(name) {
                field(hasher, b'h', name.as_str().as_bytes());
                field(hasher, b'v', value.as_bytes());
            }
        }
    }

    /// The caller's credential partitions the cache: only a digest of it goes into the
    /// key, and it is never stored or logged as it is.
    fn partition(&self, hasher: &mut Canon, parts: &Parts) {
        for name in self.partition_headers() {
            for value in parts.headers.get_all(name) {
                field(hasher, b'c', name.as_str().as_bytes());
                field(hasher, b'v', value.as_bytes());
            }
        }
    }
}

/// The bytes a key is the digest of, gathered before hashing them in one call.
struct Canon(Vec<u8>);

impl Canon {
    fn update(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// Feeds one length-prefixed field, so that fields cannot run into each other.
fn field(hasher: &mut Canon, tag: u8, bytes: &[u8]) {
    hasher.0.push(tag);
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// A number as serde_json writes it, formatted on the stack: `1` and `1.0` stay
/// distinct, and no string is allocated for it.
fn number(hasher: &mut Canon, n: &serde_json::Number) {
    use std::io::Write as _;
    let mut buf = [0u8; 40];
    let mut out = &mut buf[..];
    // The longest number serde_json writes (a negative f64 in exponent form) is 24
    // bytes; a failure to fit cannot happen, and would only hash a shorter field.
    let _ = write!(out, "{n}");
    let len = 40 - out.len();
    field(hasher, b'd', &buf[..len]);
}

/// A JSON body is hashed in a canonical form: object members in key order, no
/// whitespace. Anything else is hashed as its bytes.
///
/// Whether the answer streams is how it is delivered, not what it says: a request
/// that streams and one that does not share an entry (see the `stream` module), so
/// the top-level `stream` and `stream_options` members are left out.
fn canonical_body(hasher: &mut Canon, body: &[u8]) {
    let start = hasher.0.len();
    hasher.update(b"J");
    let mut canonical = Canonical {
        bytes: body,
        pos: 0,
        scratch: Vec::new(),
    };
    if canonical.document(&mut hasher.0).is_none() {
        hasher.0.truncate(start);
        field(hasher, b'B', body);
    }
}

/// How deep arrays and objects may nest before a body counts as not JSON (as
/// serde_json's own recursion limit).
const MAX_DEPTH: usize = 128;

/// Writes a JSON document's canonical form in one pass over its bytes, with no
/// allocation but one buffer per object that has members to sort. The bytes written
/// are the ones the crate wrote when it parsed bodies into a `serde_json`-driven tree
/// first (kept in the tests as the reference: keys stored before are still found), at
/// a fraction of the instructions (the gateway's `callgrind.sh`: keying was the
/// costliest step of a stale-if-error miss).
///
/// It accepts what `serde_json::from_slice` accepts; strings with escapes and
/// numbers other than plain integers are read by `serde_json` itself, so that their
/// text is exactly what it makes of them. `None` for anything else: the body is then
/// keyed by its bytes.
struct Canonical<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// An object's member forms while they are put in order.
    scratch: Vec<u8>,
}

impl<'a> Canonical<'a> {
    fn document(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.value(out, 0, true)?;
        self.skip_ws();
        (self.pos == self.bytes.len()).then_some(())
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>, tag: u8) -> Option<()> {
        self.bytes
            .get(self.pos..)?
            .starts_with(word)
            .then_some(())?;
        self.pos += word.len();
        out.push(tag);
        Some(())
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize, top: bool) -> Option<()> {
        self.skip_ws();
        match *self.bytes.get(self.pos)? {
            b'n' => self.literal(b"null", out, b'n'),
            b't' => self.literal(b"true", out, b't'),
            b'f' => self.literal(b"false", out, b'f'),
            b'"' => {
                let text = self.string()?;
                push_field(out, b's', text.as_bytes());
                Some(())
            }
            b'-' | b'0'..=b'9' => self.number(out),
            b'[' if depth < MAX_DEPTH => self.array(out, depth + 1),
            b'{' if depth < MAX_DEPTH => self.object(out, depth + 1, top),
            _ => None,
        }
    }

    /// A string, its escapes decoded; the cursor is on its opening quote.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.pos + 1;
        let rest = self.bytes.get(start..)?;
        let end = start + memchr::memchr2(b'"', b'\\', rest)?;
        if self.bytes[end] == b'"' {
            let bytes: &'a [u8] = self.bytes;
            let raw = &bytes[start..end];
            if raw.iter().any(|&b| b < 0x20) {
                return None;
            }
            self.pos = end + 1;
            return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
        }
        // Escapes: find the closing quote, then let serde_json decode them (surrogate
        // pairs and all).
        let mut at = end;
        loop {
            match *self.bytes.get(at)? {
                b'\\' => at += 2,
                b'"' => break,
                _ => at += 1,
            }
        }
        let quoted = &self.bytes[self.pos..=at];
        self.pos = at + 1;
        serde_json::from_slice::<String>(quoted)
            .ok()
            .map(Cow::Owned)
    }

    /// A number, as serde_json writes it: `1` and `1.0` stay distinct.
    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.pos;
        let digits = |s: &mut Self| {
            let from = s.pos;
            while s.bytes.get(s.pos).is_some_and(u8::is_ascii_digit) {
                s.pos += 1;
            }
            s.pos > from
        };
        if self.bytes[self.pos] == b'-' {
            self.pos += 1;
        }
        let int_start = self.pos;
        if !digits(self) || (self.bytes[int_start] == b'0' && self.pos - int_start > 1) {
            return None;
        }
        let mut plain = true;
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            plain = false;
            if !digits(self) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            plain = false;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        let token = &self.bytes[start..self.pos];
        // A plain integer that fits an i64 reads and writes as itself (JSON has no
        // leading zeros); `-0`, longer ones and the rest go through serde_json.
        if plain && token.len() <= 18 && !token.starts_with(b"-0") {
            push_field(out, b'd', token);
            return Some(());
        }
        let n: serde_json::Number = serde_json::from_slice(token).ok()?;
        let mut hasher = Canon(std::mem::take(out));
        number(&mut hasher, &n);
        *out = hasher.0;
        Some(())
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.pos += 1;
        out.push(b'a');
        let count_at = out.len();
        out.extend_from_slice(&[0; 8]);
        let mut count = 0u64;
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
        } else {
            loop {
                self.value(out, depth, false)?;
                count += 1;
                self.skip_ws();
                match *self.bytes.get(self.pos)? {
                    b',' => self.pos += 1,
                    b']' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        out[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        Some(())
    }

    /// An object: each member's value written at the end of `out` as it comes, then
    /// the members moved into key order.
    fn object(&mut self, out: &mut Vec<u8>, depth: usize, top: bool) -> Option<()> {
        self.pos += 1;
        let start = out.len();
        // Each member's key and where its value's form lies in `out`.
        let mut members: Vec<(Cow<'a, str>, usize, usize)> = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.bytes.get(self.pos) != Some(&b'"') {
                    return None;
                }
                let key = self.string()?;
                self.skip_ws();
                if self.bytes.get(self.pos) != Some(&b':') {
                    return None;
                }
                self.pos += 1;
                let at = out.len();
                self.value(out, depth, false)?;
                if top && (key == "stream" || key == "stream_options") {
                    out.truncate(at);
                } else {
                    members.push((key, at, out.len()));
                }
                self.skip_ws();
                match *self.bytes.get(self.pos)? {
                    b',' => self.pos += 1,
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.scratch.clear();
        self.scratch.extend_from_slice(&out[start..]);
        out.truncate(start);
        out.push(b'o');
        out.extend_from_slice(&(members.len() as u64).to_le_bytes());
        for (key, from, to) in &members {
            push_field(out, b'k', key.as_bytes());
            out.extend_from_slice(&self.scratch[from - start..to - start]);
        }
        Some(())
    }
}

/// [`field`], on the buffer itself.
fn push_field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The canonical form as the crate first made it: the body parsed into a tree by
/// `serde_json`, then hashed. [`Canonical`] must write the same bytes.
#[cfg(test)]
mod reference {
    use super::*;
    use serde::{
        de::{self, MapAccess, SeqAccess, Visitor},
        Deserialize, Deserializer,
    };

    pub(super) fn canonical_body(body: &[u8]) -> Vec<u8> {
        let mut hasher = Canon(Vec::new());
        match serde_json::from_slice::<Node<'_>>(body) {
            Ok(node) => {
                hasher.update(b"J");
                match node {
                    Node::Object(members) => Node::Object(
                        members
                            .into_iter()
                            .filter(|(k, _)| k != "stream" && k != "stream_options")
                            .collect(),
                    )
                    .hash(&mut hasher),
                    other => other.hash(&mut hasher),
                }
            }
            Err(_) => field(&mut hasher, b'B', body),
        }
        hasher.0
    }

    /// A JSON value parsed for hashing: strings borrowed from the body where they have no
    /// escapes, objects as member lists. Cheaper than `serde_json::Value` (no map, few
    /// allocations), which matters as the key is computed on every request.
    enum Node<'a> {
        Null,
        Bool(bool),
        Number(serde_json::Number),
        Str(Cow<'a, str>),
        Array(Vec<Node<'a>>),
        Object(Vec<(Cow<'a, str>, Node<'a>)>),
    }

    impl Node<'_> {
        fn hash(&self, hasher: &mut Canon) {
            match self {
                Node::Null => {
                    hasher.update(b"n");
                }
                Node::Bool(true) => {
                    hasher.update(b"t");
                }
                Node::Bool(false) => {
                    hasher.update(b"f");
                }
                Node::Number(n) => number(hasher, n),
                Node::Str(s) => field(hasher, b's', s.as_bytes()),
                Node::Array(items) => {
                    hasher.update(b"a");
                    hasher.update(&(items.len() as u64).to_le_bytes());
                    for item in items {
                        item.hash(hasher);
                    }
                }
                Node::Object(members) => {
                    let mut sorted: Vec<&(Cow<'_, str>, Node<'_>)> = members.iter().collect();
                    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    hasher.update(b"o");
                    hasher.update(&(sorted.len() as u64).to_le_bytes());
                    for (k, v) in sorted {
                        field(hasher, b'k', k.as_bytes());
                        v.hash(hasher);
                    }
                }
            }
        }
    }

    impl<'de> Deserialize<'de> for Node<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(NodeVisitor)
        }
    }

    struct NodeVisitor;

    impl<'de> Visitor<'de> for NodeVisitor {
        type Value = Node<'de>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
            Ok(Node::Null)
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node<'de>, E> {
            Ok(Node::Bool(v))
        }

        // Numbers are written as serde_json writes them, so `1` and `1.0` stay distinct.
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<'de>, E> {
            Ok(Node::Number(serde_json::Number::from(v)))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<'de>, E> {
            Ok(Node::Number(serde_json::Number::from(v)))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
            serde_json::Number::from_f64(v)
                .map(Node::Number)
                .ok_or_else(|| E::custom("a non-finite number"))
        }

        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
            Ok(Node::Str(Cow::Borrowed(v)))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
            Ok(Node::Str(Cow::Owned(v.to_owned())))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Node<'de>, E> {
            Ok(Node::Str(Cow::Owned(v)))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(Node::Array(items))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
            let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some((key, value)) = map.next_entry::<Key<'de>, Node<'de>>()? {
                members.push((key.0, value));
            }
            Ok(Node::Object(members))
        }
    }

    /// An object key, borrowed where it has no escapes.
    struct Key<'a>(Cow<'a, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object key")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v)))
                }
            }
            deserializer.deserialize_str(KeyVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keying(credentials: bool) -> Keying {
        Keying {
            headers: vec![HeaderName::from_static("anthropic-version")].into(),
            partition: if credentials {
                Partition::Caller
            } else {
                Partition::Shared
            },
            custom: None,
        }
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::post("https://api.anthropic.com/v1/messages");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let k = keying(true);
        let p = parts(&[("x-api-key", "a")]);
        let one = k.key(
            &p,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        );
        let two = k.key(&p, b"{ \"temperature\": 0.5,\n  \"messages\": [ {\"content\":\"hi\", \"role\":\"user\"} ],\n  \"model\": \"m\" }");
        assert_eq!(one, two);
        let hotter = k.key(
            &p,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#,
        );
        assert_ne!(one, hotter);
        // Array order does matter: it is the conversation.
        let a = k.key(&p, br#"{"messages":["a","b"]}"#);
        let b = k.key(&p, br#"{"messages":["b","a"]}"#);
        assert_ne!(a, b);
    }

    #[test]
    fn exact_forms_differ_where_canonical_keys_agree() {
        let k = keying(true);
        let s = ExactSecret::random();
        let p = parts(&[("x-api-key", "a")]);
        let (one, two) = (br#"{"a":1,"b":2}"#, br#"{ "b":2, "a":1 }"#);
        assert_eq!(k.key(&p, one), k.key(&p, two));
        assert_ne!(k.exact(&s, &p, one), k.exact(&s, &p, two));
        assert_eq!(k.exact(&s, &p, one), k.exact(&s, &p, one));
        // The exact form is partitioned by the caller too.
        assert_ne!(
            k.exact(&s, &p, one),
            k.exact(&s, &parts(&[("x-api-key", "b")]), one)
        );
        // Another store's secret gives other digests.
        assert_ne!(
            k.exact(&s, &p, one),
            k.exact(&ExactSecret::random(), &p, one)
        );
    }

    #[test]
    fn escapes_numbers_and_nesting_are_canonical() {
        let k = keying(false);
        let p = parts(&[]);
        // An escaped key or string is the same text as its plain form.
        assert_eq!(
            k.key(&p, br#"{"a\u0062":"\u0063"}"#),
            k.key(&p, br#"{"ab":"c"}"#)
        );
        // 1 and 1.0 are different values to an API; so are they here.
        assert_ne!(k.key(&p, br#"{"t":1}"#), k.key(&p, br#"{"t":1.0}"#));
        assert_eq!(
            k.key(&p, br#"{"o":{"b":[1,{"y":2,"x":1}],"a":null}}"#),
            k.key(&p, br#"{"o":{"a":null,"b":[1,{"x":1,"y":2}]}}"#)
        );
        assert_ne!(k.key(&p, br#"{"a":"1"}"#), k.key(&p, br#"{"a":1}"#));
    }

    #[test]
    fn credentials_partition_unless_turned_off() {
        let body = br#"{"model":"m"}"#;
        let with = keying(true);
        let a = with.key(&parts(&[("x-api-key", "sk-a")]), body);
        let b = with.key(&parts(&[("x-api-key", "sk-b")]), body);
        let c = with.key(&parts(&[("authorization", "Bearer sk-a")]), body);
        assert_ne!(a, b);
        assert_ne!(a, c);
        let without = keying(false);
        assert_eq!(
            without.key(&parts(&[("x-api-key", "sk-a")]), body),
            without.key(&parts(&[("x-api-key", "sk-b")]), body)
        );
        // Own credential headers partition instead of the providers' ones.
        let own = Keying {
            partition: Partition::Headers(vec![HeaderName::from_static("x-tenant")].into()),
            ..keying(true)
        };
        assert_ne!(
            own.key(&parts(&[("x-tenant", "a")]), body),
            own.key(&parts(&[("x-tenant", "b")]), body)
        );
        assert_eq!(
            own.key(&parts(&[("x-api-key", "sk-a")]), body),
            own.key(&parts(&[("x-api-key", "sk-b")]), body)
        );
    }

    #[test]
    fn the_caller_partition_is_the_same_with_or_without_facts() {
        let body = br#"{"model":"m"}"#;
        let k = keying(true);
        let plain = parts(&[("x-api-key", "sk-a")]);
        let mut with_facts = plain.clone();
        let facts = brownout_core::RequestFacts::read(&with_facts, body, true).unwrap();
        with_facts.extensions.insert(facts);
        assert_eq!(k.key(&plain, body), k.key(&with_facts, body));
        // Azure's `api-key` is a credential too.
        assert_ne!(
            k.key(&parts(&[("api-key", "a")]), body),
            k.key(&parts(&[("api-key", "b")]), body)
        );
        // The key is a digest: the credential is hashed, never stored. A caller without
        // one shares nothing with a caller who has one.
        assert_ne!(k.key(&parts(&[]), body), k.key(&plain, body));
    }

    #[test]
    fn selected_headers_method_path_and_query_count() {
        let k = keying(true);
        let body = b"{}";
        let base = k.key(&parts(&[]), body);
        assert_ne!(
            base,
            k.key(&parts(&[("anthropic-version", "2023-06-01")]), body)
        );
        assert_eq!(
            base,
            k.key(&parts(&[("user-agent", "x")]), body),
            "unselected"
        );
        let mut other = parts(&[]);
        other.uri = "https://api.anthropic.com/v1/messages?beta=true"
            .parse()
            .unwrap();
        assert_ne!(base, k.key(&other, body));
        let mut get = parts(&[]);
        get.method = http::Method::GET;
        assert_ne!(base, k.key(&get, body));
        // Non-JSON bodies are keyed by their bytes.
        assert_ne!(k.key(&parts(&[]), b"abc"), k.key(&parts(&[]), b"abd"));
    }

    fn fast(body: &[u8]) -> Vec<u8> {
        let mut hasher = Canon(Vec::new());
        canonical_body(&mut hasher, body);
        hasher.0
    }

    #[test]
    fn the_one_pass_form_is_the_reference_form() {
        let cases: &[&[u8]] = &[
            br#"{"model":"m","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            br#" { "b" : [ 1 , -2 , 3.5e3 , -0 , 0.0 , 12345678901234567890 , -9223372036854775809 ] , "a" : { } , "c" : [ ] } "#,
            br#"{"a\u0062":"\ud83d\ude00 \n \" \/","ab":null,"t":true,"f":false}"#,
            br#"{"stream_options":{"include_usage":true},"x":{"stream":1}}"#,
            br#"[{"stream":1},"s",1e400]"#,
            br#""just a string""#,
            br#"{"a":1,}"#,
            br#"{"a":01}"#,
            br#"{"a":"\ud800"}"#,
            br#"{"a":"tab	in"}"#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":1} x"#,
            br#"{"a":[1,2"#,
            b"",
            b"nul",
        ];
        for case in cases {
            assert_eq!(
                fast(case),
                reference::canonical_body(case),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        // Nesting past serde_json's limit is keyed by the bytes, as it was.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(fast(deep.as_bytes())[0], b'B');
    }

    fn json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z\"\\\\/\u{0}-\u{1f}é😀 ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("(stream|stream_options|[a-z\"é]{0,4})", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference_on_any_json(value in json(), pretty in proptest::bool::ANY) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            proptest::prop_assert_eq!(fast(text.as_bytes()), reference::canonical_body(text.as_bytes()));
        }

        #[test]
        fn agrees_with_the_reference_on_any_bytes(
            body in proptest::collection::vec(proptest::sample::select(b"{}[]\":,.-+eE0123456789 \\untrlsfa\xff".to_vec()), 0..40)
        ) {
            proptest::prop_assert_eq!(fast(&body), reference::canonical_body(&body));
        }
    }
}
