//! Redis key names: namespaced, and never a credential in clear.

/// A breaker key's name in Redis (after `brownout:{deployment}:breaker:`).
///
/// Model and host names are kept as they are, so that an operator reading Redis sees
/// `claude-sonnet-4-5` or `api.openai.com`. Anything else — long, odd characters, or a
/// long unbroken run of letters and digits, as API keys and tokens are — is replaced
/// by a fingerprint: 32 hex digits of a BLAKE3 hash keyed by the deployment, so the
/// key itself never reaches Redis, its pub/sub channel or its logs.
pub(crate) fn id(deployment: &str, key: &str) -> String {
    if is_plain(key) {
        return key.to_owned();
    }
    let mut hasher = blake3::Hasher::new_derive_key("brownout-redis breaker key v1");
    hasher.update(deployment.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    let hash = hasher.finalize();
    let mut out = String::with_capacity(35);
    out.push_str("fp:");
    for byte in &hash.as_bytes()[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn is_plain(key: &str) -> bool {
    if key.is_empty() || key.len() > 64 || key.starts_with("fp:") {
        return false;
    }
    let mut run = 0;
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() {
            run += 1;
            if run > 16 {
                return false;
            }
        } else if matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'@') {
            run = 0;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::id;

    #[test]
    fn names_stay_secrets_go() {
        assert_eq!(
            id("prod", "claude-sonnet-4-5-20250929"),
            "claude-sonnet-4-5-20250929"
        );
        assert_eq!(id("prod", "api.openai.com"), "api.openai.com");
        let secret = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let fp = id("prod", secret);
        assert!(fp.starts_with("fp:") && fp.len() == 35, "{fp}");
        assert!(!fp.contains("AbCdEf"));
        // Per deployment, and never mistaken for a plain name.
        assert_ne!(fp, id("staging", secret));
        assert!(id("prod", "fp:abc").starts_with("fp:") && id("prod", "fp:abc") != "fp:abc");
        assert!(id("prod", "a key with spaces").starts_with("fp:"));
        assert!(id("prod", "").starts_with("fp:"));
    }
}
