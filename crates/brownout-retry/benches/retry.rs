//! The retry layer on the success path, against the bare service and tower's own
//! `Retry` with an equivalent policy (3 attempts, retry on 5xx), in one run.
//!
//! ```sh
//! cargo bench -p brownout-retry --bench retry
//! ```

use std::{convert::Infallible, future::Ready, hint::black_box, time::Duration};

use brownout_core::body::PrefixedBody;
use brownout_retry::{Backoff, Retry, RetryConfig};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{retry::Policy, service_fn, ServiceExt};

/// A request like a short chat completion (1 KiB of JSON).
fn request() -> Request<Full<Bytes>> {
    static BODY: [u8; 1024] = [b'x'; 1024];
    Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-bench")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from_static(&BODY)))
        .unwrap()
}

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
}

/// tower's retry with what a user would write to match brownout's defaults: up to 3
/// attempts, retry on 5xx, the request cloned for each attempt.
#[derive(Clone)]
struct Attempts(usize);

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

fn success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("success_path");

    let bare = service_fn(ok::<Full<Bytes>>);
    group.bench_function("bare service", |b| {
        b.iter(|| rt.block_on(bare.oneshot(black_box(request()))).unwrap())
    });

    let tower_retry = tower::retry::Retry::new(Attempts(3), service_fn(ok::<Full<Bytes>>));
    group.bench_function("tower::retry::Retry", |b| {
        b.iter(|| {
            rt.block_on(tower_retry.clone().oneshot(black_box(request())))
                .unwrap()
        })
    });

    let backoff = Backoff::full_jitter(Duration::from_millis(500), Duration::from_secs(8)).unwrap();
    let equivalent = Retry::new(
        service_fn(ok::<PrefixedBody<Full<Bytes>>>),
        RetryConfig::new()
            .max_attempts(3)
            .backoff(backoff)
            .no_budget(),
    );
    group.bench_function("brownout Retry (no budget)", |b| {
        b.iter(|| {
            rt.block_on(equivalent.clone().oneshot(black_box(request())))
                .unwrap()
        })
    });

    let defaults = Retry::new(
        service_fn(ok::<PrefixedBody<Full<Bytes>>>),
        RetryConfig::new(),
    );
    group.bench_function("brownout Retry (defaults, with budget)", |b| {
        b.iter(|| {
            rt.block_on(defaults.clone().oneshot(black_box(request())))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
