//! Key computation for 2 KB and 200 KB chat bodies, and the hit path against the bare
//! service, in one run.
//!
//! ```sh
//! cargo bench -p brownout-cache --bench cache
//! ```

use std::{convert::Infallible, future::Ready, hint::black_box, time::Duration};

use brownout_cache::{Cache, CacheConfig, Mode};
use brownout_core::Body;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceExt};

fn chat(size: usize) -> Bytes {
    let turn = r#"{"role":"user","content":"Tell me about the history of the printing press in Europe, and why it mattered so much for science."},"#;
    let mut messages = String::from("[");
    for _ in 0..(size / turn.len()).max(1) {
        messages.push_str(turn);
    }
    messages.pop();
    messages.push(']');
    Bytes::from(format!(
        r#"{{"model":"claude-haiku-4-5","max_tokens":1024,"temperature":0.2,"messages":{messages}}}"#
    ))
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "sk-ant-bench")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(body.clone()))
        .unwrap()
}

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"type":"message","content":[{"type":"text","text":"Paris."}]}"#,
    )))))
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The key is computed on every request, hit or miss: a miss in fresh-hit mode
    // against an upstream answering 500 (never stored) measures it with one call.
    let mut group = c.benchmark_group("key_and_miss");
    for (label, size) in [("2KB", 2 * 1024), ("200KB", 200 * 1024)] {
        let body = chat(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let bare = service_fn(ok::<Full<Bytes>>);
        group.bench_with_input(BenchmarkId::new("bare service", label), &body, |b, body| {
            b.iter(|| rt.block_on(bare.oneshot(black_box(request(body)))).unwrap())
        });
        let cache = Cache::new(
            service_fn(|_: Request<Body>| async {
                Response::builder()
                    .status(500)
                    .body(Full::new(Bytes::new()))
            }),
            CacheConfig::new().mode(Mode::FreshHit),
        );
        group.bench_with_input(
            BenchmarkId::new("brownout cache, miss", label),
            &body,
            |b, body| {
                b.iter(|| {
                    rt.block_on(cache.clone().oneshot(black_box(request(body))))
                        .unwrap()
                })
            },
        );
        let hits = Cache::new(
            service_fn(ok::<Body>),
            CacheConfig::new()
                .mode(Mode::FreshHit)
                .ttl(Duration::from_secs(3600)),
        );
        rt.block_on(hits.clone().oneshot(request(&body))).unwrap();
        group.bench_with_input(
            BenchmarkId::new("brownout cache, hit", label),
            &body,
            |b, body| {
                b.iter(|| {
                    rt.block_on(hits.clone().oneshot(black_box(request(body))))
                        .unwrap()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(cache_benches, benches);
criterion_main!(cache_benches);
