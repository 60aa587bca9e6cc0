//! The 503 answer of [`OnOpen::Respond`](crate::OnOpen::Respond).

use brownout_core::{
    classify::{record, Outcome, OutcomeKind},
    provider::{Api, ErrorKind},
    Body,
};
use http::{header, HeaderValue, Response, StatusCode, Uri};

use crate::CircuitOpen;

/// A `503` with `retry-after` and an overload error body in the shape of the API of
/// `uri`'s path, carrying `open` in its extensions and a
/// [`Rejected`](OutcomeKind::Rejected) outcome for the layers further out.
pub(crate) fn refusal(uri: &Uri, open: CircuitOpen) -> Response<Body> {
    let message = open.to_string();
    let body = Api::from_path(uri.path()).error_body(ErrorKind::Overloaded, &message);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-brownout-circuit", HeaderValue::from_static("open"));
    if let Some(delay) = open.retry_after() {
        // Whole seconds, rounded up: retry-after has no fractions.
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    let outcome = Outcome::new(OutcomeKind::Rejected).with_server_delay(open.retry_after());
    record(&mut response, &outcome);
    response.extensions_mut().insert(open);
    response
}
