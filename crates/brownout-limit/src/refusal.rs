//! The 429 answers of [`OnLimit::Respond`](crate::OnLimit::Respond).

use std::time::Duration;

use brownout_core::{
    classify::{record, Outcome, OutcomeKind},
    provider::Api,
    shape, Body,
};
use http::{header, HeaderValue, Response, StatusCode};

use crate::{RateLimited, Resource, TooManyTokens};

fn answer(api: Api, message: &str, resource: Option<Resource>) -> Response<Body> {
    let body = if api.is_openai() {
        let kind = match resource {
            Some(Resource::Requests) => "requests",
            _ => "tokens",
        };
        shape::openai_error(message, kind, None, Some("rate_limit_exceeded"))
    } else {
        shape::anthropic_error("rate_limit_error", message)
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-brownout-limit", HeaderValue::from_static("local"));
    response
}

/// A `429` `rate_limit_error` with `retry-after` (whole seconds, rounded up),
/// `retry-after-ms`, and `x-should-retry: true`: the SDK may come back then. The
/// outcome is [`Rejected`](OutcomeKind::Rejected): the upstream was not asked, so no
/// breaker counts it.
pub(crate) fn rate_limited(api: Api, limited: RateLimited) -> Response<Body> {
    let delay = limited.retry_after();
    let mut response = answer(api, &limited.to_string(), limited.resource());
    let headers = response.headers_mut();
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    headers.insert(
        "retry-after-ms",
        HeaderValue::from(delay.as_millis().max(1) as u64),
    );
    headers.insert("x-should-retry", HeaderValue::from_static("true"));
    let outcome = Outcome::new(OutcomeKind::Rejected)
        .with_server_delay(Some(delay.max(Duration::from_millis(1))))
        .with_status(StatusCode::TOO_MANY_REQUESTS)
        .with_error_type("rate_limit_error");
    record(&mut response, &outcome);
    response.extensions_mut().insert(limited);
    response
}

/// A `429` for a request larger than a minute's limit, with `x-should-retry: false`
/// and no `retry-after`: sending it again cannot help. The outcome is a
/// [`ClientError`](OutcomeKind::ClientError).
pub(crate) fn too_many_tokens(api: Api, refused: TooManyTokens) -> Response<Body> {
    let mut response = answer(api, &refused.to_string(), Some(refused.resource()));
    response
        .headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    let outcome = Outcome::new(OutcomeKind::ClientError)
        .with_status(StatusCode::TOO_MANY_REQUESTS)
        .with_error_type("rate_limit_error");
    record(&mut response, &outcome);
    response.extensions_mut().insert(refused);
    response
}
