//! The facts of an LLM request, read once and carried in its extensions.
//!
//! Breakers key on the model, fallback rewrites it and clamps `max_tokens`, caches
//! and canned answers need to know whether the caller asked for a stream, and caches
//! partition by the caller's credential. [`RequestFacts`] holds all of it, found in
//! one pass over the top level of the JSON body that stops as soon as it has the
//! `model`, the token limit and `stream` (the bytes after them are searched for a
//! second `"model"` key at memchr speed, and scanned only where one appears), and it
//! travels in the request's [`http::Extensions`]. The first layer that needs it reads
//! it ([`prepare`](crate::body::prepare) with [`Need::Facts`](crate::body::Need));
//! every layer inside finds it there. A layer that keys on the model alone asks for
//! [`Need::Model`](crate::body::Need): the scan stops at the `model` member, and the
//! first layer inside that needs the rest resumes it where it stopped, so the body is
//! still walked at most once.
//!
//! A body that names its top-level `model` twice is refused with
//! [`InvalidRequest`]: parsers disagree on which one wins, and an upstream that takes
//! the last would serve a model no layer chose.

use std::{fmt, ops::Range, sync::Arc, sync::OnceLock};

use bytes::{Bytes, BytesMut};
use http::{request::Parts, HeaderMap};

use crate::{
    error::InvalidRequest,
    json::{decode_string, key_matches, Scanner},
    provider::{Api, CREDENTIAL_HEADERS},
};

/// What brownout knows of a request, found once. See the [module docs](self).
#[derive(Clone)]
pub struct RequestFacts {
    api: Api,
    model: Option<Arc<str>>,
    model_span: Option<Range<usize>>,
    max_tokens: Option<(u64, Range<usize>)>,
    stream: bool,
    /// Whether the facts come from the whole body, not only the bytes read ahead.
    whole: bool,
    /// Where a scan stopped at the model ([`RequestFacts::read_model`]); `None` once
    /// every fact is known.
    resume: Option<Resume>,
    caller: OnceLock<Option<Fingerprint>>,
}

/// The caller's deadline for one request, in its extensions: every layer that holds a
/// request (a queue waiting for a model, a limiter waiting for room) holds it no later
/// than this instant. One type for the whole stack, so that a caller (or the gateway)
/// sets it once. What a layer does without one is its own: see its docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub tokio::time::Instant);

/// A request sent to learn whether its target is back (a circuit breaker's
/// half-open probe), in its extensions: its answer is the measurement, so a layer
/// that would send it again (a retry, a queue holding it for another try) sends it
/// once and hands its answer back. A probe retried inside the layer that asked for
/// it would report "one of two calls got through" where the question was "is it
/// back", and would double the load on a target that is likely still down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probe;

impl Probe {
    /// Whether `extensions` mark a probe.
    pub fn of(extensions: &http::Extensions) -> bool {
        extensions.get::<Probe>().is_some()
    }
}

/// A check that a layer controlling how many of a target's requests are in flight
/// (a queue's slow start) puts in a request's extensions, and that a layer inside
/// asks before it sends the request again (a retry): while it says no, the layer
/// inside hands its last answer back instead of sending another attempt, and the layer
/// outside decides (holds the request in its place, or lets it move on). Without it,
/// a retry made inside would reach a held target outside the count that holds it.
#[derive(Clone)]
pub struct AttemptGate(Arc<dyn Fn() -> bool + Send + Sync>);

impl AttemptGate {
    /// A gate that allows another attempt while `allows` says so.
    pub fn new(allows: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        AttemptGate(Arc::new(allows))
    }

    /// Whether another attempt may be sent now.
    pub fn allows(&self) -> bool {
        (self.0)()
    }

    /// Whether `extensions` allow another attempt now: yes without a gate.
    pub fn allows_in(extensions: &http::Extensions) -> bool {
        extensions
            .get::<AttemptGate>()
            .is_none_or(AttemptGate::allows)
    }
}

impl fmt::Debug for AttemptGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptGate").finish_non_exhaustive()
    }
}

/// Where a scan of the top-level members stopped, and what it had seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Resume {
    pos: usize,
    model: bool,
    max: bool,
    stream: bool,
    duplicates_only: bool,
}

/// The part of a body a [`RequestFacts::read_model`] scan did not reach: see
/// [`RequestFacts::unscanned`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unscanned(Resume);

impl Unscanned {
    /// Whether the rest of `body` (the body the facts were read from) names the
    /// top-level `model` a second time: the check [`RequestFacts::complete`] makes,
    /// on its own.
    pub fn names_model_again(self, body: &[u8]) -> bool {
        let mut rest = RequestFacts::of_api(Api::Other);
        rest.resume = Some(self.0);
        rest.scan(body, false).is_err()
    }
}

/// A fingerprint of the caller's credential: the first 16 bytes of a SHA-256 over
/// the credential headers. It partitions caches and limits per caller; it is not the
/// credential and cannot be turned back into it, and its `Debug` and `Display` show
/// only its first four bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of the credential headers in `headers`, or `None` when it has
    /// none.
    pub fn of(headers: &HeaderMap) -> Option<Fingerprint> {
        use sha2::{Digest, Sha256};
        let mut hasher: Option<Sha256> = None;
        for name in &CREDENTIAL_HEADERS {
            for value in headers.get_all(name) {
                let h = hasher.get_or_insert_with(Sha256::new);
                h.update(name.as_str().as_bytes());
                h.update([0]);
                h.update((value.len() as u64).to_le_bytes());
                h.update(value.as_bytes());
            }
        }
        let digest = hasher?.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Some(Fingerprint(out))
    }

    /// The fingerprint's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The token-limit members of the three APIs.
const MAX_TOKENS_KEYS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

impl RequestFacts {
    /// Reads the facts of a request from its head and the bytes of its body held in
    /// memory (`whole` when they are the whole body, else the bytes read ahead of a
    /// body too long to buffer).
    pub fn read(parts: &Parts, body: &[u8], whole: bool) -> Result<RequestFacts, InvalidRequest> {
        let mut facts = RequestFacts::of_head(parts);
        facts.whole = whole;
        facts.scan(body, false)?;
        Ok(facts)
    }

    /// Reads the facts only as far as the top-level `model`: the scan stops there, so
    /// a layer that keys on the model (a breaker) does not walk a 200 KB conversation
    /// that follows it. The token limit, `stream` and the check for a second `model`
    /// are left to [`complete`](Self::complete), which a layer that needs them calls
    /// ([`prepare`](crate::body::prepare) with [`Need::Facts`](crate::body::Need)
    /// does), resuming where this scan stopped.
    pub fn read_model(
        parts: &Parts,
        body: &[u8],
        whole: bool,
    ) -> Result<RequestFacts, InvalidRequest> {
        let mut facts = RequestFacts::of_head(parts);
        facts.whole = whole;
        facts.scan(body, true)?;
        Ok(facts)
    }

    /// Finishes the scan that [`read_model`](Self::read_model) stopped at the model,
    /// over the same `body`; nothing to do when the facts are already complete.
    pub fn complete(&mut self, body: &[u8]) -> Result<(), InvalidRequest> {
        if self.resume.is_some() {
            self.scan(body, false)?;
        }
        Ok(())
    }

    /// Whether every fact is known: false only after
    /// [`read_model`](Self::read_model), until [`complete`](Self::complete).
    pub fn is_complete(&self) -> bool {
        self.resume.is_none()
    }

    /// Where a [`read_model`](Self::read_model) scan stopped, as a small `Copy` value:
    /// what a layer keeps, with the body, to ask later whether the rest of the body
    /// names the `model` again ([`Unscanned::names_model_again`]) without keeping a
    /// clone of the facts. `None` once the facts are complete.
    pub fn unscanned(&self) -> Option<Unscanned> {
        self.resume.map(Unscanned)
    }

    /// The facts of a request without a body worth reading.
    pub fn of_head(parts: &Parts) -> RequestFacts {
        RequestFacts::of_api(Api::from_path(parts.uri.path()))
    }

    /// Nothing known but the API.
    fn of_api(api: Api) -> RequestFacts {
        RequestFacts {
            api,
            model: None,
            model_span: None,
            max_tokens: None,
            stream: false,
            whole: true,
            resume: None,
            caller: OnceLock::new(),
        }
    }

    /// One pass over the top-level members, from where an earlier pass stopped; see
    /// the module docs. With `until_model`, it stops after the `model` member and
    /// leaves where it stopped in `resume`.
    fn scan(&mut self, body: &[u8], until_model: bool) -> Result<(), InvalidRequest> {
        let mut state = match self.resume.take() {
            Some(state) => state,
            None => {
                let mut s = Scanner {
                    bytes: body,
                    pos: 0,
                };
                s.skip_ws();
                if s.expect(b'{').is_none() {
                    return Ok(());
                }
                s.skip_ws();
                if s.peek() == Some(b'}') {
                    return Ok(());
                }
                Resume {
                    pos: s.pos,
                    ..Resume::default()
                }
            }
        };
        let mut s = Scanner {
            bytes: body,
            pos: state.pos.min(body.len()),
        };
        loop {
            s.skip_ws();
            let Some(key) = s.string() else { return Ok(()) };
            s.skip_ws();
            if s.expect(b':').is_none() {
                return Ok(());
            }
            s.skip_ws();
            let start = s.pos;
            if s.value().is_none() {
                return Ok(());
            }
            let raw_key = &body[key];
            let value = start..s.pos;
            let mut stop = false;
            if key_matches(raw_key, "model") {
                if state.model {
                    return Err(InvalidRequest::new("the body names its `model` twice"));
                }
                state.model = true;
                stop = until_model;
                if body[value.start] == b'"' {
                    if let Some(model) = decode_string(&body[value.clone()]) {
                        self.model = Some(Arc::from(model.as_ref()));
                        self.model_span = Some(value);
                    }
                }
            } else if state.duplicates_only {
            } else if !state.max && MAX_TOKENS_KEYS.iter().any(|k| key_matches(raw_key, k)) {
                state.max = true;
                self.max_tokens = std::str::from_utf8(&body[value.clone()])
                    .ok()
                    .and_then(|raw| raw.parse::<u64>().ok())
                    .map(|n| (n, value));
            } else if !state.stream && key_matches(raw_key, "stream") {
                state.stream = true;
                self.stream = &body[value] == b"true";
            }
            s.skip_ws();
            match s.next() {
                Some(b',') => {}
                _ => return Ok(()),
            }
            if stop {
                state.pos = s.pos;
                self.resume = Some(state);
                return Ok(());
            }
            if !state.duplicates_only && state.model && state.max && state.stream {
                // Every fact is known: the rest is scanned only if it holds a
                // `"model"` at all, which memchr tells at a fraction of a scan's cost.
                if memchr::memmem::find(&body[s.pos..], b"\"model\"").is_none()
                    && !body[s.pos..].contains(&b'\\')
                {
                    return Ok(());
                }
                state.duplicates_only = true;
            }
        }
    }

    /// The API, told by the path.
    pub fn api(&self) -> Api {
        self.api
    }

    /// The top-level `model`, when the body names one as a string.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The model as a shared string.
    pub fn model_arc(&self) -> Option<&Arc<str>> {
        self.model.as_ref()
    }

    /// The token limit (`max_tokens`, `max_completion_tokens` or
    /// `max_output_tokens`), when it is a whole number.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens.as_ref().map(|(n, _)| *n)
    }

    /// Whether the caller asked for a stream (`"stream": true`).
    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// Whether the facts were read from the whole body (else from the bytes read
    /// ahead of a body too long to buffer).
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// The fingerprint of the caller's credential, computed from `headers` the first
    /// time it is asked for.
    pub fn caller(&self, headers: &HeaderMap) -> Option<Fingerprint> {
        *self.caller.get_or_init(|| Fingerprint::of(headers))
    }

    /// The facts in `extensions`, if a layer read them.
    pub fn of(extensions: &http::Extensions) -> Option<&RequestFacts> {
        extensions.get::<RequestFacts>()
    }

    /// The body for `model`, with the token limit lowered to `limit` when it is above
    /// it, and the facts of that body. Only those values change; every other byte is
    /// kept, order and whitespace included, and the original bytes are returned
    /// uncopied when nothing changes. `None` when the body names no model.
    pub fn retarget(
        &self,
        body: &Bytes,
        model: &str,
        limit: Option<u64>,
    ) -> Option<(Bytes, RequestFacts)> {
        let model_span = self.model_span.clone()?;
        let clamp = match (&self.max_tokens, limit) {
            (Some((n, span)), Some(limit)) if *n > limit => Some((span.clone(), limit)),
            _ => None,
        };
        let same_model = self.model.as_deref() == Some(model);
        if same_model && clamp.is_none() {
            return Some((body.clone(), self.clone()));
        }
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
        if !same_model {
            let json = serde_json::to_string(model).expect("a string serializes");
            edits.push((model_span, json.into_bytes()));
        }
        let clamp_to = clamp.as_ref().map(|(_, limit)| *limit);
        if let Some((span, limit)) = clamp {
            edits.push((span, limit.to_string().into_bytes()));
        }
        edits.sort_by_key(|(span, _)| span.start);
        let mut out = BytesMut::with_capacity(body.len() + 64);
        let mut at = 0;
        for (span, bytes) in &edits {
            out.extend_from_slice(&body[at..span.start]);
            out.extend_from_slice(bytes);
            at = span.end;
        }
        out.extend_from_slice(&body[at..]);
        // Where a byte of the old body is in the new one.
        let moved = |pos: usize| -> usize {
            let mut shift: isize = 0;
            for (span, bytes) in &edits {
                if span.start < pos {
                    shift += bytes.len() as isize - span.len() as isize;
                }
            }
            (pos as isize + shift) as usize
        };
        let mut facts = self.clone();
        let span = self.model_span.clone().expect("checked above");
        let model_len = if same_model {
            span.len()
        } else {
            edits
                .iter()
                .find(|(s, _)| *s == span)
                .map_or(span.len(), |(_, b)| b.len())
        };
        let start = moved(span.start);
        facts.model_span = Some(start..start + model_len);
        if let Some(resume) = &mut facts.resume {
            resume.pos = moved(resume.pos);
        }
        facts.model = Some(Arc::from(model));
        if let Some((n, span)) = &self.max_tokens {
            let (n, len) = match clamp_to {
                Some(limit) => (limit, limit.to_string().len()),
                None => (*n, span.len()),
            };
            let start = moved(span.start);
            facts.max_tokens = Some((n, start..start + len));
        }
        Some((out.freeze(), facts))
    }
}

impl fmt::Debug for RequestFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFacts")
            .field("api", &self.api)
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens())
            .field("stream", &self.stream)
            .field("whole", &self.whole)
            .finish_non_exhaustive()
    }
}

impl PartialEq for RequestFacts {
    fn eq(&self, other: &Self) -> bool {
        self.api == other.api
            && self.model == other.model
            && self.model_span == other.model_span
            && self.max_tokens == other.max_tokens
            && self.stream == other.stream
            && self.whole == other.whole
            && self.resume == other.resume
    }
}

/// `uri` moved under `base`: `base`'s scheme and authority, `base`'s path in front of
/// `uri`'s path and query (`http://h/proxy/` and `/v1/messages?beta=true` give
/// `http://h/proxy/v1/messages?beta=true`). A base without a path (the usual one:
/// `https://api.anthropic.com`) keeps the request's path and query as they are,
/// without writing and parsing them again. For the fallback's targets and the
/// gateway's providers; a result that is no URI leaves `uri` as it is.
pub fn rebase(uri: &http::Uri, base: &http::Uri) -> http::Uri {
    use http::uri::{Parts, PathAndQuery};
    let prefix = base.path().trim_end_matches('/');
    let mut parts = Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = if prefix.is_empty() {
        uri.path_and_query().cloned()
    } else {
        let rest = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{prefix}{rest}").parse().ok()
    };
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebasing_keeps_the_path_and_query() {
        let uri: http::Uri = "https://api.anthropic.com/v1/messages?beta=true"
            .parse()
            .unwrap();
        let base: http::Uri = "http://127.0.0.1:8080/proxy/".parse().unwrap();
        assert_eq!(
            rebase(&uri, &base),
            "http://127.0.0.1:8080/proxy/v1/messages?beta=true"
        );
        let bare: http::Uri = "https://api.openai.com".parse().unwrap();
        assert_eq!(
            rebase(&uri, &bare),
            "https://api.openai.com/v1/messages?beta=true"
        );
        let relative: http::Uri = "/v1/chat/completions".parse().unwrap();
        assert_eq!(
            rebase(&relative, &bare),
            "https://api.openai.com/v1/chat/completions"
        );
    }

    fn parts(path: &str) -> Parts {
        http::Request::post(path).body(()).unwrap().into_parts().0
    }

    fn read(body: &str) -> Result<RequestFacts, InvalidRequest> {
        RequestFacts::read(&parts("/v1/messages"), body.as_bytes(), true)
    }

    #[test]
    fn finds_every_fact_in_one_pass() {
        let f = read(r#"{"model":"claude-opus-4-1","max_tokens":1024,"messages":[{"role":"user","content":"hi"}],"stream":true}"#).unwrap();
        assert_eq!(f.api(), Api::AnthropicMessages);
        assert_eq!(f.model(), Some("claude-opus-4-1"));
        assert_eq!(f.max_tokens(), Some(1024));
        assert!(f.is_stream());
        let f = RequestFacts::read(
            &parts("/v1/chat/completions"),
            br#"{"messages":[],"model":"gpt-4o","max_completion_tokens":7}"#,
            true,
        )
        .unwrap();
        assert_eq!(f.api(), Api::OpenAiChat);
        assert_eq!(f.model(), Some("gpt-4o"));
        assert_eq!(f.max_tokens(), Some(7));
        assert!(!f.is_stream());
    }

    #[test]
    fn two_models_are_refused_wherever_the_second_is() {
        for body in [
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":"a","max_tokens":1,"stream":false,"messages":[],"model":"b"}"#,
            r#"{"model":"a","max_tokens":1,"stream":false,"mod\u0065l":"b"}"#,
            r#"{"model":null,"model":"b"}"#,
        ] {
            assert!(read(body).is_err(), "{body}");
        }
        // A "model" inside a message is not a second key.
        let f = read(r#"{"model":"a","max_tokens":1,"stream":false,"messages":[{"content":"\"model\": \"b\""}]}"#).unwrap();
        assert_eq!(f.model(), Some("a"));
    }

    #[test]
    fn a_scan_stopped_at_the_model_resumes_where_it_stopped() {
        let body = br#"{"model":"a","messages":[{"content":"long"}],"stream":true,"max_tokens":9}"#;
        let mut f = RequestFacts::read_model(&parts("/v1/messages"), body, true).unwrap();
        assert_eq!(f.model(), Some("a"));
        assert!(!f.is_complete());
        assert!(!f.is_stream(), "not read yet");
        f.complete(body).unwrap();
        assert!(f.is_complete());
        assert_eq!(f, read(std::str::from_utf8(body).unwrap()).unwrap());
        // Completing finds a second model the first scan stopped before.
        let two = br#"{"model":"a","messages":[],"model":"b"}"#;
        let mut f = RequestFacts::read_model(&parts("/v1/messages"), two, true).unwrap();
        // The same check on its own, from where the scan stopped, before and
        // after the facts are complete.
        assert!(f.unscanned().unwrap().names_model_again(two));
        assert!(f.complete(two).is_err());
        let once = br#"{"model":"a","messages":[{"content":"\"model\""}],"stream":true}"#;
        let mut f = RequestFacts::read_model(&parts("/v1/messages"), once, true).unwrap();
        assert!(!f.unscanned().unwrap().names_model_again(once));
        f.complete(once).unwrap();
        assert_eq!(f.unscanned(), None);
        // A model after the conversation is found by walking to it, and a scan that
        // ended with the object is complete.
        let late = br#"{"messages":[{"content":"x"}],"model":"gpt-4o"}"#;
        let f = RequestFacts::read_model(&parts("/v1/chat/completions"), late, true).unwrap();
        assert_eq!(f.model(), Some("gpt-4o"));
        assert!(f.is_complete());
        // Retargeting a stopped scan moves where it resumes.
        let body = Bytes::from_static(br#"{"model":"a","max_tokens":100,"stream":true}"#);
        let f = RequestFacts::read_model(&parts("/v1/messages"), &body, true).unwrap();
        let (out, mut g) = f.retarget(&body, "a-much-longer-model", None).unwrap();
        g.complete(&out).unwrap();
        assert_eq!((g.max_tokens(), g.is_stream()), (Some(100), true));
    }

    #[test]
    fn anything_else_yields_no_model_and_no_error() {
        for body in ["", "not json", "[]", "{", r#"{"model":42}"#, r#"{"x":1}"#] {
            let f = read(body).unwrap();
            assert_eq!(f.model(), None, "{body}");
        }
    }

    #[test]
    fn a_cut_prefix_still_gives_the_model() {
        let f = RequestFacts::read(
            &parts("/v1/messages"),
            br#"{"model":"m","messages":[{"role":"user","content":"a very lo"#,
            false,
        )
        .unwrap();
        assert_eq!(f.model(), Some("m"));
        assert!(!f.is_whole());
    }

    #[test]
    fn retarget_keeps_every_other_byte_and_updates_the_facts() {
        let body = Bytes::from_static(
            br#"{ "model" : "claude-opus-4-1", "max_tokens": 16000, "messages": [] }"#,
        );
        let f = read(std::str::from_utf8(&body).unwrap()).unwrap();
        let (same, _) = f.retarget(&body, "claude-opus-4-1", None).unwrap();
        assert_eq!(
            same.as_ptr(),
            body.as_ptr(),
            "unchanged bodies are not copied"
        );
        let (out, g) = f.retarget(&body, "claude-haiku-4-5", Some(8192)).unwrap();
        assert_eq!(
            &out[..],
            br#"{ "model" : "claude-haiku-4-5", "max_tokens": 8192, "messages": [] }"#
        );
        assert_eq!(g.model(), Some("claude-haiku-4-5"));
        assert_eq!(g.max_tokens(), Some(8192));
        // The new facts describe the new body: retargeting again works.
        let (back, h) = g.retarget(&out, "claude-opus-4-1", None).unwrap();
        assert_eq!(
            &back[..],
            br#"{ "model" : "claude-opus-4-1", "max_tokens": 8192, "messages": [] }"#
        );
        assert_eq!(h, h.clone());
    }

    #[test]
    fn fingerprints_partition_callers_and_hide_the_key() {
        let mut a = HeaderMap::new();
        a.insert("x-api-key", "sk-ant-secret-a".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("x-api-key", "sk-ant-secret-b".parse().unwrap());
        let fa = Fingerprint::of(&a).unwrap();
        assert_ne!(Some(fa), Fingerprint::of(&b));
        assert_eq!(Fingerprint::of(&HeaderMap::new()), None);
        assert!(!format!("{fa:?}{fa}").contains("secret"));
    }
}
