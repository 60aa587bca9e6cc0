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
//! breaker's handle). The breakers are the example config's: open 10 s the first time,
//! doubling on repeated trips up to 20 s (jittered: half to all of it), closed again
//! by two successful probes in a row.
//!
//! Other settings: `FIGURES_VARIANTS="wait,max_wait,probe_after,early_ack[,1 for the
//! breaker outside];…"` in milliseconds (0: off); `FIGURES_BREAKER="open_for,
//! open_for_max[,half_open_successes]"` in milliseconds (`10000,20000,2`);
//! `FIGURES_SEED=n` for the breakers' jitter (1); `FIGURES_DEBUG=1` prints every event
//! and every answer of the simulator; `FIGURES_BREAKDOWN=1` sorts the preferred
//! model's failed attempts by when they reached it.
//!
//! Besides the runner's report it prints the preferred model's share of answers next to
//! the share of time it was available, and, for each end of an unavailable stretch,
//! how many requests reached the preferred model in the next 100 ms, next to what slow
//! start admits in that window: the probe, then one round per `early_ack` that has
//! passed since (2, 4 …), that is `2^(floor(100 ms / early_ack) + 1) - 1` counted from
//! a probe sent at the recovery or later — with `early_ack` 120 ms, the probe alone.

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

/// The window after a recovery in which requests reaching the preferred model are
/// counted, in milliseconds.
const RECOVERY_WINDOW_MS: u64 = 100;

/// When each request reached the simulator, for which model, and the status it got
/// (0: no answer).
/// When the current run started, for the debug output.
static START: Mutex<Option<Instant>> = Mutex::new(None);

type Log = Arc<Mutex<Vec<(Duration, String, u16)>>>;

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
    *START.lock().unwrap() = Some(start);
    log.lock().unwrap().clear();
    service_fn(move |request: Request<Body>| {
        let model = RequestFacts::of(request.extensions())
            .and_then(RequestFacts::model)
            .unwrap_or("")
            .to_owned();
        let i = {
            let mut log = log.lock().unwrap();
            log.push((start.elapsed(), model, 0));
            log.len() - 1
        };
        let sim = sim.clone();
        let log = log.clone();
        async move {
            let result = sim.oneshot(request).await;
            if let Ok(response) = &result {
                let mut log = log.lock().unwrap();
                log[i].2 = response.status().as_u16();
                if std::env::var_os("FIGURES_DEBUG").is_some() {
                    println!(
                        "{:>9.3} sim {} sent at {:.3}: {}",
                        start.elapsed().as_secs_f64(),
                        log[i].1,
                        log[i].0.as_secs_f64(),
                        log[i].2
                    );
                }
            }
            result.map_err(Into::into)
        }
    })
}

/// With `FIGURES_DEBUG` set, prints the layers' events.
fn debug(event: &brownout_core::event::Event) {
    if std::env::var_os("FIGURES_DEBUG").is_some() {
        let start = START.lock().unwrap().unwrap_or_else(Instant::now);
        println!(
            "{:>9.3} {} {} {}",
            start.elapsed().as_secs_f64(),
            event.layer,
            event.name(),
            event.fields_text()
        );
    }
}

fn breakers() -> CircuitBreakerLayer {
    let open: Vec<u64> = std::env::var("FIGURES_BREAKER")
        .unwrap_or_else(|_| "10000,20000,2".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::failure_rate(0.5, Window::Count(20), 10).unwrap())
            .open_duration(
                OpenDuration::growing(
                    Duration::from_millis(open[0]),
                    Duration::from_millis(open[1]),
                )
                .unwrap(),
            )
            .half_open_probes(1)
            .half_open_successes(open.get(2).copied().unwrap_or(1) as u32)
            .seed(std::env::var("FIGURES_SEED").map_or(1, |s| s.parse().unwrap()))
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
        .unwrap_or_else(|_| "500,800,250,120,1;500,800,250,120".into());
    for variant in variants.split(';') {
        let ms: Vec<u64> = variant.split(',').map(|v| v.parse().unwrap()).collect();
        let log = Log::default();
        logs.push(log.clone());
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
                    .filter(|(at, model, _)| {
                        let at = at.as_millis() as u64;
                        model == PREFERRED && at >= *end && at < end + RECOVERY_WINDOW_MS
                    })
                    .count()
            })
            .collect();
        if std::env::var_os("FIGURES_BREAKDOWN").is_some() {
            let inside = |at: u64| windows.iter().find(|(a, b)| at >= *a && at < *b);
            let (mut ok, mut fail_out, mut fail_early, mut fail_in, mut other) = (0, 0, 0, 0, 0);
            for (at, model, status) in log.iter() {
                let at = at.as_millis() as u64;
                if model != PREFERRED {
                    other += 1;
                } else if *status == 200 {
                    ok += 1;
                } else {
                    match inside(at) {
                        None => fail_out += 1,
                        Some((a, _)) if at < a + 150 => fail_early += 1,
                        Some(_) => fail_in += 1,
                    }
                }
            }
            println!(
                "  {}: preferred ok {ok}, failed outside {fail_out}, in first 150 ms {fail_early}, later in {fail_in}; other models {other}",
                report.stack
            );
        }
        // What slow start admits in the window (the pipeline has none).
        let ack = report
            .stack
            .split(" ack=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0);
        let bound = ack.map(|ack| (1usize << (RECOVERY_WINDOW_MS / ack + 1)) - 1);
        let over: Vec<String> = match bound {
            Some(bound) => windows
                .iter()
                .zip(&after_recovery)
                .filter(|(_, n)| **n > bound)
                .map(|((_, end), n)| format!("{n} at {:.2} s", *end as f64 / 1000.0))
                .collect(),
            None => Vec::new(),
        };
        let answered = report.answered.total.max(1) as f64;
        println!(
            "{}: answered {:.1} %, preferred {:.1} % of answers, {:.2} upstream/request, p50 {:.0} ms, p99 {:.0} ms; \
             requests reaching {PREFERRED} in the 100 ms after each of {} recoveries: max {}, mean {:.2}; \
             slow start admits {}: over it {} times{}",
            report.stack,
            100.0 * report.answered.total as f64 / report.requests as f64,
            100.0 * report.answered.first_choice as f64 / answered,
            report.upstream.amplification,
            report.latency.p50_ms,
            report.latency.p99_ms,
            after_recovery.len(),
            after_recovery.iter().max().unwrap_or(&0),
            after_recovery.iter().sum::<usize>() as f64 / after_recovery.len().max(1) as f64,
            bound.map_or("- (no queue)".to_owned(), |b| b.to_string()),
            over.len(),
            if over.is_empty() {
                String::new()
            } else {
                format!(" ({})", over.join(", "))
            },
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
