//! What makes two requests the same.

use std::sync::Arc;

use http::{header::HeaderName, request::Parts};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A cache key: a SHA-256 digest of everything that identifies the request. A
/// collision-resistant digest, because a collision would hand one caller another
/// caller's answer.
pub type CacheKey = [u8; 32];

type KeyFn = dyn Fn(&Parts, &[u8]) -> Vec<u8> + Send + Sync;

/// How keys are made.
#[derive(Clone)]
pub(crate) struct Keying {
    pub(crate) headers: Arc<[HeaderName]>,
    pub(crate) credentials: Option<Arc<[HeaderName]>>,
    pub(crate) custom: Option<Arc<KeyFn>>,
}

impl Keying {
    /// The key of a request whose whole body is `body`.
    pub(crate) fn key(&self, parts: &Parts, body: &[u8]) -> CacheKey {
        let mut hasher = Sha256::new();
        match &self.custom {
            Some(custom) => field(&mut hasher, b'k', &custom(parts, body)),
            None => {
                field(&mut hasher, b'm', parts.method.as_str().as_bytes());
                field(&mut hasher, b'p', parts.uri.path().as_bytes());
                field(
                    &mut hasher,
                    b'q',
                    parts.uri.query().unwrap_or_default().as_bytes(),
                );
                for name in self.headers.iter() {
                    for value in parts.headers.get_all(name) {
                        field(&mut hasher, b'h', name.as_str().as_bytes());
                        field(&mut hasher, b'v', value.as_bytes());
                    }
                }
                canonical_body(&mut hasher, body);
            }
        }
        if let Some(credentials) = &self.credentials {
            // The caller's credential partitions the cache: hashed with the rest, never
            // stored or logged as it is.
            for name in credentials.iter() {
                for value in parts.headers.get_all(name) {
                    field(&mut hasher, b'c', name.as_str().as_bytes());
                    field(&mut hasher, b'v', value.as_bytes());
                }
            }
        }
        hasher.finalize().into()
    }
}

/// Feeds one length-prefixed field, so that fields cannot run into each other.
fn field(hasher: &mut Sha256, tag: u8, bytes: &[u8]) {
    hasher.update([tag]);
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// A JSON body is hashed in a canonical form: object members in key order, no
/// whitespace. Anything else is hashed as its bytes.
fn canonical_body(hasher: &mut Sha256, body: &[u8]) {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => {
            hasher.update(b"J");
            canonical(hasher, &value);
        }
        Err(_) => field(hasher, b'B', body),
    }
}

fn canonical(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(true) => hasher.update(b"t"),
        Value::Bool(false) => hasher.update(b"f"),
        Value::Number(n) => field(hasher, b'd', n.to_string().as_bytes()),
        Value::String(s) => field(hasher, b's', s.as_bytes()),
        Value::Array(items) => {
            hasher.update(b"a");
            hasher.update((items.len() as u64).to_le_bytes());
            for item in items {
                canonical(hasher, item);
            }
        }
        Value::Object(members) => {
            // Sorted here, whatever order the map keeps (serde_json's
            // `preserve_order` may be on in the build).
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"o");
            hasher.update((sorted.len() as u64).to_le_bytes());
            for (k, v) in sorted {
                field(hasher, b'k', k.as_bytes());
                canonical(hasher, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keying(credentials: bool) -> Keying {
        Keying {
            headers: vec![HeaderName::from_static("anthropic-version")].into(),
            credentials: credentials.then(|| {
                vec![
                    HeaderName::from_static("x-api-key"),
                    http::header::AUTHORIZATION,
                ]
                .into()
            }),
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
