//! The rate limiter's success path with its buckets in Redis (`RedisLimitStore` on a
//! loopback `redis-server` the bench starts on a free port, `--save "" --appendonly
//! no`) against the local store, over an upstream that answers at once, 2 KB body:
//! the round trips per call, the wall time per call and the instructions per call.
//!
//! Round trips and wall time: `cargo bench -p brownout-redis --bench redis_limit`
//! prints the commands Redis processed (`INFO commandstats`) over 20,000 calls, by
//! command, and the time per call of each store.
//!
//! Instructions (callgrind; counts the client side only, every thread of the
//! process: the layer, redis-rs, the runtime, the socket calls):
//!
//! ```sh
//! cargo bench -p brownout-redis --bench redis_limit --no-run
//! bin=$(ls -t $CARGO_TARGET_DIR/release/deps/redis_limit-* | grep -v '\.d$' | head -1)
//! for v in local redis; do for n in 200 2200; do
//!   echo "$v $n $(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     $bin $v $n 2>&1 | grep Collected)"
//! done; done
//! ```
//!
//! One call costs the difference of the two counts divided by 2,000.

use std::{
    convert::Infallible,
    future::Ready,
    hint::black_box,
    process::{Child, Command, Stdio},
    time::Duration,
};

use brownout_limit::{LimitStore, Limits, LocalLimitStore, RateLimitConfig, RateLimitLayer};
use brownout_redis::{FailMode, RedisConfig, RedisLimitStore};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};

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

/// `INFO commandstats` as (command, calls) pairs.
fn commandstats(port: u16) -> Vec<(String, u64)> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn body(size: usize) -> Bytes {
    let start =
        r#"{"model":"claude-opus-4-1","max_tokens":1024,"messages":[{"role":"user","content":""#;
    let end = r#""}]}"#;
    let mut text = String::with_capacity(size);
    text.push_str(start);
    while text.len() + end.len() < size {
        text.push_str("Tell me more about brownouts. ");
    }
    text.truncate(size - end.len());
    text.push_str(end);
    Bytes::from(text)
}

const ANSWER: &[u8] = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-1","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}"#;

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(ANSWER)))))
}

fn layer(store: impl LimitStore) -> RateLimitLayer {
    // Limits no benchmark reaches: the success path, never a wait.
    let huge = Limits::new()
        .requests_per_minute(u32::MAX as u64)
        .input_tokens_per_minute(1 << 40)
        .output_tokens_per_minute(1 << 40);
    RateLimitLayer::new(
        RateLimitConfig::new()
            .limits(huge)
            .max_wait(Duration::ZERO)
            .store(store),
    )
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A Redis store on `port`, once it answers.
fn redis_store(rt: &tokio::runtime::Runtime, port: u16) -> RedisLimitStore {
    rt.block_on(async {
        let redis = RedisConfig::new(&format!("redis://127.0.0.1:{port}"), "bench").unwrap();
        let store = RedisLimitStore::new(redis, FailMode::Open).unwrap();
        for _ in 0..300 {
            if store.is_shared() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.is_shared(), "the store never reached Redis");
        store
    })
}

async fn calls<S>(stack: &S, body: &Bytes, n: usize)
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<brownout_core::Body>,
            Error = brownout_core::BoxError,
        > + Clone,
{
    for _ in 0..n {
        let request = Request::post("https://api.anthropic.com/v1/messages")
            .header("content-type", "application/json")
            .header("x-api-key", "sk-ant-bench")
            .body(Full::new(body.clone()))
            .unwrap();
        let response = stack.clone().oneshot(request).await.unwrap();
        black_box(response.into_body().collect().await.unwrap());
    }
}

/// `redis_limit local|redis N`: N calls and exit, for callgrind.
fn count(variant: &str, n: usize) {
    let rt = runtime();
    let server = start_redis();
    let body = body(2 * 1024);
    if variant == "local" {
        let stack = ServiceBuilder::new()
            .layer(layer(LocalLimitStore))
            .service(service_fn(ok));
        rt.block_on(calls(&stack, &body, n));
    } else {
        let (_, port) = server.as_ref().expect("redis-server did not start");
        let store = redis_store(&rt, *port);
        let stack = ServiceBuilder::new()
            .layer(layer(store))
            .service(service_fn(ok));
        rt.block_on(calls(&stack, &body, n));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, variant, n] = args.as_slice() {
        if let (true, Ok(n)) = (variant == "local" || variant == "redis", n.parse()) {
            count(variant, n);
            return;
        }
    }
    let Some((_server, port)) = start_redis() else {
        println!("redis-server did not start: nothing to measure");
        return;
    };
    let rt = runtime();
    let body = body(2 * 1024);
    let store = redis_store(&rt, port);
    let redis = ServiceBuilder::new()
        .layer(layer(store.clone()))
        .service(service_fn(ok));
    let local = ServiceBuilder::new()
        .layer(layer(LocalLimitStore))
        .service(service_fn(ok));
    rt.block_on(calls(&redis, &body, 1000));

    // Round trips: what Redis processed while the calls ran, by command, and 300 ms
    // after (the last flush).
    let n = 20_000;
    let before = commandstats(port);
    let trips = store.round_trips();
    let start = std::time::Instant::now();
    rt.block_on(calls(&redis, &body, n));
    let redis_time = start.elapsed();
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    let after = commandstats(port);
    let trips_after = store.round_trips();
    println!("redis commands during {n} calls ({redis_time:?} + 300 ms):");
    for (name, calls) in &after {
        let was = before
            .iter()
            .find(|(b, _)| b == name)
            .map_or(0, |(_, c)| *c);
        // The INFO calls themselves are not the store's.
        if calls > &was && name != "info" {
            println!(
                "  {name}: {} ({:.4} per call)",
                calls - was,
                (calls - was) as f64 / n as f64
            );
        }
    }
    println!(
        "store's round trips: {} admissions, {} flush pipelines ({:.4} per call)",
        trips_after.admissions - trips.admissions,
        trips_after.flushes - trips.flushes,
        (trips_after.admissions - trips.admissions + trips_after.flushes - trips.flushes) as f64
            / n as f64
    );

    // Wall time per call, best of five runs of 5,000.
    let time = |stack: &dyn Fn(usize)| {
        (0..5)
            .map(|_| {
                let start = std::time::Instant::now();
                stack(5000);
                start.elapsed() / 5000
            })
            .min()
            .unwrap()
    };
    let local_t = time(&|n| rt.block_on(calls(&local, &body, n)));
    let redis_t = time(&|n| rt.block_on(calls(&redis, &body, n)));
    println!(
        "time per call: local store {local_t:?}, redis store {redis_t:?} ({:.1}x)",
        redis_t.as_secs_f64() / local_t.as_secs_f64()
    );
}
