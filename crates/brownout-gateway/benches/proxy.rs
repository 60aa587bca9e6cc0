//! The gateway against a bare hyper proxy on loopback, in one run; its resident memory
//! with 1,000 connections in flight; and what boxing the pipeline costs.
//!
//! ```text
//! cargo bench -p brownout-gateway --bench proxy
//! ```
//!
//! Processes besides this one: a minimal upstream (a fixed Anthropic-shaped answer,
//! no work), the bare proxy (hyper's server and hyper-util's pooled client, nothing
//! else) and the gateway binary four times: with the example configuration (every
//! layer, a two-model cascade), the same with `[observe]` (metrics and the status board),
//! without the cache, with the fallback only, and with
//! no layer at all (the wiring alone). Each runs on a multi-threaded tokio runtime.
//! This process is the load generator: `BENCH_CONNECTIONS` keep-alive connections
//! (32) sending `BENCH_REQUESTS` requests (20,000) per round, each with a different
//! prompt, the proxies taking turns for `BENCH_ROUNDS` rounds (5) after a warm-up;
//! the median round is reported, with the proxy's CPU time per request read from
//! `/proc/<pid>/stat`. Everything shares the machine's cores, the load generator
//! included, so the numbers compare the proxies with each other, not with other
//! machines. The upstream answers at once, which makes this the proxies' worst case;
//! a second table repeats the example against an upstream that takes 100 ms.
//!
//! Memory, first, on fresh processes: 1,000 connections each with one request the
//! upstream holds for two seconds, the proxy's `VmRSS` read from `/proc/<pid>/status`
//! while all are in flight; and again after the load rounds.
//!
//! `BROWNOUT_BENCH_ROLE=upstream|bare` runs one of the servers alone (it prints its
//! address), and `BROWNOUT_BENCH_ROLE=load BENCH_TARGET=host:port` the load alone: for
//! profiling one proxy.

use std::{
    convert::Infallible,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use brownout::Body;
use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceExt};

const ROLE: &str = "BROWNOUT_BENCH_ROLE";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("upstream") => serve_role(upstream_main),
        Ok("bare") => serve_role(bare_main),
        // Load only, against BENCH_TARGET (host:port): for profiling one proxy.
        Ok("load") => load_role(),
        _ => orchestrate(),
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------
// The upstream and the bare proxy, each in a process of its own.

fn serve_role<F, Fut>(main: F)
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        main(listener).await;
    });
}

const ANSWER: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"The incident was caused by a configuration change and was resolved within the hour."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":24,"output_tokens":18}}"#;

async fn upstream_main(listener: TcpListener) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let delay = request
                    .headers()
                    .get("x-bench-delay-ms")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map(Duration::from_millis);
                // Read the request whole, as a provider would.
                let _ = request.into_body().collect().await;
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                        .unwrap(),
                )
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A proxy with nothing in it: hyper's server, hyper-util's pooled client, the
/// request's path under the upstream's address, the answer streamed back.
async fn bare_main(listener: TcpListener) {
    let upstream: Uri = std::env::var("BENCH_UPSTREAM").unwrap().parse().unwrap();
    let client = brownout_gateway::http_client::<Incoming>();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let client = client.clone();
                let pq = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                *request.uri_mut() = format!("{upstream}{}", pq.trim_start_matches('/'))
                    .parse()
                    .unwrap();
                request.headers_mut().remove(header::HOST);
                async move { client.request(request).await }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn load_role() {
    let addr: SocketAddr = std::env::var("BENCH_TARGET").unwrap().parse().unwrap();
    let requests: u64 = env_or("BENCH_REQUESTS", 20_000);
    let connections: usize = env_or("BENCH_CONNECTIONS", 32);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let round = runtime.block_on(load(addr, None, connections, requests, 0, None));
    println!(
        "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} failures",
        round.throughput,
        round.percentile(0.5),
        round.percentile(0.99),
        round.failures
    );
}

// ---------------------------------------------------------------------------------
// The load generator.

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    fn spawn(mut command: Command) -> Proc {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Proc { child, addr }
    }

    /// CPU time the process has used, user and system, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// Resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(addr: SocketAddr, i: u64, delay: Option<u64>) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{{"role":"user","content":"Request {i}: summarise the incident report in one line."}}]}}"#
    );
    let mut builder = Request::post(format!("http://{addr}/v1/messages"))
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-api-key", "sk-ant-bench")
        .header("anthropic-version", "2023-06-01");
    if let Some(ms) = delay {
        builder = builder.header("x-bench-delay-ms", ms.to_string());
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

struct Round {
    throughput: f64,
    /// The proxy's CPU time per request, in µs.
    cpu_us: f64,
    latencies_us: Vec<u64>,
    failures: u64,
}

impl Round {
    fn percentile(&self, q: f64) -> f64 {
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1000.0
    }
}

/// `requests` requests over `connections` keep-alive connections, as fast as they go.
async fn load(
    addr: SocketAddr,
    proxy: Option<&Proc>,
    connections: usize,
    requests: u64,
    first_index: u64,
    delay_ms: Option<u64>,
) -> Round {
    let cpu_before = proxy.map_or(0.0, Proc::cpu_seconds);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let next = next.clone();
        workers.spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut failures = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return (latencies, failures);
                }
                let sent = Instant::now();
                sender.ready().await.unwrap();
                let response = sender
                    .send_request(request(addr, first_index + i, delay_ms))
                    .await
                    .unwrap();
                let ok = response.status() == 200;
                let _ = response.into_body().collect().await.unwrap();
                latencies.push(sent.elapsed().as_micros() as u64);
                failures += u64::from(!ok);
            }
        });
    }
    let mut latencies_us = Vec::with_capacity(requests as usize);
    let mut failures = 0;
    while let Some(done) = workers.join_next().await {
        let (mut l, f) = done.unwrap();
        latencies_us.append(&mut l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Round {
        throughput: requests as f64 / elapsed.as_secs_f64(),
        cpu_us: proxy.map_or(0.0, |p| {
            (p.cpu_seconds() - cpu_before) * 1e6 / requests as f64
        }),
        latencies_us,
        failures,
    }
}

/// 1,000 connections, each with one request the upstream holds for 2 s; the proxy's
/// RSS while they are all in flight. Returns (KiB, answered).
async fn memory(proxy: &Proc) -> (u64, u64) {
    const CONNECTIONS: u64 = 1000;
    let addr = proxy.addr;
    let mut all = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        all.spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let response = sender
                .send_request(request(addr, 1_000_000 + i, Some(2000)))
                .await
                .unwrap();
            let ok = response.status() == 200;
            let _ = response.into_body().collect().await;
            u64::from(ok)
        });
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let loaded = proxy.rss_kib();
    let mut answered = 0;
    while let Some(ok) = all.join_next().await {
        answered += ok.unwrap();
    }
    (loaded, answered)
}

fn median(rounds: &mut [Round]) -> &Round {
    rounds.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    &rounds[rounds.len() / 2]
}

/// The gateway configurations measured: the example with layers turned off one group
/// at a time, down to the wiring alone.
/// The example pipeline on the simulator: `gateway.sim.toml`.
const SIM_CONFIG: &str = include_str!("../gateway.sim.toml");

fn variants(upstream_url: &str) -> Vec<(&'static str, String)> {
    // The example's pipeline over the simulator's address (gateway.example.toml names
    // the real providers). Every connection of the load comes from 127.0.0.1, so the
    // per-client cap is lifted to the memory test's 1,000 connections.
    let example = format!(
        "{}\n[connections]\nper_client = 100000\ntotal = 100000\n",
        SIM_CONFIG
            .replace("http://127.0.0.1:8787", upstream_url.trim_end_matches('/'))
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
    );
    let off = |text: &str, layers: &[&str]| {
        let mut text = text.to_owned();
        for layer in layers {
            text = text.replace(
                &format!("\n[{layer}]\n"),
                &format!("\n[{layer}]\nenabled = false\n"),
            );
        }
        text
    };
    let no_cascade = |text: &str| {
        let mut out = String::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with("cascade = [") {
                skipping = true;
            }
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
            if skipping && line.starts_with(']') {
                skipping = false;
            }
        }
        out
    };
    let wiring = no_cascade(&off(&example, &["retry", "breaker", "cache", "degrade"]));
    assert!(!wiring.contains("cascade = ["), "the cascades are gone");
    let mut all = vec![
        ("gateway: every layer (the example)", example.clone()),
        // `[observe]` on: the metrics and the status board record every request and
        // attempt (issue 17's target: at most 10% more CPU per request).
        (
            "gateway: every layer + metrics",
            format!("{example}\n[observe]\nmetrics = true\nstatus = true\n"),
        ),
        // And the SQLite availability log too (a new file in the temp directory): the
        // whole of issue 17's "metrics and SQLite logging".
        (
            "gateway: every layer + metrics + SQLite log",
            format!(
                "{example}\n[observe]\nmetrics = true\nstatus = true\nsqlite = \"{}\"\n",
                bench_log_path().display()
            ),
        ),
        ("gateway: without the cache", off(&example, &["cache"])),
        (
            "gateway: fallback only",
            off(&example, &["retry", "breaker", "cache", "degrade"]),
        ),
        ("gateway: wiring only, no layer", wiring),
    ];
    // BENCH_ONLY_OBSERVE=1: the example without and with `[observe]` (issue 17's
    // figure); BENCH_ONLY_EXAMPLE=1: the example alone, for a quicker run.
    if std::env::var_os("BENCH_ONLY_OBSERVE").is_some() {
        all.truncate(3);
    }
    if std::env::var_os("BENCH_ONLY_EXAMPLE").is_some() {
        all.truncate(1);
    }
    // BENCH_STATE=redis://…: the example again with `[state]` on that Redis (the
    // breakers and the cache shared), measured in the same rounds.
    if let Ok(url) = std::env::var("BENCH_STATE") {
        let state = format!("{example}\n[state]\nredis_url = \"{url}\"\ndeployment = \"bench\"\n");
        all.insert(1, ("gateway: every layer, [state] in Redis", state));
    }
    all
}

/// The SQLite log of the bench's `[observe]` variant: one file per run, in the temp
/// directory.
fn bench_log_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("brownout-bench-log-{}.db", std::process::id()))
}

fn orchestrate() {
    let requests: u64 = env_or("BENCH_REQUESTS", 20_000);
    let connections: usize = env_or("BENCH_CONNECTIONS", 32);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let me = std::env::current_exe().unwrap();

    let upstream = Proc::spawn({
        let mut c = Command::new(&me);
        c.env(ROLE, "upstream");
        c
    });
    let upstream_url = format!("http://{}/", upstream.addr);
    let dir = std::env::temp_dir().join(format!("brownout-gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut proxies: Vec<(&str, Proc, u64)> = Vec::new();
    let bare = Proc::spawn({
        let mut c = Command::new(&me);
        c.env(ROLE, "bare").env("BENCH_UPSTREAM", &upstream_url);
        c
    });
    let at_start = bare.rss_kib();
    proxies.push(("bare hyper proxy", bare, at_start));
    for (i, (name, config)) in variants(&upstream_url).into_iter().enumerate() {
        let path = dir.join(format!("gateway-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let gateway = Proc::spawn({
            let mut c = Command::new(env!("CARGO_BIN_EXE_brownout-gateway"));
            c.args([
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--log-level",
                "warn",
            ]);
            c
        });
        let at_start = gateway.rss_kib();
        proxies.push((name, gateway, at_start));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("box cost: {}", box_cost().await);
        println!(
            "load: {requests} requests per round over {connections} keep-alive connections, {rounds} rounds per proxy after a warm-up, proxies in turn"
        );
        // Memory first, on fresh processes: 1,000 connections in flight.
        let mut memory_rows = Vec::new();
        for (name, proxy, at_start) in proxies.iter().take(2) {
            let (loaded, answered) = memory(proxy).await;
            memory_rows.push((*name, *at_start, loaded, answered));
        }
        // Warm-up: connection pools, allocator, caches.
        for (_, proxy, _) in &proxies {
            load(proxy.addr, Some(proxy), connections, requests / 4, 0, None).await;
        }
        let mut results: Vec<Vec<Round>> = proxies.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds as u64 {
            let first = (round + 1) * 10 * requests;
            for ((_, proxy, _), rounds) in proxies.iter().zip(&mut results) {
                rounds.push(load(proxy.addr, Some(proxy), connections, requests, first, None).await);
            }
        }
        let bare_throughput = median(&mut results[0]).throughput;
        println!();
        println!("| proxy | req/s (median round) | vs bare | p50 | p99 | p99.9 | proxy CPU per request | failures | each round, req/s |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for ((name, _, _), rounds) in proxies.iter().zip(&mut results) {
            let each: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.throughput)).collect();
            let r = median(rounds);
            println!(
                "| {name} | {:.0} | {:.2}× | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} µs | {} | {} |",
                r.throughput,
                r.throughput / bare_throughput,
                r.percentile(0.50),
                r.percentile(0.99),
                r.percentile(0.999),
                r.cpu_us,
                r.failures,
                each.join(", ")
            );
        }

        // An upstream that takes 100 ms, as a (fast) model would: the proxies are no
        // longer the bottleneck, and what is left of their cost is their CPU.
        println!();
        println!("With an upstream that answers in 100 ms: 10,000 requests over 256 connections");
        println!();
        println!("| proxy | req/s | p50 | p99 | proxy CPU per request |");
        println!("|---|---|---|---|---|");
        for (name, proxy, _) in proxies.iter().take(2) {
            let r = load(proxy.addr, Some(proxy), 256, 10_000, 50 * requests, Some(100)).await;
            println!(
                "| {name} | {:.0} | {:.1} ms | {:.1} ms | {:.0} µs |",
                r.throughput,
                r.percentile(0.50),
                r.percentile(0.99),
                r.cpu_us
            );
        }

        println!();
        println!("| proxy | RSS at start | RSS with 1,000 connections in flight | answered | RSS after the load rounds |");
        println!("|---|---|---|---|---|");
        for ((name, at_start, loaded, answered), (_, proxy, _)) in memory_rows.iter().zip(&proxies) {
            println!(
                "| {name} | {:.1} MiB | {:.1} MiB | {answered} / 1000 | {:.1} MiB |",
                *at_start as f64 / 1024.0,
                *loaded as f64 / 1024.0,
                proxy.rss_kib() as f64 / 1024.0
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    drop(proxies);
    drop(upstream);
}

// ---------------------------------------------------------------------------------
// What boxing the pipeline costs: the same stack, boxed and not, over an in-memory
// upstream, on one thread.

async fn box_cost() -> String {
    use brownout::breaker::{BreakerConfig, CircuitBreakerLayer};
    use brownout::cache::{CacheConfig, CacheLayer};
    use brownout::degrade::{DegradeConfig, DegradeLayer};
    use brownout::fallback::{FallbackConfig, FallbackLayer, Target};
    use brownout::retry::{RetryConfig, RetryLayer};

    let upstream = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            ANSWER.as_bytes(),
        ))))
    });
    let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
    let cascade = FallbackConfig::new([
        Target::new("claude-sonnet-4-5"),
        Target::new("claude-haiku-4-5"),
    ])
    .unwrap()
    .health(breakers.handle());
    let stack = tower::ServiceBuilder::new()
        .layer(DegradeLayer::new(DegradeConfig::default()))
        .layer(CacheLayer::new(CacheConfig::new()))
        .layer(FallbackLayer::new(cascade))
        .layer(breakers)
        .layer(RetryLayer::new(RetryConfig::new()))
        .service(upstream);
    let boxed = tower::util::BoxCloneSyncService::new(stack.clone());

    async fn time<S, B>(service: S, n: u32) -> Duration
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
        S::Error: std::fmt::Debug,
        B: http_body::Body,
    {
        let started = Instant::now();
        for i in 0..n {
            let body = format!(
                r#"{{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{{"role":"user","content":"Request {}"}}]}}"#,
                i % 64
            );
            let request = Request::post("/v1/messages")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            let _ = response.into_body().collect().await;
        }
        started.elapsed() / n
    }

    const N: u32 = 20_000;
    let mut plain = Vec::new();
    let mut with_box = Vec::new();
    for _ in 0..5 {
        plain.push(time(stack.clone(), N).await);
        with_box.push(time(boxed.clone(), N).await);
    }
    plain.sort();
    with_box.sort();
    format!(
        "per request through all five layers in memory: {:.2} µs unboxed, {:.2} µs boxed (median of 5 × {N})",
        plain[2].as_secs_f64() * 1e6,
        with_box[2].as_secs_f64() * 1e6
    )
}
