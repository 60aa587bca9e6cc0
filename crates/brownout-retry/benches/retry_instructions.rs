//! The success path of the retry layer, for counting instructions with callgrind:
//! wall-clock benchmarks on a shared machine are noisy, instruction counts are not.
//!
//! ```sh
//! cargo bench -p brownout-retry --bench retry_instructions --no-run
//! for v in bare tower brownout; do for n in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/deps/retry_instructions-* $v $n 2>&1 | grep Collected
//! done; done
//! ```
//!
//! The cost of one call is the difference between the two counts divided by 10,000.
//! Run by `cargo bench` with no arguments, it runs each variant briefly and checks that
//! they all answer.

use std::{hint::black_box, time::Duration};

use brownout_core::Body;
use brownout_retry::{Backoff, Retry, RetryConfig};
use bytes::Bytes;
use http_body_util::Full;
use tower::{service_fn, ServiceExt};

mod common;
use common::{ok, request, Attempts};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let variants = match args.next() {
        Some(v) => vec![v],
        None => vec!["bare".into(), "tower".into(), "brownout".into()],
    };
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let bare = service_fn(ok::<Full<Bytes>>);
    let tower_retry = tower::retry::Retry::new(Attempts(3), service_fn(ok::<Full<Bytes>>));
    let backoff = Backoff::full_jitter(Duration::from_millis(500), Duration::from_secs(8)).unwrap();
    let brownout = Retry::new(
        service_fn(ok::<Body>),
        RetryConfig::new()
            .max_attempts(3)
            .backoff(backoff)
            .no_budget(),
    );
    for variant in variants {
        for _ in 0..n {
            let status = match variant.as_str() {
                "bare" => rt
                    .block_on(bare.oneshot(black_box(request())))
                    .unwrap()
                    .status(),
                "tower" => rt
                    .block_on(tower_retry.clone().oneshot(black_box(request())))
                    .unwrap()
                    .status(),
                "brownout" => rt
                    .block_on(brownout.clone().oneshot(black_box(request())))
                    .unwrap()
                    .status(),
                other => panic!("unknown variant {other}: bare, tower or brownout"),
            };
            assert_eq!(black_box(status), 200);
        }
    }
}
