//! The issue's figures: the gateway's example pipeline with and without the queue,
//! over the simulator's shipped outage and burst scripts, in paused time.
//!
//! ```sh
//! cargo run -p brownout-queue --example figures            # both scripts
//! cargo run -p brownout-queue --example figures -- bursts  # one
//! ```
//!
//! The pipeline is `gateway.example.toml`'s without the cache and the canned answers
//! (they only answer when every model failed): fallback (claude-sonnet-4-5, then
//! claude-haiku-4-5) > breaker per model > retry > the simulator. With the queue, the
//! retry layer sleeps a server delay only up to the wait-or-move rule's 500 ms
//! (`max_server_delay`), handing a longer one to the cascade, and the queue waits at
//! most 800 ms, probes after at most 100 ms and counts a call 120 ms in flight as a
//! success for slow start: first `fallback > breaker > queue > retry` (the fallback
//! asking both handles), then `fallback > queue > breaker > retry` (the queue asking the
//! breaker's handle). Other settings: `FIGURES_VARIANTS="wait,max_wait,probe_after,
//! early_ack[,1 for the breaker outside];…"` in milliseconds (0: off);
//! `FIGURES_DEBUG=1` prints every event.
//!
//! Besides the runner's report it prints the preferred model's share of answers next to
//! the share of time it was available, and, for each end of an unavailable stretch,
//! how many requests reached the preferred model in the next 100 ms.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, OpenDuration, Window};
use brownout_core::{Body, RequestFacts};
use brownout_fallback::{FallbackConfig, FallbackLayer, Target};
use brownout_queue::{PreferWait, QueueConfig, QueueLayer};
use brownout_retry::{Backoff, RetryBudget, RetryConfig, RetryLayer};
use brownout_sim::{runner::table, Runner, Script, Sim, Stack, BURSTS_TOML};
use http::Request;
use tokio::time::Instant;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const PREFERRED: &str = "claude-sonnet-4-5";

type Log = Arc<Mutex<Vec<(Duration, String)>>>;

/// The simulator, logging when each request reaches it and for which model.
fn recorded(
    sim: Sim,
    log: Log,
) -> impl tower::Service<
    Request<Body>,
    Response = http::Response<brownout_sim::SimBody>,
    Error = brownout_core::BoxError,
    Future = impl Send,
> + Clone {
    let start = Instant::now();
    log.lock().unwrap().clear();
    service_fn(move |request: Request<Body>| {
        let model = RequestFacts::of(request.extensions())
            .and_then(RequestFacts::model)
            .unwrap_or("")
            .to_owned();
        log.lock().unwrap().push((start.elapsed(), model));
        let sim = sim.clone();
        async move { sim.oneshot(request).await.map_err(Into::into) }
    })
}

/// With `FIGURES_DEBUG` set, prints the layers' events.
fn debug(event: &brownout_core::event::Event) {
    if std::env::var_os("FIGURES_DEBUG").is_some() {
        println!(
            "{:?} {} {} {}",
            Instant::now(),
            event.layer,
            event.name(),
            event.fields_text()
        );
    }
}

fn breakers() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::failure_rate(0.5, Window::Count(20), 10).unwrap())
            .open_duration(
                OpenDuration::growing(Duration::from_secs(10), Duration::from_secs(120)).unwrap(),
            )
            .half_open_probes(1)
            .seed(1)
            .listener(debug),
    )
}

fn retry(max_server_delay: Duration) -> RetryConfig {
    RetryConfig::new()
        .max_attempts(2)
        .backoff(Backoff::full_jitter(Duration::from_millis(500), Duration::from_secs(8)).unwrap())
        .budget(RetryBudget::new(Duration::from_secs(10), 10, 0.2).unwrap())
        .max_server_delay(max_server_delay)
        .attempt_timeout(Duration::from_secs(30))
        .seed(2)
}

fn cascade() -> FallbackConfig {
    FallbackConfig::new([
        Target::new(PREFERRED),
        Target::new("claude-haiku-4-5").max_tokens(8192),
    ])
    .unwrap()
    .deadline(Duration::from_secs(60))
    .served_header_default()
}

fn pipeline(log: Log) -> Stack {
    Stack::new("pipeline", move |sim: Sim| {
        let breakers = breakers();
        ServiceBuilder::new()
            .layer(FallbackLayer::new(cascade().health(breakers.handle())))
            .layer(breakers)
            .layer(RetryLayer::new(retry(Duration::from_secs(2))))
            .service(recorded(sim, log.clone()))
    })
}

/// The pipeline with the queue: `ms` is prefer_wait, max_wait, probe_after (0: off) and
/// early_ack (0: off), in milliseconds.
fn queued(name: String, log: Log, ms: Vec<u64>) -> Stack {
    let d = Duration::from_millis;
    Stack::new(name, move |sim: Sim| {
        let breakers = breakers();
        let mut config = QueueConfig::new()
            .prefer_wait(PreferWait::up_to(d(ms[0])))
            .max_wait(d(ms[1]))
            .seed(3)
            .listener(debug);
        if ms[2] > 0 {
            config = config.probe_after(d(ms[2]));
        }
        config = match ms[3] {
            0 => config.no_early_ack(),
            ack => config.early_ack(d(ack)),
        };
        if ms.get(4) == Some(&1) {
            // The breaker outside the queue: it counts a held request once, as it
            // counts a retried one.
            let queue = QueueLayer::new(config);
            let both = queue.handle().and(breakers.handle());
            return ServiceBuilder::new()
                .layer(FallbackLayer::new(cascade().health(both)))
                .layer(breakers)
                .layer(queue)
                .layer(RetryLayer::new(retry(d(ms[0]))))
                .service(recorded(sim, log.clone()))
                .boxed_clone();
        }
        let queue = QueueLayer::new(config.health(breakers.handle()));
        ServiceBuilder::new()
            .layer(FallbackLayer::new(cascade().health(queue.handle())))
            .layer(queue)
            .layer(breakers)
            .layer(RetryLayer::new(retry(d(ms[0]))))
            .service(recorded(sim, log.clone()))
            .boxed_clone()
    })
}

/// The stretches when the preferred model fails most requests, in milliseconds.
fn down_windows(script: &str) -> Vec<(u64, u64)> {
    match script {
        "outage" => vec![(30_000, 120_000), (200_000, 320_000), (420_000, 480_000)],
        _ => {
            let mut windows = Vec::new();
            let mut from = None;
            let preferred = BURSTS_TOML
                .split("[models.\"claude-haiku-4-5\"]")
                .next()
                .unwrap();
            for line in preferred.lines() {
                let ms = |l: &str| {
                    l.split('"')
                        .nth(1)
                        .unwrap()
                        .trim_end_matches("ms")
                        .parse::<u64>()
                        .unwrap()
                };
                if line.starts_with("from = ") {
                    from = Some(ms(line));
                } else if line.starts_with("until = ") {
                    windows.push((from.take().unwrap(), ms(line)));
                }
            }
            windows
        }
    }
}

async fn figures(name: &str, script: Script, span_ms: u64) {
    let mut logs: Vec<Log> = vec![Log::default()];
    let mut stacks = vec![pipeline(logs[0].clone())];
    let variants = std::env::var("FIGURES_VARIANTS")
        .unwrap_or_else(|_| "500,800,100,120,1;500,800,100,120".into());
    for (i, variant) in variants.split(';').enumerate() {
        let ms: Vec<u64> = variant.split(',').map(|v| v.parse().unwrap()).collect();
        let log = Log::default();
        logs.push(log.clone());
        let _ = i;
        stacks.push(queued(
            format!(
                "queue wait={} max_wait={} probe_after={} ack={}{}",
                ms[0],
                ms[1],
                ms[2],
                ms[3],
                if ms.get(4) == Some(&1) {
                    " breaker outside"
                } else {
                    ""
                }
            ),
            log,
            ms,
        ));
    }
    let runner = Runner::new(script);
    let reports = runner.compare(&stacks).await;
    println!("## {name}\n\n{}", table(&reports));
    let windows = down_windows(name);
    let down: u64 = windows.iter().map(|(a, b)| b - a).sum();
    let available = 100.0 * (span_ms - down) as f64 / span_ms as f64;
    println!("preferred model available {available:.1} % of the time");
    for (report, log) in reports.iter().zip(&logs) {
        let log = log.lock().unwrap();
        let after_recovery: Vec<usize> = windows
            .iter()
            .map(|(_, end)| {
                log.iter()
                    .filter(|(at, model)| {
                        let at = at.as_millis() as u64;
                        model == PREFERRED && at >= *end && at < end + 100
                    })
                    .count()
            })
            .collect();
        let answered = report.answered.total.max(1) as f64;
        println!(
            "{}: answered {:.1} %, preferred {:.1} % of answers, {:.2} upstream/request, p50 {:.0} ms, p99 {:.0} ms; \
             requests reaching {PREFERRED} in the 100 ms after each recovery: max {}, mean {:.2}",
            report.stack,
            100.0 * report.answered.total as f64 / report.requests as f64,
            100.0 * report.answered.first_choice as f64 / answered,
            report.upstream.amplification,
            report.latency.p50_ms,
            report.latency.p99_ms,
            after_recovery.iter().max().unwrap_or(&0),
            after_recovery.iter().sum::<usize>() as f64 / after_recovery.len().max(1) as f64,
        );
    }
    println!();
}

fn main() {
    let which = std::env::args().nth(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        if which.as_deref().is_none_or(|w| w == "outage") {
            figures("outage", Script::outage(), 600_000).await;
        }
        if which.as_deref().is_none_or(|w| w == "bursts") {
            figures("bursts", Script::bursts(), 60_000).await;
        }
    });
}
