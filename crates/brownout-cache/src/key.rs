//! What makes two requests the same.

use std::{borrow::Cow, fmt, sync::Arc};

use brownout_core::provider::CREDENTIAL_HEADERS;
use http::{header::HeaderName, request::Parts};
use serde::{
    de::{self, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use std::hash::Hasher as _;

use siphasher::sip128::{Hasher128, SipHasher13};

/// A cache key: a BLAKE3 digest of everything that identifies the request. A
/// collision-resistant digest, because a collision would hand one caller another
/// caller's answer; BLAKE3 rather than SHA-256 because the key is computed on every
/// request, and BLAKE3 hashes a 2 KB body in a tenth of the instructions (the
/// `stack_instructions` bench).
///
/// The bytes hashed are this crate's own, not a stable format: a version that writes
/// them differently (0.1 writes lengths as LEB128, where earlier builds wrote eight
/// bytes) does not find the entries an older one stored in a shared store; those
/// entries are misses and expire with their TTL.
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
    /// [`key_with`](Self::key_with), finding the keying headers itself (the tests').
    #[cfg(test)]
    pub(crate) fn key(&self, parts: &Parts, body: &[u8]) -> CacheKey {
        self.key_with(parts, &self.select(parts), body)
    }

    /// The key of a request whose whole body is `body`, with its keying headers
    /// `selected` (by [`select`](Self::select)): its JSON in canonical form (member
    /// order and whitespace do not matter).
    ///
    /// The canonical form is written into one buffer and hashed in one call: BLAKE3
    /// costs about as much per call as per 64 bytes, and a request is dozens of short
    /// fields (the gateway bench: a third fewer instructions than hashing field by
    /// field). The bytes hashed, and so the keys, are the same either way.
    pub(crate) fn key_with(&self, parts: &Parts, selected: &Selected<'_>, body: &[u8]) -> CacheKey {
        // The buffer is the thread's, kept between keys (an allocation and its free a
        // request, otherwise) unless a large body left it over 64 KiB, and wiped first.
        thread_local! {
            static BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let mut buffer = BUFFER.take();
        buffer.clear();
        buffer.reserve(body.len() + 256);
        let mut hasher = Canon(buffer);
        match &self.custom {
            Some(custom) => field(&mut hasher, b'k', &custom(parts, body)),
            None => {
                self.head(&mut hasher, parts, selected);
                canonical_body(&mut hasher, body);
            }
        }
        self.partition(&mut hasher, selected);
        let key = blake3::hash(&hasher.0).into();
        if hasher.0.capacity() <= 64 * 1024 {
            // The caller's credential was written into it: wiped before it is kept.
            wipe(&mut hasher.0);
            BUFFER.set(hasher.0);
        }
        key
    }

    /// The values of the headers that go into `parts`' keys, in one pass over its
    /// headers: each of the two digests looked every name up on its own before (a
    /// hash of the name and a probe each, some 160 instructions a name; the gateway
    /// bench).
    pub(crate) fn select<'p>(&self, parts: &'p Parts) -> Selected<'p> {
        let partition = self.partition_headers();
        let mut selected = Selected {
            inline: [None; INLINE_SELECTED],
            len: 0,
            spilled: Vec::new(),
        };
        if self.headers.is_empty() && partition.is_empty() {
            return selected;
        }
        // The lengths of the keying names, as a mask: a request header of another
        // length is passed over without comparing it with each name.
        let bit = |name: &HeaderName| 1u64 << name.as_str().len().min(63);
        let lengths = self
            .headers
            .iter()
            .chain(partition)
            .fold(0u64, |mask, name| mask | bit(name));
        for (name, value) in parts.headers.iter() {
            if lengths & bit(name) == 0 {
                continue;
            }
            let positions = self.headers.iter().chain(partition).enumerate();
            for (position, _) in positions.filter(|(_, n)| *n == name) {
                selected.push(position, value);
            }
        }
        selected.sort();
        selected
    }

    /// A digest of the request exactly as it is, body bytes included, for remembering
    /// which [`key_with`](Self::key_with) a byte form has (in fresh-hit mode: see
    /// `Store::keys`): a caller who sends the same bytes again (a hit, there) is keyed
    /// without reading its JSON again. `None` with a key function of the user's own,
    /// which is used as it is.
    ///
    /// This digest is 128 bits of SipHash-1-3 keyed with `secret`, a random key of the
    /// store's: a keyed pseudo-random function, so a caller who does not know the key
    /// cannot aim a request at another's digest, and it costs a third of BLAKE3's
    /// instructions on a 2 KB body (the `stack_instructions` bench). The entries
    /// themselves are stored under the BLAKE3 [`key_with`](Self::key_with).
    pub(crate) fn exact(
        &self,
        secret: &ExactSecret,
        parts: &Parts,
        selected: &Selected<'_>,
        body: &[u8],
    ) -> Option<Exact> {
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
        for (position, value) in selected.iter() {
            let (tag, name) = self.name_at(position);
            feed(tag, name.as_str().as_bytes());
            feed(b'v', value.as_bytes());
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

    /// The name at `position` of the keying headers' list (this layer's headers,
    /// then the partition's), with its tag: `h` for the one, `c` for the other.
    fn name_at(&self, position: usize) -> (u8, &HeaderName) {
        match self.headers.get(position) {
            Some(name) => (b'h', name),
            None => (
                b'c',
                &self.partition_headers()[position - self.headers.len()],
            ),
        }
    }

    /// Method, path, query and the selected headers.
    fn head(&self, hasher: &mut Canon, parts: &Parts, selected: &Selected<'_>) {
        field(hasher, b'm', parts.method.as_str().as_bytes());
        field(hasher, b'p', parts.uri.path().as_bytes());
        field(
            hasher,
            b'q',
            parts.uri.query().unwrap_or_default().as_bytes(),
        );
        for (position, value) in selected.iter() {
            if position < self.headers.len() {
                field(hasher, b'h', self.headers[position].as_str().as_bytes());
                field(hasher, b'v', value.as_bytes());
            }
        }
    }

    /// The caller's credential partitions the cache: only a digest of it goes into the
    /// key, and it is never stored or logged as it is.
    fn partition(&self, hasher: &mut Canon, selected: &Selected<'_>) {
        for (position, value) in selected.iter() {
            if position >= self.headers.len() {
                let (_, name) = self.name_at(position);
                field(hasher, b'c', name.as_str().as_bytes());
                field(hasher, b'v', value.as_bytes());
            }
        }
    }
}

/// How many keying header values [`Selected`] holds without allocating.
const INLINE_SELECTED: usize = 8;

/// A request's keying header values, from [`Keying::select`]: each with its name's
/// position in the keying headers' list, ordered by it, a name's values in their order.
pub(crate) struct Selected<'p> {
    inline: [Option<(usize, &'p http::HeaderValue)>; INLINE_SELECTED],
    len: usize,
    /// The values beyond the inline ones (a request with many values of them).
    spilled: Vec<(usize, &'p http::HeaderValue)>,
}

impl<'p> Selected<'p> {
    fn push(&mut self, position: usize, value: &'p http::HeaderValue) {
        if self.len < INLINE_SELECTED {
            self.inline[self.len] = Some((position, value));
            self.len += 1;
        } else {
            self.spilled.push((position, value));
        }
    }

    /// Orders by position; stable, so that a name's values keep their order.
    fn sort(&mut self) {
        if self.spilled.is_empty() {
            self.inline[..self.len].sort_by_key(|found| found.map(|(position, _)| position));
        } else {
            let mut all: Vec<_> = self.inline.iter().flatten().copied().collect();
            all.append(&mut self.spilled);
            all.sort_by_key(|(position, _)| *position);
            self.len = 0;
            self.spilled = all;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &'p http::HeaderValue)> + '_ {
        self.inline[..self.len]
            .iter()
            .flatten()
            .copied()
            .chain(self.spilled.iter().copied())
    }
}

/// Zeroes the whole of `buffer`'s capacity, bytes written and then truncated away
/// included, and leaves it empty: for a buffer kept between requests.
pub(crate) fn wipe(buffer: &mut Vec<u8>) {
    let capacity = buffer.capacity();
    buffer.clear();
    buffer.resize(capacity, 0);
    buffer.clear();
}

/// The bytes a key is the digest of, gathered before hashing them in one call.
pub(crate) struct Canon(pub(crate) Vec<u8>);

impl Canon {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// A length or a count, as LEB128: seven bits a byte, the high bit set on every
    /// byte but the last. Prefix-free like the eight fixed bytes it replaced, and one
    /// byte for the short fields a request is made of, which makes the bytes BLAKE3
    /// hashes a third fewer (a block of 64 bytes is most of its cost).
    #[inline]
    pub(crate) fn length(&mut self, n: usize) {
        // One byte for the short fields a request is mostly made of, pushed without
        // a copy of the ten-byte buffer.
        if n < 0x80 {
            self.0.push(n as u8);
            return;
        }
        let (bytes, len) = leb128(n);
        self.0.extend_from_slice(&bytes[..len]);
    }
}

/// `n` as LEB128 ([`Canon::length`]): the bytes, and how many of them there are.
pub(crate) fn leb128(mut n: usize) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while n >= 0x80 {
        bytes[len] = (n as u8) | 0x80;
        n >>= 7;
        len += 1;
    }
    bytes[len] = n as u8;
    (bytes, len + 1)
}

/// Feeds one length-prefixed field, so that fields cannot run into each other.
#[inline]
pub(crate) fn field(hasher: &mut Canon, tag: u8, bytes: &[u8]) {
    // Room for the tag, the longest length and the bytes, made once.
    hasher.0.reserve(bytes.len() + 11);
    hasher.0.push(tag);
    hasher.length(bytes.len());
    hasher.update(bytes);
}

/// A number as serde_json writes it, formatted on the stack: `1` and `1.0` stay
/// distinct, and no string is allocated for it.
pub(crate) fn number(hasher: &mut Canon, n: &serde_json::Number) {
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
pub(crate) fn canonical_body(hasher: &mut Canon, body: &[u8]) {
    // Most bodies are written in one pass; the tree below decides the rest, and
    // writes the same bytes wherever both do (`canon`'s property tests).
    if crate::canon::write(hasher, body) {
        return;
    }
    canonical_tree(hasher, body);
}

/// [`canonical_body`] through a parsed tree: every body the one pass leaves to it.
pub(crate) fn canonical_tree(hasher: &mut Canon, body: &[u8]) {
    match serde_json::from_slice::<Node<'_>>(body) {
        Ok(node) => {
            hasher.update(b"J");
            // Whether the answer streams is how it is delivered, not what it says: a
            // request that streams and one that does not share an entry (see the
            // `stream` module).
            let mut node = node;
            if let Node::Object(members) = &mut node {
                members.retain(|(k, _)| k != "stream" && k != "stream_options");
            }
            node.hash(hasher);
        }
        Err(_) => field(hasher, b'B', body),
    }
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
    /// Feeds the node's canonical form; sorts each object's members in place (the
    /// node is hashed once), rather than into a list of its own per object.
    fn hash(&mut self, hasher: &mut Canon) {
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
                hasher.length(items.len());
                for item in items {
                    item.hash(hasher);
                }
            }
            Node::Object(members) => {
                members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                hasher.update(b"o");
                hasher.length(members.len());
                for (k, v) in members {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(k: &Keying, s: &ExactSecret, p: &Parts, body: &[u8]) -> Option<Exact> {
        k.exact(s, p, &k.select(p), body)
    }

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
    fn keying_headers_count_by_name_whatever_their_order_and_number() {
        let k = keying(true);
        let s = ExactSecret::random();
        let body = br#"{"model":"m"}"#;
        let a = parts(&[
            ("x-api-key", "a"),
            ("accept", "*/*"),
            ("anthropic-version", "1"),
        ]);
        let b = parts(&[("anthropic-version", "1"), ("x-api-key", "a")]);
        // The names in another order, an unkeyed header more: the same keys.
        assert_eq!(k.key(&a, body), k.key(&b, body));
        assert_eq!(exact(&k, &s, &a, body), exact(&k, &s, &b, body));
        // A keyed value changed, or moved from one keyed name to the other: not.
        let c = parts(&[("anthropic-version", "2"), ("x-api-key", "a")]);
        let d = parts(&[("anthropic-version", "a"), ("x-api-key", "1")]);
        for other in [&c, &d] {
            assert_ne!(k.key(&a, body), k.key(other, body));
            assert_ne!(exact(&k, &s, &a, body), exact(&k, &s, other, body));
        }
        // More values than are held inline: each one still counts, in its order.
        let many = |last: &'static str| {
            let mut headers: Vec<(&str, &str)> = vec![("x-api-key", "a")];
            headers.extend(std::iter::repeat_n(("anthropic-version", "1"), 10));
            headers.push(("anthropic-version", last));
            parts(&headers)
        };
        assert_eq!(k.key(&many("x"), body), k.key(&many("x"), body));
        assert_ne!(k.key(&many("x"), body), k.key(&many("y"), body));
        assert_ne!(
            exact(&k, &s, &many("x"), body),
            exact(&k, &s, &many("y"), body)
        );
        assert_ne!(k.key(&many("1"), body), k.key(&a, body));
    }

    #[test]
    fn lengths_are_written_seven_bits_a_byte() {
        for (n, bytes) in [
            (0usize, &[0u8][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (16_384, &[0x80, 0x80, 0x01]),
        ] {
            let mut canon = Canon(Vec::new());
            canon.length(n);
            assert_eq!(canon.0, bytes, "{n}");
        }
        // Fields whose bytes run together differently give different keys.
        let k = keying(false);
        let p = parts(&[]);
        assert_ne!(k.key(&p, br#"{"ab":"c"}"#), k.key(&p, br#"{"a":"bc"}"#));
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
        assert_ne!(exact(&k, &s, &p, one), exact(&k, &s, &p, two));
        assert_eq!(exact(&k, &s, &p, one), exact(&k, &s, &p, one));
        // The exact form is partitioned by the caller too.
        assert_ne!(
            exact(&k, &s, &p, one),
            exact(&k, &s, &parts(&[("x-api-key", "b")]), one)
        );
        // Another store's secret gives other digests.
        assert_ne!(
            exact(&k, &s, &p, one),
            exact(&k, &ExactSecret::random(), &p, one)
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
}
