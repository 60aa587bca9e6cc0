//! What both benchmarks share: the request, the upstream, and tower's retry policy.

use std::{convert::Infallible, future::Ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::retry::Policy;

/// A request like a short chat completion (1 KiB of JSON).
pub(crate) fn request() -> Request<Full<Bytes>> {
    static BODY: [u8; 1024] = [b'x'; 1024];
    Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-bench")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from_static(&BODY)))
        .unwrap()
}

pub(crate) fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
}

/// tower's retry with what a user would write to match brownout's defaults: up to 3
/// attempts, retry on 5xx, the request cloned for each attempt.
#[derive(Clone)]
pub(crate) struct Attempts(pub(crate) usize);

impl<E> Policy<Request<Full<Bytes>>, Response<Full<Bytes>>, E> for Attempts {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<Full<Bytes>>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if !response.status().is_server_error() => None,
            _ if self.0 <= 1 => None,
            _ => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
        }
    }

    fn clone_request(&mut self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        Some(request.clone())
    }
}
