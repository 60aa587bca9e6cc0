//! The availability log's costs: `SqliteLog::exchange` on the request path (a clone of
//! the record into a bounded channel, with the writer draining it on another thread),
//! and the writer's sustained rows per second (push a burst, `close`, which waits for
//! the last commit).
//!
//! `cargo bench -p brownout-observe --features sqlite --bench sqlite_log`

use std::{
    hint::black_box,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use brownout_core::classify::OutcomeKind;
use brownout_observe::{Answer, Attempt, Exchange, Sink, SqliteConfig, SqliteLog};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brownout-observe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn exchange() -> Exchange {
    let mut e = Exchange::new(
        Arc::from("anthropic.messages"),
        Answer::Fallback,
        200,
        Duration::from_millis(840),
    );
    e.requested_model = Some(Arc::from("claude-sonnet-4-5"));
    e.served_by = Some(Arc::from("claude-haiku-4-5"));
    e.attempts = 2;
    e.input_tokens = Some(1200);
    e.output_tokens = Some(300);
    e
}

fn request_path(c: &mut Criterion) {
    let path = dir().join("request-path.db");
    let _ = std::fs::remove_file(&path);
    let log = SqliteLog::open(SqliteConfig::new(&path).max_rows(Some(100_000))).unwrap();
    let record = exchange();
    // Chunks smaller than the buffer, each after a flush that is not timed: every
    // call finds room, as it does when the writer keeps up.
    const CHUNK: u64 = 10_000;
    c.bench_function("sqlite_log/exchange (request path)", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                log.flush();
                let start = Instant::now();
                for _ in 0..n {
                    log.exchange(black_box(&record));
                }
                spent += start.elapsed();
                left -= n;
            }
            spent
        })
    });
    log.close();
    assert_eq!(
        log.dropped(),
        0,
        "the bench measured the path with room only"
    );
    let _ = std::fs::remove_file(&path);
}

fn writer(c: &mut Criterion) {
    const ROWS: u64 = 100_000;
    let mut group = c.benchmark_group("sqlite_log/writer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS));
    let record = exchange();
    let mut attempt = Attempt::new(
        Arc::from("anthropic.messages"),
        1,
        OutcomeKind::Overloaded,
        Duration::from_millis(30),
    );
    attempt.model = Some(Arc::from("claude-sonnet-4-5"));
    attempt.status = Some(529);
    group.bench_function("rows (half exchanges, half attempts)", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let path = dir().join(format!("writer-{i}.db"));
                let _ = std::fs::remove_file(&path);
                let log = SqliteLog::open(SqliteConfig::new(&path).buffer(ROWS as usize)).unwrap();
                let start = Instant::now();
                for _ in 0..ROWS / 2 {
                    log.exchange(&record);
                    log.attempt(&attempt);
                }
                log.close();
                spent += start.elapsed();
                assert_eq!(log.written(), ROWS);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, request_path, writer);
criterion_main!(benches);
