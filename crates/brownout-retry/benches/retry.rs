//! The retry layer on the success path, against the bare service and tower's own
//! `Retry` with an equivalent policy (3 attempts, retry on 5xx), in one run.
//!
//! ```sh
//! cargo bench -p brownout-retry --bench retry
//! ```

use std::{hint::black_box, time::Duration};

use brownout_core::Body;
use brownout_retry::{Backoff, Retry, RetryConfig};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::Full;
use tower::{service_fn, ServiceExt};

mod common;
use common::{ok, request, Attempts};

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
        service_fn(ok::<Body>),
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

    let defaults = Retry::new(service_fn(ok::<Body>), RetryConfig::new());
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
