//! The queue layer's success path with no key unavailable, against the bare service,
//! and over a breaker keyed by model against the breaker alone (the stack reads the
//! request facts once either way), in one run.
//!
//! Wall time, with criterion:
//!
//! ```sh
//! cargo bench -p brownout-queue --bench queue
//! ```
//!
//! Instructions, with callgrind (the cost of one call is the difference between the
//! two counts divided by 2,000):
//!
//! ```sh
//! cargo bench -p brownout-queue --bench queue --no-run
//! bin=$(ls -t target/release/deps/queue-* | grep -v '\.d$' | head -1)
//! for v in bare queue breaker queue-breaker; do for n in 200 2200; do
//!   echo "$v $n $(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     $bin count $v $n 2>&1 | grep Collected)"
//! done; done
//! ```

use std::{convert::Infallible, future::Ready, hint::black_box};

use brownout_breaker::{BreakerConfig, CircuitBreakerLayer};
use brownout_core::Body;
use brownout_queue::{QueueConfig, QueueLayer};
use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// The request of the workspace's `stack_instructions` bench: a `model`, `max_tokens`
/// and one 2 KB user message.
fn body() -> Bytes {
    let start =
        r#"{"model":"claude-opus-4-1","max_tokens":1024,"messages":[{"role":"user","content":""#;
    let end = r#""}]}"#;
    let mut text = String::with_capacity(2048);
    text.push_str(start);
    while text.len() + end.len() < 2048 {
        text.push_str("Tell me more about brownouts. ");
    }
    text.truncate(2048 - end.len());
    text.push_str(end);
    Bytes::from(text)
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-bench")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(body.clone()))
        .unwrap()
}

const ANSWER: &[u8] = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-1","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}"#;

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(ANSWER)))))
}

/// One call and its whole body.
async fn once<S, B>(service: &S, body: &Bytes) -> u16
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service
        .clone()
        .oneshot(black_box(request(body)))
        .await
        .unwrap();
    let status = response.status().as_u16();
    black_box(response.into_body().collect().await.unwrap());
    status
}

macro_rules! variant {
    ($name:expr, |$service:ident| $run:expr) => {
        match $name {
            "bare" => {
                let $service = service_fn(ok::<Full<Bytes>>);
                $run
            }
            "queue" => {
                let $service = ServiceBuilder::new()
                    .layer(QueueLayer::new(QueueConfig::new()))
                    .service(service_fn(ok::<Body>));
                $run
            }
            "breaker" => {
                let $service = ServiceBuilder::new()
                    .layer(CircuitBreakerLayer::new(BreakerConfig::new()))
                    .service(service_fn(ok::<Body>));
                $run
            }
            "queue-breaker" => {
                let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
                let $service = ServiceBuilder::new()
                    .layer(QueueLayer::new(
                        QueueConfig::new().health(breakers.handle()),
                    ))
                    .layer(breakers)
                    .service(service_fn(ok::<Body>));
                $run
            }
            other => panic!("unknown variant {other}"),
        }
    };
}

const VARIANTS: [&str; 4] = ["bare", "queue", "breaker", "queue-breaker"];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let body = body();
    if args.first().map(String::as_str) == Some("count") {
        let name = args.get(1).map_or("queue", String::as_str);
        let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200);
        let status = variant!(name, |service| rt.block_on(async {
            let mut status = 0;
            for _ in 0..n {
                status = once(&service, &body).await;
            }
            status
        }));
        assert_eq!(status, 200, "{name}");
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("success_path");
    for name in VARIANTS {
        variant!(name, |service| {
            assert_eq!(rt.block_on(once(&service, &body)), 200, "{name}");
            group.bench_function(name, |b| b.iter(|| rt.block_on(once(&service, &body))));
        });
    }
    group.finish();
    criterion.final_summary();
}
