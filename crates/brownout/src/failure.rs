//! [`Error`]: what went wrong in a brownout stack, in a form a handler can act on.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

use http::StatusCode;

use crate::{
    classify::{Classify, DefaultClassifier, Observed},
    error::{find, BrokenBody, DeadlineExceeded, InvalidRequest, Rejected},
    provider::Api,
    BoxError, OutcomeKind,
};

/// What went wrong in a brownout stack, read from the error it returned (or from an
/// error response it let through), in a form a handler can act on: which kind of
/// failure, how long to wait when that is known, the status to answer with, and an
/// error body in the provider's shape (with the `axum` feature, it is an
/// `axum::response::IntoResponse`).
///
/// ```
/// use std::time::Duration;
/// use brownout::{breaker::CircuitOpen, BoxError, Error, ErrorKind};
///
/// let error: BoxError = Box::new(CircuitOpen::new("claude-sonnet-4-5".into(), Some(Duration::from_secs(7))));
/// let view = Error::new(error);
/// assert!(matches!(view.kind(), ErrorKind::CircuitOpen { .. }));
/// assert_eq!(view.retry_after(), Some(Duration::from_secs(7)));
/// assert_eq!(view.status(), 503);
/// ```
///
/// The message is the error's own text (brownout's errors name models, hosts and
/// outcomes, never a header or a credential).
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    retry_after: Option<Duration>,
    api: Api,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

/// The kinds of failure an [`Error`] tells apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A circuit breaker refused the request: the upstream was not asked. `key` is
    /// the breaker's (a model, a host).
    CircuitOpen {
        /// The breaker's key.
        key: String,
    },
    /// Another layer refused the request without sending it (a client-side rate
    /// limit, a queue that is full).
    Refused,
    /// Every target of the fallback cascade failed or was skipped: each target with
    /// its reason, in the order tried.
    AllTargetsFailed(Vec<TargetFailure>),
    /// The retry layer's deadline passed.
    DeadlineExceeded,
    /// An attempt took too long, or the upstream did not answer in time.
    Timeout,
    /// The upstream could not be reached (connect or TLS handshake failed, the
    /// connection broke); `certificate` when its certificate did not verify.
    ConnectionFailed {
        /// Whether the upstream's certificate was refused.
        certificate: bool,
    },
    /// The upstream answered with this error status (after the stack's retries and
    /// fallbacks).
    UpstreamStatus(StatusCode),
    /// The caller's own request is at fault: its body broke off or stalled, or it is
    /// malformed. Sending it again as it is cannot help.
    InvalidRequest,
}

/// One target of a failed cascade and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFailure {
    /// The target (its model).
    pub target: String,
    /// Why: `overloaded`, `its circuit is open`, `connection failed`...
    pub reason: String,
}

impl Error {
    /// Reads an error a brownout stack returned.
    pub fn new(error: impl Into<BoxError>) -> Error {
        let error: BoxError = error.into();
        let mut view = Error::of(&*error);
        view.source = Some(Arc::from(error));
        view
    }

    /// Reads an error a brownout stack returned, by reference.
    pub fn of(error: &(dyn StdError + 'static)) -> Error {
        let message = error.to_string();
        let outcome = DefaultClassifier::new().classify(Observed::Error(error));
        let retry_after = outcome.server_delay();
        let kind = kind_of(error, outcome.kind());
        let retry_after = match &kind {
            // The cascade's delay is its targets' earliest.
            ErrorKind::AllTargetsFailed(_) => all_failed_delay(error).or(retry_after),
            _ => retry_after,
        };
        Error {
            kind,
            message,
            retry_after,
            api: Api::default(),
            source: None,
        }
    }

    /// The error response a stack let through (after its retries and fallbacks), or
    /// `None` for a success. Its delay is the one the provider asked for.
    pub fn from_response<B>(response: &http::Response<B>) -> Option<Error> {
        let status = response.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return None;
        }
        let outcome = DefaultClassifier::new().classify(Observed::Response {
            status,
            headers: response.headers(),
            body: None,
        });
        Some(Error {
            kind: ErrorKind::UpstreamStatus(status),
            message: format!("the upstream answered {status}"),
            retry_after: outcome.server_delay(),
            api: Api::default(),
            source: None,
        })
    }

    /// The API whose error shape the [body](Error::body) takes (Anthropic's by
    /// default): the request's, so that an SDK reads the answer as its provider's.
    pub fn api(mut self, api: Api) -> Error {
        self.api = api;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// How long to wait before trying again, when it is known: the breaker's reopening
    /// time, the cascade's earliest, the provider's `retry-after`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The error's own message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether sending the same request later may succeed (everything but the
    /// caller's own invalid request and a 4xx other than 408 and 429).
    pub fn is_retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::InvalidRequest => false,
            ErrorKind::UpstreamStatus(status) => {
                !status.is_client_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            _ => true,
        }
    }

    /// The status to answer a caller with: `503` for a refusal or an exhausted
    /// cascade, `504` for a timeout or deadline, `502` for an unreachable upstream,
    /// `400` for the caller's own request, the upstream's own status otherwise.
    pub fn status(&self) -> StatusCode {
        match &self.kind {
            ErrorKind::CircuitOpen { .. } | ErrorKind::Refused | ErrorKind::AllTargetsFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::DeadlineExceeded | ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ConnectionFailed { .. } => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamStatus(status) => *status,
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// An error body in the [API](Error::api)'s shape, with this error's message.
    pub fn body(&self) -> Vec<u8> {
        use crate::provider::ErrorKind as Shape;
        let shape = match &self.kind {
            ErrorKind::CircuitOpen { .. } | ErrorKind::Refused | ErrorKind::AllTargetsFailed(_) => {
                Shape::Overloaded
            }
            ErrorKind::DeadlineExceeded | ErrorKind::Timeout => Shape::Timeout,
            ErrorKind::InvalidRequest => Shape::InvalidRequest,
            ErrorKind::UpstreamStatus(status) if status.as_u16() == 529 || *status == 503 => {
                Shape::Overloaded
            }
            ErrorKind::UpstreamStatus(status) if status.is_client_error() => Shape::InvalidRequest,
            ErrorKind::ConnectionFailed { .. } | ErrorKind::UpstreamStatus(_) => Shape::Upstream,
        };
        self.api.error_body(shape, &self.message)
    }

    /// The answer for a caller: [status](Error::status), a JSON [body](Error::body),
    /// `retry-after` in whole seconds (rounded up) when a wait is known, and
    /// `x-should-retry: false` on the caller's own invalid request.
    pub fn to_response(&self) -> http::Response<crate::Body> {
        let mut response = http::Response::new(crate::Body::from(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(delay) = self.retry_after {
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs.max(1)),
            );
        }
        if !self.is_retryable() {
            headers.insert("x-should-retry", http::HeaderValue::from_static("false"));
        }
        response
    }
}

fn kind_of(error: &(dyn StdError + 'static), outcome: OutcomeKind) -> ErrorKind {
    if find::<BrokenBody>(error).is_some() || find::<InvalidRequest>(error).is_some() {
        return ErrorKind::InvalidRequest;
    }
    #[cfg(feature = "fallback")]
    if let Some(all) = find::<crate::fallback::AllTargetsFailed>(error) {
        let failures = all
            .failures()
            .iter()
            .enumerate()
            .map(|(i, (target, reason))| TargetFailure {
                target: target.to_string(),
                reason: match (reason, all.detail(i)) {
                    (crate::fallback::FallbackReason::Failed(outcome), Some(detail)) => {
                        format!("{outcome}: {detail}")
                    }
                    (crate::fallback::FallbackReason::Failed(outcome), None) => outcome.to_string(),
                    (crate::fallback::FallbackReason::Unavailable, _) => {
                        "its circuit is open".into()
                    }
                    (other, _) => other.to_string(),
                },
            })
            .collect();
        return ErrorKind::AllTargetsFailed(failures);
    }
    #[cfg(feature = "breaker")]
    if let Some(open) = find::<crate::breaker::CircuitOpen>(error) {
        return ErrorKind::CircuitOpen {
            key: open.key().to_owned(),
        };
    }
    if find::<Rejected>(error).is_some() {
        return ErrorKind::Refused;
    }
    if find::<DeadlineExceeded>(error).is_some() {
        return ErrorKind::DeadlineExceeded;
    }
    match outcome {
        OutcomeKind::Timeout => ErrorKind::Timeout,
        OutcomeKind::ClientError => ErrorKind::InvalidRequest,
        _ => ErrorKind::ConnectionFailed {
            certificate: is_certificate(error),
        },
    }
}

#[cfg(feature = "client")]
fn is_certificate(error: &(dyn StdError + 'static)) -> bool {
    find::<crate::client::ConnectError>(error).is_some_and(|c| c.is_certificate())
}

#[cfg(not(feature = "client"))]
fn is_certificate(_: &(dyn StdError + 'static)) -> bool {
    false
}

#[cfg(feature = "fallback")]
fn all_failed_delay(error: &(dyn StdError + 'static)) -> Option<Duration> {
    let all = find::<crate::fallback::AllTargetsFailed>(error)?;
    all.failures()
        .iter()
        .filter_map(|(_, reason)| match reason {
            crate::fallback::FallbackReason::Failed(outcome) => outcome.server_delay(),
            _ => None,
        })
        .min()
}

#[cfg(not(feature = "fallback"))]
fn all_failed_delay(_: &(dyn StdError + 'static)) -> Option<Duration> {
    None
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        // The error it was read from, when it was given by value: its own source
        // chain, so that `find` and the classification still reach its parts.
        self.source.as_deref().and_then(|e| e.source())
    }
}

impl From<BoxError> for Error {
    fn from(error: BoxError) -> Error {
        Error::new(error)
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    /// [`Error::to_response`].
    fn into_response(self) -> axum_core::response::Response {
        self.to_response().map(axum_core::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_failure_is_a_502_with_its_reason() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let view = Error::new(refused);
        assert_eq!(
            view.kind(),
            &ErrorKind::ConnectionFailed { certificate: false }
        );
        assert_eq!(view.status(), 502);
        assert!(view.is_retryable());
        let response = view.to_response();
        assert_eq!(response.status(), 502);
        assert!(response.headers().get("retry-after").is_none());
    }

    #[test]
    fn the_callers_own_request_is_a_400_not_to_retry() {
        let view = Error::new(InvalidRequest::new("the body names model twice"));
        assert_eq!(view.kind(), &ErrorKind::InvalidRequest);
        let response = view.api(Api::OpenAiChat).to_response();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["x-should-retry"], "false");
        let body = response.into_body();
        let bytes = body.bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn a_deadline_is_a_504() {
        let view = Error::new(DeadlineExceeded::new(Duration::from_secs(60), 3));
        assert_eq!(view.kind(), &ErrorKind::DeadlineExceeded);
        assert_eq!(view.status(), 504);
    }

    #[test]
    fn an_upstream_error_status_keeps_its_retry_after() {
        let response = http::Response::builder()
            .status(529)
            .header("retry-after", "3")
            .body(())
            .unwrap();
        let view = Error::from_response(&response).unwrap();
        assert_eq!(
            view.kind(),
            &ErrorKind::UpstreamStatus(StatusCode::from_u16(529).unwrap())
        );
        assert_eq!(view.retry_after(), Some(Duration::from_secs(3)));
        let answer = view.to_response();
        assert_eq!(answer.status(), 529);
        assert_eq!(answer.headers()["retry-after"], "3");
        let ok = http::Response::new(());
        assert!(Error::from_response(&ok).is_none());
    }

    #[cfg(feature = "breaker")]
    #[test]
    fn an_open_circuit_is_a_503_with_retry_after_rounded_up() {
        let open = crate::breaker::CircuitOpen::new(
            "claude-sonnet-4-5".into(),
            Some(Duration::from_millis(2500)),
        );
        let view = Error::new(open);
        assert_eq!(
            view.kind(),
            &ErrorKind::CircuitOpen {
                key: "claude-sonnet-4-5".into()
            }
        );
        let response = view.to_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "3");
        let json: serde_json::Value =
            serde_json::from_slice(response.body().bytes().unwrap()).unwrap();
        assert_eq!(json["error"]["type"], "overloaded_error");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit open for claude-sonnet-4-5"));
    }
}
