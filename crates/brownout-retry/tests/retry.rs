//! Behaviour of the retry layer, in paused tokio time with seeded jitter.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use brownout_core::{
    body::BodyLimits,
    classify::{ClassifyLayer, DefaultClassifier, Observed, Outcome, OutcomeKind},
    error::{find, AttemptTimedOut, BrokenBody, DeadlineExceeded},
    event::{Event, NotReplayable},
    testing::{Step, Upload, UploadEnd, Upstream},
    Body, BoxError,
};
use brownout_retry::{
    Attempts, Backoff, GiveUpReason, Retry, RetryBudget, RetryConfig, RetryEvent,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

fn answer(status: u16) -> Step {
    Step::Answer(status, vec![], "")
}

fn config() -> RetryConfig {
    RetryConfig::new()
        .seed(1)
        .no_budget()
        .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2)).unwrap())
}

fn request(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("https://api.example.com/v1/messages?key=secret")
        .header("x-api-key", "sk-secret")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

type Reply = Result<Response<Body>, BoxError>;

async fn call(config: RetryConfig, upstream: &Upstream, body: &'static str) -> Reply {
    Retry::new(upstream.clone(), config)
        .oneshot(request(body))
        .await
}

/// Like [`call`], with the stack's classifier set over the upstream.
async fn call_classified(
    config: RetryConfig,
    classify: ClassifyLayer,
    upstream: &Upstream,
    body: &'static str,
) -> Reply {
    Retry::new(classify.layer(upstream.clone()), config)
        .oneshot(request(body))
        .await
}

fn attempts(reply: &Reply) -> Option<u32> {
    reply.as_ref().ok().map(|r| Attempts::of(r.extensions()))
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

#[tokio::test(start_paused = true)]
async fn success_passes_through_with_one_attempt() {
    let upstream = Upstream::scripted([]);
    let reply = call(config(), &upstream, "{}").await;
    assert_eq!(attempts(&reply), Some(1));
    let response = reply.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.seen()[0].body, "{}");
}

#[tokio::test(start_paused = true)]
async fn overload_is_retried_with_backoff_then_succeeds() {
    let upstream = Upstream::scripted([
        Step::Answer(529, vec![], OVERLOADED),
        Step::Answer(529, vec![], OVERLOADED),
    ]);
    let reply = call(config(), &upstream, "{}").await;
    assert_eq!(attempts(&reply), Some(3));
    assert_eq!(reply.unwrap().status(), 200);
    assert_eq!(
        upstream.gaps(),
        [Duration::from_millis(100), Duration::from_millis(200)]
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_capped_and_the_last_response_is_returned_whole() {
    let upstream = Upstream::scripted(vec![Step::Answer(529, vec![], OVERLOADED); 5]);
    let (events, listener) = recorder();
    let reply = call(config().max_attempts(3).listener(listener), &upstream, "{}").await;
    assert_eq!(upstream.attempts(), 3);
    assert_eq!(attempts(&reply), Some(3));
    let response = reply.unwrap();
    assert_eq!(response.status(), 529);
    // The classifier read the body for its type; the caller still gets all of it.
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        OVERLOADED
    );
    let events = events.lock().unwrap();
    let last = events.last().unwrap();
    match last.data::<RetryEvent>() {
        Some(RetryEvent::GaveUp {
            attempts,
            reason,
            outcome,
        }) => {
            assert_eq!(*attempts, 3);
            assert_eq!(*reason, GiveUpReason::AttemptsExhausted);
            assert_eq!(outcome.kind(), OutcomeKind::Overloaded);
            assert_eq!(outcome.error_type(), Some("overloaded_error"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let retrying = events
        .iter()
        .filter(|e| matches!(e.data::<RetryEvent>(), Some(RetryEvent::Retrying { .. })))
        .count();
    assert_eq!(retrying, 2);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried() {
    for step in [
        answer(400),
        answer(401),
        answer(403),
        answer(404),
        answer(413),
        Step::Answer(429, vec![], QUOTA),
    ] {
        let upstream = Upstream::scripted([step]);
        let reply = call(config(), &upstream, "{}").await;
        assert_eq!(upstream.attempts(), 1);
        assert_eq!(attempts(&reply), Some(1));
    }
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_overrides_the_status_both_ways() {
    let no = Step::Answer(529, vec![("x-should-retry", "false".into())], OVERLOADED);
    let upstream = Upstream::scripted([no]);
    let reply = call(config(), &upstream, "{}").await;
    assert_eq!(upstream.attempts(), 1);
    assert_eq!(reply.unwrap().status(), 529);

    let yes = Step::Answer(409, vec![("x-should-retry", "true".into())], "");
    let upstream = Upstream::scripted([yes]);
    let reply = call(config(), &upstream, "{}").await;
    assert_eq!(upstream.attempts(), 2);
    assert_eq!(reply.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn server_delays_win_over_a_shorter_backoff() {
    let upstream = Upstream::scripted([
        Step::Answer(429, vec![("retry-after", "3".into())], ""),
        Step::Answer(529, vec![("retry-after-ms", "1250.5".into())], OVERLOADED),
        // A delay shorter than the backoff does not shorten it (backoff is 400 ms here).
        Step::Answer(503, vec![("retry-after-ms", "10".into())], ""),
    ]);
    let reply = call(config().max_attempts(4), &upstream, "{}").await;
    assert_eq!(reply.unwrap().status(), 200);
    let gaps = upstream.gaps();
    assert_eq!(gaps.len(), 3);
    assert_eq!(gaps[0], Duration::from_secs(3));
    // tokio's timer rounds up to the millisecond.
    assert!((Duration::from_micros(1_250_500)..=Duration::from_millis(1251)).contains(&gaps[1]));
    assert_eq!(gaps[2], Duration::from_millis(400));
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_honoured() {
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470) // 07:27:50
    }
    let upstream = Upstream::scripted([Step::Answer(
        503,
        vec![("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".into())],
        "",
    )]);
    let classify = ClassifyLayer::new(DefaultClassifier::new().wall_clock(now));
    let reply = call_classified(config(), classify, &upstream, "{}").await;
    assert_eq!(reply.unwrap().status(), 200);
    assert_eq!(upstream.gaps(), [Duration::from_secs(10)]);
}

#[tokio::test(start_paused = true)]
async fn a_server_delay_over_the_cap_goes_back_at_once() {
    let upstream = Upstream::scripted([Step::Answer(429, vec![("retry-after", "600".into())], "")]);
    let (events, listener) = recorder();
    let start = Instant::now();
    let reply = call(config().listener(listener), &upstream, "{}").await;
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait at all");
    assert_eq!(upstream.attempts(), 1);
    assert_eq!(reply.unwrap().status(), 429);
    let events = events.lock().unwrap();
    assert!(matches!(
        events.last().unwrap().data::<RetryEvent>(),
        Some(RetryEvent::GaveUp {
            reason: GiveUpReason::ServerDelayTooLong { delay },
            ..
        }) if *delay == Duration::from_secs(600)
    ));
}

#[tokio::test(start_paused = true)]
async fn with_move_on_overload_an_overload_without_a_delay_goes_back_at_once() {
    // A 529 naming no delay: handed back at once, for the cascade.
    let upstream = Upstream::scripted([Step::Answer(529, vec![], OVERLOADED)]);
    let (events, listener) = recorder();
    let start = Instant::now();
    let moving = config().move_on_overload(true).listener(listener);
    let reply = call(moving, &upstream, "{}").await;
    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff");
    assert_eq!(upstream.attempts(), 1);
    assert_eq!(reply.unwrap().status(), 529);
    assert!(matches!(
        events.lock().unwrap().last().unwrap().data::<RetryEvent>(),
        Some(RetryEvent::GaveUp {
            reason: GiveUpReason::Overloaded,
            attempts: 1,
            ..
        })
    ));
    // An overload that names its delay is slept as before (within max_server_delay)...
    let upstream = Upstream::scripted([Step::Answer(
        529,
        vec![("retry-after", "1".into())],
        OVERLOADED,
    )]);
    let reply = call(config().move_on_overload(true), &upstream, "{}").await;
    assert_eq!(reply.unwrap().status(), 200);
    assert_eq!(upstream.gaps(), [Duration::from_secs(1)]);
    // ...and other retryable failures are retried.
    let upstream = Upstream::scripted([answer(500)]);
    let reply = call(config().move_on_overload(true), &upstream, "{}").await;
    assert_eq!(reply.unwrap().status(), 200);
    assert_eq!(upstream.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn full_jitter_delays_stay_within_the_backoff_ceiling() {
    let backoff = Backoff::full_jitter(Duration::from_millis(500), Duration::from_secs(8)).unwrap();
    let upstream = Upstream::scripted(vec![answer(503); 5]);
    let reply = call(
        config().backoff(backoff).max_attempts(6).seed(99),
        &upstream,
        "{}",
    )
    .await;
    assert_eq!(reply.unwrap().status(), 200);
    let gaps = upstream.gaps();
    assert_eq!(gaps.len(), 5);
    for (retry, gap) in (1..).zip(&gaps) {
        assert!(*gap < backoff.ceiling(retry), "retry {retry}: {gap:?}");
    }
    // The same seed replays the same delays.
    let again = Upstream::scripted(vec![answer(503); 5]);
    let _ = call(
        config().backoff(backoff).max_attempts(6).seed(99),
        &again,
        "{}",
    )
    .await;
    assert_eq!(again.gaps(), gaps);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_and_the_last_error_returned() {
    use std::io::ErrorKind;
    let upstream = Upstream::scripted(vec![Step::Fail(ErrorKind::ConnectionRefused); 3]);
    let reply = call(config(), &upstream, "{}").await;
    assert_eq!(upstream.attempts(), 3);
    let error = reply.unwrap_err();
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("the inner error, untouched");
    assert_eq!(io.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_cuts_a_hanging_attempt_and_retries() {
    let upstream = Upstream::scripted([Step::Hang]);
    let start = Instant::now();
    let reply = call(
        config().attempt_timeout(Duration::from_secs(5)),
        &upstream,
        "{}",
    )
    .await;
    assert_eq!(reply.unwrap().status(), 200);
    assert_eq!(upstream.attempts(), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5) + Duration::from_millis(100)
    );

    let upstream = Upstream::scripted(vec![Step::Hang; 3]);
    let reply = call(
        config().attempt_timeout(Duration::from_secs(5)),
        &upstream,
        "{}",
    )
    .await;
    let error = reply.unwrap_err();
    assert_eq!(
        error.downcast_ref::<AttemptTimedOut>(),
        Some(&AttemptTimedOut::new(Duration::from_secs(5)))
    );
    assert_eq!(error.to_string(), "attempt timed out after 5s");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_never_exceeded() {
    // Waits of 1 s, 2 s, 2 s… against a 4.5 s deadline: the third wait would end after it.
    let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(2)).unwrap();
    let upstream = Upstream::scripted(vec![answer(503); 10]);
    let (events, listener) = recorder();
    let start = Instant::now();
    let config = config()
        .backoff(backoff)
        .max_attempts(10)
        .deadline(Duration::from_millis(4500))
        .listener(listener);
    let reply = call(config, &upstream, "{}").await;
    assert!(start.elapsed() <= Duration::from_millis(4500));
    assert_eq!(upstream.attempts(), 3);
    assert_eq!(reply.unwrap().status(), 503);
    assert!(matches!(
        events.lock().unwrap().last().unwrap().data::<RetryEvent>(),
        Some(RetryEvent::GaveUp {
            reason: GiveUpReason::DeadlineReached,
            ..
        })
    ));

    // A hanging attempt is cut at the deadline itself.
    let upstream = Upstream::scripted([answer(503), Step::Hang]);
    let start = Instant::now();
    let config = self::config()
        .max_attempts(10)
        .deadline(Duration::from_secs(2));
    let error = call(config, &upstream, "{}").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let deadline = error.downcast_ref::<DeadlineExceeded>().unwrap();
    assert_eq!(deadline.attempts(), 2);
    assert_eq!(
        error.to_string(),
        "deadline of 2s exceeded after 2 attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_that_hangs_is_cut_at_the_deadline() {
    let upstream = Upstream::scripted([Step::Hang]);
    let start = Instant::now();
    let config = config()
        .deadline(Duration::from_secs(3))
        .attempt_timeout(Duration::from_secs(10));
    let error = call(config, &upstream, "{}").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(
        error.downcast_ref::<DeadlineExceeded>().unwrap().attempts(),
        1
    );
    assert_eq!(upstream.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_by_clones_and_stops_retries_when_spent() {
    // No floor, 50 %: two first attempts pay for one retry.
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
    let upstream = Upstream::scripted(vec![answer(503); 100]);
    let (events, listener) = recorder();
    let service = Retry::new(
        upstream.clone(),
        config().budget(budget).max_attempts(5).listener(listener),
    );
    let mut clones = vec![service.clone(), service.clone(), service.clone(), service];
    let mut total = 0;
    for service in &mut clones {
        let ready = ServiceExt::<Request<Full<Bytes>>>::ready(service).await;
        let reply = ready.unwrap().call(request("{}")).await;
        assert_eq!(reply.unwrap().status(), 503);
        total += 1;
    }
    // Four calls deposited two retries' worth, shared by all clones.
    assert_eq!(upstream.attempts(), total + 2);
    let exhausted = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e.data::<RetryEvent>(),
                Some(RetryEvent::GaveUp {
                    reason: GiveUpReason::BudgetExhausted,
                    ..
                })
            )
        })
        .count();
    assert!(exhausted >= 2, "{exhausted}");
}

#[tokio::test(start_paused = true)]
async fn replayed_requests_are_byte_identical_on_every_attempt() {
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"héllo ✓"}]}"#;
    let upstream = Upstream::scripted(vec![answer(529); 3]);
    let reply = call(config().max_attempts(4), &upstream, body).await;
    assert_eq!(reply.unwrap().status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 4);
    for attempt in &seen {
        assert_eq!(attempt.body, body.as_bytes());
        assert_eq!(attempt.method, http::Method::POST);
        assert_eq!(
            attempt.uri,
            "https://api.example.com/v1/messages?key=secret"
        );
        assert_eq!(attempt.headers, seen[0].headers);
        assert_eq!(attempt.headers["x-api-key"], "sk-secret");
    }
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_is_sent_once_whole() {
    let body = "0123456789abcdef";
    let upstream = Upstream::scripted([answer(529)]);
    let (events, listener) = recorder();
    let mut request = request(body);
    request
        .extensions_mut()
        .insert(BodyLimits::new().replay_limit(8));
    let reply = Retry::new(upstream.clone(), config().listener(listener))
        .oneshot(request)
        .await;
    assert_eq!(reply.unwrap().status(), 529);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
    let events = events.lock().unwrap();
    let limit = NotReplayable::BodyTooLarge { limit: 8 };
    assert!(matches!(
        events[0].data::<RetryEvent>(),
        Some(RetryEvent::NotReplayable { reason }) if *reason == limit
    ));
    assert!(matches!(
        events.last().unwrap().data::<RetryEvent>(),
        Some(RetryEvent::GaveUp { reason: GiveUpReason::NotReplayable(reason), .. }) if *reason == limit
    ));
}

#[tokio::test(start_paused = true)]
async fn events_never_carry_secrets() {
    let upstream = Upstream::scripted(vec![answer(529); 3]);
    let (events, listener) = recorder();
    let _ = call(config().listener(listener), &upstream, "{}").await;
    let events = events.lock().unwrap();
    assert!(!events.is_empty());
    for event in events.iter() {
        let text = format!("{event:?}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(event.path.as_deref(), Some("/v1/messages"));
        assert_eq!(event.layer, "retry");
    }
}

#[tokio::test(start_paused = true)]
async fn a_closure_can_replace_the_classifier() {
    // Treat 404 as transient (an eventually consistent API).
    let classifier = |observed: Observed<'_>| match observed {
        Observed::Response { status, .. } if status == 404 => {
            Outcome::new(OutcomeKind::ServerError)
        }
        other => DefaultClassifier::new().classify(other),
    };
    use brownout_core::Classify;
    let upstream = Upstream::scripted([answer(404)]);
    let classify = ClassifyLayer::new(classifier);
    let reply = call_classified(config(), classify, &upstream, "{}").await;
    assert_eq!(reply.unwrap().status(), 200);
    assert_eq!(upstream.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_broken_request_body_fails_at_once_and_touches_nothing() {
    // No floor, 100 %: each first attempt pays for exactly one retry.
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0).unwrap();
    let upstream = Upstream::scripted(vec![answer(503); 10]);
    let (events, listener) = recorder();
    let service = Retry::new(
        upstream.clone(),
        config().budget(budget).max_attempts(5).listener(listener),
    );

    let cut = Request::post("https://api.example.com/v1/messages")
        .body(Upload::new(
            [Bytes::from_static(br#"{"model":"claude-sonnet-4-5","mess"#)],
            UploadEnd::Break,
        ))
        .unwrap();
    let error = service.clone().oneshot(cut).await.unwrap_err();
    assert!(
        find::<BrokenBody>(error.as_ref()).is_some(),
        "a BrokenBody: {error}"
    );
    assert_eq!(upstream.calls(), 0, "the inner service is never called");
    assert!(events.lock().unwrap().is_empty(), "no event");

    // The budget is untouched: the next call's own deposit pays for one retry only,
    // where a deposit by the broken call would have paid for a second.
    let reply = service.oneshot(request("{}")).await;
    assert_eq!(reply.unwrap().status(), 503);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_probe_is_sent_once_and_its_answer_handed_back() {
    // Marked as a probe (a breaker outside does it for its half-open calls): the
    // overload is the probe's verdict, not something to retry.
    let upstream = Upstream::scripted([Step::Answer(529, vec![], OVERLOADED)]);
    let (events, listener) = recorder();
    let mut probe = request("{}");
    probe.extensions_mut().insert(brownout_core::request::Probe);
    let reply = Retry::new(upstream.clone(), config().listener(listener))
        .oneshot(probe)
        .await;
    assert_eq!(reply.unwrap().status(), 529);
    assert_eq!(upstream.attempts(), 1);
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e.data::<RetryEvent>(),
        Some(RetryEvent::GaveUp {
            attempts: 1,
            reason: GiveUpReason::Probe,
            ..
        })
    )));
    // The same request unmarked is retried.
    let upstream = Upstream::scripted([Step::Answer(529, vec![], OVERLOADED)]);
    let reply = call(config(), &upstream, "{}").await;
    assert_eq!(reply.unwrap().status(), 200);
    assert_eq!(upstream.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_closed_attempt_gate_hands_the_last_answer_back_after_the_backoff() {
    // A layer outside (a queue) began holding the target during the backoff.
    let upstream = Upstream::scripted([Step::Answer(529, vec![], OVERLOADED)]);
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (events, listener) = recorder();
    let mut gated = request("{}");
    let gate = open.clone();
    gated
        .extensions_mut()
        .insert(brownout_core::request::AttemptGate::new(move || {
            gate.load(std::sync::atomic::Ordering::Relaxed)
        }));
    let answer =
        tokio::spawn(Retry::new(upstream.clone(), config().listener(listener)).oneshot(gated));
    tokio::time::sleep(Duration::from_millis(50)).await;
    open.store(false, std::sync::atomic::Ordering::Relaxed);
    let reply = answer.await.unwrap();
    assert_eq!(reply.unwrap().status(), 529, "the failed answer, whole");
    assert_eq!(upstream.attempts(), 1);
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e.data::<RetryEvent>(),
        Some(RetryEvent::GaveUp {
            reason: GiveUpReason::Held,
            ..
        })
    )));
}
