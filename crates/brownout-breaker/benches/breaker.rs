//! The circuit breaker on the success path against the bare service and against
//! tower-resilience's circuit breaker, on one thread and contended from several tasks
//! on a two-worker multi-thread runtime (the machine has two cores), in one run.
//!
//! ```sh
//! cargo bench -p brownout-breaker --bench breaker
//! ```
//!
//! For callgrind, `BREAKER_COUNT=bare|host|model|resilience BREAKER_N=n` runs `n` calls
//! of one variant on the one-thread runtime (after one untimed call) and exits; the
//! cost of a call is the difference of two counts over the difference of their `n`:
//!
//! ```sh
//! cargo bench -p brownout-breaker --bench breaker --no-run
//! bin=$(ls -t $CARGO_TARGET_DIR/release/deps/breaker-* | grep -v '\.d$' | head -1)
//! for v in bare host model resilience; do for n in 1000 11000; do
//!   echo "$v $n $(BREAKER_COUNT=$v BREAKER_N=$n valgrind --tool=callgrind \
//!     --callgrind-out-file=/dev/null $bin 2>&1 | grep Collected)"
//! done; done
//! ```

use std::{
    convert::Infallible,
    future::Ready,
    hint::black_box,
    time::{Duration, Instant},
};

use brownout_breaker::{BreakerConfig, CircuitBreaker, FailurePolicy, Window};
use brownout_core::Body;
use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceExt};

const TASKS: u64 = 8;

fn request() -> Request<Full<Bytes>> {
    Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Hello"}]}"#,
        )))
        .unwrap()
}

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
}

fn policy() -> FailurePolicy {
    FailurePolicy::failure_rate(0.5, Window::Count(100), 100).unwrap()
}

/// Runs `iters` calls split over `TASKS` tasks on a multi-thread runtime.
fn contended<S, B>(rt: &tokio::runtime::Runtime, service: &S, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: Send + 'static,
{
    let per_task = iters.div_ceil(TASKS);
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        black_box(service.clone().oneshot(request()).await.unwrap());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

fn success_path(c: &mut Criterion) {
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();

    let bare = service_fn(ok::<Full<Bytes>>);
    let by_model = single.block_on(async {
        CircuitBreaker::new(
            service_fn(ok::<Body>),
            BreakerConfig::new().policy(policy()),
        )
    });
    let by_host = single.block_on(async {
        CircuitBreaker::new(
            service_fn(ok::<Body>),
            BreakerConfig::new().policy(policy()).key_by_host(),
        )
    });
    let resilience = tower::Layer::layer(
        &tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
            .failure_rate_threshold(0.5)
            .sliding_window_size(100)
            .minimum_number_of_calls(100)
            .build()
            .unwrap(),
        service_fn(ok::<Full<Bytes>>),
    );

    let mut group = c.benchmark_group("one_thread");
    group.bench_function("bare service", |b| {
        b.iter(|| single.block_on(bare.oneshot(black_box(request()))).unwrap())
    });
    group.bench_function("brownout, keyed by host", |b| {
        b.iter(|| {
            single
                .block_on(by_host.clone().oneshot(black_box(request())))
                .unwrap()
        })
    });
    group.bench_function("brownout, keyed by model (default)", |b| {
        b.iter(|| {
            single
                .block_on(by_model.clone().oneshot(black_box(request())))
                .unwrap()
        })
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| {
            single
                .block_on(resilience.clone().oneshot(black_box(request())))
                .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("contended_8_tasks_2_threads");
    group.bench_function("bare service", |b| {
        b.iter_custom(|n| contended(&multi, &bare, n))
    });
    group.bench_function("brownout, keyed by host", |b| {
        b.iter_custom(|n| contended(&multi, &by_host, n))
    });
    group.bench_function("brownout, keyed by model (default)", |b| {
        b.iter_custom(|n| contended(&multi, &by_model, n))
    });
    group.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| contended(&multi, &resilience, n))
    });
    group.finish();
}

/// `n` calls of one variant on one thread, for callgrind (see the module docs).
fn count(variant: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    fn run<S, B>(rt: &tokio::runtime::Runtime, service: S, n: usize)
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
        S::Error: std::fmt::Debug,
    {
        for _ in 0..=n {
            black_box(rt.block_on(service.clone().oneshot(request())).unwrap());
        }
    }
    match variant {
        "bare" => run(&rt, service_fn(ok::<Full<Bytes>>), n),
        "host" => {
            let service = rt.block_on(async {
                CircuitBreaker::new(
                    service_fn(ok::<Body>),
                    BreakerConfig::new().policy(policy()).key_by_host(),
                )
            });
            run(&rt, service, n)
        }
        "model" => {
            let service = rt.block_on(async {
                CircuitBreaker::new(
                    service_fn(ok::<Body>),
                    BreakerConfig::new().policy(policy()),
                )
            });
            run(&rt, service, n)
        }
        _ => {
            let service = tower::Layer::layer(
                &tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
                    .failure_rate_threshold(0.5)
                    .sliding_window_size(100)
                    .minimum_number_of_calls(100)
                    .build()
                    .unwrap(),
                service_fn(ok::<Full<Bytes>>),
            );
            run(&rt, service, n)
        }
    }
}

criterion_group!(benches, success_path);

fn main() {
    if let Ok(variant) = std::env::var("BREAKER_COUNT") {
        let n = std::env::var("BREAKER_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        return count(&variant, n);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
