//! The success path of each layer and of whole stacks, for counting instructions with
//! callgrind: wall-clock numbers on a shared machine are noisy, instruction counts are
//! not.
//!
//! ```sh
//! cargo bench -p tests --bench stack_instructions --no-run
//! bin=$(ls -t target/release/deps/stack_instructions-* | grep -v '\.d$' | head -1)
//! for v in bare tower-retry retry breaker-host breaker-model readme five-hit; do
//!   for size in 2k 200k; do for n in 200 2200; do
//!     echo "$v $size $n $(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       $bin $v $size $n 2>&1 | grep Collected)"
//!   done; done
//! done
//! ```
//!
//! The cost of one call is the difference between the two counts divided by 2,000.
//! Every variant sends the same LLM-shaped request (a `model`, `max_tokens`, and one
//! long user message of 2 KB or 200 KB, the body in one `Bytes`) to an upstream that
//! answers at once. `five-hit` is degrade > cache (fresh-hit mode, the entry already
//! stored) > fallback > breaker by model > retry. Run by `cargo bench` with no
//! arguments, it runs each variant briefly and checks that they all answer 200.

use std::{convert::Infallible, future::Ready, hint::black_box, time::Duration};

use brownout::{
    breaker::{BreakerConfig, CircuitBreakerLayer},
    cache::{CacheConfig, Mode},
    degrade::DegradeConfig,
    fallback::{FallbackConfig, Target},
    retry::{Backoff, RetryConfig},
    Body, ServiceBuilderExt,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{retry::Policy, service_fn, ServiceBuilder, ServiceExt};

fn body(size: usize) -> Bytes {
    let start =
        r#"{"model":"claude-opus-4-1","max_tokens":1024,"messages":[{"role":"user","content":""#;
    let end = r#""}]}"#;
    let mut text = String::with_capacity(size);
    text.push_str(start);
    while text.len() + end.len() < size {
        text.push_str("Tell me more about brownouts. ");
    }
    text.truncate(size - end.len());
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

/// tower's retry, as a user would write it to match brownout's defaults.
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

fn retry() -> RetryConfig {
    RetryConfig::new()
        .max_attempts(3)
        .backoff(Backoff::full_jitter(Duration::from_millis(500), Duration::from_secs(8)).unwrap())
        .no_budget()
}

fn cascade(breakers: &CircuitBreakerLayer) -> FallbackConfig {
    FallbackConfig::new([
        Target::new("claude-opus-4-1"),
        Target::new("claude-sonnet-4-5"),
        Target::new("claude-haiku-4-5").max_tokens(8192),
    ])
    .unwrap()
    .health(breakers.handle())
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let variants: Vec<String> = match args.next() {
        Some(v) => vec![v],
        None => [
            "bare",
            "tower-retry",
            "retry",
            "breaker-host",
            "breaker-model",
            "readme",
            "five-hit",
        ]
        .map(String::from)
        .into(),
    };
    let size = match args.next().as_deref() {
        Some("200k") => 200 * 1024,
        _ => 2 * 1024,
    };
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let body = body(size);
    for variant in variants {
        let status = rt.block_on(run(&variant, &body, n));
        assert_eq!(status, 200, "{variant}");
    }
}

async fn run(variant: &str, body: &Bytes, n: usize) -> u16 {
    macro_rules! drive {
        ($service:expr) => {{
            let service = $service;
            let mut status = 0;
            for _ in 0..n {
                let response = service
                    .clone()
                    .oneshot(black_box(request(body)))
                    .await
                    .unwrap();
                status = response.status().as_u16();
                black_box(response.into_body().collect().await.unwrap());
            }
            status
        }};
    }
    match variant {
        "bare" => drive!(service_fn(ok::<Full<Bytes>>)),
        "tower-retry" => drive!(tower::retry::Retry::new(
            Attempts(3),
            service_fn(ok::<Full<Bytes>>)
        )),
        "retry" => drive!(ServiceBuilder::new()
            .retry_with_jitter(retry())
            .service(service_fn(ok::<Body>))),
        "breaker-host" => drive!(ServiceBuilder::new()
            .circuit_breaker(CircuitBreakerLayer::new(BreakerConfig::new().key_by_host()))
            .service(service_fn(ok::<Body>))),
        "breaker-model" => drive!(ServiceBuilder::new()
            .circuit_breaker(CircuitBreakerLayer::new(BreakerConfig::new()))
            .service(service_fn(ok::<Body>))),
        "readme" => {
            let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
            drive!(ServiceBuilder::new()
                .model_fallback(cascade(&breakers))
                .circuit_breaker(breakers)
                .retry_with_jitter(retry())
                .service(service_fn(ok::<Body>)))
        }
        "five-hit" => {
            let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
            let service = ServiceBuilder::new()
                .degrade(DegradeConfig::new([]).unwrap())
                .response_cache(CacheConfig::new().mode(Mode::FreshHit))
                .model_fallback(cascade(&breakers))
                .circuit_breaker(breakers)
                .retry_with_jitter(retry())
                .service(service_fn(ok::<Body>));
            // Store the entry: every call below is a fresh hit.
            let first = service.clone().oneshot(request(body)).await.unwrap();
            let _ = first.into_body().collect().await;
            drive!(service)
        }
        other => panic!("unknown variant {other}"),
    }
}
