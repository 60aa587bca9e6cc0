//! Two stores in one process as two replicas, against a real Redis.
//!
//! These tests run on real time, not on Tokio's paused clock: the other side is a
//! Redis server, whose replies (and pub/sub messages) arrive over a socket on its own
//! schedule, and whose expirations run on its own clock. A paused clock would fire
//! every timeout before Redis could answer. They are kept short (every wait is a
//! bounded poll for a condition; about 1 s in all, the tests running side by side).
//!
//! They use the Redis on 127.0.0.1:6379 and skip, saying why, when none answers; under
//! `CI` they fail instead. The outage test starts its own `redis-server` on a free
//! port, and skips when the binary is missing (fails under `CI`).

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_breaker::{
    Admission, BreakerConfig, BreakerEntry, BreakerStore, FailurePolicy, OpenDuration, Verdict,
};
use brownout_core::event::Event;
use brownout_redis::{RedisBreakerStore, RedisConfig, RedisEvent};
use common::{deployment, free_port, own_redis, redis_up, within, URL};
use tokio::time::{sleep, Instant};

fn breaker(failures: u32, open: Duration) -> BreakerConfig {
    BreakerConfig::new()
        .policy(FailurePolicy::consecutive(failures).unwrap())
        .open_duration(OpenDuration::Fixed(open))
}

async fn shared(store: &RedisBreakerStore) {
    let ok = within(Duration::from_secs(2), || async { store.is_shared() }).await;
    assert!(ok.is_some(), "the store never reached Redis");
}

fn fail(entry: &Arc<dyn BreakerEntry>, times: usize) {
    for _ in 0..times {
        let now = Instant::now();
        let (Admission::Admitted(permit), _) = entry.acquire(now) else {
            panic!("refused while closed");
        };
        entry.record(
            permit,
            Verdict::Failure { server_delay: None },
            Instant::now(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_opens_and_b_skips_within_a_second() {
    if !redis_up("a_opens_and_b_skips_within_a_second").await {
        return;
    }
    let dep = deployment();
    let config = breaker(3, Duration::from_secs(3));
    // Polling slower than the 1 s bound: what is tested is the pub/sub message.
    let redis = RedisConfig::new(URL, &dep)
        .unwrap()
        .poll_interval(Duration::from_secs(5));
    let a = RedisBreakerStore::new(redis.clone(), &config).unwrap();
    let b = RedisBreakerStore::new(redis, &config).unwrap();
    shared(&a).await;
    shared(&b).await;
    let key = "claude-sonnet-4-5";
    let b_entry = b.entry(key, Instant::now());
    assert!(b_entry.is_available(Instant::now()));

    fail(&a.entry(key, Instant::now()), 3);
    assert!(!a.entry(key, Instant::now()).is_available(Instant::now()));

    let took = within(Duration::from_secs(1), || async {
        !b.entry(key, Instant::now()).is_available(Instant::now())
    })
    .await
    .expect("B did not skip the key A opened within 1 s");
    println!("B skipped the key {took:?} after A opened it");
    match b.entry(key, Instant::now()).acquire(Instant::now()).0 {
        Admission::Rejected {
            retry_after: Some(delay),
        } => assert!(delay > Duration::from_secs(1) && delay <= Duration::from_secs(3)),
        other => panic!("B admitted or gave no delay: {other:?}"),
    }

    // An operator's force on B wins over the fleet.
    let forced = b.entry(key, Instant::now());
    forced.force(brownout_breaker::Force::Closed);
    assert!(forced.is_available(Instant::now()));
    assert!(matches!(
        forced.acquire(Instant::now()).0,
        Admission::Admitted(_)
    ));
    forced.force(brownout_breaker::Force::Reset);
    assert!(!forced.is_available(Instant::now()));

    // A replica that starts later (polling fast this time) learns it from Redis.
    let redis = RedisConfig::new(URL, &dep)
        .unwrap()
        .poll_interval(Duration::from_millis(100));
    let c = RedisBreakerStore::new(redis, &config).unwrap();
    shared(&c).await;
    let learned = within(Duration::from_secs(1), || async {
        !c.entry(key, Instant::now()).is_available(Instant::now())
    })
    .await;
    assert!(
        learned.is_some(),
        "a new replica did not learn the open key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_probes_a_half_open_key() {
    if !redis_up("one_replica_probes_a_half_open_key").await {
        return;
    }
    let dep = deployment();
    let config = breaker(2, Duration::from_millis(300));
    let redis = RedisConfig::new(URL, &dep).unwrap();
    let a = RedisBreakerStore::new(redis.clone(), &config).unwrap();
    let b = RedisBreakerStore::new(redis, &config).unwrap();
    shared(&a).await;
    shared(&b).await;
    let key = "gpt-4o";
    let _ = b.entry(key, Instant::now());
    fail(&a.entry(key, Instant::now()), 2);
    within(Duration::from_secs(1), || async {
        !b.entry(key, Instant::now()).is_available(Instant::now())
    })
    .await
    .expect("B never saw the open");
    sleep(Duration::from_millis(320)).await;

    // Both replicas are asked for the key, over and over, for 300 ms.
    let mut admitted = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        for (name, store) in [("a", &a), ("b", &b)] {
            let entry = store.entry(key, Instant::now());
            if let (Admission::Admitted(permit), _) = entry.acquire(Instant::now()) {
                admitted.push((name, entry, permit, start.elapsed()));
            }
        }
        sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        admitted.len(),
        1,
        "probes sent: {:?}",
        admitted.iter().map(|p| (p.0, p.2, p.3)).collect::<Vec<_>>()
    );
    let (winner, entry, permit, _) = admitted.pop().unwrap();
    entry.record(permit, Verdict::Success, Instant::now());
    let other = if winner == "a" { &b } else { &a };
    let closed = within(Duration::from_secs(1), || async {
        other
            .entry(key, Instant::now())
            .is_available(Instant::now())
    })
    .await;
    assert!(
        closed.is_some(),
        "the probe's success did not reach the other replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleets_counts_open_a_key() {
    if !redis_up("the_fleets_counts_open_a_key").await {
        return;
    }
    let dep = deployment();
    // Each replica alone would never trip: the fleet's rate does.
    let config = breaker(1_000, Duration::from_secs(30));
    let redis = RedisConfig::new(URL, &dep)
        .unwrap()
        .shared_failure_rate(0.5, 20, Duration::from_secs(10))
        .shared_open_duration(Duration::from_secs(2));
    let a = RedisBreakerStore::new(redis.clone(), &config).unwrap();
    let b = RedisBreakerStore::new(redis, &config).unwrap();
    shared(&a).await;
    shared(&b).await;
    let key = "claude-opus-4-1";
    fail(&a.entry(key, Instant::now()), 6);
    fail(&b.entry(key, Instant::now()), 6);
    // 12 calls: under the minimum of 20, nothing opens.
    sleep(Duration::from_millis(250)).await;
    assert!(a.entry(key, Instant::now()).is_available(Instant::now()));
    fail(&a.entry(key, Instant::now()), 5);
    fail(&b.entry(key, Instant::now()), 5);
    for store in [&a, &b] {
        let opened = within(Duration::from_secs(1), || async {
            !store
                .entry(key, Instant::now())
                .is_available(Instant::now())
        })
        .await;
        assert!(
            opened.is_some(),
            "the fleet's failure rate did not open the key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_means_local_state_then_shared_again() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let Some(mut server) = own_redis(port).await else {
        return;
    };
    let url = format!("redis://{addr}");
    let events: Arc<Mutex<Vec<RedisEvent>>> = Arc::default();
    let seen = events.clone();
    let redis = RedisConfig::new(&url, &deployment())
        .unwrap()
        .timeout(Duration::from_millis(50))
        .poll_interval(Duration::from_millis(100))
        .listener(move |event: &Event| {
            if let Some(data) = event.data::<RedisEvent>() {
                seen.lock().unwrap().push(data.clone());
            }
        });
    let config = breaker(3, Duration::from_secs(5));
    let a = RedisBreakerStore::new(redis.clone(), &config).unwrap();
    let b = RedisBreakerStore::new(redis.clone(), &config).unwrap();
    shared(&a).await;
    shared(&b).await;
    let key = "claude-haiku-4-5";
    let _ = b.entry(key, Instant::now());

    server.kill().await.unwrap();
    // Every request is still answered, from local state.
    let lost = within(Duration::from_secs(1), || async {
        let entry = a.entry(key, Instant::now());
        let (Admission::Admitted(permit), _) = entry.acquire(Instant::now()) else {
            panic!("refused while Redis is down and the key closed");
        };
        entry.record(permit, Verdict::Success, Instant::now());
        !a.is_shared()
            && events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, RedisEvent::SharedStateLost { .. }))
    })
    .await;
    assert!(lost.is_some(), "no event said Redis was lost");
    // The local breaker still trips on its own.
    fail(&a.entry(key, Instant::now()), 3);
    assert!(!a.entry(key, Instant::now()).is_available(Instant::now()));

    // Back: shared state resumes.
    let Some(_server) = own_redis(port).await else {
        return;
    };
    let resumed = within(Duration::from_secs(3), || async {
        a.is_shared()
            && b.is_shared()
            && events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, RedisEvent::SharedStateResumed { .. }))
    })
    .await;
    assert!(resumed.is_some(), "the stores did not come back to Redis");
    // The open A decided while Redis was away reaches B once Redis is back.
    let told = within(Duration::from_secs(1), || async {
        !b.entry(key, Instant::now()).is_available(Instant::now())
    })
    .await;
    assert!(told.is_some(), "A's open during the outage never reached B");
    let other = "gpt-4.1-mini";
    let _ = a.entry(other, Instant::now());
    fail(&b.entry(other, Instant::now()), 3);
    let seen = within(Duration::from_secs(1), || async {
        !a.entry(other, Instant::now()).is_available(Instant::now())
    })
    .await;
    assert!(
        seen.is_some(),
        "an open after the restart did not reach the other replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_a_lost_redis_until_it_answers_in_time() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let Some(_server) = own_redis(port).await else {
        return;
    };
    let url = format!("redis://{addr}");
    let events: Arc<Mutex<Vec<RedisEvent>>> = Arc::default();
    let seen = events.clone();
    let redis = RedisConfig::new(&url, &deployment())
        .unwrap()
        .timeout(Duration::from_millis(50))
        .poll_interval(Duration::from_millis(50))
        .listener(move |event: &Event| {
            if let Some(data) = event.data::<RedisEvent>() {
                seen.lock().unwrap().push(data.clone());
            }
        });
    let a = RedisBreakerStore::new(redis, &breaker(3, Duration::from_secs(5))).unwrap();
    shared(&a).await;
    let key = "gpt-4o-mini";
    let _ = a.entry(key, Instant::now());
    // Redis stalls for 600 ms: every call of the store times out meanwhile.
    let stall = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_connection().unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.6")
            .query::<()>(&mut conn)
            .unwrap();
    });
    let lost = within(Duration::from_millis(500), || async {
        // Answered at once, from local state, while Redis is stuck.
        let started = Instant::now();
        let entry = a.entry(key, Instant::now());
        let (Admission::Admitted(permit), _) = entry.acquire(Instant::now()) else {
            panic!("refused while Redis is slow and the key closed");
        };
        entry.record(permit, Verdict::Success, Instant::now());
        // Well under the 50 ms Redis timeout: nothing waited on Redis.
        assert!(started.elapsed() < Duration::from_millis(40));
        events
            .lock()
            .unwrap()
            .contains(&RedisEvent::SharedStateLost { reason: "timeout" })
    })
    .await;
    assert!(lost.is_some(), "no timeout event while Redis stalled");
    stall.await.unwrap();
    let back = within(Duration::from_secs(2), || async {
        a.is_shared()
            && events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, RedisEvent::SharedStateResumed { .. }))
    })
    .await;
    assert!(
        back.is_some(),
        "the store did not come back after the stall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_ends_its_connection() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let Some(_server) = own_redis(port).await else {
        return;
    };
    let url = format!("redis://{addr}");
    let clients = {
        let url = url.clone();
        move || {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_connection().unwrap();
            let info: String = redis::cmd("INFO").arg("clients").query(&mut conn).unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
                .unwrap()
        }
    };
    let redis = RedisConfig::new(&url, &deployment())
        .unwrap()
        .poll_interval(Duration::from_millis(50));
    let store = RedisBreakerStore::new(redis, &breaker(3, Duration::from_secs(5))).unwrap();
    shared(&store).await;
    let _ = store.entry("gpt-4o", Instant::now());
    // The store's connection and the one asking.
    assert_eq!(clients(), 2);
    drop(store);
    let gone = within(Duration::from_secs(1), || async { clients() == 1 }).await;
    assert!(gone.is_some(), "the store's task outlived it");
}
