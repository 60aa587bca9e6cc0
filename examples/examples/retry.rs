//! Retry at work against an in-process upstream that is overloaded part of the time.
//!
//! The upstream answers like an overloaded Anthropic API: a 529 `overloaded_error` for
//! 60 % of requests (seeded, so every run is the same), with `retry-after-ms` on some of
//! them, and a 400 for requests without a model. The same 50 requests go through a
//! naive client (one attempt) and through brownout's retry layer.
//!
//! ```sh
//! cargo run -p examples --example retry
//! ```

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use brownout::{
    event::Event,
    retry::{Attempts, Backoff, RetryConfig, RetryEvent, RetryLayer},
    Body, BoxError,
};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
const INVALID: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"model: Field required"}}"#;
const REQUESTS: usize = 50;

/// The flaky upstream: counts every request it receives.
fn upstream(
    calls: Arc<AtomicU32>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(2026)));
    service_fn(move |request: Request<Body>| {
        calls.fetch_add(1, Ordering::Relaxed);
        let (overloaded, hinted) = {
            let mut rng = rng.lock().unwrap();
            (rng.f64() < 0.6, rng.bool())
        };
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let response = if !body.windows(7).any(|w| w == b"\"model\"") {
                Response::builder().status(400).body(Body::from(INVALID))?
            } else if overloaded {
                let mut response = Response::builder().status(529);
                if hinted {
                    response = response.header("retry-after-ms", "150");
                }
                response.body(Body::from(OVERLOADED))?
            } else {
                let answer = r#"{"type":"message","role":"assistant","content":[{"type":"text","text":"Hello!"}]}"#;
                Response::builder().status(200).body(Body::from(answer))?
            };
            Ok::<_, BoxError>(response)
        }
    })
}

fn request(i: usize) -> Request<Body> {
    // Every tenth request is malformed (no model): it must never be retried.
    let body = if i % 10 == 9 {
        r#"{"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#
    };
    Request::post("/v1/messages")
        .header("x-api-key", "sk-ant-demo")
        .body(Body::from(body))
        .expect("a valid request")
}

#[derive(Default)]
struct Tally {
    ok: usize,
    overloaded: usize,
    client_error: usize,
    other: usize,
    attempts_max: u32,
}

async fn drive<S>(client: S) -> Tally
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let client = client.clone();
        tasks.spawn(async move { client.oneshot(request(i)).await });
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("no task panics") {
            Ok(response) => {
                let attempts = Attempts::of(response.extensions());
                tally.attempts_max = tally.attempts_max.max(attempts);
                match response.status().as_u16() {
                    200 => tally.ok += 1,
                    529 => tally.overloaded += 1,
                    400..=499 => tally.client_error += 1,
                    _ => tally.other += 1,
                }
            }
            Err(_) => tally.other += 1,
        }
    }
    tally
}

/// A client with no retry, for comparison: the same service shape, one attempt.
fn naive_config() -> RetryConfig {
    RetryConfig::new().max_attempts(1)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!(
        "{REQUESTS} requests to an upstream that answers 529 to 60 % of them (5 are malformed)\n"
    );

    let naive_calls = Arc::new(AtomicU32::new(0));
    let naive = ServiceBuilder::new()
        .layer(RetryLayer::new(naive_config()))
        .service(upstream(naive_calls.clone()));
    let naive = drive(naive).await;

    let retry_calls = Arc::new(AtomicU32::new(0));
    let retries_logged = Arc::new(AtomicU32::new(0));
    let logged = retries_logged.clone();
    let config = RetryConfig::new()
        .max_attempts(6)
        .backoff(Backoff::full_jitter(
            Duration::from_millis(100),
            Duration::from_secs(2),
        )?)
        .seed(7)
        .listener(move |event: &Event| {
            if let Some(RetryEvent::Retrying {
                attempt,
                delay,
                outcome,
            }) = event.data::<RetryEvent>()
            {
                if logged.fetch_add(1, Ordering::Relaxed) < 5 {
                    println!("  retry: attempt {attempt} was {outcome}, waiting {delay:?}");
                }
            }
        });
    let with_retry = ServiceBuilder::new()
        .layer(RetryLayer::new(config))
        .service(upstream(retry_calls.clone()));
    println!("first few decisions of the retry layer:");
    let retried = drive(with_retry).await;
    println!(
        "  … {} retries in all\n",
        retries_logged.load(Ordering::Relaxed)
    );

    println!(
        "{:<22} {:>6} {:>11} {:>13} {:>15} {:>13}",
        "client", "200 OK", "529 to user", "400 to user", "upstream calls", "max attempts"
    );
    for (name, tally, calls) in [
        ("naive (one attempt)", naive, naive_calls),
        ("brownout retry", retried, retry_calls),
    ] {
        println!(
            "{:<22} {:>6} {:>11} {:>13} {:>15} {:>13}",
            name,
            tally.ok,
            tally.overloaded,
            tally.client_error,
            calls.load(Ordering::Relaxed),
            tally.attempts_max
        );
        assert_eq!(tally.other, 0, "no transport errors in this demo");
    }
    println!("\nThe malformed requests got their 400 at once, never retried.");
    Ok(())
}
