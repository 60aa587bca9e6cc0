//! The queue layer's behaviour, in paused time with seeded randomness.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use brownout_core::{
    event::Event,
    testing::{Step, Upstream},
    Body, BoxError,
};
use brownout_fallback::{FallbackConfig, FallbackLayer, Target};
use brownout_queue::{
    Choice, Deadline, OnShed, Queue, QueueConfig, QueueEvent, QueueHandle, QueueLayer, Shed,
    ShedReason,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

const MODEL: &str = "claude-opus-4-1";
const OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;

fn request(model: &str, tag: usize) -> Request<Full<Bytes>> {
    request_with(model, tag, &[])
}

fn request_with(model: &str, tag: usize, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::post("https://api.anthropic.com/v1/messages");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{model}","max_tokens":64,"tag":{tag}}}"#
        ))))
        .unwrap()
}

/// A 529 asking for `ms` milliseconds.
fn overloaded(ms: u64) -> Step {
    Step::Answer(529, vec![("retry-after-ms", ms.to_string())], OVERLOADED)
}

fn tag_of(body: &Bytes) -> usize {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    value["tag"].as_u64().unwrap() as usize
}

type Client = Queue<Upstream>;

fn client(config: QueueConfig, upstream: &Upstream) -> (Client, QueueHandle) {
    let layer = QueueLayer::new(config.seed(7));
    let handle = layer.handle();
    (
        ServiceBuilder::new().layer(layer).service(upstream.clone()),
        handle,
    )
}

fn recorder() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(&Event) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |event: &Event| {
        sink.lock().unwrap().push(event.clone())
    })
}

fn queue_events(events: &Mutex<Vec<Event>>) -> Vec<QueueEvent> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| e.data::<QueueEvent>().cloned())
        .collect()
}

/// Lets every runnable task run, without moving the clock.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Moves the clock by `ms` milliseconds, one at a time, letting tasks run.
async fn advance(ms: u64) {
    for _ in 0..ms {
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
    }
}

type Answer = tokio::task::JoinHandle<Result<Response<Body>, BoxError>>;

fn spawn(client: &Client, request: Request<Full<Bytes>>) -> Answer {
    let client = client.clone();
    tokio::spawn(async move { client.oneshot(request).await })
}

async fn status_of(answer: Answer) -> u16 {
    answer.await.unwrap().unwrap().status().as_u16()
}

/// Makes `MODEL` unavailable for `ms` milliseconds with a 529 that passes through.
async fn overload_for(client: &Client, upstream: &Upstream, ms: u64) {
    upstream.script(MODEL, [overloaded(ms)]);
    let response = client.clone().oneshot(request(MODEL, 999)).await.unwrap();
    assert_eq!(response.status(), 529, "the overload itself passes through");
}

#[tokio::test(start_paused = true)]
async fn requests_wait_while_the_breaker_is_open_and_leave_in_order_when_it_closes() {
    let upstream = Upstream::new();
    let open = Arc::new(AtomicBool::new(true));
    let health = {
        let open = open.clone();
        move |key: &str| !(key == MODEL && open.load(Ordering::SeqCst))
    };
    let (client, handle) = client(
        QueueConfig::new()
            .health(health)
            .max_wait(Duration::from_secs(5))
            .recovery_limit(1),
        &upstream,
    );
    let answers: Vec<Answer> = (0..6).map(|i| spawn(&client, request(MODEL, i))).collect();
    settle().await;
    assert_eq!(handle.depth(MODEL), 6);
    assert_eq!(handle.admission(MODEL), Some(1));
    // Another model is not held back.
    let other = client
        .clone()
        .oneshot(request("claude-haiku-4-5", 100))
        .await;
    assert_eq!(other.unwrap().status(), 200);

    advance(500).await;
    assert_eq!(
        upstream.attempts_of(MODEL),
        0,
        "nothing is sent while it is open"
    );
    open.store(false, Ordering::SeqCst);
    advance(100).await;
    for answer in answers {
        assert_eq!(status_of(answer).await, 200);
    }
    let order: Vec<usize> = upstream
        .seen()
        .iter()
        .filter(|s| s.model == MODEL)
        .map(|s| tag_of(&s.body))
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 4, 5], "first come, first served");
    assert_eq!(handle.depth(MODEL), 0);
    assert_eq!(handle.admission(MODEL), None, "back to normal");
    assert!(handle.keys().is_empty(), "nothing tracked any more");
}

#[tokio::test(start_paused = true)]
async fn slow_start_admits_1_2_4_and_a_new_529_halves_admission() {
    let upstream = Upstream::new();
    let (events, listener) = recorder();
    let (client, handle) = client(
        QueueConfig::new()
            .max_wait(Duration::from_secs(10))
            .listener(listener),
        &upstream,
    );
    overload_for(&client, &upstream, 100).await;
    assert_eq!(handle.admission(MODEL), Some(1));
    // Round 1: one probe; round 2: two; round 3: four, each answering 529.
    upstream.script(MODEL, (0..3).map(|_| Step::Gate(200)));
    upstream.script(MODEL, (0..4).map(|_| Step::Gate(529)));
    upstream.otherwise(Step::Gate(200));
    let answers: Vec<Answer> = (0..12).map(|i| spawn(&client, request(MODEL, i))).collect();
    settle().await;
    assert_eq!(handle.depth(MODEL), 12);
    assert_eq!(upstream.calls(), 1, "held during the delay");

    advance(100).await;
    assert_eq!(upstream.calls(), 2, "a single probe first");
    upstream.release(1);
    settle().await;
    assert_eq!(upstream.calls(), 4, "then two in flight");
    assert_eq!(handle.admission(MODEL), Some(2));
    upstream.release(2);
    settle().await;
    assert_eq!(upstream.calls(), 8, "then four");
    assert_eq!(handle.admission(MODEL), Some(4));

    // All four answer 529: admission halves once for the round, not four times.
    upstream.release(4);
    settle().await;
    assert_eq!(handle.admission(MODEL), Some(2));
    assert_eq!(upstream.calls(), 10, "two in flight after the halving");

    upstream.release(100);
    advance(10).await;
    let mut statuses = Vec::new();
    for answer in answers {
        statuses.push(status_of(answer).await);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 529).count(), 4);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 8);
    let changes: Vec<(Option<u32>, &str)> = queue_events(&events)
        .iter()
        .filter_map(|e| match e {
            QueueEvent::AdmissionChanged { limit, reason, .. } => Some((*limit, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes[..2],
        [(Some(1), "unavailable"), (Some(2), "overloaded")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_in_the_providers_shape_with_retry_after() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .max_queue(2)
            .max_wait(Duration::from_secs(5)),
        &upstream,
    );
    overload_for(&client, &upstream, 1500).await;
    let waiting: Vec<Answer> = (0..2).map(|i| spawn(&client, request(MODEL, i))).collect();
    settle().await;
    assert_eq!(handle.depth(MODEL), 2);

    let start = Instant::now();
    let response = client.clone().oneshot(request(MODEL, 2)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "shed at once");
    assert_eq!(response.status(), 529);
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert_eq!(response.headers()["retry-after"], "2", "1.5 s, rounded up");
    assert_eq!(response.headers()["content-type"], "application/json");
    let shed = response.extensions().get::<Shed>().unwrap();
    assert_eq!(shed.reason(), ShedReason::QueueFull);
    assert_eq!(shed.key(), MODEL);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");

    // OpenAI's shape is a 503 with its error body.
    let openai = Request::post("https://api.openai.com/v1/chat/completions")
        .body(Full::new(Bytes::from(format!(r#"{{"model":"{MODEL}"}}"#))))
        .unwrap();
    let response = client.clone().oneshot(openai).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");

    advance(1500).await;
    for answer in waiting {
        assert_eq!(
            status_of(answer).await,
            200,
            "the queued ones are answered live"
        );
    }
    assert_eq!(upstream.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_would_pass_is_shed_at_once() {
    let upstream = Upstream::new();
    let (events, listener) = recorder();
    let (client, _) = client(
        QueueConfig::new()
            .max_wait(Duration::from_secs(30))
            .deadline(Duration::from_secs(2))
            .listener(listener),
        &upstream,
    );
    overload_for(&client, &upstream, 5000).await;
    let start = Instant::now();
    let response = client.clone().oneshot(request(MODEL, 1)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "not after waiting");
    assert_eq!(response.status(), 529);
    assert_eq!(
        response.extensions().get::<Shed>().unwrap().reason(),
        ShedReason::WaitTooLong
    );
    assert_eq!(response.headers()["retry-after"], "5");

    // A deadline in the extensions wins over the configured one.
    let mut late = request(MODEL, 2);
    late.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(10)));
    let answer = spawn(&client, late);
    advance(5000).await;
    assert_eq!(status_of(answer).await, 200);
    assert_eq!(upstream.attempts(), 2);
    let shed: Vec<_> = queue_events(&events)
        .into_iter()
        .filter(|e| matches!(e, QueueEvent::Shed { .. }))
        .collect();
    assert_eq!(
        shed,
        [QueueEvent::Shed {
            key: MODEL.into(),
            reason: ShedReason::WaitTooLong,
            waited: Duration::ZERO
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_still_waiting_at_max_wait_is_shed_then() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .health(|_: &str| false)
            .max_wait(Duration::from_millis(300)),
        &upstream,
    );
    let start = Instant::now();
    let answer = spawn(&client, request(MODEL, 1));
    settle().await;
    assert_eq!(handle.depth(MODEL), 1);
    assert_eq!(handle.expected_wait(MODEL), None, "unknown without a hint");
    assert_eq!(handle.choose(MODEL), Choice::Move);
    advance(300).await;
    let response = answer.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(
        response.extensions().get::<Shed>().unwrap().reason(),
        ShedReason::WaitExpired
    );
    assert!(
        !response.headers().contains_key("retry-after"),
        "no wait is known"
    );
    assert_eq!(upstream.calls(), 0);
    assert_eq!(handle.depth(MODEL), 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_who_hangs_up_leaves_the_queue_and_is_never_sent() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new().max_wait(Duration::from_secs(5)),
        &upstream,
    );
    overload_for(&client, &upstream, 200).await;
    let kept = spawn(&client, request(MODEL, 1));
    let gone = spawn(&client, request(MODEL, 2));
    settle().await;
    assert_eq!(handle.depth(MODEL), 2);
    gone.abort();
    settle().await;
    assert_eq!(handle.depth(MODEL), 1, "left at once");
    advance(250).await;
    assert_eq!(status_of(kept).await, 200);
    let tags: Vec<usize> = upstream.seen().iter().map(|s| tag_of(&s.body)).collect();
    assert_eq!(tags, [999, 1], "the caller who hung up was never sent");
}

#[tokio::test(start_paused = true)]
async fn one_caller_cannot_take_more_than_its_share() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .max_queue(4)
            .max_wait(Duration::from_secs(5)),
        &upstream,
    );
    overload_for(&client, &upstream, 500).await;
    let a = [("x-api-key", "sk-ant-a")];
    let b = [("x-api-key", "sk-ant-b")];
    let first: Vec<Answer> = (0..2)
        .map(|i| spawn(&client, request_with(MODEL, i, &a)))
        .collect();
    settle().await;
    let third = client
        .clone()
        .oneshot(request_with(MODEL, 2, &a))
        .await
        .unwrap();
    assert_eq!(
        third.extensions().get::<Shed>().unwrap().reason(),
        ShedReason::CallerShare
    );
    // Another caller still gets its half.
    let other: Vec<Answer> = (3..5)
        .map(|i| spawn(&client, request_with(MODEL, i, &b)))
        .collect();
    settle().await;
    assert_eq!(handle.depth(MODEL), 4);
    advance(500).await;
    for answer in first.into_iter().chain(other) {
        assert_eq!(status_of(answer).await, 200);
    }
}

#[tokio::test(start_paused = true)]
async fn higher_priorities_are_admitted_first_and_fifo_within_a_class() {
    let upstream = Upstream::new();
    let (client, _) = client(
        QueueConfig::new().max_wait(Duration::from_secs(5)),
        &upstream,
    );
    overload_for(&client, &upstream, 100).await;
    upstream.otherwise(Step::Gate(200));
    let answers: Vec<Answer> = [
        (0, "low"),
        (1, "normal"),
        (2, "high"),
        (3, "normal"),
        (4, "high"),
    ]
    .into_iter()
    .map(|(i, p)| {
        spawn(
            &client,
            request_with(MODEL, i, &[("x-brownout-priority", p)]),
        )
    })
    .collect();
    settle().await;
    let sent = || {
        let mut tags: Vec<usize> = upstream.seen().iter().map(|s| tag_of(&s.body)).collect();
        tags.sort_unstable();
        tags
    };
    // Admitted one round at a time (1, then 2, then 4): the rounds show the order.
    advance(100).await;
    assert_eq!(sent(), [2, 999], "the probe is the first high one");
    upstream.release(1);
    settle().await;
    assert_eq!(
        sent(),
        [1, 2, 4, 999],
        "then the other high one and the first normal"
    );
    upstream.release(2);
    settle().await;
    assert_eq!(sent(), [0, 1, 2, 3, 4, 999], "low last");
    upstream.release(10);
    for answer in answers {
        assert_eq!(status_of(answer).await, 200);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_every_queued_request() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new().max_wait(Duration::from_secs(30)),
        &upstream,
    );
    overload_for(&client, &upstream, 10_000).await;
    let answers: Vec<Answer> = (0..5).map(|i| spawn(&client, request(MODEL, i))).collect();
    settle().await;
    assert_eq!(handle.total_depth(), 5);
    handle.shutdown();
    assert!(handle.is_shut_down());
    for answer in answers {
        let response = answer.await.unwrap().unwrap();
        assert_eq!(response.status(), 529);
        assert_eq!(response.headers()["x-should-retry"], "false");
        assert_eq!(
            response.extensions().get::<Shed>().unwrap().reason(),
            ShedReason::Shutdown
        );
    }
    assert_eq!(handle.total_depth(), 0);
    // Later requests that would wait are shed at once; others pass.
    let later = client.clone().oneshot(request(MODEL, 6)).await.unwrap();
    assert_eq!(
        later.extensions().get::<Shed>().unwrap().reason(),
        ShedReason::Shutdown
    );
    let other = client.clone().oneshot(request("claude-haiku-4-5", 7)).await;
    assert_eq!(other.unwrap().status(), 200);
    assert_eq!(
        upstream.attempts(),
        2,
        "the overload and the other model only"
    );
}

#[tokio::test(start_paused = true)]
async fn shed_as_an_error_carries_rejected() {
    let upstream = Upstream::new();
    let (client, _) = client(
        QueueConfig::new().max_queue(0).on_shed(OnShed::Error),
        &upstream,
    );
    overload_for(&client, &upstream, 400).await;
    let error = client.clone().oneshot(request(MODEL, 1)).await.unwrap_err();
    let shed = error.downcast_ref::<Shed>().unwrap();
    assert_eq!(shed.reason(), ShedReason::QueueFull);
    assert_eq!(shed.retry_after(), Some(Duration::from_millis(400)));
    let outcome = brownout_core::classify::classify_error(
        &brownout_core::classify::DefaultClassifier::new(),
        error.as_ref(),
    );
    assert_eq!(outcome.kind(), brownout_core::OutcomeKind::Rejected);
}

#[tokio::test(start_paused = true)]
async fn wait_or_move_picks_the_cascade_when_the_expected_wait_is_long() {
    let upstream = Upstream::new();
    let queue = QueueLayer::new(QueueConfig::new().max_wait(Duration::from_secs(5)).seed(3));
    let handle = queue.handle();
    let cascade = FallbackConfig::new([Target::new(MODEL), Target::new("claude-haiku-4-5")])
        .unwrap()
        .health(handle.clone());
    let client = ServiceBuilder::new()
        .layer(FallbackLayer::new(cascade))
        .layer(queue)
        .service(upstream.clone());
    let send = |tag| {
        let client = client.clone();
        async move { client.oneshot(request(MODEL, tag)).await.unwrap() }
    };

    // A long delay: the fallback moves on at once.
    upstream.script(MODEL, [overloaded(2000)]);
    let first = send(0).await;
    assert_eq!(first.status(), 200, "the 529 moved to the next model");
    assert_eq!(handle.choose(MODEL), Choice::Move);
    let start = Instant::now();
    send(1).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    let models: Vec<String> = upstream.seen().iter().map(|s| s.model.clone()).collect();
    assert_eq!(models, [MODEL, "claude-haiku-4-5", "claude-haiku-4-5"]);

    // A short one: it waits for the preferred model.
    advance(2000).await;
    send(2).await; // the probe, and back to normal after successes
    upstream.script(MODEL, [overloaded(300)]);
    send(3).await;
    assert_eq!(
        handle.choose(MODEL),
        Choice::Wait(Duration::from_millis(300))
    );
    let start = Instant::now();
    let answer = tokio::spawn(send(4));
    advance(300).await;
    let response = answer.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let last = upstream.seen().last().unwrap().model.clone();
    assert_eq!(last, MODEL, "waited for the preferred model");
}

#[tokio::test(start_paused = true)]
async fn with_a_real_breaker_requests_wait_for_it_to_close_and_probe_it_once() {
    use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, OpenDuration};
    let upstream = Upstream::new();
    upstream.script(MODEL, [Step::Status(529)]);
    upstream.otherwise(Step::Gate(200));
    let breakers = CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::consecutive(1).unwrap())
            .open_duration(OpenDuration::Fixed(Duration::from_millis(500))),
    );
    let breaker = breakers.handle();
    let queue = QueueLayer::new(
        QueueConfig::new()
            .health(breakers.handle())
            .max_wait(Duration::from_secs(2))
            .seed(11),
    );
    let handle = queue.handle();
    let client = ServiceBuilder::new()
        .layer(queue)
        .layer(breakers)
        .service(upstream.clone());
    let first = client.clone().oneshot(request(MODEL, 0)).await.unwrap();
    assert_eq!(first.status(), 529, "the breaker opens on it");
    assert!(!brownout_core::health::Health::is_available(
        &breaker, MODEL
    ));

    let answers: Vec<_> = (1..4)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.oneshot(request(MODEL, i)).await })
        })
        .collect();
    settle().await;
    assert_eq!(
        handle.depth(MODEL),
        3,
        "waiting, not refused by the breaker"
    );
    advance(480).await;
    assert_eq!(upstream.calls(), 1, "nothing sent while it is open");
    advance(120).await;
    assert_eq!(upstream.calls(), 2, "one probe when it half-opens");
    upstream.release(1);
    settle().await;
    assert_eq!(upstream.calls(), 4, "then the two others");
    upstream.release(2);
    for answer in answers {
        assert_eq!(answer.await.unwrap().unwrap().status(), 200);
    }
    let tags: Vec<usize> = upstream.seen().iter().map(|s| tag_of(&s.body)).collect();
    assert_eq!(tags[..2], [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn probe_after_probes_before_a_long_server_delay_ends() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .probe_after(Duration::from_millis(200))
            .max_wait(Duration::from_secs(2)),
        &upstream,
    );
    // retry-after has whole seconds: the burst may be over long before.
    upstream.script(
        MODEL,
        [Step::Answer(
            529,
            vec![("retry-after", "1".into())],
            OVERLOADED,
        )],
    );
    let response = client.clone().oneshot(request(MODEL, 0)).await.unwrap();
    assert_eq!(response.status(), 529);
    assert_eq!(
        handle.expected_wait(MODEL),
        Some(Duration::from_millis(200))
    );
    let start = Instant::now();
    let answer = spawn(&client, request(MODEL, 1));
    advance(200).await;
    assert_eq!(status_of(answer).await, 200);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_past_early_ack_lets_slow_start_admit_the_next() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .early_ack(Duration::from_millis(100))
            .max_wait(Duration::from_secs(5)),
        &upstream,
    );
    overload_for(&client, &upstream, 50).await;
    upstream.otherwise(Step::Gate(200));
    let answers: Vec<Answer> = (0..6).map(|i| spawn(&client, request(MODEL, i))).collect();
    settle().await;
    advance(50).await;
    assert_eq!(upstream.calls(), 2, "the probe");
    advance(100).await;
    // The probe has not failed within 100 ms: two more go, without its answer.
    assert_eq!(upstream.calls(), 4);
    assert_eq!(handle.admission(MODEL), Some(2));
    advance(100).await;
    assert_eq!(upstream.calls(), 7, "then the rest: nobody waits any more");
    assert_eq!(handle.depth(MODEL), 0);
    upstream.release(10);
    for answer in answers {
        assert_eq!(status_of(answer).await, 200);
    }
    assert_eq!(
        handle.admission(MODEL),
        None,
        "recovered once the backlog is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_sent_before_the_hold_that_succeeds_does_not_grow_slow_start() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .early_ack(Duration::from_secs(1))
            .max_wait(Duration::from_secs(2)),
        &upstream,
    );
    // Sent while nothing is wrong: accepted before the overload, answered during it.
    upstream.script(MODEL, [Step::Slow(Duration::from_millis(150), 200)]);
    let before = spawn(&client, request(MODEL, 0));
    settle().await;
    overload_for(&client, &upstream, 200).await;
    upstream.otherwise(Step::Gate(200));
    let answers: Vec<Answer> = (1..=3).map(|i| spawn(&client, request(MODEL, i))).collect();
    settle().await;
    advance(150).await;
    assert_eq!(status_of(before).await, 200);
    assert_eq!(
        handle.admission(MODEL),
        Some(1),
        "its success says nothing of the capacity now"
    );
    assert_eq!(upstream.calls(), 2, "nothing goes before the hold ends");
    advance(50).await;
    assert_eq!(upstream.calls(), 3, "then the probe alone");
    assert_eq!(handle.depth(MODEL), 2);
    upstream.release(3);
    for answer in answers {
        assert_eq!(status_of(answer).await, 200);
    }
}

#[tokio::test(start_paused = true)]
async fn calls_in_flight_when_a_hold_begins_do_not_keep_the_probe_back() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .early_ack(Duration::from_millis(100))
            .max_wait(Duration::from_secs(2)),
        &upstream,
    );
    overload_for(&client, &upstream, 50).await;
    upstream.otherwise(Step::Gate(200));
    let probe = spawn(&client, request(MODEL, 1));
    settle().await;
    advance(150).await;
    assert_eq!(handle.admission(MODEL), None, "recovered: nobody waits");
    // Sent while the key is still tracked (the probe is in flight) but not limited.
    let late: Vec<Answer> = (2..=3).map(|i| spawn(&client, request(MODEL, i))).collect();
    settle().await;
    assert_eq!(upstream.calls(), 4);
    // A new burst: the next call is overloaded, a hold begins, and the request is
    // held again in the queue.
    upstream.script(MODEL, [overloaded(100)]);
    let held = spawn(&client, request(MODEL, 4));
    settle().await;
    assert_eq!(upstream.calls(), 5);
    assert_eq!(handle.admission(MODEL), Some(1));
    assert_eq!(handle.depth(MODEL), 1);
    advance(100).await;
    assert_eq!(
        upstream.calls(),
        6,
        "the probe goes when the hold ends, though three older calls are in flight"
    );
    // The older calls' answers are no evidence for slow start.
    upstream.release(3);
    settle().await;
    assert_eq!(handle.admission(MODEL), Some(1));
    upstream.release(1);
    assert_eq!(status_of(probe).await, 200);
    for answer in late {
        assert_eq!(status_of(answer).await, 200);
    }
    assert_eq!(status_of(held).await, 200);
}

#[tokio::test(start_paused = true)]
async fn a_held_request_that_meets_a_new_overload_is_held_again_in_its_place() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .no_early_ack()
            .max_wait(Duration::from_secs(2)),
        &upstream,
    );
    overload_for(&client, &upstream, 200).await;
    // The probe meets the burst again; the second try passes.
    upstream.script(MODEL, [overloaded(300)]);
    let start = Instant::now();
    let answer = spawn(&client, request(MODEL, 1));
    advance(200).await;
    assert_eq!(upstream.calls(), 2, "the probe went");
    assert_eq!(handle.depth(MODEL), 1, "and is back in the queue");
    advance(300).await;
    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "the caller never saw the 529");
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    let tags: Vec<usize> = upstream.seen().iter().map(|s| tag_of(&s.body)).collect();
    assert_eq!(tags, [999, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_held_request_whose_wait_would_pass_its_budget_gets_the_live_answer() {
    let upstream = Upstream::new();
    let (client, _) = client(
        QueueConfig::new()
            .no_early_ack()
            .max_wait(Duration::from_millis(400)),
        &upstream,
    );
    overload_for(&client, &upstream, 200).await;
    upstream.script(MODEL, [overloaded(1000)]);
    let answer = spawn(&client, request(MODEL, 1));
    advance(200).await;
    let response = answer.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        529,
        "the upstream's own answer, not a shed"
    );
    assert!(response.extensions().get::<Shed>().is_none());
    assert_eq!(response.headers()["retry-after-ms"], "1000");
}

#[test]
fn both_health_views_must_say_yes() {
    use brownout_core::health::Health;
    let layer = QueueLayer::new(QueueConfig::new());
    let both = layer.handle().and(|key: &str| key != "down");
    assert!(both.is_available(MODEL));
    assert!(!both.is_available("down"));
}

#[tokio::test(start_paused = true)]
async fn a_breaker_outside_does_not_count_the_queues_sheds_as_upstream_failures() {
    use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, OpenDuration};
    let upstream = Upstream::new();
    let breakers = CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::consecutive(2).unwrap())
            .open_duration(OpenDuration::Fixed(Duration::from_secs(10))),
    );
    let breaker = breakers.handle();
    let client = ServiceBuilder::new()
        .layer(breakers)
        .layer(QueueLayer::new(
            QueueConfig::new().max_wait(Duration::from_millis(100)),
        ))
        .service(upstream.clone());
    // One upstream 529 (one failure of two): the key is held for a second.
    upstream.script(MODEL, [overloaded(1000)]);
    let first = client.clone().oneshot(request(MODEL, 0)).await.unwrap();
    assert_eq!(first.status(), 529);
    // The queue answers these itself (the wait is longer than max_wait): its own 529s.
    for i in 1..=5 {
        let shed = client.clone().oneshot(request(MODEL, i)).await.unwrap();
        assert_eq!(shed.status(), 529);
        assert!(shed.extensions().get::<Shed>().is_some());
    }
    assert_eq!(upstream.calls(), 1, "none of them reached the upstream");
    assert!(
        brownout_core::health::Health::is_available(&breaker, MODEL),
        "the sheds are the layer's own answers: the breaker stays closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_meets_a_new_overload_is_answered_not_held_again() {
    // As above, but the request is a breaker's probe: its 529 is the verdict the
    // breaker outside asked for, handed back at once.
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .no_early_ack()
            .max_wait(Duration::from_secs(2)),
        &upstream,
    );
    overload_for(&client, &upstream, 200).await;
    upstream.script(MODEL, [overloaded(300)]);
    let start = Instant::now();
    let mut probe = request(MODEL, 1);
    probe.extensions_mut().insert(brownout_core::request::Probe);
    let answer = spawn(&client, probe);
    advance(200).await;
    assert_eq!(upstream.calls(), 2, "the probe went");
    assert_eq!(handle.depth(MODEL), 0, "and was not held again");
    assert_eq!(status_of(answer).await, 529);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retry_inside_does_not_reach_a_model_the_queue_holds() {
    use brownout_retry::{Backoff, RetryConfig, RetryLayer};
    let upstream = Upstream::new();
    let layer = QueueLayer::new(
        QueueConfig::new()
            .early_ack(Duration::from_millis(50))
            .probe_after(Duration::from_millis(400))
            .max_wait(Duration::from_secs(2))
            .seed(7),
    );
    let handle = layer.handle();
    let client = ServiceBuilder::new()
        .layer(layer)
        .layer(RetryLayer::new(
            RetryConfig::new()
                .max_attempts(2)
                .no_budget()
                .seed(1)
                .backoff(
                    Backoff::exponential(Duration::from_millis(300), Duration::from_secs(1))
                        .unwrap(),
                )
                // A server delay goes back to the queue at once.
                .max_server_delay(Duration::ZERO),
        ))
        .service(upstream.clone());
    // A short hold, whose probe is still in flight when slow start ends (it survived
    // `early_ack` and nobody waits): the model is tracked, and unlimited.
    upstream.script(
        MODEL,
        [
            overloaded(100),
            Step::Gate(200),
            // Request 3 meets a 529 without a delay: its retry layer waits 300 ms.
            Step::Answer(529, vec![], OVERLOADED),
            // Request 4, sent meanwhile, meets one asking for 500 ms: a new hold.
            overloaded(500),
        ],
    );
    let _ = client.clone().oneshot(request(MODEL, 0)).await.unwrap();
    let probe = tokio::spawn(client.clone().oneshot(request(MODEL, 1)));
    advance(160).await;
    assert_eq!(upstream.calls(), 2);
    assert_eq!(handle.admission(MODEL), None, "slow start is over");
    let third = tokio::spawn(client.clone().oneshot(request(MODEL, 3)));
    advance(10).await;
    let fourth = tokio::spawn(client.clone().oneshot(request(MODEL, 4)));
    advance(10).await;
    assert_eq!(upstream.calls(), 4);
    assert_eq!(handle.admission(MODEL), Some(1), "the model is held again");
    // Request 3's backoff ends during the hold: its retry would be a request slow
    // start never admitted. It gets its 529 back instead (a cascade outside moves it
    // on), and the hold's probe (request 4, held again) goes when the hold ends.
    advance(300).await;
    assert_eq!(upstream.calls(), 4, "no retry reached the held model");
    let status =
        |r: Result<Result<Response<Body>, BoxError>, _>| r.unwrap().unwrap().status().as_u16();
    assert_eq!(status(third.await), 529);
    advance(200).await;
    assert_eq!(upstream.calls(), 5, "the probe went");
    assert_eq!(status(fourth.await), 200);
    upstream.release(1);
    assert_eq!(status(probe.await), 200);
}

#[tokio::test(start_paused = true)]
async fn a_probe_failed_without_a_delay_holds_the_key_for_probe_after() {
    let upstream = Upstream::new();
    let (client, handle) = client(
        QueueConfig::new()
            .no_early_ack()
            .probe_after(Duration::from_millis(200))
            .max_wait(Duration::from_secs(2)),
        &upstream,
    );
    overload_for(&client, &upstream, 200).await;
    // The probe meets a 529 without a delay; two requests wait behind it.
    upstream.script(MODEL, [Step::Answer(529, vec![], OVERLOADED)]);
    let probe = spawn(&client, request(MODEL, 1));
    let second = spawn(&client, request(MODEL, 2));
    let third = spawn(&client, request(MODEL, 3));
    advance(200).await;
    assert_eq!(upstream.calls(), 2, "the probe went");
    assert_eq!(status_of(probe).await, 529);
    // Not the next one the moment the probe's place is free: probe_after first.
    advance(199).await;
    assert_eq!(upstream.calls(), 2);
    assert_eq!(handle.depth(MODEL), 2);
    advance(1).await;
    // The next probe, 200 ms later; it succeeds at once and slow start lets the last
    // one in.
    assert_eq!(upstream.calls(), 4);
    assert_eq!(status_of(second).await, 200);
    assert_eq!(status_of(third).await, 200);
}
