//! The gateway's CPU per request with a TLS upstream against a plain-HTTP one, after
//! warm-up (connections reused), and what a fresh TLS handshake costs.
//!
//! The gateway's router, built from a configuration by the same code as the binary
//! (`Router` over `UpstreamClient`), runs in this process and sends to brownout-sim in
//! a child process (so that the upstream's work is not counted): over plain HTTP/1.1,
//! over TLS with HTTP/2 (the default, by ALPN), and over TLS with `http2 = false`.
//! `*-fresh` modes send with a client that keeps no idle connection, so every request
//! makes a new connection (and, over TLS, a full handshake).
//!
//! Instruction counts, which a shared machine does not blur (the cost of one request
//! is the difference of two counts divided by 2,000):
//!
//! ```sh
//! cargo bench -p brownout-gateway --bench tls_upstream --no-run
//! bin=$(ls -t target/release/deps/tls_upstream-* | grep -v '\.d$' | head -1)
//! dir=$(mktemp -d); $bin upstream $dir & sleep 1
//! for mode in plain tls tls-h1 plain-fresh tls-fresh; do for n in 200 2200; do
//!   echo "$mode $n $(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     $bin run $mode $n $dir 2>&1 | grep Collected)"
//! done; done; kill %1
//! ```
//!
//! Measured 2026-12-01 (release, callgrind; instructions per request in the gateway
//! process, the upstream in its own):
//!
//! | mode | instructions / request | vs plain |
//! |---|---:|---:|
//! | `plain` (HTTP/1.1, pooled) | 119,307 | 1.00 |
//! | `tls` (HTTP/2 by ALPN, pooled) | 153,395 | 1.29 |
//! | `tls-h1` (HTTP/1.1 over TLS, pooled) | 128,901 | 1.08 |
//! | `plain-fresh` (new connection each) | 140,283 | 1.18 |
//! | `tls-fresh` (new connection and full TLS 1.3 handshake each) | 1,267,555 | 10.62 |
//!
//! A fresh handshake costs about 1.13 M instructions (`tls-fresh` − `plain-fresh`),
//! nine pooled plain requests' worth; connections are pooled, so it is paid once per
//! connection. HTTP/2's framing and HPACK cost more CPU than HTTP/1.1 on one
//! sequential stream (1.29× against 1.08×); it pays off in connections when many
//! requests are in flight. The first TLS connection of a process costs about 420 M
//! instructions once, outside these figures: aws-lc seeding its random generator from
//! its CPU-jitter entropy source (`tree_jitter_initialize`, seen in callgrind).
//! Wall clock in the same run (`cargo bench`, 3,000 requests, shared machine): plain
//! 143 µs, tls 180 µs (1.25×), tls-h1 149 µs (1.04×), tls-fresh 689 µs.
//!
//! Run by `cargo bench` with no arguments, it starts the upstream itself and prints
//! wall-clock microseconds per request for each mode, as ratios to `plain` (noisy on a
//! shared machine; the instruction counts are the numbers to quote).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use brownout_gateway::{Config, Router};
use brownout_sim::{ModelScript, Script, Sim, SimServer, SimTls};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

const MODEL: &str = "claude-sonnet-4-5";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["upstream", dir] => upstream(Path::new(dir)),
        ["run", mode, n, dir] => {
            let n = n.parse().expect("a request count");
            let runtime = runtime();
            let spent = runtime.block_on(run(mode, n, Path::new(dir)));
            println!("{mode} {n} {:?}", spent);
        }
        _ => orchestrate(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// brownout-sim on two loopback ports, plain and TLS; their addresses and the CA in `dir`.
fn upstream(dir: &Path) {
    runtime().block_on(async {
        let script = || Script::new().seed(1).model(MODEL, ModelScript::new());
        let plain = SimServer::bind("127.0.0.1:0", Sim::new(script()))
            .await
            .unwrap();
        let tls = SimTls::self_signed().unwrap();
        tls.write_ca(dir.join("ca.pem")).unwrap();
        let secure = SimServer::bind("127.0.0.1:0", Sim::new(script()))
            .await
            .unwrap()
            .tls(tls);
        std::fs::write(
            dir.join("plain.addr"),
            plain.local_addr().unwrap().to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("tls.addr"),
            secure.local_addr().unwrap().to_string(),
        )
        .unwrap();
        let _plain = plain.spawn().unwrap();
        secure.serve().await;
    });
}

fn config(mode: &str, dir: &Path) -> Config {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("the upstream's files");
    let (base, extra) = match mode.trim_end_matches("-fresh") {
        "plain" => (format!("http://{}", read("plain.addr")), String::new()),
        "tls" => (
            format!("https://{}", read("tls.addr")),
            format!("ca_file = {:?}", dir.join("ca.pem").display().to_string()),
        ),
        "tls-h1" => (
            format!("https://{}", read("tls.addr")),
            format!(
                "ca_file = {:?}\nhttp2 = false",
                dir.join("ca.pem").display().to_string()
            ),
        ),
        other => panic!("unknown mode {other}"),
    };
    let text = format!(
        r#"
listen = "127.0.0.1:0"
seed = 1

[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "{base}"
pass_through_key = true
{extra}

[routes."/v1/messages"]
provider = "anthropic"
"#
    );
    Config::from_toml_str(&text).expect("the bench configuration")
}

fn request(i: usize) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{MODEL}","max_tokens":64,"messages":[{{"role":"user","content":"Question {i}: what happened during the incident?"}}]}}"#
    );
    Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-bench")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body)))
        .expect("a request")
}

/// `n` requests in `mode`, one after the other; the time they took after a warm-up of
/// 20 (which makes the pooled connection, and the TLS session).
async fn run(mode: &str, n: usize, dir: &Path) -> Duration {
    let config = config(mode, dir);
    let fresh = mode.ends_with("-fresh");
    let router: Router<Full<Bytes>> = if fresh {
        // No idle connection kept: each request connects (and shakes hands) anew.
        let client = brownout::client::HttpsConfig::new()
            .ca_file(dir.join("ca.pem"))
            .pool_max_idle_per_host(0)
            .build()
            .expect("a client");
        Router::new(&config, client.clone(), client)
    } else {
        let client = brownout_gateway::UpstreamClient::new(&config);
        Router::new(&config, client.clone(), client)
    };
    let send = |i: usize| {
        let router = router.clone();
        async move {
            let response = router.oneshot(request(i)).await.expect("infallible");
            assert_eq!(response.status(), 200, "mode answers");
            let _ = response.into_body().collect().await.expect("a body");
        }
    };
    for i in 0..20 {
        send(i).await;
    }
    let started = Instant::now();
    for i in 0..n {
        send(20 + i).await;
    }
    started.elapsed()
}

fn orchestrate() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("brownout-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("upstream")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("tls.addr").exists() {
        assert!(Instant::now() < deadline, "the upstream did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut plain = None;
    println!("{:<12} {:>10} {:>8}", "mode", "µs/request", "ratio");
    for mode in ["plain", "tls", "tls-h1", "plain-fresh", "tls-fresh"] {
        let spent = runtime().block_on(run(mode, n, &dir));
        let per = spent.as_secs_f64() * 1e6 / n as f64;
        let base = *plain.get_or_insert(per);
        println!("{mode:<12} {per:>10.1} {:>8.2}", per / base);
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
