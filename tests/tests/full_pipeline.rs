//! Fallback over breaker over retry: the README's pipeline, against a scripted upstream.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout::{
    breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, OpenDuration},
    fallback::{FallbackConfig, FallbackLayer, ServedBy, Target},
    retry::{Backoff, RetryConfig, RetryLayer},
    Body, BoxError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn an_outage_of_the_primary_opens_its_breaker_and_the_cascade_skips_it() {
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = sent.clone();
    // Opus is down; sonnet answers.
    let upstream = service_fn(move |request: Request<Body>| {
        let log = log.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body)?;
            let model = json["model"].as_str().unwrap_or_default().to_owned();
            log.lock().unwrap().push(model.clone());
            let status = if model == "claude-opus-4-1" { 529 } else { 200 };
            Ok::<_, BoxError>(Response::builder().status(status).body(Full::new(body))?)
        }
    });
    let breakers = CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::consecutive(2).unwrap())
            .open_duration(OpenDuration::Fixed(Duration::from_secs(60))),
    );
    let cascade = FallbackConfig::new([
        Target::new("claude-opus-4-1"),
        Target::new("claude-sonnet-4-5"),
    ])
    .unwrap()
    .health(breakers.handle());
    let retry = RetryConfig::new()
        .max_attempts(2)
        .no_budget()
        .seed(9)
        .backoff(
            Backoff::exponential(Duration::from_millis(100), Duration::from_millis(100)).unwrap(),
        );
    let client = ServiceBuilder::new()
        .layer(FallbackLayer::new(cascade))
        .layer(breakers)
        .layer(RetryLayer::new(retry))
        .service(upstream);
    let request = || {
        Request::post("https://api.anthropic.com/v1/messages")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"claude-opus-4-1","max_tokens":64,"messages":[]}"#,
            )))
            .unwrap()
    };

    // Two calls: opus is tried (twice each, by the retry layer), then sonnet answers.
    for _ in 0..2 {
        let response = client.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.extensions().get::<ServedBy>().unwrap().model(),
            "claude-sonnet-4-5"
        );
    }
    let opus_attempts = |sent: &[String]| sent.iter().filter(|m| *m == "claude-opus-4-1").count();
    assert_eq!(opus_attempts(&sent.lock().unwrap()), 4);

    // Opus's breaker is open now: the cascade goes straight to sonnet.
    let response = client.clone().oneshot(request()).await.unwrap();
    assert_eq!(
        response.extensions().get::<ServedBy>().unwrap().position(),
        1
    );
    assert_eq!(
        opus_attempts(&sent.lock().unwrap()),
        4,
        "nothing more sent to opus"
    );
}
