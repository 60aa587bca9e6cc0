//! `[state]`: two gateways sharing their breakers and cache through one Redis, each
//! over its own simulator.
//!
//! In real time: the other side is a Redis server, which answers over a socket and
//! expires keys on its own clock (as in brownout-redis's tests); every wait is a
//! bounded poll. The Redis on 127.0.0.1:6379 is used when it answers, else the test
//! skips, saying why (under `CI` it fails); the outage test starts a `redis-server` of
//! its own on a free port and kills it.

use std::{
    future::Future,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use brownout_gateway::{Config, Router};
use brownout_sim::{Fault, ModelScript, Script, Sim};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::{sleep, timeout, Instant};
use tower::ServiceExt;

async fn answers(addr: &str) -> bool {
    matches!(
        timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn redis_up(test: &str) -> bool {
    if answers("127.0.0.1:6379").await {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: no Redis on 127.0.0.1:6379 (CI must start one)"
    );
    println!("skipping {test}: no Redis answers on 127.0.0.1:6379");
    false
}

async fn within<F: Future<Output = bool>>(
    limit: Duration,
    mut cond: impl FnMut() -> F,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        sleep(Duration::from_millis(5)).await;
    }
    None
}

fn deployment() -> String {
    format!("gw-test-{:016x}", fastrand_u64())
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

/// A gateway configuration over a simulator, with `[state]` on `url` (none when
/// `None`) and `extra` appended.
fn config(url: Option<&str>, deployment: &str, extra: &str) -> Config {
    let state = url.map_or(String::new(), |url| {
        format!("[state]\nredis_url = \"{url}\"\ndeployment = \"{deployment}\"\ntimeout = \"250ms\"\npoll_interval = \"100ms\"\n")
    });
    Config::from_toml_str(&format!(
        r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://127.0.0.1:1"
pass_through_key = true

[routes."/v1/messages"]
provider = "anthropic"
cascade = [{{ model = "claude-sonnet-4-5" }}, {{ model = "claude-haiku-4-5" }}]

[retry]
max_attempts = 1

[breaker]
consecutive_failures = 3
open_for = "10s"

{state}
{extra}
"#
    ))
    .unwrap()
}

fn gateway(config: &Config, sim: &Sim) -> Router<Full<Bytes>> {
    Router::new(config, sim.clone(), sim.clone())
}

fn ask(key: &str, model: &str, question: &str) -> Request<Full<Bytes>> {
    Request::post("/v1/messages")
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{model}","max_tokens":64,"messages":[{{"role":"user","content":"{question}"}}]}}"#
        ))))
        .unwrap()
}

struct Answer {
    status: u16,
    model: Option<String>,
    cache: Option<String>,
    body: Bytes,
}

async fn send(gateway: &Router<Full<Bytes>>, request: Request<Full<Bytes>>) -> Answer {
    let response: Response<_> = gateway.clone().oneshot(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (model, cache) = (header("x-brownout-model"), header("x-brownout-cache"));
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        model,
        cache,
        body,
    }
}

fn down() -> Script {
    Script::new()
        .model(
            "claude-sonnet-4-5",
            ModelScript::new().fault(Fault::overloaded()),
        )
        .model(
            "claude-haiku-4-5",
            ModelScript::new().fault(Fault::overloaded()),
        )
}

async fn shared(router: &Router<Full<Bytes>>) {
    let stores = router.layers().shared_state().expect("[state] is on");
    let up = within(Duration::from_secs(2), || async { stores.is_shared() }).await;
    assert!(up.is_some(), "the gateway never reached Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_everything_stays_local() {
    let config = config(None, "unused", "");
    assert!(config.state().is_none());
    let router = gateway(&config, &Sim::new(Script::new()));
    assert!(router.layers().shared_state().is_none());
    assert_eq!(
        send(&router, ask("sk-one", "claude-sonnet-4-5", "Hi"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_stored_by_a_is_served_by_b_only_to_the_same_caller() {
    if !redis_up("a_stale_answer_stored_by_a_is_served_by_b_only_to_the_same_caller").await {
        return;
    }
    let dep = deployment();
    let config = config(Some("redis://127.0.0.1:6379"), &dep, "");
    let a = gateway(&config, &Sim::new(Script::new()));
    let b_sim = Sim::new(down());
    let b = gateway(&config, &b_sim);
    shared(&a).await;
    shared(&b).await;

    let live = send(
        &a,
        ask(
            "sk-ant-caller-one",
            "claude-sonnet-4-5",
            "Capital of France?",
        ),
    )
    .await;
    assert_eq!((live.status, live.cache.as_deref()), (200, None));
    // Every model of B's is down: A's answer stands in, for the same caller.
    let served = within(Duration::from_secs(1), || async {
        let answer = send(
            &b,
            ask(
                "sk-ant-caller-one",
                "claude-sonnet-4-5",
                "Capital of France?",
            ),
        )
        .await;
        answer.status == 200 && answer.cache.as_deref() == Some("stale") && answer.body == live.body
    })
    .await;
    assert!(served.is_some(), "B never served A's stored answer");
    // Another caller asking the same question gets no one else's answer.
    let other = send(
        &b,
        ask(
            "sk-ant-caller-two",
            "claude-sonnet-4-5",
            "Capital of France?",
        ),
    )
    .await;
    assert_ne!(other.cache.as_deref(), Some("stale"));
    assert_ne!(other.body, live.body);
    assert!(b_sim.stats().received >= 2, "B went live first");
}

/// Sonnet and haiku, both healthy (named, so that the simulator counts each).
fn healthy() -> Script {
    Script::new()
        .model("claude-sonnet-4-5", ModelScript::new())
        .model("claude-haiku-4-5", ModelScript::new())
}

/// Both gateways' `[limits]`: four requests a minute for sonnet, no waiting.
const FOUR_A_MINUTE: &str = r#"
[limits]
max_wait = "0s"

[[limits.model]]
provider = "anthropic"
model = "claude-sonnet-4-5"
requests_per_minute = 4
"#;

/// Sends three requests for sonnet through each of `a` and `b`, and returns how many
/// the simulator received for sonnet (the rest moved to the lighter model).
async fn sonnet_calls(a: &Router<Full<Bytes>>, b: &Router<Full<Bytes>>, sim: &Sim) -> u64 {
    for i in 0..3 {
        for gateway in [a, b] {
            let answer = send(
                gateway,
                ask("sk-ant-limited", "claude-sonnet-4-5", &format!("Q{i}")),
            )
            .await;
            assert_eq!(answer.status, 200, "every request is answered");
        }
    }
    sim.stats()
        .by_model
        .get("claude-sonnet-4-5")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_for_both_gateways_together() {
    if !redis_up("the_rate_limit_holds_for_both_gateways_together").await {
        return;
    }
    // Apart, each gateway lets its three through: six in all.
    let local = config(None, "unused", FOUR_A_MINUTE);
    let sim = Sim::new(healthy());
    let (a, b) = (gateway(&local, &sim), gateway(&local, &sim));
    assert_eq!(sonnet_calls(&a, &b, &sim).await, 6);

    // Sharing their buckets in Redis, the two send four, the provider's limit.
    let config = config(Some("redis://127.0.0.1:6379"), &deployment(), FOUR_A_MINUTE);
    let sim = Sim::new(healthy());
    let (a, b) = (gateway(&config, &sim), gateway(&config, &sim));
    shared(&a).await;
    shared(&b).await;
    assert_eq!(sonnet_calls(&a, &b, &sim).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opened_by_a_is_skipped_by_b_within_a_second() {
    if !redis_up("a_breaker_opened_by_a_is_skipped_by_b_within_a_second").await {
        return;
    }
    let dep = deployment();
    let config = config(
        Some("redis://127.0.0.1:6379"),
        &dep,
        "[cache]\nenabled = false\n",
    );
    let a = gateway(
        &config,
        &Sim::new(Script::new().model(
            "claude-sonnet-4-5",
            ModelScript::new().fault(Fault::overloaded()),
        )),
    );
    let b_sim = Sim::new(
        Script::new()
            .model("claude-sonnet-4-5", ModelScript::new())
            .model("claude-haiku-4-5", ModelScript::new()),
    );
    let b = gateway(&config, &b_sim);
    shared(&a).await;
    shared(&b).await;
    // B has called the model before: it knows the key, and the model answers it.
    let first = send(&b, ask("sk-b", "claude-sonnet-4-5", "Hi")).await;
    assert_eq!(
        (first.status, first.model.as_deref()),
        (200, Some("claude-sonnet-4-5"))
    );

    // A's model is overloaded: three failures open A's breaker (A answers from the
    // next model meanwhile).
    for _ in 0..3 {
        let answer = send(&a, ask("sk-a", "claude-sonnet-4-5", "Hi")).await;
        assert_eq!(answer.model.as_deref(), Some("claude-haiku-4-5"));
    }
    let opened = Instant::now();
    let skipped = within(Duration::from_secs(1), || async {
        let answer = send(&b, ask("sk-b", "claude-sonnet-4-5", "Hi")).await;
        answer.status == 200 && answer.model.as_deref() == Some("claude-haiku-4-5")
    })
    .await;
    assert!(
        skipped.is_some(),
        "B did not skip the model A's breaker opened within 1 s"
    );
    println!(
        "B skipped the model {:?} after A opened it",
        opened.elapsed()
    );
    let sent = b_sim.stats().by_model["claude-sonnet-4-5"];
    // From now on B does not send the model a request.
    for _ in 0..5 {
        let answer = send(&b, ask("sk-b", "claude-sonnet-4-5", "Hi")).await;
        assert_eq!(answer.model.as_deref(), Some("claude-haiku-4-5"));
    }
    assert_eq!(b_sim.stats().by_model["claude-sonnet-4-5"], sent);
}

/// Everything the gateways in this test binary log.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn own_redis(port: u16) -> Option<tokio::process::Child> {
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(child) => {
            let addr = format!("127.0.0.1:{port}");
            assert!(
                within(Duration::from_secs(2), || answers(&addr))
                    .await
                    .is_some(),
                "redis-server did not start"
            );
            Some(child)
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server could not start: {e}"
            );
            println!("skipping: redis-server could not start: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_means_local_state_then_shared_again() {
    let logs = logs();
    let port = free_port();
    let Some(mut server) = own_redis(port).await else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let dep = deployment();
    let config = config(Some(&url), &dep, "");
    let a = gateway(&config, &Sim::new(Script::new()));
    let b = gateway(&config, &Sim::new(down()));
    shared(&a).await;
    shared(&b).await;
    let live = send(&a, ask("sk-one", "claude-sonnet-4-5", "before")).await;
    assert!(
        within(Duration::from_secs(1), || async {
            send(&b, ask("sk-one", "claude-sonnet-4-5", "before"))
                .await
                .cache
                .as_deref()
                == Some("stale")
        })
        .await
        .is_some(),
        "B never served A's answer"
    );

    server.kill().await.unwrap();
    let a_stores = a.layers().shared_state().unwrap();
    let b_stores = b.layers().shared_state().unwrap();
    // Every request is still answered: A live, B from its local cache tier.
    let local = within(Duration::from_secs(2), || async {
        let answer = send(&a, ask("sk-one", "claude-sonnet-4-5", "during")).await;
        assert_eq!(answer.status, 200);
        let answer = send(&b, ask("sk-one", "claude-sonnet-4-5", "before")).await;
        assert_eq!(
            (answer.status, answer.cache.as_deref()),
            (200, Some("stale"))
        );
        assert_eq!(answer.body, live.body);
        !a_stores.is_shared() && !b_stores.is_shared()
    })
    .await;
    assert!(local.is_some(), "the gateways never noticed Redis was gone");
    let logged = |what: &'static str| {
        let logs = logs.clone();
        async move {
            within(Duration::from_secs(1), || async {
                String::from_utf8_lossy(&logs.lock().unwrap()).contains(what)
            })
            .await
            .is_some()
        }
    };
    assert!(
        logged("event=\"shared_state_lost\"").await,
        "no log line said Redis was lost"
    );

    let Some(_server) = own_redis(port).await else {
        return;
    };
    let back = within(Duration::from_secs(3), || async {
        a_stores.is_shared() && b_stores.is_shared()
    })
    .await;
    assert!(back.is_some(), "the gateways did not come back to Redis");
    assert!(
        logged("event=\"shared_state_resumed\"").await,
        "no log line said Redis was back"
    );
    // Shared again: an answer A stores now reaches B. (A is asked again while it has
    // not: on a loaded machine a first call after the restart may time out, and its
    // write is dropped.)
    let again = within(Duration::from_secs(3), || async {
        send(&a, ask("sk-one", "claude-sonnet-4-5", "after")).await;
        send(&b, ask("sk-one", "claude-sonnet-4-5", "after"))
            .await
            .cache
            .as_deref()
            == Some("stale")
    })
    .await;
    assert!(
        again.is_some(),
        "an answer stored after Redis came back did not reach B"
    );
}

#[test]
fn state_errors_name_the_key() {
    let error = |state: &str| {
        Config::from_toml_str(&format!(
            r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://127.0.0.1:1"
pass_through_key = true

[routes."/v1/messages"]
provider = "anthropic"

[state]
{state}
"#
        ))
        .unwrap_err()
        .to_string()
    };
    let e = error("deployment = \"prod\"");
    assert!(e.contains("state.redis_url"), "{e}");
    let e = error("redis_url = \"http://:hunter2@127.0.0.1:6379\"");
    assert!(
        e.contains("state.redis_url") && !e.contains("hunter2"),
        "{e}"
    );
    let e = error("redis_url = \"redis://127.0.0.1:6379\"\ndeployment = \"a b\"");
    assert!(e.contains("state.deployment"), "{e}");
    let e = error("redis_url = \"redis://127.0.0.1:6379\"\nlimits = \"sometimes\"");
    assert!(e.contains("state.limits"), "{e}");
    let e = error("redis_url = \"redis://127.0.0.1:6379\"\ntimeout = \"10s\"");
    assert!(e.contains("state.timeout"), "{e}");
    let e = error("redis_url = \"redis://127.0.0.1:6379\"\ncolour = \"blue\"");
    assert!(e.contains("colour"), "{e}");
    // Off: parsed, and nothing shared.
    let off = Config::from_toml_str(
        "[[provider]]\nname = \"a\"\napi = \"anthropic\"\nbase_url = \"http://127.0.0.1:1\"\npass_through_key = true\n[routes.\"/v1/messages\"]\nprovider = \"a\"\n[state]\nenabled = false\nredis_url = \"redis://127.0.0.1:6379\"\n",
    )
    .unwrap();
    assert!(off.state().is_none());
    let on = Config::from_toml_str(
        "[[provider]]\nname = \"a\"\napi = \"anthropic\"\nbase_url = \"http://127.0.0.1:1\"\npass_through_key = true\n[routes.\"/v1/messages\"]\nprovider = \"a\"\n[state]\nredis_url = \"redis://:hunter2@127.0.0.1:6379\"\nlimits = \"fail-closed\"\n",
    )
    .unwrap();
    let state = on.state().unwrap();
    assert_eq!(state.deployment(), "default");
    assert_eq!(
        state.limits(),
        brownout_gateway::config::OnRedisError::FailClosed
    );
    assert!(!format!("{on:?}").contains("hunter2"));
}
