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
//! claude-haiku-4-5) > breaker per model > retry (two attempts per model) > the
//! simulator. With the queue, the retry layer sleeps a server delay only up to the
//! wait-or-move rule's 400 ms (`max_server_delay`), handing a longer one to the
//! cascade, and hands an overload that names no delay to the cascade at once
//! (`move_on_overload`, as the gateway sets both with `[queue]` on), and the queue
//! waits at most 400 ms, probes after at most 250 ms and counts a call 120 ms in flight
//! as a success for slow start: first `fallback > breaker > queue > retry` (the
//! gateway's order, the fallback asking both handles), then
//! `fallback > queue > breaker > retry` (the queue asking the breaker's handle). The breakers are the example
//! config's: open 10 s (jittered: half to all of it, not growing), a half-open probe
//! sent once (the retry layer does not retry it), closed again by two successful
//! probes in a row.
//!
//! Other settings: `FIGURES_VARIANTS="wait,max_wait,probe_after,early_ack[,1 for the
//! breaker outside];…"` in milliseconds (0: off); `FIGURES_BREAKER="open_for,
//! open_for_max[,half_open_successes]"` in milliseconds (`10000,10000,2`);
//! `FIGURES_ATTEMPTS=n` (2), `FIGURES_BACKOFF=ms` (the full-jitter base, 500) and
//! `FIGURES_BUDGET="ttl_s,min_per_sec,ratio"` (`10,10,0.2`) for the retry layer; `FIGURES_SEED=n` for every layer's jitter (else
//! the breakers 1, the retry layer 2, the queue 3; the gateway's demo seeds them all
//! with the script's seed, 2024 for the outage script, and `FIGURES_SEED=2024` gives
//! the demo's figures); `FIGURES_DEBUG=1` prints every event and every answer of the
//! simulator; `FIGURES_BREAKDOWN=1` sorts the preferred model's failed attempts by when
//! they reached it; `FIGURES_ADDED=1` sorts the requests whose added latency is over
//! 500 ms by what happened to them.
//!
//! Besides the runner's report (with the latency the layers added: the caller's
//! latency less the served answer's own service time, which the simulator sends in
//! `x-sim-latency-ms`) it prints the preferred model's share of answers next to the
//! share of time it was available, and, for each end of an unavailable stretch, how
//! many requests reached the preferred model in the next 100 ms, checked two ways:
//! against the formula `2^(floor(100 ms / early_ack) + 1) - 1` (what slow start admits
//! counted from a probe sent at the recovery or later: with `early_ack` 120 ms, the
//! probe alone), and against what slow start actually allowed — the queue's admission
//! limit for the preferred model when each of those requests reached it (read from the
//! queue's handle as the request reaches the simulator). A window is over the limit
//! when more requests reached the model in it than the largest limit in force at their
//! sending; a window in which a request was sent while nothing limited the model (no
//! hold on, or slow start over with no backlog) has no slow-start bound and is counted
//! apart.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, OpenDuration, Window};
use brownout_core::{Body, RequestFacts};
use brownout_fallback::{FallbackConfig, FallbackLayer, Target};
use brownout_queue::{PreferWait, QueueConfig, QueueHandle, QueueLayer};
use brownout_retry::{Backoff, RetryBudget, RetryConfig, RetryLayer};
use brownout_sim::{runner::table, Runner, Script, Sim, Stack, BURSTS_TOML};
use http::Request;
use tokio::time::Instant;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const PREFERRED: &str = "claude-sonnet-4-5";

/// The window after a recovery in which requests reaching the preferred model are
/// counted, in milliseconds.
const RECOVERY_WINDOW_MS: u64 = 100;

/// When the current run started, for the debug output.
static START: Mutex<Option<Instant>> = Mutex::new(None);

/// One request as it reached the simulator.
#[derive(Debug, Clone)]
struct Sent {
    /// Since the run started.
    at: Duration,
    model: String,
    /// The runner's index of the client request it belongs to.
    request: Option<u64>,
    /// The status it got (0: no answer).
    status: u16,
    /// The preferred model's admission limit in the queue when it was sent: `None`
    /// without a queue, `Some(None)` when nothing limited the model.
    admission: Option<Option<u32>>,
}

type Log = Arc<Mutex<Vec<Sent>>>;

/// The runner's index of a request, from its prompt (`Request 12: ...`).
fn request_index(request: &Request<Body>) -> Option<u64> {
    let bytes = request.body().bytes()?;
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = &text[text.find("Request ")? + "Request ".len()..];
    rest[..rest.find(':')?].parse().ok()
}

/// The simulator, logging when each request reaches it, for which model, and the
/// queue's admission limit for the preferred model at that moment.
fn recorded(
    sim: Sim,
    log: Log,
    queue: Option<QueueHandle>,
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
            log.push(Sent {
                at: start.elapsed(),
                admission: queue.as_ref().map(|q| q.admission(PREFERRED)),
                request: request_index(&request),
                model,
                status: 0,
            });
            log.len() - 1
        };
        let sim = sim.clone();
        let log = log.clone();
        async move {
            let result = sim.oneshot(request).await;
            if let Ok(response) = &result {
                let mut log = log.lock().unwrap();
                log[i].status = response.status().as_u16();
                if std::env::var_os("FIGURES_DEBUG").is_some() {
                    println!(
                        "{:>9.3} sim {} sent at {:.3} (request {:?}, admission {:?}): {}",
                        start.elapsed().as_secs_f64(),
                        log[i].model,
                        log[i].at.as_secs_f64(),
                        log[i].request,
                        log[i].admission,
                        log[i].status
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

/// `FIGURES_SEED` for every layer's jitter, else `default` (the breakers 1, the retry
/// layer 2, the queue 3); the gateway's demo seeds every layer with the script's seed
/// (2024 for the outage script).
fn seed(default: u64) -> u64 {
    std::env::var("FIGURES_SEED").map_or(default, |s| s.parse().unwrap())
}

fn breakers() -> CircuitBreakerLayer {
    let open: Vec<u64> = std::env::var("FIGURES_BREAKER")
        .unwrap_or_else(|_| "10000,10000,2".into())
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
            .seed(seed(1))
            .listener(debug),
    )
}

/// The example config's retry settings; `FIGURES_ATTEMPTS=n`, `FIGURES_BACKOFF=ms` and
/// `FIGURES_BUDGET="ttl_s,min_per_sec,ratio"` change them.
fn retry(max_server_delay: Duration, move_on_overload: bool) -> RetryConfig {
    let attempts = std::env::var("FIGURES_ATTEMPTS").map_or(2, |a| a.parse().unwrap());
    let backoff = std::env::var("FIGURES_BACKOFF").map_or(500, |b| b.parse().unwrap());
    let budget: Vec<String> = std::env::var("FIGURES_BUDGET")
        .unwrap_or_else(|_| "10,10,0.2".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    RetryConfig::new()
        .max_attempts(attempts)
        .backoff(
            Backoff::full_jitter(Duration::from_millis(backoff), Duration::from_secs(8)).unwrap(),
        )
        .budget(
            RetryBudget::new(
                Duration::from_secs(budget[0].parse().unwrap()),
                budget[1].parse().unwrap(),
                budget[2].parse().unwrap(),
            )
            .unwrap(),
        )
        .max_server_delay(max_server_delay)
        .move_on_overload(move_on_overload)
        .attempt_timeout(Duration::from_secs(30))
        .seed(seed(2))
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
            .layer(RetryLayer::new(retry(Duration::from_secs(2), false)))
            .service(recorded(sim, log.clone(), None))
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
            .seed(seed(3))
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
            let handle = queue.handle();
            let both = queue.handle().and(breakers.handle());
            return ServiceBuilder::new()
                .layer(FallbackLayer::new(cascade().health(both)))
                .layer(breakers)
                .layer(queue)
                .layer(RetryLayer::new(retry(d(ms[0]), true)))
                .service(recorded(sim, log.clone(), Some(handle)))
                .boxed_clone();
        }
        let queue = QueueLayer::new(config.health(breakers.handle()));
        let handle = queue.handle();
        ServiceBuilder::new()
            .layer(FallbackLayer::new(cascade().health(queue.handle())))
            .layer(queue)
            .layer(breakers)
            .layer(RetryLayer::new(retry(d(ms[0]), true)))
            .service(recorded(sim, log.clone(), Some(handle)))
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
        .unwrap_or_else(|_| "400,400,250,120,1;400,400,250,120".into());
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
        // The requests that reached the preferred model in each recovery window.
        let in_window: Vec<Vec<&Sent>> = windows
            .iter()
            .map(|(_, end)| {
                log.iter()
                    .filter(|sent| {
                        let at = sent.at.as_millis() as u64;
                        sent.model == PREFERRED && at >= *end && at < end + RECOVERY_WINDOW_MS
                    })
                    .collect()
            })
            .collect();
        let after_recovery: Vec<usize> = in_window.iter().map(Vec::len).collect();
        if std::env::var_os("FIGURES_BREAKDOWN").is_some() {
            let inside = |at: u64| windows.iter().find(|(a, b)| at >= *a && at < *b);
            let (mut ok, mut fail_out, mut fail_early, mut fail_in, mut other) = (0, 0, 0, 0, 0);
            for sent in log.iter() {
                let at = sent.at.as_millis() as u64;
                if sent.model != PREFERRED {
                    other += 1;
                } else if sent.status == 200 {
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
        // The formula's bound: what slow start admits in the window counted from a
        // probe sent at the recovery or later (the pipeline has no slow start).
        let ack = report
            .stack
            .split(" ack=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0);
        let bound = ack.map(|ack| (1usize << (RECOVERY_WINDOW_MS / ack + 1)) - 1);
        let over_formula = match bound {
            Some(bound) => after_recovery.iter().filter(|n| **n > bound).count(),
            None => 0,
        };
        // The issue's criterion, per window: no more requests reach the model than
        // slow start's limit in force when they were sent. A request sent while
        // nothing limited the model (no hold on, or slow start over with no backlog)
        // came at its own pace: that window has no slow-start bound.
        let mut over_limit = Vec::new();
        let mut unlimited = 0;
        let mut limited = 0;
        for ((_, end), sent) in windows.iter().zip(&in_window) {
            let limits: Vec<Option<u32>> = sent.iter().filter_map(|s| s.admission).collect();
            if limits.is_empty() {
                continue;
            }
            if limits.iter().any(Option::is_none) {
                unlimited += 1;
                continue;
            }
            limited += 1;
            let allowed = limits.iter().flatten().max().copied().unwrap_or(0) as usize;
            if sent.len() > allowed {
                let requests: Vec<String> = sent
                    .iter()
                    .map(|s| {
                        format!(
                            "{}@{:.3}",
                            s.request.unwrap_or(u64::MAX),
                            s.at.as_secs_f64()
                        )
                    })
                    .collect();
                over_limit.push(format!(
                    "{} at {:.2} s under limits {limits:?} [{}]",
                    sent.len(),
                    *end as f64 / 1000.0,
                    requests.join(" ")
                ));
            }
        }
        let answered = report.answered.total.max(1) as f64;
        println!(
            "{}: answered {:.1} %, preferred {:.1} % of answers, {:.2} upstream/request, p50 {:.0} ms, p99 {:.0} ms, \
             added by the layers p50 {:.0} ms, p99 {:.0} ms; \
             requests reaching {PREFERRED} in the 100 ms after each of {} recoveries: max {}, mean {:.2}; \
             over the formula's bound {}: {} times; windows under a slow-start limit {limited} \
             (no limit in force: {unlimited}), over the limit in force: {}{}",
            report.stack,
            100.0 * report.answered.total as f64 / report.requests as f64,
            100.0 * report.answered.first_choice as f64 / answered,
            report.upstream.amplification,
            report.latency.p50_ms,
            report.latency.p99_ms,
            report.added_latency.p50_ms,
            report.added_latency.p99_ms,
            after_recovery.len(),
            after_recovery.iter().max().unwrap_or(&0),
            after_recovery.iter().sum::<usize>() as f64 / after_recovery.len().max(1) as f64,
            bound.map_or("- (no queue)".to_owned(), |b| b.to_string()),
            over_formula,
            over_limit.len(),
            if over_limit.is_empty() {
                String::new()
            } else {
                format!(" ({})", over_limit.join("; "))
            },
        );
        println!("  upstream answers {:?}", report.upstream.by_answer);
        if std::env::var_os("FIGURES_ADDED").is_some() {
            added_breakdown(&log, span_ms, report.requests);
        }
    }
    println!();
}

/// Why requests waited: from the log, each request's added latency is the time from
/// its scheduled start (the runner spreads them evenly) to the sending of the attempt
/// that answered it; sorted by what happened before that attempt.
/// A request whose added latency is over 500 ms: how much, its index, what reached the
/// simulator for it, and its scheduled start.
type Slow<'a> = (Duration, u64, Vec<&'a Sent>, Duration);

fn added_breakdown(log: &[Sent], span_ms: u64, requests: u64) {
    let mut by_request: std::collections::BTreeMap<u64, Vec<&Sent>> = Default::default();
    for sent in log {
        if let Some(i) = sent.request {
            by_request.entry(i).or_default().push(sent);
        }
    }
    let mut slow: Vec<Slow<'_>> = Vec::new();
    for (i, sent) in &by_request {
        let start = Duration::from_millis(span_ms * i / requests);
        let Some(last) = sent.last() else { continue };
        let added = last.at.saturating_sub(start);
        if added > Duration::from_millis(500) {
            slow.push((added, *i, sent.clone(), start));
        }
    }
    slow.sort_by_key(|s| std::cmp::Reverse(s.0));
    let count = |f: &dyn Fn(&Slow<'_>) -> bool| slow.iter().filter(|s| f(s)).count();
    let held_first = |s: &Slow<'_>| s.2[0].at.saturating_sub(s.3) > Duration::from_millis(300);
    println!(
        "  added > 500 ms: {} requests; first attempt held > 300 ms: {}; 1 failed attempt: {}, 2: {}, 3 or more: {}; answered by the fallback: {}",
        slow.len(),
        count(&held_first),
        count(&|s| s.2.len() == 2),
        count(&|s| s.2.len() == 3),
        count(&|s| s.2.len() > 3),
        count(&|s| s.2.last().is_some_and(|l| l.model != PREFERRED)),
    );
    for (added, i, sent, start) in slow.iter().take(12) {
        let path: Vec<String> = sent
            .iter()
            .map(|s| {
                format!(
                    "+{}ms {} {}",
                    s.at.saturating_sub(*start).as_millis(),
                    s.model.trim_start_matches("claude-"),
                    s.status
                )
            })
            .collect();
        println!(
            "    request {i} added {} ms: {}",
            added.as_millis(),
            path.join(", ")
        );
    }
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
