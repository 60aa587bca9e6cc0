//! The closed breaker's success path (`entry`, `acquire`, `record`) with the Redis
//! store against the local store, and the Redis round trips it makes per call.
//!
//! `cargo bench -p brownout-redis --bench redis_breaker`. It starts its own
//! `redis-server` on a free port (`--save "" --appendonly no`), so that the commands it
//! counts (`INFO stats`, `total_commands_processed`) are its own; without the binary it
//! measures the store while Redis is away (still local), and says so.
//!
//! Instruction counts (wall time on a shared machine is noisy; counts are not):
//!
//! ```sh
//! cargo bench -p brownout-redis --bench redis_breaker --no-run
//! bin=$(ls -t target/release/deps/redis_breaker-* | grep -v '\.d$' | head -1)
//! for v in local redis; do for n in 2000 22000; do
//!   echo "$v $n $(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     $bin $v $n 2>&1 | grep Collected)"
//! done; done
//! ```
//!
//! One call costs the difference of the two counts divided by 20,000.

use std::{
    hint::black_box,
    process::{Child, Command, Stdio},
    time::Duration,
};

use brownout_breaker::{Admission, BreakerConfig, BreakerStore, LocalStore, Verdict};
use brownout_redis::{RedisBreakerStore, RedisConfig};
use criterion::{criterion_group, Criterion};
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

/// `redis_breaker local|redis N`: N calls and exit, for callgrind (see the module docs).
fn count(variant: &str, calls: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = start_redis();
    let port = server.as_ref().map_or(1, |(_, port)| *port);
    let config = BreakerConfig::new();
    let store: Box<dyn BreakerStore> = if variant == "local" {
        Box::new(LocalStore::new(&config))
    } else {
        // No flush nor poll during the run: the count is the calls' own.
        let redis = RedisConfig::new(&format!("redis://127.0.0.1:{port}"), "bench")
            .unwrap()
            .flush_interval(Duration::from_secs(3600))
            .poll_interval(Duration::from_secs(3600));
        let _guard = runtime.enter();
        let store = RedisBreakerStore::new(redis, &config).unwrap();
        for _ in 0..200 {
            if store.is_shared() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(store.is_shared() || server.is_none());
        Box::new(store)
    };
    for _ in 0..calls {
        call(store.as_ref());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, variant, calls] = args.as_slice() {
        if let (true, Ok(calls)) = (variant == "local" || variant == "redis", calls.parse()) {
            count(variant, calls);
            return;
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
