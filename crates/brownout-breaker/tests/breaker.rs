//! Behaviour of the circuit breaker layer, in paused tokio time.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use brownout_breaker::{
    BreakerConfig, BreakerEntry, BreakerEvent, BreakerHandle, BreakerStore, CircuitBreaker,
    CircuitBreakerLayer, CircuitOpen, CircuitState, FailurePolicy, LocalStore, OnOpen,
    OpenDuration, TransitionReason, Window,
};
use brownout_core::{
    body::BodyLimits,
    classify::{classify_error, recorded, DefaultClassifier, OutcomeKind},
    error::{find, BrokenBody},
    event::Event,
    health::Health,
    provider::ErrorKind,
    testing::{Step, Upload, UploadEnd, Upstream},
    BoxError,
};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

/// The scripted upstream of these tests: it answers `{}` unless scripted otherwise.
fn upstream() -> Upstream {
    Upstream::new().body_with(|_, _| "{}".into())
}

/// A status with a `retry-after` of this many seconds.
fn retry_after(status: u16, secs: u64) -> Step {
    Step::Answer(status, vec![("retry-after", secs.to_string())], "{}")
}

fn request(model: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"model":"{model}","max_tokens":16,"messages":[]}}"#);
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "sk-secret")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

type Client = CircuitBreaker<Upstream>;

fn breaker(config: BreakerConfig) -> (Client, Upstream, BreakerHandle) {
    let upstream = upstream();
    let service = CircuitBreaker::new(upstream.clone(), config.seed(5));
    let handle = service.handle();
    (service, upstream, handle)
}

async fn send(client: &Client, model: &str) -> Result<u16, BoxError> {
    let response = client.clone().oneshot(request(model)).await?;
    Ok(response.status().as_u16())
}

fn open_error(result: Result<u16, BoxError>) -> CircuitOpen {
    let error = result.expect_err("refused");
    error
        .downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen error")
        .clone()
}

fn state(handle: &BreakerHandle, key: &str) -> CircuitState {
    handle.state(key).expect("tracked").state
}

fn recorder() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(&Event) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |e: &Event| {
        sink.lock().unwrap().push(e.clone())
    })
}

fn transitions(events: &Mutex<Vec<Event>>) -> Vec<(CircuitState, CircuitState, TransitionReason)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e.data::<BreakerEvent>() {
            Some(BreakerEvent::CircuitStateChanged {
                from, to, reason, ..
            }) => Some((*from, *to, *reason)),
            _ => None,
        })
        .collect()
}

const M: &str = "claude-sonnet-4-5";
const SECOND: Duration = Duration::from_secs(1);

fn consecutive(n: u32) -> BreakerConfig {
    BreakerConfig::new()
        .policy(FailurePolicy::consecutive(n).unwrap())
        .open_duration(OpenDuration::Fixed(10 * SECOND))
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_walk_every_transition() {
    let (events, listener) = recorder();
    let (client, upstream, handle) = breaker(consecutive(3).listener(listener));
    // Two failures, a success: the streak starts again.
    upstream.script(M, [Step::Status(529), Step::Status(503), Step::Status(200)]);
    for _ in 0..3 {
        send(&client, M).await.unwrap();
    }
    assert_eq!(state(&handle, M), CircuitState::Closed);
    // Three in a row: open.
    upstream.script(M, [Step::Status(529), Step::Status(500), Step::Status(502)]);
    for _ in 0..3 {
        send(&client, M).await.unwrap();
    }
    assert_eq!(state(&handle, M), CircuitState::Open);
    let calls = upstream.attempts_of(M);
    let open = open_error(send(&client, M).await);
    assert_eq!(open.retry_after(), Some(10 * SECOND));
    assert_eq!(
        upstream.attempts_of(M),
        calls,
        "refused without a call upstream"
    );

    // After the open time, one probe; it fails: open again.
    tokio::time::advance(10 * SECOND).await;
    upstream.script(M, [Step::Status(529)]);
    assert_eq!(send(&client, M).await.unwrap(), 529);
    assert_eq!(state(&handle, M), CircuitState::Open);
    // After the next open time, the probe succeeds: closed.
    tokio::time::advance(10 * SECOND).await;
    assert_eq!(send(&client, M).await.unwrap(), 200);
    assert_eq!(state(&handle, M), CircuitState::Closed);

    use CircuitState::*;
    assert_eq!(
        transitions(&events),
        [
            (Closed, Open, TransitionReason::ConsecutiveFailures(3)),
            (Open, HalfOpen, TransitionReason::OpenElapsed),
            (HalfOpen, Open, TransitionReason::ProbeFailed),
            (Open, HalfOpen, TransitionReason::OpenElapsed),
            (HalfOpen, Closed, TransitionReason::ProbesSucceeded),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn client_errors_never_trip_and_never_count() {
    let (client, upstream, handle) = breaker(consecutive(2));
    upstream.script(M, [400, 401, 403, 404, 413, 422].map(Step::Status));
    upstream.script(M, [Step::Status(529)]);
    for _ in 0..7 {
        send(&client, M).await.unwrap();
    }
    let snapshot = handle.state(M).unwrap();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert_eq!(snapshot.failures, 1, "only the 529 counts");
    assert_eq!(
        snapshot.total_calls, 1,
        "client errors are not counted at all"
    );
}

fn rate(threshold: f64, window: u32, minimum: u32) -> BreakerConfig {
    BreakerConfig::new()
        .policy(FailurePolicy::failure_rate(threshold, Window::Count(window), minimum).unwrap())
        .open_duration(OpenDuration::Fixed(10 * SECOND))
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_needs_the_minimum_number_of_calls() {
    // 100 % failures, but the window must hold 4 calls first.
    let (client, upstream, handle) = breaker(rate(0.5, 10, 4));
    upstream.script(M, vec![Step::Status(503); 4]);
    for _ in 0..3 {
        send(&client, M).await.unwrap();
    }
    let s = handle.state(M).unwrap();
    assert_eq!((s.state, s.failures, s.calls), (CircuitState::Closed, 3, 3));
    send(&client, M).await.unwrap();
    assert_eq!(
        state(&handle, M),
        CircuitState::Open,
        "exactly the minimum trips"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_trips_exactly_at_the_threshold() {
    // 3 of 6 is 50 %: trips. 2 of 6 would not.
    let (client, upstream, handle) = breaker(rate(0.5, 6, 6));
    upstream.script(M, [200, 200, 200, 503, 503].map(Step::Status));
    for _ in 0..5 {
        send(&client, M).await.unwrap();
    }
    assert_eq!(
        state(&handle, M),
        CircuitState::Closed,
        "5 calls are below the minimum"
    );
    upstream.script(M, [Step::Status(503)]);
    send(&client, M).await.unwrap();
    let s = handle.state(M).unwrap();
    assert_eq!(s.state, CircuitState::Open);

    let (client, upstream, handle) = breaker(rate(0.5, 6, 6));
    upstream.script(M, [200, 200, 200, 200, 503, 503].map(Step::Status));
    for _ in 0..6 {
        send(&client, M).await.unwrap();
    }
    let s = handle.state(M).unwrap();
    assert_eq!((s.state, s.failures, s.calls), (CircuitState::Closed, 2, 6));
}

#[tokio::test(start_paused = true)]
async fn a_count_window_forgets_the_oldest_calls() {
    let (client, upstream, handle) = breaker(rate(0.6, 5, 5));
    // Failures first, then successes push them out of the 5-call window.
    upstream.script(M, [503, 503, 200, 200, 200, 200, 200].map(Step::Status));
    for _ in 0..7 {
        send(&client, M).await.unwrap();
    }
    let s = handle.state(M).unwrap();
    assert_eq!((s.state, s.failures, s.calls), (CircuitState::Closed, 0, 5));
    upstream.script(M, [503, 503, 503].map(Step::Status));
    for _ in 0..3 {
        send(&client, M).await.unwrap();
    }
    assert_eq!(
        state(&handle, M),
        CircuitState::Open,
        "3 of the last 5 failed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let config = BreakerConfig::new()
        .policy(FailurePolicy::failure_rate(0.5, Window::Time(10 * SECOND), 4).unwrap());
    let (client, upstream, handle) = breaker(config);
    upstream.script(M, vec![Step::Status(503); 3]);
    for _ in 0..3 {
        send(&client, M).await.unwrap();
    }
    assert_eq!(handle.state(M).unwrap().calls, 3);
    // A whole window later the three failures are gone.
    tokio::time::advance(10 * SECOND).await;
    upstream.script(M, [Step::Status(503)]);
    send(&client, M).await.unwrap();
    let s = handle.state(M).unwrap();
    assert_eq!((s.state, s.failures, s.calls), (CircuitState::Closed, 1, 1));
    // Within the window they add up: 4 calls, all failing.
    upstream.script(M, vec![Step::Status(503); 3]);
    tokio::time::advance(SECOND).await;
    for _ in 0..3 {
        send(&client, M).await.unwrap();
    }
    assert_eq!(state(&handle, M), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count_as_failures_when_configured() {
    let (client, upstream, handle) = breaker(consecutive(2).slow_call(5 * SECOND));
    upstream.script(
        M,
        [Step::Slow(6 * SECOND, 200), Step::Slow(4 * SECOND, 200)],
    );
    send(&client, M).await.unwrap();
    send(&client, M).await.unwrap();
    assert_eq!(
        handle.state(M).unwrap().failures,
        0,
        "the fast success reset the streak"
    );
    upstream.script(
        M,
        [Step::Slow(6 * SECOND, 200), Step::Slow(7 * SECOND, 200)],
    );
    send(&client, M).await.unwrap();
    send(&client, M).await.unwrap();
    assert_eq!(state(&handle, M), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_the_configured_probes() {
    let (client, upstream, handle) =
        breaker(consecutive(1).half_open_probes(2).half_open_successes(2));
    upstream.script(M, [Step::Status(529)]);
    send(&client, M).await.unwrap();
    tokio::time::advance(10 * SECOND).await;

    upstream.script(M, vec![Step::Gate(200); 2]);
    let probes: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, M).await })
        })
        .collect();
    tokio::task::yield_now().await;
    while upstream.attempts_of(M) < 3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(state(&handle, M), CircuitState::HalfOpen);
    // Both probe slots are taken: a third request is refused, with no known delay.
    let refused = open_error(send(&client, M).await);
    assert_eq!(refused.retry_after(), None);
    assert_eq!(upstream.attempts_of(M), 3);
    assert!(!handle.is_available(M));

    upstream.release(2);
    for probe in probes {
        assert_eq!(probe.await.unwrap().unwrap(), 200);
    }
    assert_eq!(state(&handle, M), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_slot_back() {
    let (client, upstream, handle) = breaker(consecutive(1));
    upstream.script(M, [Step::Status(529)]);
    send(&client, M).await.unwrap();
    tokio::time::advance(10 * SECOND).await;
    upstream.script(M, [Step::Gate(200)]);
    let probe = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, M).await })
    };
    while upstream.attempts_of(M) < 2 {
        tokio::task::yield_now().await;
    }
    assert!(!handle.is_available(M));
    probe.abort();
    let _ = probe.await;
    assert!(handle.is_available(M), "the slot is free again");
    assert_eq!(send(&client, M).await.unwrap(), 200);
    assert_eq!(state(&handle, M), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_server_delay_keeps_the_breaker_open_at_least_that_long() {
    let (client, upstream, handle) = breaker(consecutive(2));
    // The first failure asks for 45 s; the open time is 10 s.
    upstream.script(M, [retry_after(429, 45), Step::Status(529)]);
    send(&client, M).await.unwrap();
    send(&client, M).await.unwrap();
    let open = open_error(send(&client, M).await);
    assert_eq!(open.retry_after(), Some(45 * SECOND));
    tokio::time::advance(44 * SECOND).await;
    assert!(send(&client, M).await.is_err(), "still open after 44 s");
    tokio::time::advance(SECOND).await;
    assert_eq!(send(&client, M).await.unwrap(), 200);
    assert_eq!(state(&handle, M), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn growing_open_times_double_with_jitter() {
    let config =
        consecutive(1).open_duration(OpenDuration::growing(4 * SECOND, 60 * SECOND).unwrap());
    let (client, upstream, handle) = breaker(config);
    let mut open_times = Vec::new();
    for _ in 0..4 {
        upstream.script(M, [Step::Status(503)]);
        send(&client, M).await.unwrap();
        let open_for = handle.state(M).unwrap().open_for.unwrap();
        open_times.push(open_for);
        tokio::time::advance(open_for).await;
    }
    for (trip, open_for) in open_times.iter().enumerate() {
        let ceiling = 4 * SECOND * (1 << trip);
        assert!(
            *open_for >= ceiling / 2 && *open_for <= ceiling,
            "trip {trip}: {open_for:?}"
        );
    }
    assert_eq!(handle.state(M).unwrap().trips, 4);
}

/// The example gateway config's breaker (`open_for = "10s"`, `open_for_max = "20s"`,
/// `half_open_successes = 2`): however long the outage, a model that is back is
/// probed again within 20 s, and one lucky answer in the middle of an overload does not
/// close the breaker.
#[tokio::test(start_paused = true)]
async fn open_times_stop_growing_at_the_max_and_one_lucky_probe_does_not_close() {
    let config = consecutive(1)
        .open_duration(OpenDuration::growing(10 * SECOND, 20 * SECOND).unwrap())
        .half_open_successes(2);
    let (client, upstream, handle) = breaker(config);
    upstream.script(M, [Step::Status(529)]);
    send(&client, M).await.unwrap();
    for trip in 1..8 {
        let open_for = handle.state(M).unwrap().open_for.unwrap();
        let ceiling = if trip == 1 { 10 * SECOND } else { 20 * SECOND };
        assert!(
            open_for >= ceiling / 2 && open_for <= ceiling,
            "trip {trip}: {open_for:?}"
        );
        tokio::time::advance(open_for).await;
        // The probe meets the overload again.
        upstream.script(M, [Step::Status(529)]);
        send(&client, M).await.unwrap();
    }
    assert_eq!(handle.state(M).unwrap().trips, 8);

    // A lucky probe, then the overload again: still not closed, open again.
    tokio::time::advance(handle.state(M).unwrap().open_for.unwrap()).await;
    assert_eq!(send(&client, M).await.unwrap(), 200);
    assert_eq!(state(&handle, M), CircuitState::HalfOpen);
    upstream.script(M, [Step::Status(529)]);
    send(&client, M).await.unwrap();
    assert_eq!(state(&handle, M), CircuitState::Open);

    // Two good probes in a row close it.
    tokio::time::advance(handle.state(M).unwrap().open_for.unwrap()).await;
    assert_eq!(send(&client, M).await.unwrap(), 200);
    assert_eq!(send(&client, M).await.unwrap(), 200);
    assert_eq!(state(&handle, M), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn one_models_outage_never_blocks_another() {
    let (client, upstream, handle) = breaker(consecutive(2));
    upstream.script("claude-opus-4-1", vec![Step::Status(529); 2]);
    send(&client, "claude-opus-4-1").await.unwrap();
    send(&client, "claude-opus-4-1").await.unwrap();
    assert!(send(&client, "claude-opus-4-1").await.is_err());
    assert_eq!(send(&client, "claude-haiku-4-5").await.unwrap(), 200);
    assert!(!handle.is_available("claude-opus-4-1"));
    assert!(handle.is_available("claude-haiku-4-5"));
    assert!(handle.is_available("never-seen"));
    let keys: Vec<_> = handle
        .snapshots()
        .iter()
        .map(|s| s.key.to_string())
        .collect();
    assert_eq!(keys, ["claude-haiku-4-5", "claude-opus-4-1"]);
}

#[tokio::test(start_paused = true)]
async fn keys_fall_back_to_the_host_and_can_be_custom() {
    let (client, host, handle) = breaker(consecutive(2));
    // The upstream wants JSON: a body without a model is refused.
    host.script("none", [Step::Fail(std::io::ErrorKind::InvalidData)]);
    let request = Request::post("https://api.openai.com/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"not json")))
        .unwrap();
    client.clone().oneshot(request).await.unwrap_err();
    assert!(handle.state("api.openai.com").is_some());

    let upstream = upstream();
    let by_header = CircuitBreaker::new(
        upstream,
        consecutive(1).key_by(|parts| {
            let tenant = parts.headers.get("x-tenant").and_then(|v| v.to_str().ok());
            tenant.unwrap_or("anonymous").to_owned()
        }),
    );
    let mut request = request_for("claude-haiku-4-5");
    request
        .headers_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    by_header.clone().oneshot(request).await.unwrap();
    assert!(by_header.handle().state("acme").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_read_limit_is_keyed_by_the_model_at_its_start() {
    let (client, upstream, handle) = breaker(consecutive(1));
    let long = format!(
        r#"{{"model":"{M}","max_tokens":16,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(500)
    );
    // An upload in 16-byte chunks, over the stack's 32-byte replay limit.
    let mut request = Request::post("https://api.anthropic.com/v1/messages")
        .body(Upload::chunked(long.as_bytes(), 16, UploadEnd::End))
        .unwrap();
    request
        .extensions_mut()
        .insert(BodyLimits::new().replay_limit(32));
    upstream.script(M, [Step::Status(529)]);
    client.clone().oneshot(request).await.unwrap();
    assert_eq!(state(&handle, M), CircuitState::Open);
    assert!(handle.state("api.anthropic.com").is_none());
}

fn request_for(model: &str) -> Request<Full<Bytes>> {
    request(model)
}

#[tokio::test(start_paused = true)]
async fn the_registry_is_bounded_and_evicts_idle_then_least_recent_keys() {
    let config = consecutive(1).max_keys(16).idle_timeout(60 * SECOND);
    let (client, _, handle) = breaker(config);
    for i in 0..16 {
        send(&client, &format!("model-{i}")).await.unwrap();
    }
    assert_eq!(handle.snapshots().len(), 16);
    // model-0 stays in use; the others go idle.
    tokio::time::advance(61 * SECOND).await;
    send(&client, "model-0").await.unwrap();
    send(&client, "model-new").await.unwrap();
    let keys: Vec<_> = handle
        .snapshots()
        .iter()
        .map(|s| s.key.to_string())
        .collect();
    assert_eq!(keys, ["model-0", "model-new"], "idle keys were dropped");

    // A flood of distinct keys never passes the bound.
    for i in 0..500 {
        send(&client, &format!("flood-{i}")).await.unwrap();
        assert!(handle.snapshots().len() <= 16);
    }
    // The most recent keys survive.
    assert!(handle.state("flood-499").is_some());
}

#[tokio::test(start_paused = true)]
async fn the_handle_forces_and_resets() {
    let (events, listener) = recorder();
    let (client, upstream, handle) = breaker(consecutive(1).listener(listener));
    handle.force_open(M);
    let open = open_error(send(&client, M).await);
    assert_eq!(open.retry_after(), None);
    assert_eq!(upstream.attempts_of(M), 0);

    handle.force_closed(M);
    upstream.script(M, vec![Step::Status(529); 3]);
    for _ in 0..3 {
        assert_eq!(send(&client, M).await.unwrap(), 529);
    }
    assert_eq!(
        state(&handle, M),
        CircuitState::ForcedClosed,
        "nothing trips it"
    );

    handle.reset(M);
    assert_eq!(state(&handle, M), CircuitState::Closed);
    use CircuitState::*;
    assert_eq!(
        transitions(&events),
        [
            (Closed, ForcedOpen, TransitionReason::Forced),
            (ForcedOpen, ForcedClosed, TransitionReason::Forced),
            (ForcedClosed, Closed, TransitionReason::Reset),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_downcasts_and_reads_as_a_sentence() {
    let (client, upstream, _) = breaker(consecutive(1));
    upstream.script(M, [Step::Status(503)]);
    send(&client, M).await.unwrap();
    tokio::time::advance(Duration::from_millis(2500)).await;
    let error = client.clone().oneshot(request(M)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "circuit open for claude-sonnet-4-5; retry after 7.500s"
    );
    let open = error.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(open.key(), M);
    // Any layer's default classifier reads it as a refusal, with the breaker's delay.
    let outcome = classify_error(&DefaultClassifier::new(), error.as_ref());
    assert_eq!(outcome.kind(), OutcomeKind::Rejected);
    assert_eq!(outcome.server_delay(), Some(Duration::from_millis(7500)));
}

#[tokio::test(start_paused = true)]
async fn the_response_option_answers_503_with_retry_after() {
    let (client, upstream, _) = breaker(consecutive(1).on_open(OnOpen::Respond));
    upstream.script(M, [Step::Status(529)]);
    send(&client, M).await.unwrap();
    tokio::time::advance(Duration::from_millis(2500)).await;
    let response = client.clone().oneshot(request(M)).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "8");
    assert_eq!(response.headers()["x-brownout-circuit"], "open");
    assert!(response.extensions().get::<CircuitOpen>().is_some());
    // The layers further out read a refusal, not the upstream's overload.
    let outcome = recorded(&response).expect("an outcome is recorded");
    assert_eq!(outcome.kind(), OutcomeKind::Rejected);
    assert_eq!(outcome.server_delay(), Some(Duration::from_millis(7500)));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "overloaded_error");

    // OpenAI's path gets OpenAI's error shape.
    let (client, upstream, _) = breaker(consecutive(1).on_open(OnOpen::Respond));
    let openai = || {
        Request::post("https://api.openai.com/v1/chat/completions")
            .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o"}"#)))
            .unwrap()
    };
    upstream.script("gpt-4o", [Step::Status(503)]);
    client.clone().oneshot(openai()).await.unwrap();
    let response = client.clone().oneshot(openai()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The overload error of brownout-core's provider module, in OpenAI's shape.
    assert_eq!(json["error"]["type"], ErrorKind::Overloaded.openai_type());
    assert_eq!(
        json["error"]["code"],
        ErrorKind::Overloaded.openai_code().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn events_name_the_key_and_never_carry_secrets() {
    let (events, listener) = recorder();
    let (client, upstream, _) = breaker(consecutive(1).listener(listener));
    upstream.script(M, [Step::Status(529)]);
    send(&client, M).await.unwrap();
    let _ = send(&client, M).await;
    let events = events.lock().unwrap();
    assert!(events.iter().any(|e| matches!(
        e.data::<BreakerEvent>(),
        Some(BreakerEvent::CircuitRejected { key, .. }) if &**key == M
    )));
    for event in events.iter() {
        assert!(!format!("{event:?}").contains("sk-secret"));
        assert_eq!(event.layer, "breaker");
    }
}

#[test]
fn nonsense_settings_are_refused_with_the_key() {
    let err = FailurePolicy::failure_rate(1.5, Window::Count(10), 5).unwrap_err();
    assert_eq!(err.key(), "failure_rate.threshold");
    assert_eq!(
        err.to_string(),
        "invalid circuit breaker setting `failure_rate.threshold`: must be in (0, 1], not 1.5"
    );
    assert!(FailurePolicy::failure_rate(f64::NAN, Window::Count(10), 5).is_err());
    assert_eq!(
        FailurePolicy::failure_rate(0.5, Window::Count(10), 11)
            .unwrap_err()
            .key(),
        "failure_rate.minimum_calls"
    );
    assert!(FailurePolicy::failure_rate(0.5, Window::Time(Duration::ZERO), 1).is_err());
    assert!(FailurePolicy::consecutive(0).is_err());
    assert!(OpenDuration::growing(Duration::ZERO, SECOND).is_err());
    assert!(OpenDuration::growing(2 * SECOND, SECOND).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_layer_shares_breakers_between_the_services_it_builds() {
    use tower::Layer;
    let layer = CircuitBreakerLayer::new(consecutive(1));
    let upstream = upstream();
    upstream.script(M, [Step::Status(529)]);
    let a = layer.layer(upstream.clone());
    let b = layer.layer(upstream.clone());
    a.oneshot(request(M)).await.unwrap();
    assert!(
        b.oneshot(request(M)).await.is_err(),
        "b sees a's open breaker"
    );
    assert!(!layer.handle().is_available(M));
}

/// A request for `model` whose body yields its start, then fails: a caller that hung
/// up mid-upload.
fn cut_request(model: &str) -> Request<Upload> {
    let start = format!(r#"{{"model":"{model}","max_tokens":16,"mess"#);
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "sk-secret")
        .body(Upload::new([start], UploadEnd::Break))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn broken_request_bodies_are_the_callers_and_never_trip_a_healthy_model() {
    let (events, listener) = recorder();
    let (client, upstream, handle) = breaker(consecutive(2).listener(listener));
    assert_eq!(send(&client, M).await.unwrap(), 200);
    for _ in 0..12 {
        let error = client.clone().oneshot(cut_request(M)).await.unwrap_err();
        assert!(
            find::<BrokenBody>(error.as_ref()).is_some(),
            "a BrokenBody: {error}"
        );
    }
    assert_eq!(
        upstream.attempts_of(M),
        1,
        "no broken request reached the upstream"
    );
    let s = handle.state(M).unwrap();
    assert_eq!(s.state, CircuitState::Closed);
    assert_eq!((s.failures, s.total_calls, s.total_failures), (0, 1, 0));
    assert!(handle.is_available(M));
    assert!(transitions(&events).is_empty());
    assert_eq!(send(&client, M).await.unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_body_naming_two_models_never_counts_against_a_breaker() {
    // Keyed by model, the breaker reads the body only as far as its first `model`; a
    // failure of a body that names a second one (which an upstream may have served) is
    // the caller's, and opens no breaker that other callers share.
    let (client, upstream, handle) = breaker(consecutive(1));
    upstream.script_any([Step::Status(529), Step::Status(529)]);
    let two = || {
        Request::post("https://api.anthropic.com/v1/messages")
            .body(Full::new(Bytes::from(format!(
                r#"{{"model":"{M}","max_tokens":1,"messages":[],"model":"claude-opus-4-1"}}"#
            ))))
            .unwrap()
    };
    for _ in 0..2 {
        let response = client.clone().oneshot(two()).await.unwrap();
        assert_eq!(response.status(), 529);
    }
    let s = handle.state(M).unwrap();
    assert_eq!(s.state, CircuitState::Closed);
    assert_eq!(s.total_failures, 0, "no failure of such a body counted");
    assert!(handle.is_available(M));
    // The same failure of a well-formed body counts: the breaker opens.
    upstream.script(M, [Step::Status(529)]);
    assert_eq!(send(&client, M).await.unwrap(), 529);
    assert_eq!(state(&handle, M), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_status_counts_as_a_failure() {
    let (client, upstream, handle) = breaker(consecutive(2));
    upstream.script(M, [Step::Status(641), Step::Status(641)]);
    assert_eq!(send(&client, M).await.unwrap(), 641);
    assert_eq!(state(&handle, M), CircuitState::Closed);
    assert_eq!(send(&client, M).await.unwrap(), 641);
    assert_eq!(state(&handle, M), CircuitState::Open);
    open_error(send(&client, M).await);
    assert_eq!(upstream.attempts_of(M), 2);
}

/// A store of one's own: a LocalStore, with every lookup counted.
#[derive(Debug)]
struct Counting {
    local: LocalStore,
    entries: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
}

impl BreakerStore for Counting {
    fn entry(&self, key: &str, now: tokio::time::Instant) -> Arc<dyn BreakerEntry> {
        self.entries.fetch_add(1, Ordering::SeqCst);
        self.local.entry(key, now)
    }

    fn get(&self, key: &str) -> Option<Arc<dyn BreakerEntry>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.local.get(key)
    }

    fn entries(&self) -> Vec<Arc<dyn BreakerEntry>> {
        self.local.entries()
    }

    fn remove(&self, key: &str) -> bool {
        self.local.remove(key)
    }
}

#[tokio::test(start_paused = true)]
async fn an_injected_store_keeps_the_breakers() {
    let config = consecutive(2).seed(5);
    let entries = Arc::new(AtomicUsize::new(0));
    let gets = Arc::new(AtomicUsize::new(0));
    let store = Counting {
        local: LocalStore::new(&config),
        entries: entries.clone(),
        gets: gets.clone(),
    };
    let upstream = upstream();
    let client = CircuitBreaker::new(upstream.clone(), config.store(store));
    let handle = client.handle();

    upstream.script(M, [Step::Status(529), Step::Status(529)]);
    for _ in 0..2 {
        assert_eq!(send(&client, M).await.unwrap(), 529);
    }
    open_error(send(&client, M).await);
    assert_eq!(entries.load(Ordering::SeqCst), 3, "one lookup per request");
    assert_eq!(upstream.attempts_of(M), 2);

    // The handle reads the same store.
    assert_eq!(state(&handle, M), CircuitState::Open);
    assert!(!handle.is_available(M));
    assert_eq!(gets.load(Ordering::SeqCst), 2);
    assert_eq!(handle.snapshots().len(), 1);
}

/// A thread remembers the entries it was given lately: a key its store dropped still
/// starts again closed there, and another store's key of the same name is its own.
#[tokio::test(start_paused = true)]
async fn a_dropped_key_starts_closed_on_the_thread_that_used_it() {
    use brownout_breaker::{Admission, Verdict};
    use tokio::time::Instant;

    let config = consecutive(1);
    let (store, other) = (LocalStore::new(&config), LocalStore::new(&config));
    let now = Instant::now();
    let entry = store.entry("k", now);
    let Admission::Admitted(permit) = entry.acquire(now).0 else {
        panic!("refused while closed")
    };
    let failed = Verdict::Failure { server_delay: None };
    assert!(entry.record(permit, failed, now).is_some());
    assert_eq!(
        store.entry("k", now).snapshot(now).state,
        CircuitState::Open
    );
    assert_eq!(
        other.entry("k", now).snapshot(now).state,
        CircuitState::Closed
    );

    assert!(store.remove("k"));
    assert_eq!(
        store.entry("k", now).snapshot(now).state,
        CircuitState::Closed
    );
    assert_eq!(store.len(), 1);
}

/// Services cloned on other threads share one set of breakers, and the layer's state
/// goes with the last of them: the per-thread replicas a clone takes hold no cycle.
#[test]
fn clones_on_other_threads_share_the_breakers_and_free_them() {
    let alive = Arc::new(());
    let witness = alive.clone();
    let config = consecutive(3).failure_when(move |outcome| {
        let _ = &witness;
        outcome.kind().is_upstream_failure()
    });
    let (client, upstream, handle) = breaker(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        assert_eq!(send(&client.clone(), M).await.unwrap(), 200);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert_eq!(handle.state(M).unwrap().total_calls, 100);
    drop(runtime);
    drop((client, upstream, handle));
    assert_eq!(Arc::strong_count(&alive), 1, "the layer's state was freed");
}

#[tokio::test(start_paused = true)]
async fn a_half_open_probe_is_marked_so_that_the_layers_inside_send_it_once() {
    // The upstream fails the first call and answers the rest; it notes which calls
    // came marked as a probe.
    let marks = Arc::new(Mutex::new(Vec::new()));
    let seen = marks.clone();
    let inner = tower::service_fn(move |request: Request<brownout_core::Body>| {
        let mut seen = seen.lock().unwrap();
        seen.push(brownout_core::request::Probe::of(request.extensions()));
        let status = if seen.len() == 1 { 529 } else { 200 };
        async move {
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap(),
            )
        }
    });
    let client = CircuitBreaker::new(inner, consecutive(1).seed(5));
    let status = |r: Result<http::Response<_>, BoxError>| r.unwrap().status().as_u16();
    // Closed: an ordinary call; it fails and opens the breaker.
    assert_eq!(status(client.clone().oneshot(request(M)).await), 529);
    tokio::time::advance(10 * SECOND).await;
    // Half-open: the probe, which closes it; then ordinary calls again.
    assert_eq!(status(client.clone().oneshot(request(M)).await), 200);
    assert_eq!(status(client.clone().oneshot(request(M)).await), 200);
    assert_eq!(*marks.lock().unwrap(), [false, true, false]);
}
