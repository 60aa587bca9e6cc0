//! Two retry budgets in one process as two replicas, kept as one through a real
//! Redis; and a budget whose Redis never answers.
//!
//! In real time (the settlements run on the store's own interval, against Redis's
//! clock); every wait is bounded. The Redis on 127.0.0.1:6379 is used, and the test
//! skips, saying why, when none answers (under `CI` it fails).

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_core::event::Event;
use brownout_redis::{RedisConfig, RedisEvent, RedisRetryBudget};
use brownout_retry::{BudgetStore, RetryBudget};
use common::*;
use tokio::time::{sleep, Instant};

/// Withdraws from both, every few milliseconds for `time`, as a fleet whose model is
/// down would; how many each got.
async fn drain(a: &RedisRetryBudget, b: &RedisRetryBudget, time: Duration) -> (u32, u32) {
    let (mut got_a, mut got_b) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < time {
        while a.withdraw() {
            got_a += 1;
        }
        while b.withdraw() {
            got_b += 1;
        }
        sleep(Duration::from_millis(5)).await;
    }
    (got_a, got_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_floor() {
    if !redis_up("two_replicas_share_one_floor").await {
        return;
    }
    let dep = deployment();
    // 10 retries a second over 2 s: 20 for the whole fleet, where two local budgets
    // would give 20 each.
    let budget = RetryBudget::new(Duration::from_secs(2), 10, 0.0).unwrap();
    let redis = RedisConfig::new(URL, &dep).unwrap();
    let a = RedisRetryBudget::new(redis.clone(), &budget).unwrap();
    let b = RedisRetryBudget::new(redis, &budget).unwrap();
    let up = within(Duration::from_secs(2), || async {
        a.is_shared() && b.is_shared()
    })
    .await;
    assert!(up.is_some(), "the budgets never reached Redis");
    // Both have settled once more, so each knows the other.
    sleep(Duration::from_millis(250)).await;

    let (got_a, got_b) = drain(&a, &b, Duration::from_millis(600)).await;
    let total = got_a + got_b;
    println!("retries allowed: a {got_a}, b {got_b}");
    assert!(got_a > 0 && got_b > 0, "a {got_a}, b {got_b}");
    // The floor once, plus at most one settlement's share taken from a balance that
    // did not count the other's latest retries yet (here at most 10 / 2): not the 40
    // two local budgets allow.
    assert!(
        total <= 30,
        "the fleet took {total} retries of a budget of 20"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_are_shared_by_traffic() {
    if !redis_up("deposits_are_shared_by_traffic").await {
        return;
    }
    let dep = deployment();
    // No floor, half a retry per request over 10 s.
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
    let redis = RedisConfig::new(URL, &dep).unwrap();
    let a = RedisRetryBudget::new(redis.clone(), &budget).unwrap();
    let b = RedisRetryBudget::new(redis, &budget).unwrap();
    let up = within(Duration::from_secs(2), || async {
        a.is_shared() && b.is_shared()
    })
    .await;
    assert!(up.is_some(), "the budgets never reached Redis");
    // A carries the traffic: 40 requests, so 20 retries for the fleet.
    for _ in 0..40 {
        a.deposit();
    }
    sleep(Duration::from_millis(300)).await;
    let (got_a, got_b) = drain(&a, &b, Duration::from_millis(500)).await;
    println!("retries allowed: a {got_a}, b {got_b}");
    assert!(got_a + got_b <= 22, "a {got_a} + b {got_b} of 20");
    assert!(
        got_a >= 15,
        "the replica with the traffic has most of it: {got_a}"
    );
    assert!(
        got_b <= 2,
        "a replica without traffic takes none of it: {got_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_local_budget_decides() {
    let port = free_port();
    let events: Arc<Mutex<Vec<RedisEvent>>> = Arc::default();
    let seen = events.clone();
    let redis = RedisConfig::new(&format!("redis://127.0.0.1:{port}"), &deployment())
        .unwrap()
        .timeout(Duration::from_millis(50))
        .listener(move |event: &Event| {
            if let Some(data) = event.data::<RedisEvent>() {
                seen.lock().unwrap().push(data.clone());
            }
        });
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
    let store = RedisRetryBudget::new(redis, &budget).unwrap();
    let lost = within(Duration::from_secs(1), || async {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, RedisEvent::SharedStateLost { .. }))
    })
    .await;
    assert!(lost.is_some(), "no event said Redis was away");
    assert!(!store.is_shared());
    for _ in 0..10 {
        store.deposit();
    }
    // Tower's budget for one process: half of 10 deposits.
    let allowed = (0..10).take_while(|_| store.withdraw()).count();
    assert_eq!(allowed, 5);
}
