//! Two rate limiters as two replicas, sharing their buckets through a real Redis, in
//! front of a simulator that enforces the provider's limits.
//!
//! Real time, as the other Redis tests (Redis refills the buckets on its own clock),
//! each test a few seconds at most. The simulator is `scripts/limits.toml` scaled to
//! real time: 2 ms answers and 600 requests a minute, so that a minute's burst and
//! the refill after it both fit in a few seconds.
//!
//! The shared-limit test uses the Redis on 127.0.0.1:6379 (a fresh deployment name
//! each run) and skips, saying why, when none answers; under `CI` it fails instead.
//! The outage tests start their own `redis-server` on a free port.

mod common;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use brownout_core::{event::Event, Body, BoxError};
use brownout_limit::{LimitStore, Limits, LocalLimitStore, RateLimitConfig, RateLimitLayer};
use brownout_redis::{FailMode, RedisConfig, RedisEvent, RedisLimitStore};
use brownout_sim::{Script, Sim, SimBody};
use bytes::Bytes;
use common::{deployment, free_port, own_redis, redis_up, within};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::time::{sleep, Instant};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};

const MODEL: &str = "claude-sonnet-4-5";
const RPM: u64 = 600;

/// The shipped limits script, in real time: 2 ms answers, 600 requests a minute,
/// tokens far from binding.
fn script(rpm: u64) -> Script {
    let toml = include_str!("../../brownout-sim/scripts/limits.toml")
        .replace(
            r#"latency = { fixed = "500ms" }"#,
            r#"latency = { fixed = "2ms" }"#,
        )
        .replace(
            "requests_per_minute = 120\n",
            &format!("requests_per_minute = {rpm}\n"),
        )
        .replace(
            "input_tokens_per_minute = 20000",
            "input_tokens_per_minute = 100000000",
        )
        .replace(
            "output_tokens_per_minute = 8000",
            "output_tokens_per_minute = 100000000",
        );
    let script = Script::from_toml_str(&toml).unwrap();
    assert!(toml.contains(&format!("requests_per_minute = {rpm}")));
    script
}

type Stack = BoxCloneSyncService<Request<Full<Bytes>>, http::Response<Body>, BoxError>;

fn stack(sim: &Sim, store: impl LimitStore) -> Stack {
    stack_at(sim, store, RPM)
}

fn stack_at(sim: &Sim, store: impl LimitStore, rpm: u64) -> Stack {
    let limits = Limits::new()
        .requests_per_minute(rpm)
        .input_tokens_per_minute(100_000_000)
        .output_tokens_per_minute(100_000_000);
    let layer = RateLimitLayer::new(
        RateLimitConfig::new()
            .model(MODEL, limits)
            .max_wait(Duration::from_secs(10))
            .store(store),
    )
    .unwrap();
    // The simulator's rate-limit headers are taken off, so that what holds the
    // limit is the store, not what each replica learns from them.
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(layer)
            .map_response(|mut response: http::Response<SimBody>| {
                let learned: Vec<_> = response
                    .headers()
                    .keys()
                    .filter(|n| n.as_str().starts_with("anthropic-ratelimit-"))
                    .cloned()
                    .collect();
                for name in learned {
                    response.headers_mut().remove(name);
                }
                response
            })
            .service(sim.clone()),
    )
}

fn request() -> Request<Full<Bytes>> {
    Request::post("/v1/messages")
        .header("x-api-key", "sk-ant-fleet-shared-key")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","max_tokens":48,"messages":[{"role":"user","content":"Hello, how are you?"}]}"#,
        )))
        .unwrap()
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// `callers` callers per stack, each sending back to back until `end`.
async fn drive(stacks: &[Stack], callers: usize, end: Instant) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for stack in stacks {
        for _ in 0..callers {
            let stack = stack.clone();
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let response = stack.clone().oneshot(request()).await.unwrap();
                    let status = response.status();
                    response.into_body().collect().await.unwrap();
                    let counter = match status.as_u16() {
                        200 => &tally.ok,
                        429 => &tally.limited,
                        _ => &tally.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

async fn shared(store: &RedisLimitStore) {
    let ok = within(Duration::from_secs(3), || async { store.is_shared() }).await;
    assert!(ok.is_some(), "the store never reached Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit_with_no_429_at_the_limit() {
    if !redis_up("two_replicas_share_one_limit_with_no_429_at_the_limit").await {
        return;
    }
    // Control: two replicas with their own local buckets send twice the limit.
    let sim = Sim::new(script(RPM));
    let local = [stack(&sim, LocalLimitStore), stack(&sim, LocalLimitStore)];
    let tally = drive(&local, 4, Instant::now() + Duration::from_secs(1)).await;
    let over = sim
        .stats()
        .by_answer
        .get("over_limit")
        .copied()
        .unwrap_or(0);
    eprintln!("local: {tally:?}, simulator {:?}", sim.stats().by_answer);
    // Each pauses on its first 429s' `retry-after`, so they are few; but not none.
    assert!(over > 0, "two local limiters were never over the limit");
    assert_eq!(tally.limited.load(Ordering::Relaxed), over);

    // Two replicas sharing their buckets in Redis.
    let sim = Sim::new(script(RPM));
    let redis = RedisConfig::new("redis://127.0.0.1:6379", &deployment()).unwrap();
    let a = RedisLimitStore::new(redis.clone(), FailMode::Open).unwrap();
    let b = RedisLimitStore::new(redis, FailMode::Open).unwrap();
    shared(&a).await;
    shared(&b).await;
    // The shared buckets refill on Redis's clock and the simulator's on its own: at
    // exactly the limit, one request in a run now and then lands a hair before the
    // simulator has room (one 429 in about ten runs). A 1 % margin, as a deployment
    // would keep, takes the race out.
    let shared_rpm = RPM - RPM / 100;
    let stacks = [
        stack_at(&sim, a.clone(), shared_rpm),
        stack_at(&sim, b.clone(), shared_rpm),
    ];
    let start = Instant::now();
    let run = Duration::from_secs(2);
    let tally = drive(&stacks, 4, start + run).await;
    let elapsed = start.elapsed();
    let stats = sim.stats();
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "shared: {ok} answered in {elapsed:?}, 429s {}, simulator {:?}",
        tally.limited.load(Ordering::Relaxed),
        stats.by_answer
    );
    assert_eq!(tally.limited.load(Ordering::Relaxed), 0, "no 429 at all");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    assert!(!stats.by_answer.contains_key("over_limit"), "{stats:?}");
    assert_eq!(stats.by_answer.get("ok").copied(), Some(ok));
    // A minute's burst, then the limit's rate for as long as the callers sent.
    let per_sec = RPM as f64 / 60.0;
    let floor = (RPM as f64 + per_sec * run.as_secs_f64()) * 0.97;
    let ceiling = RPM as f64 + per_sec * elapsed.as_secs_f64() + 1.0;
    assert!(
        ok as f64 >= floor && ok as f64 <= ceiling,
        "{ok} answered, expected {floor:.0}..={ceiling:.0}"
    );
    // At most one round trip per request, for admission; settlements in batches.
    let trips = [a.round_trips(), b.round_trips()];
    let admissions: u64 = trips.iter().map(|t| t.admissions).sum();
    let flushes: u64 = trips.iter().map(|t| t.flushes).sum();
    eprintln!("round trips: {admissions} admissions, {flushes} flushes for {ok} requests");
    assert_eq!(admissions, ok, "one admission round trip per request");
    assert!(
        flushes < ok / 10,
        "{flushes} flush round trips for {ok} requests"
    );
}

/// A Redis of the test's own, on a free port.
struct OwnRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it, answering; `None` (skip) without the binary outside CI.
    async fn start(port: u16) -> Option<OwnRedis> {
        let child = own_redis(port).await?;
        Some(OwnRedis {
            port,
            child: Some(child),
        })
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

async fn redis_keys(port: u16) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg("brownout:*")
        .query_async(&mut conn)
        .await
        .unwrap()
}

type Seen = Arc<Mutex<Vec<RedisEvent>>>;

fn config(addr: &str, seen: &Seen) -> RedisConfig {
    let seen = seen.clone();
    RedisConfig::new(&format!("redis://{addr}"), &deployment())
        .unwrap()
        .timeout(Duration::from_millis(50))
        .poll_interval(Duration::from_millis(100))
        .listener(move |event: &Event| {
            if let Some(data) = event.data::<RedisEvent>() {
                seen.lock().unwrap().push(data.clone());
            }
        })
}

fn count(seen: &Seen, f: impl Fn(&RedisEvent) -> bool) -> usize {
    seen.lock().unwrap().iter().filter(|e| f(e)).count()
}

fn lost(e: &RedisEvent) -> bool {
    matches!(e, RedisEvent::SharedStateLost { .. })
}

fn resumed(e: &RedisEvent) -> bool {
    matches!(e, RedisEvent::SharedStateResumed { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_open_to_local_then_shares_again() {
    let port = free_port();
    let Some(mut redis) = OwnRedis::start(port).await else {
        return;
    };
    let seen: Seen = Arc::default();
    // Limits this test does not reach: it is about where requests are decided.
    let sim = Sim::new(script(RPM * 1000));
    let store = RedisLimitStore::new(config(&redis.addr(), &seen), FailMode::Open).unwrap();
    shared(&store).await;
    let stacks = [stack_at(&sim, store.clone(), RPM * 1000)];

    // Shared: every request decided in Redis.
    let tally = drive(&stacks, 4, Instant::now() + Duration::from_millis(300)).await;
    let before = store.round_trips().admissions;
    let sent = tally.ok.load(Ordering::Relaxed);
    assert!(sent > 0);
    assert_eq!(before, sent);
    // One hash for the key, namespaced, named by model and a fingerprint.
    let keys = redis_keys(port).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (prefix, rest) = keys[0].split_once(":limit:").unwrap();
    assert!(prefix.starts_with("brownout:test-"), "{prefix}");
    let (model, fp) = rest.split_once("/fp:").unwrap();
    assert_eq!(model, MODEL);
    assert_eq!(fp.len(), 32);
    assert!(
        !keys[0].contains("fleet-shared"),
        "a credential in {}",
        keys[0]
    );

    // Redis gone: every request is still answered, from the local buckets.
    redis.kill().await;
    let tally = drive(&stacks, 4, Instant::now() + Duration::from_millis(500)).await;
    assert_eq!(tally.limited.load(Ordering::Relaxed), 0);
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    let local = tally.ok.load(Ordering::Relaxed);
    assert!(local > 20, "only {local} answered while Redis was away");
    assert!(!store.is_shared());
    assert_eq!(count(&seen, lost), 1, "{:?}", seen.lock().unwrap());
    // At most the one request that found Redis gone went there.
    let during = store.round_trips().admissions - before;
    assert!(
        during <= 4,
        "{during} admissions sent to a Redis known to be away"
    );

    // A Redis on the same port again: back to the shared buckets, and said so.
    let _redis = OwnRedis::start(port).await.unwrap();
    let back = within(Duration::from_secs(3), || async { store.is_shared() }).await;
    assert!(back.is_some(), "never back on the shared state");
    assert_eq!(count(&seen, resumed), 1, "{:?}", seen.lock().unwrap());
    let before = store.round_trips().admissions;
    let tally = drive(&stacks, 4, Instant::now() + Duration::from_millis(200)).await;
    let after = store.round_trips().admissions - before;
    assert_eq!(after, tally.ok.load(Ordering::Relaxed));
    assert!(after > 0);
    assert!(!sim.stats().by_answer.contains_key("over_limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_429_in_the_provider_s_shape_while_redis_is_away() {
    let port = free_port();
    let Some(mut redis) = OwnRedis::start(port).await else {
        return;
    };
    let seen: Seen = Arc::default();
    let sim = Sim::new(script(RPM));
    let mode = FailMode::Closed {
        retry_after: Duration::from_secs(2),
    };
    let store = RedisLimitStore::new(config(&redis.addr(), &seen), mode).unwrap();
    shared(&store).await;
    let stack = stack(&sim, store.clone());
    let response = stack.clone().oneshot(request()).await.unwrap();
    assert_eq!(response.status(), 200);

    redis.kill().await;
    // The first request finds Redis gone and is refused; so are those after it,
    // without asking Redis.
    for _ in 0..3 {
        let response = stack.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "2");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }
    assert!(store.round_trips().admissions <= 2);
    assert_eq!(count(&seen, lost), 1);
    assert_eq!(sim.stats().by_answer.get("ok").copied(), Some(1));

    let _redis = OwnRedis::start(port).await.unwrap();
    let back = within(Duration::from_secs(3), || async { store.is_shared() }).await;
    assert!(back.is_some(), "never back on the shared state");
    let response = stack.clone().oneshot(request()).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_a_request_the_timeout_at_most() {
    let port = free_port();
    let Some(redis) = OwnRedis::start(port).await else {
        return;
    };
    let seen: Seen = Arc::default();
    let sim = Sim::new(script(RPM * 1000));
    let store = RedisLimitStore::new(config(&redis.addr(), &seen), FailMode::Open).unwrap();
    shared(&store).await;
    let stack = stack_at(&sim, store.clone(), RPM * 1000);
    assert_eq!(
        stack.clone().oneshot(request()).await.unwrap().status(),
        200
    );

    // Redis stalls for 600 ms; the store's timeout is 50 ms.
    let client = redis::Client::open(format!("redis://{}", redis.addr())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stall = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.6")
            .query_async::<()>(&mut conn)
            .await
    });
    sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let response = stack.clone().oneshot(request()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 200, "answered from the local buckets");
    assert!(
        took < Duration::from_millis(300),
        "waited {took:?} on a stalled Redis"
    );
    assert!(!store.is_shared());
    assert!(
        seen.lock()
            .unwrap()
            .contains(&RedisEvent::SharedStateLost { reason: "timeout" }),
        "{:?}",
        seen.lock().unwrap()
    );
    // Meanwhile, no call waits on Redis at all.
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(
            stack.clone().oneshot(request()).await.unwrap().status(),
            200
        );
    }
    assert!(started.elapsed() < Duration::from_millis(200));
    // (Its own client may give up on the reply first.)
    let _ = stall.await;
    let back = within(Duration::from_secs(3), || async { store.is_shared() }).await;
    assert!(back.is_some(), "never back on the shared state");
    assert_eq!(count(&seen, resumed), 1);
}
