//! What the Redis tests share: a Redis to talk to, and
//! bounded waits in real time.

#![allow(dead_code, unreachable_pub)]

use std::{future::Future, time::Duration};

use tokio::time::{sleep, timeout, Instant};

/// The Redis every machine of this kind runs (and `.ci/run` starts).
pub const URL: &str = "redis://127.0.0.1:6379";

pub async fn answers(addr: &str) -> bool {
    matches!(
        timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Whether the shared Redis answers; skips (or fails under CI) when it does not.
pub async fn redis_up(test: &str) -> bool {
    if answers("127.0.0.1:6379").await {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: no Redis on 127.0.0.1:6379 (CI must start one)"
    );
    println!("skipping {test}: no Redis answers on 127.0.0.1:6379");
    false
}

pub fn deployment() -> String {
    format!("test-{:016x}", fastrand::u64(..))
}

/// Waits (real time, bounded) until `cond` holds; how long it took.
pub async fn within<F: Future<Output = bool>>(
    limit: Duration,
    mut cond: impl FnMut() -> F,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        sleep(Duration::from_millis(5)).await;
    }
    None
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of the test's own on `port`, answering; `None` (a skip) when the
/// binary is missing, a failure under CI.
pub async fn own_redis(port: u16) -> Option<tokio::process::Child> {
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        // `DEBUG SLEEP`, for the tests of a Redis that answers late.
        .args(["--enable-debug-command", "local"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(child) => {
            let addr = format!("127.0.0.1:{port}");
            assert!(
                within(Duration::from_secs(2), || answers(&addr))
                    .await
                    .is_some(),
                "redis-server did not start"
            );
            Some(child)
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server could not start: {e}"
            );
            println!("skipping: redis-server could not start: {e}");
            None
        }
    }
}

/// A synchronous command on a connection of its own, for looking into Redis.
pub fn query<T: redis::FromRedisValue>(url: &str, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    cmd.query(&mut conn).unwrap()
}
