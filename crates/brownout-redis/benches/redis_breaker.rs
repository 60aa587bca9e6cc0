//! The closed breaker's success path (`entry`, `acquire`, `record`) with the Redis
//! store against the local store, and the Redis round trips it makes per call.
//!
//! `cargo bench -p brownout-redis --bench redis_breaker`. It starts its own
//! `redis-server` on a free port (`--save "" --appendonly no`), so that the commands it
//! counts (`INFO stats`, `total_commands_processed`) are its own; without the binary it
//! measures the store while Redis is away (still local), and says so.

use std::{
    hint::black_box,
    process::{Child, Command, Stdio},
    time::Duration,
};

use brownout_breaker::{Admission, BreakerConfig, BreakerStore, LocalStore, Verdict};
use brownout_redis::{RedisBreakerStore, RedisConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::time::Instant;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Server, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, port));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn commands(port: u16) -> Option<u64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("stats").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
}

fn call(store: &dyn BreakerStore) {
    let now = Instant::now();
    let entry = store.entry(black_box("claude-sonnet-4-5"), now);
    let (Admission::Admitted(permit), _) = entry.acquire(now) else {
        panic!("a closed breaker refused");
    };
    black_box(entry.record(permit, Verdict::Success, now));
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = start_redis();
    let port = server.as_ref().map_or(1, |(_, port)| *port);
    if server.is_none() {
        println!("redis-server did not start: the Redis store is measured local-only");
    }
    let config = BreakerConfig::new();
    let local = LocalStore::new(&config);
    let redis = RedisConfig::new(&format!("redis://127.0.0.1:{port}"), "bench").unwrap();
    let shared = {
        let _guard = runtime.enter();
        RedisBreakerStore::new(redis, &config).unwrap()
    };
    for _ in 0..200 {
        if shared.is_shared() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("redis store shared: {}", shared.is_shared());

    // Round trips: the commands Redis processed while the path ran, per call. The
    // background task's flushes (one pipeline per 100 ms) and polls (one per 500 ms)
    // are in the count: they do not grow with the calls.
    if server.is_some() {
        let calls = 1_000_000u64;
        let before = commands(port).unwrap_or(0);
        let start = std::time::Instant::now();
        for _ in 0..calls {
            call(&shared);
        }
        let elapsed = start.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        // Minus the INFO itself.
        let after = commands(port).unwrap_or(0).saturating_sub(1);
        println!(
            "redis commands during {calls} calls ({elapsed:?} + 300 ms): {} ({:.6} per call)",
            after - before,
            (after - before) as f64 / calls as f64
        );
    }

    let mut group = c.benchmark_group("closed_success_path");
    group.bench_function("local_store", |b| b.iter(|| call(&local)));
    group.bench_function("redis_store", |b| b.iter(|| call(&shared)));
    group.finish();
    drop(shared);
    drop(runtime);
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
