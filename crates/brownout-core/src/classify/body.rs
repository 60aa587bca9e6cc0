//! The provider's error type, read from a JSON error body.

use super::OutcomeKind;
use serde::Deserialize;

#[derive(Deserialize)]
struct Envelope {
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
}

/// The error type or code of an Anthropic (`{"type":"error","error":{"type":…}}`) or
/// OpenAI (`{"error":{"type":…,"code":…}}`) error body. OpenAI's `code` is more precise
/// than its `type` (`insufficient_quota` vs `rate_limit_exceeded` under one type), so
/// it wins when it is a string. Anything unparseable yields `None`.
pub(super) fn error_type(body: &[u8]) -> Option<String> {
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let error = envelope.error?;
    let as_string = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    as_string(error.code).or_else(|| as_string(error.kind))
}

/// Refines the kind the status gave with the provider's error type.
pub(super) fn refine(kind: OutcomeKind, error_type: &str) -> OutcomeKind {
    match (kind, error_type) {
        // OpenAI: the quota is spent; waiting will not help.
        (OutcomeKind::RateLimited, "insufficient_quota") => OutcomeKind::ClientError,
        // Anthropic sometimes reports an overload under another 5xx status.
        (OutcomeKind::ServerError, "overloaded_error" | "overloaded") => OutcomeKind::Overloaded,
        (OutcomeKind::ServerError, "timeout_error") => OutcomeKind::Timeout,
        (kind, _) => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes() {
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_type(anthropic).as_deref(), Some("overloaded_error"));
        let openai = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert_eq!(error_type(openai).as_deref(), Some("insufficient_quota"));
        let openai = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(error_type(openai).as_deref(), Some("rate_limit_exceeded"));
        let code_null = br#"{"error":{"type":"server_error","code":null}}"#;
        assert_eq!(error_type(code_null).as_deref(), Some("server_error"));
    }

    #[test]
    fn ignores_garbage() {
        for body in [
            &b""[..],
            b"not json",
            b"{",
            b"[]",
            b"{\"error\":\"string\"}",
            b"{\"error\":{\"type\":42}}",
            b"{\"error\":{\"type\":\"\"}}",
            b"{\"type\":\"error\",\"error\":{\"type\":\"overloaded_e",
            b"\xff\xfe\x00",
        ] {
            assert_eq!(
                error_type(body),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
