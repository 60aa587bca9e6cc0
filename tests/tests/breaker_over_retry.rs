//! The recommended order: the breaker outside the retry layer.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use brownout::{
    breaker::{BreakerConfig, CircuitBreakerLayer, CircuitOpen, FailurePolicy, OpenDuration},
    retry::{Backoff, RetryConfig, RetryLayer},
    Body, BoxError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_retried_call_counts_once_and_an_open_breaker_skips_the_retries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = service_fn(move |_: Request<Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(529)
                    .body(Full::new(Bytes::from_static(
                        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                    )))?,
            )
        }
    });
    let breakers = CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::consecutive(2).unwrap())
            .open_duration(OpenDuration::Fixed(Duration::from_secs(30))),
    );
    let handle = breakers.handle();
    let client = ServiceBuilder::new()
        .layer(breakers)
        .layer(RetryLayer::new(
            RetryConfig::new()
                .max_attempts(3)
                .no_budget()
                .seed(1)
                .backoff(
                    Backoff::exponential(Duration::from_millis(10), Duration::from_millis(10))
                        .unwrap(),
                ),
        ))
        .service(upstream);
    let request = || {
        Request::post("https://api.anthropic.com/v1/messages")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"claude-opus-4-1"}"#,
            )))
            .unwrap()
    };

    for _ in 0..2 {
        let response = client.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), 529);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "two calls of three attempts each"
    );
    let snapshot = handle.state("claude-opus-4-1").unwrap();
    assert_eq!(snapshot.total_calls, 2, "each retried call counted once");

    let error = client.clone().oneshot(request()).await.unwrap_err();
    assert!(error.downcast_ref::<CircuitOpen>().is_some());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "no attempt reached the upstream"
    );
}
