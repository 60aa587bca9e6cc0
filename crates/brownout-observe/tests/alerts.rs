//! Alert rules fire once, cool down and resolve (in paused time); the webhook is
//! received on loopback, retried after a 500; the command gets the JSON.
#![cfg(feature = "alert")]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_breaker::{BreakerEvent, CircuitState, TransitionReason};
use brownout_core::{classify::OutcomeKind, event::Event};
use brownout_observe::{
    alert::{AlertConfig, AlertRule, Alerts, Condition},
    AlertFeed, AlertNotice, Answer, Attempt, Exchange, Sink,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::advance;

const SONNET: &str = "claude-sonnet-4-5";

fn attempt(model: &str, outcome: OutcomeKind) -> Attempt {
    let mut a = Attempt::new(
        Arc::from("anthropic.messages"),
        1,
        outcome,
        Duration::from_millis(5),
    );
    a.model = Some(Arc::from(model));
    a
}

fn exchange(model: &str, answer: Answer) -> Exchange {
    let mut e = Exchange::new(
        Arc::from("anthropic.messages"),
        answer,
        200,
        Duration::from_millis(5),
    );
    e.requested_model = Some(Arc::from(model));
    e
}

fn breaker(key: &str, from: CircuitState, to: CircuitState) -> Event {
    Event::detached(
        "breaker",
        BreakerEvent::CircuitStateChanged {
            key: Arc::from(key),
            from,
            to,
            reason: TransitionReason::ConsecutiveFailures(5),
        },
    )
}

fn notices(alerts: &Alerts) -> Vec<AlertNotice> {
    let mut out = Vec::new();
    alerts.recent(usize::MAX, &mut out);
    out
}

/// (key, resolved) of each notice, oldest first.
fn states(alerts: &Alerts) -> Vec<(String, bool)> {
    notices(alerts)
        .iter()
        .map(|n| (n.key.to_string(), n.resolved))
        .collect()
}

fn start(rule: AlertRule) -> Alerts {
    Alerts::new(AlertConfig::new([rule])).unwrap()
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_fire_once_cool_down_and_resolve() {
    let rule = AlertRule::new(
        "sonnet-failing",
        Condition::ConsecutiveFailures { count: 3 },
    )
    .unwrap()
    .cooldown(Duration::from_secs(60));
    let alerts = start(rule);
    let fail = || alerts.attempt(&attempt(SONNET, OutcomeKind::Overloaded));
    let succeed = || alerts.attempt(&attempt(SONNET, OutcomeKind::Success));

    fail();
    fail();
    assert!(
        notices(&alerts).is_empty(),
        "two failures are below the threshold"
    );
    // Callers' errors and breaker refusals neither count nor reset.
    alerts.attempt(&attempt(SONNET, OutcomeKind::ClientError));
    alerts.attempt(&attempt(SONNET, OutcomeKind::Rejected));
    assert!(notices(&alerts).is_empty());
    fail();
    assert_eq!(states(&alerts), [(SONNET.into(), false)]);
    let fired = &notices(&alerts)[0];
    assert_eq!(&*fired.rule, "sonnet-failing");
    assert_eq!(
        fired.message,
        "claude-sonnet-4-5: 3 upstream calls failed in a row (threshold 3) [sonnet-failing firing]"
    );
    for _ in 0..10 {
        fail();
    }
    assert_eq!(notices(&alerts).len(), 1, "one notice while it stays on");

    succeed();
    assert_eq!(
        states(&alerts),
        [(SONNET.into(), false), (SONNET.into(), true)]
    );

    // Within the cool-down: firing again is not notified, nor is its clearing.
    advance(Duration::from_secs(10)).await;
    for _ in 0..3 {
        fail();
    }
    succeed();
    assert_eq!(notices(&alerts).len(), 2);

    // On again, and still on when the cool-down is over: the next failure notifies.
    for _ in 0..3 {
        fail();
    }
    assert_eq!(notices(&alerts).len(), 2);
    advance(Duration::from_secs(51)).await;
    fail();
    assert_eq!(notices(&alerts).len(), 3);
    assert!(!notices(&alerts)[2].resolved);
    succeed();
    assert_eq!(notices(&alerts).len(), 4);
    assert!(notices(&alerts)[3].resolved);
    assert_eq!(
        notices(&alerts)[3].message,
        "claude-sonnet-4-5: an upstream call succeeded again [sonnet-failing resolved]"
    );
}

#[tokio::test(start_paused = true)]
async fn keys_are_separate_and_bounded() {
    let rule = AlertRule::new("failing", Condition::ConsecutiveFailures { count: 1 }).unwrap();
    let alerts = Alerts::new(AlertConfig::new([rule]).max_keys(2)).unwrap();
    for model in ["a", "b", "c", "a"] {
        alerts.attempt(&attempt(model, OutcomeKind::ServerError));
    }
    // "c" is a third key: not tracked.
    assert_eq!(states(&alerts), [("a".into(), false), ("b".into(), false)]);
}

#[tokio::test(start_paused = true)]
async fn availability_below_fires_with_enough_requests_and_resolves_when_the_window_recovers() {
    let rule = AlertRule::new(
        "availability",
        Condition::AvailabilityBelow {
            percent: 90.0,
            window: Duration::from_secs(60),
            min_requests: 10,
        },
    )
    .unwrap();
    let alerts = start(rule);
    for _ in 0..9 {
        alerts.exchange(&exchange(SONNET, Answer::Failed));
    }
    assert!(
        notices(&alerts).is_empty(),
        "9 requests are below min_requests"
    );
    // The callers' own errors are not requests here.
    alerts.exchange(&exchange(SONNET, Answer::CallerError));
    assert!(notices(&alerts).is_empty());
    alerts.exchange(&exchange(SONNET, Answer::Shed));
    assert_eq!(states(&alerts), [(SONNET.into(), false)]);
    assert_eq!(
        notices(&alerts)[0].message,
        "claude-sonnet-4-5: availability 0.0% over 1m (10 requests; threshold 90%) [availability firing]"
    );

    // Fallback, cache and degraded answers count as answered: 10 failed of 100 is 90%.
    for answer in [
        Answer::Live,
        Answer::Fallback,
        Answer::Cached,
        Answer::Stale,
        Answer::Degraded,
    ] {
        for _ in 0..17 {
            alerts.exchange(&exchange(SONNET, answer));
        }
    }
    assert_eq!(
        notices(&alerts).len(),
        1,
        "10 of 95 failed: still below 90%"
    );
    for _ in 0..5 {
        alerts.exchange(&exchange(SONNET, Answer::Live));
    }
    assert_eq!(
        states(&alerts),
        [(SONNET.into(), false), (SONNET.into(), true)]
    );
    assert_eq!(
        notices(&alerts)[1].message,
        "claude-sonnet-4-5: availability 90.0% over 1m (100 requests; threshold 90%) [availability resolved]"
    );

    // A minute later the window holds only what came since.
    advance(Duration::from_secs(61)).await;
    for _ in 0..10 {
        alerts.exchange(&exchange(SONNET, Answer::Live));
    }
    assert_eq!(notices(&alerts).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides() {
    let rule = AlertRule::new(
        "availability",
        Condition::AvailabilityBelow {
            percent: 50.0,
            window: Duration::from_secs(60),
            min_requests: 4,
        },
    )
    .unwrap();
    let alerts = start(rule);
    for _ in 0..3 {
        alerts.exchange(&exchange(SONNET, Answer::Failed));
    }
    // The three failures fall out of the window before the fourth request.
    advance(Duration::from_secs(70)).await;
    alerts.exchange(&exchange(SONNET, Answer::Failed));
    assert!(notices(&alerts).is_empty(), "one request in the window");
    for _ in 0..3 {
        alerts.exchange(&exchange(SONNET, Answer::Failed));
    }
    assert_eq!(notices(&alerts).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn degraded_above_fires_past_the_share() {
    let rule = AlertRule::new(
        "degraded",
        Condition::DegradedAbove {
            percent: 50.0,
            window: Duration::from_secs(60),
            min_requests: 4,
        },
    )
    .unwrap();
    let alerts = start(rule);
    for answer in [
        Answer::Degraded,
        Answer::Live,
        Answer::Degraded,
        Answer::Live,
    ] {
        alerts.exchange(&exchange(SONNET, answer));
    }
    assert!(notices(&alerts).is_empty(), "50% is not above 50%");
    alerts.exchange(&exchange(SONNET, Answer::Degraded));
    assert_eq!(
        notices(&alerts)[0].message,
        "claude-sonnet-4-5: degraded share 60.0% over 1m (5 requests; threshold 50%) [degraded firing]"
    );
    for _ in 0..5 {
        alerts.exchange(&exchange(SONNET, Answer::Live));
    }
    assert_eq!(
        states(&alerts),
        [(SONNET.into(), false), (SONNET.into(), true)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opening_fires_and_its_closing_resolves() {
    let rule = AlertRule::new("breaker", Condition::BreakerOpen).unwrap();
    let alerts = start(rule);
    alerts.event(&breaker(SONNET, CircuitState::Closed, CircuitState::Open));
    alerts.event(&breaker(
        "claude-haiku-4-5",
        CircuitState::Closed,
        CircuitState::ForcedOpen,
    ));
    assert_eq!(
        states(&alerts),
        [(SONNET.into(), false), ("claude-haiku-4-5".into(), false)]
    );
    // Half-open is not healthy yet; a refusal is not a state change.
    alerts.event(&breaker(SONNET, CircuitState::Open, CircuitState::HalfOpen));
    alerts.event(&Event::detached(
        "breaker",
        BreakerEvent::CircuitRejected {
            key: Arc::from(SONNET),
            retry_after: None,
        },
    ));
    assert_eq!(notices(&alerts).len(), 2);
    alerts.event(&breaker(
        SONNET,
        CircuitState::HalfOpen,
        CircuitState::Closed,
    ));
    assert_eq!(notices(&alerts).len(), 3);
    assert_eq!(
        notices(&alerts)[2].message,
        "claude-sonnet-4-5: circuit breaker closed [breaker resolved]"
    );
}

#[tokio::test(start_paused = true)]
async fn the_feed_keeps_the_newest_notices() {
    let rule = AlertRule::new("failing", Condition::ConsecutiveFailures { count: 1 }).unwrap();
    let alerts = Alerts::new(AlertConfig::new([rule]).feed(2)).unwrap();
    for model in ["a", "b", "c"] {
        alerts.attempt(&attempt(model, OutcomeKind::ServerError));
    }
    assert_eq!(states(&alerts), [("b".into(), false), ("c".into(), false)]);
    let mut last = Vec::new();
    alerts.recent(1, &mut last);
    assert_eq!(&*last[0].key, "c");
}

#[test]
fn bad_rules_name_their_field_and_alerts_need_a_runtime() {
    let cases = [
        (Condition::ConsecutiveFailures { count: 0 }, "count"),
        (
            Condition::AvailabilityBelow {
                percent: 0.0,
                window: Duration::from_secs(1),
                min_requests: 1,
            },
            "percent",
        ),
        (
            Condition::AvailabilityBelow {
                percent: 101.0,
                window: Duration::from_secs(1),
                min_requests: 1,
            },
            "percent",
        ),
        (
            Condition::DegradedAbove {
                percent: 10.0,
                window: Duration::ZERO,
                min_requests: 1,
            },
            "window",
        ),
        (
            Condition::DegradedAbove {
                percent: 10.0,
                window: Duration::from_secs(1),
                min_requests: 0,
            },
            "min_requests",
        ),
    ];
    for (condition, field) in cases {
        assert_eq!(AlertRule::new("r", condition).unwrap_err().key(), field);
    }
    assert_eq!(
        AlertRule::new(" ", Condition::BreakerOpen)
            .unwrap_err()
            .key(),
        "name"
    );
    let error = Alerts::new(AlertConfig::new([])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "alerts must be started inside a tokio runtime"
    );
}

/// A webhook receiver on loopback: records each POST body; answers the statuses of
/// `script` in turn, then 200.
async fn receiver(
    script: Vec<u16>,
) -> (
    String,
    Arc<Mutex<Vec<(String, Bytes)>>>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(script.into_iter()));
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, tx, script) = (Arc::clone(&recorded), tx.clone(), Arc::clone(&script));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (seen, tx, script) =
                            (Arc::clone(&seen), tx.clone(), Arc::clone(&script));
                        async move {
                            let content_type = request
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            seen.lock().unwrap().push((content_type, body));
                            let status = script.lock().unwrap().next().unwrap_or(200);
                            let _ = tx.send(());
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}/hook"), seen, rx)
}

async fn wait_for(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the webhook arrives")
            .unwrap();
    }
}

#[tokio::test]
async fn the_webhook_is_received_on_loopback_and_retried_after_a_500() {
    let (url, seen, mut arrived) = receiver(vec![500]).await;
    let rule = AlertRule::new(
        "sonnet-failing",
        Condition::ConsecutiveFailures { count: 2 },
    )
    .unwrap()
    .webhook(url.parse().unwrap());
    let alerts = Alerts::new(AlertConfig::new([rule]).backoff(Duration::from_millis(20))).unwrap();
    alerts.attempt(&attempt(SONNET, OutcomeKind::Overloaded));
    alerts.attempt(&attempt(SONNET, OutcomeKind::Overloaded));
    wait_for(&mut arrived, 2).await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the first try got 500, the retry 200");
        assert_eq!(seen[0], seen[1], "the retry sends the same notice");
        assert_eq!(seen[0].0, "application/json");
        let json: serde_json::Value = serde_json::from_slice(&seen[0].1).unwrap();
        assert_eq!(json["rule"], "sonnet-failing");
        assert_eq!(json["key"], SONNET);
        assert_eq!(json["state"], "firing");
        assert_eq!(json["condition"], "consecutive_failures");
        assert_eq!(json["value"], 2.0);
        assert_eq!(json["threshold"], 2.0);
        assert!(json["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    }
    alerts.attempt(&attempt(SONNET, OutcomeKind::Success));
    wait_for(&mut arrived, 1).await;
    let seen = seen.lock().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&seen[2].1).unwrap();
    assert_eq!(json["state"], "resolved");
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn a_refused_webhook_is_not_retried_and_a_failing_one_stops_after_its_retries() {
    let (url, seen, mut arrived) = receiver(vec![400, 503, 503, 503]).await;
    let rule = AlertRule::new("failing", Condition::ConsecutiveFailures { count: 1 })
        .unwrap()
        .cooldown(Duration::ZERO)
        .webhook(url.parse().unwrap());
    let alerts = Alerts::new(
        AlertConfig::new([rule])
            .backoff(Duration::from_millis(5))
            .retries(2),
    )
    .unwrap();
    // 400: given up at once.
    alerts.attempt(&attempt("a", OutcomeKind::ServerError));
    wait_for(&mut arrived, 1).await;
    // 503 three times: the first try and two retries, then no more.
    alerts.attempt(&attempt("b", OutcomeKind::ServerError));
    wait_for(&mut arrived, 3).await;
    // A third notice, answered 200, proves the sender moved on.
    alerts.attempt(&attempt("c", OutcomeKind::ServerError));
    wait_for(&mut arrived, 1).await;
    let keys: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<serde_json::Value>(body).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(keys, ["a", "b", "b", "b", "c"]);
}

#[tokio::test]
async fn the_command_gets_the_notice_on_stdin_and_in_its_environment() {
    let dir = std::env::temp_dir().join(format!("brownout-alert-cmd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("notice.json");
    let env = dir.join("env.txt");
    let script = format!(
        "printf '%s %s %s' \"$BROWNOUT_ALERT_RULE\" \"$BROWNOUT_ALERT_KEY\" \"$BROWNOUT_ALERT_STATE\" > '{}.tmp' && mv '{}.tmp' '{}'; cat > '{}.tmp' && mv '{}.tmp' '{}'",
        env.display(), env.display(), env.display(), out.display(), out.display(), out.display()
    );
    let rule = AlertRule::new("breaker", Condition::BreakerOpen)
        .unwrap()
        .command(["sh", "-c", script.as_str()]);
    let alerts = start(rule);
    alerts.event(&breaker(SONNET, CircuitState::Closed, CircuitState::Open));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(out.exists() && env.exists()) {
        assert!(tokio::time::Instant::now() < deadline, "the command ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "breaker claude-sonnet-4-5 firing"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(json["condition"], "breaker_open");
    assert_eq!(
        json["message"],
        "claude-sonnet-4-5: circuit breaker open [breaker firing]"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn records_a_rule_does_not_read_take_none_of_its_keys() {
    // A breaker rule bounded to one key: exchanges and attempts for other models must
    // not use up its key budget.
    let rule = AlertRule::new("breaker", Condition::BreakerOpen).unwrap();
    let alerts = Alerts::new(AlertConfig::new([rule]).max_keys(1)).unwrap();
    for model in ["x", "y", "z"] {
        alerts.exchange(&exchange(model, Answer::Failed));
        alerts.attempt(&attempt(model, OutcomeKind::ServerError));
    }
    alerts.event(&breaker(SONNET, CircuitState::Closed, CircuitState::Open));
    assert_eq!(states(&alerts), [(SONNET.into(), false)]);
}

#[test]
fn a_rule_never_prints_its_webhook_token() {
    let rule = AlertRule::new("breaker", Condition::BreakerOpen)
        .unwrap()
        .webhook(
            "https://hooks.example.com/services/T00/B00/sekret?token=sekret2"
                .parse()
                .unwrap(),
        );
    let debug = format!("{:?}", AlertConfig::new([rule]));
    assert!(debug.contains("https://hooks.example.com/…"), "{debug}");
    assert!(!debug.contains("sekret"), "{debug}");
}
