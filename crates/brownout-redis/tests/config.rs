//! Settings, and a store whose Redis never answers: no Redis needed.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_breaker::{Admission, BreakerConfig, BreakerStore, FailurePolicy, Verdict};
use brownout_core::event::Event;
use brownout_redis::{RedisBreakerStore, RedisConfig, RedisEvent};
use tokio::time::Instant;

#[test]
fn nonsense_is_refused() {
    assert!(RedisConfig::new("redis://127.0.0.1:6379", "").is_err());
    assert!(RedisConfig::new("redis://127.0.0.1:6379", "a b").is_err());
    assert!(RedisConfig::new("redis://127.0.0.1:6379", &"x".repeat(65)).is_err());
    let bad_url = RedisConfig::new("http://user:hunter2@[::1", "prod").unwrap_err();
    assert!(!bad_url.to_string().contains("hunter2"), "{bad_url}");
    let breaker = BreakerConfig::new();
    let ok = RedisConfig::new("redis://127.0.0.1:6379", "prod").unwrap();
    // Outside a runtime: no background task to start.
    let error = RedisBreakerStore::new(ok.clone(), &breaker).unwrap_err();
    assert_eq!(error.key(), "runtime");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    for (config, key) in [
        (ok.clone().timeout(Duration::ZERO), "timeout"),
        (ok.clone().poll_interval(Duration::ZERO), "poll_interval"),
        (
            ok.clone()
                .shared_failure_rate(1.5, 10, Duration::from_secs(1)),
            "shared_failure_rate",
        ),
        (
            ok.clone()
                .shared_failure_rate(f64::NAN, 10, Duration::from_secs(1)),
            "shared_failure_rate",
        ),
        (ok.clone().max_keys(0), "max_keys"),
    ] {
        assert_eq!(
            RedisBreakerStore::new(config, &breaker).unwrap_err().key(),
            key
        );
    }
}

#[test]
fn the_password_never_shows() {
    let config = RedisConfig::new("redis://user:hunter2@127.0.0.1:6379/0", "prod").unwrap();
    let text = format!("{config:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn without_redis_the_store_is_local_and_says_so() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let events: Arc<Mutex<Vec<RedisEvent>>> = Arc::default();
    let seen = events.clone();
    let redis = RedisConfig::new(&format!("redis://127.0.0.1:{port}"), "prod")
        .unwrap()
        .timeout(Duration::from_millis(20))
        .listener(move |event: &Event| {
            if let Some(data) = event.data::<RedisEvent>() {
                seen.lock().unwrap().push(data.clone());
            }
        });
    let breaker = BreakerConfig::new().policy(FailurePolicy::consecutive(2).unwrap());
    let store = RedisBreakerStore::new(redis, &breaker).unwrap();
    let entry = store.entry("gpt-4o", Instant::now());
    for _ in 0..2 {
        let (Admission::Admitted(permit), _) = entry.acquire(Instant::now()) else {
            panic!("refused while closed");
        };
        entry.record(
            permit,
            Verdict::Failure { server_delay: None },
            Instant::now(),
        );
    }
    // The local breaker opened on its own.
    assert!(matches!(
        entry.acquire(Instant::now()).0,
        Admission::Rejected { .. }
    ));
    // Real time: the connection attempt is a real socket's (refused at once).
    let start = std::time::Instant::now();
    while events.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!store.is_shared());
    assert!(matches!(
        events.lock().unwrap().first(),
        Some(RedisEvent::SharedStateLost {
            reason: "connect" | "io" | "timeout"
        })
    ));
}
