//! Key computation for 2 KB and 200 KB chat bodies, and the hit path against the bare
//! service, in one run.
//!
//! ```sh
//! cargo bench -p brownout-cache --bench cache
//! ```
//!
//! For callgrind, `CACHE_COUNT=hit|miss CACHE_N=n` runs `n` calls of one path on a
//! 2 KB body (after one call that stores the entry) and exits; the cost of a call is
//! the difference of two counts over the difference of their `n`:
//!
//! ```sh
//! cargo bench -p brownout-cache --bench cache --no-run
//! bin=$(ls -t target/release/deps/cache-* | grep -v '\.d$' | head -1)
//! for path in hit miss; do for n in 200 2200; do
//!   echo "$path $n $(CACHE_COUNT=$path CACHE_N=$n valgrind --tool=callgrind \
//!     --callgrind-out-file=/dev/null $bin 2>&1 | grep Collected)"
//! done; done
//! ```

use std::{convert::Infallible, future::Ready, hint::black_box, time::Duration};

use brownout_cache::{Cache, CacheConfig, Mode};
use brownout_core::Body;
use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
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

/// `n` calls of the hit or miss path, for callgrind (see the module docs).
fn count(path: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let body = chat(2 * 1024);
    match path {
        "hit" => {
            let hits = Cache::new(
                service_fn(ok::<Body>),
                CacheConfig::new()
                    .mode(Mode::FreshHit)
                    .ttl(Duration::from_secs(3600)),
            );
            rt.block_on(hits.clone().oneshot(request(&body))).unwrap();
            for _ in 0..n {
                black_box(rt.block_on(hits.clone().oneshot(request(&body))).unwrap());
            }
        }
        _ => {
            let misses = Cache::new(
                service_fn(|_: Request<Body>| async {
                    Response::builder()
                        .status(500)
                        .body(Full::new(Bytes::new()))
                }),
                CacheConfig::new().mode(Mode::FreshHit),
            );
            for _ in 0..n {
                black_box(rt.block_on(misses.clone().oneshot(request(&body))).unwrap());
            }
        }
    }
}

criterion_group!(cache_benches, benches);

fn main() {
    if let Ok(path) = std::env::var("CACHE_COUNT") {
        let n = std::env::var("CACHE_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        return count(&path, n);
    }
    cache_benches();
    Criterion::default().configure_from_args().final_summary();
}
