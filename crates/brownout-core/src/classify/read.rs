//! Classifying a service's result, peeking at error bodies without losing them.

use std::error::Error as StdError;

use http::Response;
use http_body::Body;

use super::{Classify, Observed, Outcome};
use crate::body::{buffer, Buffered, PrefixedBody};

/// How many bytes of an error body the layers read by default to find the provider's
/// error type. Provider error bodies are a few hundred bytes; a longer body is not one
/// of theirs and is classified by its status alone.
pub const DEFAULT_ERROR_BODY_LIMIT: usize = 4 * 1024;

/// Classifies a response, reading at most `limit` bytes of its body when the
/// classifier asks for them.
///
/// The returned response carries every byte of the original body: what was read comes
/// first, then the rest. A body whose `content-length` (size hint) is over `limit` is
/// not read at all. A success body is never read.
///
/// A body that fails while it is read is classified by its head alone, and the failure
/// is handed on in the returned body after the bytes read before it.
pub async fn classify_response<C, B>(
    classifier: &C,
    response: Response<B>,
    limit: usize,
) -> (Response<PrefixedBody<B>>, Outcome)
where
    C: Classify + ?Sized,
    B: Body + Unpin,
{
    if let Some(outcome) = classify_head(classifier, &response) {
        return (response.map(PrefixedBody::new), outcome);
    }
    let status = response.status();
    let (parts, body) = response.into_parts();
    // Boxed: only error responses get here, and the success path's futures stay small.
    let body = match Box::pin(buffer(body, limit)).await {
        Buffered::Complete(replay) => {
            PrefixedBody::complete(replay.data().clone(), replay.trailers().cloned())
        }
        Buffered::TooLarge(body) | Buffered::Failed(body) => body,
    };
    let prefix = body.prefix();
    let outcome = classifier.classify(Observed::Response {
        status,
        headers: &parts.headers,
        body: Some(&prefix[..prefix.len().min(limit)]),
    });
    (Response::from_parts(parts, body), outcome)
}

/// Classifies a response from its head alone, or returns `None` when the classifier
/// wants to read the start of its body first (then use [`classify_response`]).
///
/// Lets a layer decide without awaiting anything on the success path.
pub fn classify_head<C, B>(classifier: &C, response: &Response<B>) -> Option<Outcome>
where
    C: Classify + ?Sized,
{
    let status = response.status();
    let read_body = (status.is_client_error() || status.is_server_error())
        && classifier.wants_body(status, response.headers());
    if read_body {
        return None;
    }
    Some(classifier.classify(Observed::Response {
        status,
        headers: response.headers(),
        body: None,
    }))
}

/// Classifies a service's result: [`classify_response`] for a response, the error's
/// source chain for an error. The error is handed back untouched.
pub async fn classify_result<C, B, E>(
    classifier: &C,
    result: Result<Response<B>, E>,
    limit: usize,
) -> (Result<Response<PrefixedBody<B>>, E>, Outcome)
where
    C: Classify + ?Sized,
    B: Body + Unpin,
    E: AsRef<dyn StdError + Send + Sync + 'static>,
{
    match result {
        Ok(response) => {
            let (response, outcome) = classify_response(classifier, response, limit).await;
            (Ok(response), outcome)
        }
        Err(error) => {
            let outcome = classifier.classify(Observed::Error(error.as_ref()));
            (Err(error), outcome)
        }
    }
}
