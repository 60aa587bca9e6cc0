//! The answer of a shed request, in the provider's shape.

use std::time::Duration;

use brownout_core::{
    classify::{record, Outcome, OutcomeKind},
    provider::{Api, ErrorKind},
    Body,
};
use http::{header, HeaderValue, Response, StatusCode, Uri};

use crate::Shed;

/// Anthropic's `529 overloaded_error` (also for APIs brownout does not know), or for
/// OpenAI's APIs a `503` with their error body; `retry-after` in whole seconds
/// (rounded up) when the wait is known, `x-should-retry: false`, the [`Shed`] in the
/// extensions and a [`Rejected`](OutcomeKind::Rejected) outcome recorded for the
/// layers further out.
pub(crate) fn response(uri: &Uri, shed: Shed) -> Response<Body> {
    let api = Api::from_path(uri.path());
    let body = api.error_body(ErrorKind::Overloaded, &shed.to_string());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = if api.is_openai() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::from_u16(529).expect("529 is a valid status")
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-should-retry", HeaderValue::from_static("false"));
    headers.insert("x-brownout-queue", HeaderValue::from_static("shed"));
    if let Some(delay) = shed.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(delay)));
    }
    let outcome = Outcome::new(OutcomeKind::Rejected)
        .with_retryable(false)
        .with_server_delay(shed.retry_after());
    record(&mut response, &outcome);
    response.extensions_mut().insert(shed);
    response
}

/// Whole seconds, rounded up, at least one: `retry-after` has no fractions.
fn whole_seconds(delay: Duration) -> u64 {
    (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(200)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }
}
