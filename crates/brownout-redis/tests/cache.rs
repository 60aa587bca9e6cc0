//! Two cache layers in one process as two replicas, sharing entries through a real
//! Redis.
//!
//! In real time, like the breaker's Redis tests (Redis keeps its own clock for the
//! expirations, and answers over a socket); every wait is a bounded poll. They use
//! the Redis on 127.0.0.1:6379 and skip, saying why, when none answers (under `CI`
//! they fail); the outage test starts a `redis-server` of its own on a free port.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_cache::{Cache, CacheConfig, CacheStatus, Mode};
use brownout_core::{
    event::Event,
    testing::{Step, Upstream},
    Body, BoxError,
};
use brownout_redis::{RedisCacheStore, RedisConfig, RedisEvent};
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

fn ask(key: &str, question: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{{"role":"user","content":"{question}"}}]}}"#
    );
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn reply(
    cache: &Cache<Upstream>,
    key: &str,
    question: &str,
) -> (u16, Option<CacheStatus>, String) {
    let response: Result<Response<Body>, BoxError> =
        cache.clone().oneshot(ask(key, question)).await;
    let response = response.unwrap();
    let status = response.status().as_u16();
    let cached = response.extensions().get::<CacheStatus>().copied();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cached, String::from_utf8(body.to_vec()).unwrap())
}

/// A replica: a cache layer over `upstream`, its entries in Redis at `url`.
fn replica(
    url: &str,
    deployment: &str,
    config: CacheConfig,
    upstream: Upstream,
    tune: impl FnOnce(RedisConfig) -> RedisConfig,
) -> (Cache<Upstream>, RedisCacheStore) {
    let store =
        RedisCacheStore::new(tune(RedisConfig::new(url, deployment).unwrap()), &config).unwrap();
    (Cache::new(upstream, config.store(store.clone())), store)
}

async fn shared(store: &RedisCacheStore) {
    let ok = within(Duration::from_secs(2), || async { store.is_shared() }).await;
    assert!(ok.is_some(), "the store never reached Redis");
}

fn answering() -> Upstream {
    Upstream::new().body_with(|n, _| format!("answer-{n}"))
}

fn down() -> Upstream {
    let upstream = Upstream::new();
    upstream.otherwise(Step::Status(529));
    upstream
}

/// Every key and value of a deployment in Redis.
fn contents(url: &str, deployment: &str) -> Vec<(String, Vec<u8>)> {
    let keys: Vec<String> = query(
        url,
        redis::cmd("KEYS").arg(format!("brownout:{deployment}:*")),
    );
    keys.into_iter()
        .map(|key| {
            let value: Vec<u8> = if key.ends_with(":index") {
                let members: Vec<String> =
                    query(url, redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1));
                members.join(" ").into_bytes()
            } else {
                query(url, redis::cmd("GET").arg(&key))
            };
            (key, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_stored_by_a_is_served_by_b_only_to_its_caller() {
    if !redis_up("a_stale_answer_stored_by_a_is_served_by_b_only_to_its_caller").await {
        return;
    }
    let dep = deployment();
    let config = CacheConfig::new().ttl(Duration::from_secs(60));
    let (a, a_store) = replica(URL, &dep, config.clone(), answering(), |r| r);
    let b_upstream = down();
    let (b, b_store) = replica(URL, &dep, config, b_upstream.clone(), |r| r);
    shared(&a_store).await;
    shared(&b_store).await;

    assert_eq!(
        reply(&a, "sk-ant-caller-one", "Capital of France?").await,
        (200, None, "answer-0".into())
    );
    // B's model is down: A's answer stands in, once A's write has reached Redis.
    let served = within(Duration::from_secs(1), || async {
        reply(&b, "sk-ant-caller-one", "Capital of France?").await
            == (200, Some(CacheStatus::Stale), "answer-0".into())
    })
    .await;
    assert!(served.is_some(), "B never served A's answer");
    // Another caller asking the same gets no one else's answer.
    assert_eq!(
        reply(&b, "sk-ant-caller-two", "Capital of France?").await.0,
        529
    );
    assert!(b_upstream.calls() >= 2);

    // What Redis holds: the entry and the index, named by fingerprints, and no
    // credential in any key or value.
    let contents = contents(URL, &dep);
    assert_eq!(
        contents.len(),
        2,
        "{:?}",
        contents.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    for (key, value) in &contents {
        let prefix = format!("brownout:{dep}:cache:");
        let name = key.strip_prefix(&prefix).unwrap_or_else(|| panic!("{key}"));
        assert!(
            name == "index" || (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())),
            "{key}"
        );
        let text = String::from_utf8_lossy(value);
        assert!(
            !key.contains("caller") && !text.contains("caller"),
            "{key}: {text}"
        );
    }
    // The entry lives ttl + stale window (60 s + 1 h) in Redis.
    let entry = &contents
        .iter()
        .find(|c| !c.0.ends_with(":index"))
        .unwrap()
        .0;
    let pttl: i64 = query(URL, redis::cmd("PTTL").arg(entry));
    assert!(pttl > 3_600_000 && pttl <= 3_660_000, "{pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_answer_of_another_replica_is_a_hit() {
    if !redis_up("a_fresh_answer_of_another_replica_is_a_hit").await {
        return;
    }
    let dep = deployment();
    let config = CacheConfig::new()
        .mode(Mode::FreshHit)
        .ttl(Duration::from_secs(60));
    // A loaded CI machine can take longer than the 100 ms default for one Redis
    // call, which would (rightly) mark a link down and send a replica local-only:
    // both replicas get room.
    let roomy = |r: RedisConfig| r.timeout(Duration::from_secs(2));
    let (a, a_store) = replica(URL, &dep, config.clone(), answering(), roomy);
    shared(&a_store).await;
    assert_eq!(
        reply(&a, "sk-ant-one", "Hi").await,
        (200, None, "answer-0".into())
    );
    // A's write to Redis is off the request path: wait until it has landed,
    // then a replica started after it (a restart) still has the answer.
    let stored = within(Duration::from_secs(2), || async {
        contents(URL, &dep).iter().any(|c| !c.0.ends_with(":index"))
    })
    .await;
    assert!(stored.is_some(), "A's answer never reached Redis");
    let b_upstream = answering();
    let (b, b_store) = replica(URL, &dep, config, b_upstream.clone(), roomy);
    shared(&b_store).await;
    let hit = within(Duration::from_secs(1), || async {
        reply(&b, "sk-ant-one", "Hi").await == (200, Some(CacheStatus::Hit), "answer-0".into())
    })
    .await;
    assert!(hit.is_some(), "B did not hit A's fresh answer");
    // Once in B's local tier, B answers it with Redis out of the way.
    assert_eq!(
        b_upstream.calls(),
        0,
        "B went live for a fresh shared answer"
    );
    assert_eq!(b.usage().await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_holds_at_most_max_entries() {
    if !redis_up("the_fleet_holds_at_most_max_entries").await {
        return;
    }
    let dep = deployment();
    let config = CacheConfig::new().max_entries(3);
    let (a, a_store) = replica(URL, &dep, config.clone(), answering(), |r| r);
    let (b, b_store) = replica(URL, &dep, config, answering(), |r| r);
    shared(&a_store).await;
    shared(&b_store).await;
    for i in 0..4 {
        reply(&a, "sk-a", &format!("question {i}")).await;
        reply(&b, "sk-b", &format!("question {i}")).await;
    }
    let index = format!("brownout:{dep}:cache:index");
    let written = within(Duration::from_secs(1), || async {
        let entries: Vec<String> = query(
            URL,
            redis::cmd("KEYS").arg(format!("brownout:{dep}:cache:*")),
        );
        let indexed: u64 = query(URL, redis::cmd("ZCARD").arg(&index));
        // The 8 writes are in (the index trimmed) when the last one's key is there.
        entries.len() == 4 && indexed == 3
    })
    .await;
    let entries: Vec<String> = query(
        URL,
        redis::cmd("KEYS").arg(format!("brownout:{dep}:cache:*")),
    );
    assert!(written.is_some(), "{entries:?}");
    // Each process's local tier has its own bound too.
    assert!(a.usage().await.0 <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_means_the_local_tier_then_shared_again() {
    let port = free_port();
    let Some(mut server) = own_redis(port).await else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let dep = deployment();
    let events: Arc<Mutex<Vec<(&'static str, RedisEvent)>>> = Arc::default();
    let seen = events.clone();
    let tune = move |r: RedisConfig| {
        let seen = seen.clone();
        r.timeout(Duration::from_millis(250))
            .poll_interval(Duration::from_millis(100))
            .listener(move |event: &Event| {
                if let Some(data) = event.data::<RedisEvent>() {
                    seen.lock().unwrap().push((event.layer, data.clone()));
                }
            })
    };
    let config = CacheConfig::new();
    let (a, a_store) = replica(&url, &dep, config.clone(), answering(), tune.clone());
    let (b, b_store) = replica(&url, &dep, config, down(), tune);
    shared(&a_store).await;
    shared(&b_store).await;
    reply(&a, "sk-one", "before").await;
    let stale = (200, Some(CacheStatus::Stale), "answer-0".to_owned());
    assert!(within(Duration::from_secs(1), || async {
        reply(&b, "sk-one", "before").await == stale
    })
    .await
    .is_some());

    server.kill().await.unwrap();
    let lost = |events: &Mutex<Vec<(&'static str, RedisEvent)>>| {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|(layer, e)| {
                *layer == "redis-cache" && matches!(e, RedisEvent::SharedStateLost { .. })
            })
            .count()
    };
    // Every request is still answered: B from its local tier, A live.
    let noticed = within(Duration::from_secs(2), || async {
        assert_eq!(reply(&b, "sk-one", "before").await, stale);
        assert_eq!(reply(&a, "sk-one", "during").await.0, 200);
        !b_store.is_shared() && !a_store.is_shared() && lost(&events) == 2
    })
    .await;
    assert!(
        noticed.is_some(),
        "no event said Redis was lost: {:?}",
        events.lock().unwrap()
    );
    // Without Redis, A's new answer stays A's.
    assert_eq!(reply(&b, "sk-one", "during").await.0, 529);

    let Some(_server) = own_redis(port).await else {
        return;
    };
    let resumed = within(Duration::from_secs(3), || async {
        a_store.is_shared() && b_store.is_shared()
    })
    .await;
    assert!(resumed.is_some(), "the stores did not come back to Redis");
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|(layer, e)| *layer == "redis-cache"
            && matches!(e, RedisEvent::SharedStateResumed { .. })));
    // Shared again: an answer stored now reaches B. (A is asked again while it has
    // not: on a loaded machine a first call after the restart may time out, and its
    // write is dropped.)
    let shared_again = within(Duration::from_secs(3), || async {
        reply(&a, "sk-one", "after").await;
        reply(&b, "sk-one", "after").await.1 == Some(CacheStatus::Stale)
    })
    .await;
    assert!(
        shared_again.is_some(),
        "an answer stored after the restart did not reach B"
    );
}
