//! A driver for counting the availability log's instructions per request under
//! callgrind (see BENCHMARKS.md): `N` requests as the gateway records them, each an
//! exchange carrying its one attempt (`folded`), or an exchange and an attempt of its
//! own (`pairs`, two rows), then `close`. Run it with `N` and with `0` and subtract.
//!
//! ```sh
//! cargo build --release -p brownout-observe --features sqlite --example sqlite_rows
//! valgrind --tool=callgrind target/release/examples/sqlite_rows 20000 folded
//! ```

use std::{sync::Arc, time::Duration};

use brownout_core::classify::OutcomeKind;
use brownout_observe::{Answer, Attempt, Exchange, Sink, SqliteConfig, SqliteLog};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let folded = args.next().as_deref() != Some("pairs");
    let path = std::env::temp_dir().join(format!("brownout-sqlite-rows-{}.db", std::process::id()));
    let log = SqliteLog::open(SqliteConfig::new(&path)).expect("the log opens");
    let route: Arc<str> = Arc::from("anthropic.messages");
    let model: Arc<str> = Arc::from("claude-sonnet-4-5");
    for i in 0..n {
        let mut attempt = Attempt::new(
            route.clone(),
            1,
            OutcomeKind::Success,
            Duration::from_micros(900 + i % 100),
        );
        attempt.model = Some(model.clone());
        attempt.status = Some(200);
        let mut exchange = Exchange::new(
            route.clone(),
            Answer::Live,
            200,
            Duration::from_micros(1000 + i % 100),
        );
        exchange.requested_model = Some(model.clone());
        exchange.served_by = Some(model.clone());
        exchange.attempts = 1;
        exchange.input_tokens = Some(12);
        exchange.output_tokens = Some(40);
        if folded {
            attempt.in_exchange = true;
            log.attempt(&attempt);
            exchange.first_attempt = Some(attempt);
        } else {
            log.attempt(&attempt);
        }
        log.exchange(&exchange);
    }
    log.close();
    assert_eq!(log.dropped(), 0);
    println!("{} records written", log.written());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
