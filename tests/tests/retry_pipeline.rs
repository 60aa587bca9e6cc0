//! The retry layer composed with other tower layers, through the facade crate.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use brownout::{
    retry::{Attempts, Backoff, RetryConfig, RetryLayer},
    Body, BoxError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{service_fn, timeout::TimeoutLayer, ServiceBuilder, ServiceExt};

fn request() -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o","messages":[]}"#,
        )))
        .unwrap()
}

/// tower's own timeout layer inside the retry layer: its `Elapsed` error is classified
/// as a timeout by brownout-core, so the hung attempt is retried.
#[tokio::test(start_paused = true)]
async fn tower_timeouts_inside_are_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = service_fn(move |request: Request<Body>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                std::future::pending::<()>().await;
            }
            let body = request.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::new(Full::new(body)))
        }
    });
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryConfig::new().seed(3).backoff(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1)).unwrap(),
        )))
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(upstream);

    let start = Instant::now();
    let response = client.oneshot(request()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(2050));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, &br#"{"model":"gpt-4o","messages":[]}"#[..]);
}

/// Two retry layers stacked (as a fallback cascade will wrap one per target): the outer
/// one buffers an already-buffered body and replays it unchanged.
#[tokio::test(start_paused = true)]
async fn stacked_retry_layers_replay_the_same_bytes() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let upstream = service_fn(move |request: Request<Body>| {
        let record = record.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let mut seen = record.lock().unwrap();
            seen.push(body);
            let status = if seen.len() < 4 { 503 } else { 200 };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))?,
            )
        }
    });
    let fast = || {
        RetryConfig::new()
            .no_budget()
            .backoff(
                Backoff::exponential(Duration::from_millis(10), Duration::from_millis(10)).unwrap(),
            )
            .max_attempts(2)
    };
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(fast()))
        .layer(RetryLayer::new(fast()))
        .service(upstream);
    let response = client.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen
        .iter()
        .all(|b| b == &br#"{"model":"gpt-4o","messages":[]}"#[..]));
}
