//! `[limits]`: the rate limiter in the gateway, against the simulator that enforces
//! the provider's limits (`brownout-sim/scripts/limits.toml`), and the section's checks.

mod common;

use std::time::Duration;

use brownout_gateway::{Config, Router};
use brownout_sim::{Script, Sim};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::ServiceExt;

const SCRIPT: &str = include_str!("../../brownout-sim/scripts/limits.toml");
const MODEL: &str = "claude-sonnet-4-5";

/// A gateway holding the key of one Anthropic provider (so that every caller shares
/// its budget, as the provider counts it) and an OpenAI one, without cascades, and
/// `extra` appended. Two providers holding keys need two base URLs: the OpenAI one
/// names the same upstream as `localhost`.
fn config_text(url: &str, extra: &str) -> String {
    let openai = url
        .replace("127.0.0.1", "localhost")
        .replace("sim.test", "openai.sim.test");
    format!(
        r#"
listen = "127.0.0.1:0"
seed = 15

[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "{url}"
api_key_env = "SIM_ANTHROPIC_KEY"

[[provider]]
name = "openai"
api = "openai"
base_url = "{openai}"
api_key_env = "SIM_OPENAI_KEY"

[routes."/v1/messages"]
provider = "anthropic"

[routes."/v1/chat/completions"]
provider = "openai"

# The limiter's answers as they are: no stored or canned answer in their place.
[cache]
enabled = false

[degrade]
enabled = false

[retry]
max_attempts = 2
backoff = {{ base = "10ms", cap = "50ms" }}
max_server_delay = "1s"
{extra}
"#
    )
}

fn config(url: &str, extra: &str) -> Result<Config, brownout_gateway::ConfigError> {
    Config::from_toml_str_with_env(&config_text(url, extra), |name| {
        Some(format!("sk-{}", name.to_ascii_lowercase()))
    })
}

/// What the simulator's script enforces for the Claude model.
const MATCHING: &str = r#"
[limits]
max_wait = "120s"

[[limits.model]]
provider = "anthropic"
model = "claude-sonnet-4-5"
requests_per_minute = 120
input_tokens_per_minute = 20000
output_tokens_per_minute = 8000
"#;

fn messages(prompt_bytes: usize) -> Request<Full<Bytes>> {
    let text = "Tell me more about brownouts and rate limits. ".repeat(prompt_bytes / 46 + 1);
    let body = serde_json::json!({
        "model": MODEL, "max_tokens": 48, "system": "You answer briefly.",
        "messages": [{"role": "user", "content": &text[..prompt_bytes]}],
    });
    Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-caller")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn text_of(response: Response<brownout::Body>) -> (http::response::Parts, serde_json::Value) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (parts, json)
}

/// Sixteen callers sending back to back through the gateway for `minutes`; the
/// simulator, the times the answered requests were sent, and the 429s callers saw.
async fn run(extra: &str, minutes: u64) -> (Sim, Router<Full<Bytes>>, Vec<Duration>, u64) {
    let sim = Sim::new(Script::from_toml_str(SCRIPT).unwrap());
    let config = config("http://sim.test", extra).unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, sim.clone(), sim.clone());
    let start = Instant::now();
    let end = start + Duration::from_secs(60 * minutes);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (Vec::new(), 0u64);
            while Instant::now() < end {
                let sent = Instant::now();
                let response = gateway.clone().oneshot(messages(2000)).await.unwrap();
                let status = response.status();
                response.into_body().collect().await.unwrap();
                if status == 200 {
                    ok.push(sent - start);
                } else {
                    // 429s, or 529 once the breaker stops sending into them.
                    limited += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (Vec::new(), 0);
    for task in tasks {
        let (o, l) = task.await.unwrap();
        ok.extend(o);
        limited += l;
    }
    (sim, gateway, ok, limited)
}

#[tokio::test(start_paused = true)]
async fn matching_limits_space_the_requests_and_no_429_reaches_the_caller() {
    // Without [limits] the same callers run into the simulator's limits.
    let (sim, _, _, _) = run("", 1).await;
    let over = sim
        .stats()
        .by_answer
        .get("over_limit")
        .copied()
        .unwrap_or(0);
    assert!(over > 20, "{over} 429s from the simulator without limits");

    let (sim, gateway, ok, limited) = run(MATCHING, 4).await;
    assert_eq!(limited, 0, "no 429 reaches a caller");
    assert!(!sim.stats().by_answer.contains_key("over_limit"));
    // The gateway spaced them: in the steady minutes (after the first, which spends
    // the minute's worth a bucket starts with), as many requests as the input tokens
    // allow, 2,000 bytes at the simulator's four bytes a token.
    let steady = ok
        .iter()
        .filter(|at| **at >= Duration::from_secs(60))
        .count() as f64;
    let per_minute = steady / 3.0;
    let len = http_body::Body::size_hint(messages(2000).body())
        .exact()
        .unwrap();
    let allowed = 20_000.0 / (len / 4) as f64;
    let share = per_minute / allowed;
    assert!(
        share > 0.9 && share < 1.03,
        "{per_minute:.1} requests a minute, {share:.3} of what the limit allows"
    );
    eprintln!("{per_minute:.1} requests a minute, {share:.3} of what the input tokens allow");
    // One key for every caller: the gateway's own for the provider.
    let handles = gateway.layers().rate_limits();
    assert_eq!(handles.len(), 1);
    assert_eq!(handles[0].0, "anthropic");
    let keys = handles[0].1.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].waits > 50, "{:?}", keys[0]);
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_max_wait_is_a_429_the_sdk_may_retry_after() {
    let extra = r#"
[limits]
max_wait = "5s"
[[limits.model]]
model = "claude-*"
requests_per_minute = 1
"#;
    let sim = Sim::new(Script::from_toml_str(SCRIPT).unwrap());
    let config = config("http://sim.test", extra).unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, sim.clone(), sim.clone());
    let first = gateway.clone().oneshot(messages(100)).await.unwrap();
    assert_eq!(first.status(), 200);
    let start = Instant::now();
    let second = gateway.clone().oneshot(messages(100)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");
    let (parts, body) = text_of(second).await;
    assert_eq!(parts.status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // Not retried by the gateway (the wait is longer than it sleeps): the SDK may
    // come back when the bucket has room.
    assert_eq!(parts.headers["x-should-retry"], "true");
    let after: u64 = parts.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&after), "retry-after {after}");
    assert!(parts.headers.get("x-brownout-attempts").is_none());
    assert_eq!(sim.stats().received, 1);
}

#[tokio::test(start_paused = true)]
async fn the_gateway_deadline_bounds_the_wait() {
    let limits = r#"
[limits]
max_wait = "90s"
[[limits.model]]
model = "claude-sonnet-4-5"
requests_per_minute = 1
"#;
    for (deadline, waits) in [("", true), ("deadline = \"10s\"", false)] {
        let sim = Sim::new(Script::from_toml_str(SCRIPT).unwrap());
        // The deadline goes in [retry], which the text ends with.
        let config = config("http://sim.test", &format!("{deadline}\n{limits}")).unwrap();
        assert_eq!(
            config.rate_limits().unwrap().deadline(),
            (!waits).then(|| Duration::from_secs(10))
        );
        let gateway: Router<Full<Bytes>> = Router::new(&config, sim.clone(), sim.clone());
        assert_eq!(
            gateway
                .clone()
                .oneshot(messages(100))
                .await
                .unwrap()
                .status(),
            200
        );
        let start = Instant::now();
        let second = gateway.clone().oneshot(messages(100)).await.unwrap();
        if waits {
            assert_eq!(second.status(), 200);
            assert!(
                start.elapsed() >= Duration::from_secs(59),
                "{:?}",
                start.elapsed()
            );
        } else {
            assert_eq!(second.status(), 429);
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn on_limit_error_is_the_gateways_final_429() {
    let extra = r#"
[limits]
max_wait = "0s"
on_limit = "error"
[[limits.model]]
model = "*"
requests_per_minute = 1
"#;
    let sim = Sim::new(Script::from_toml_str(SCRIPT).unwrap());
    let config = config("http://sim.test", extra).unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, sim.clone(), sim.clone());
    assert_eq!(
        gateway
            .clone()
            .oneshot(messages(100))
            .await
            .unwrap()
            .status(),
        200
    );
    let (parts, body) = text_of(gateway.clone().oneshot(messages(100)).await.unwrap()).await;
    assert_eq!(parts.status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(parts.headers["x-should-retry"], "false");
    assert!(parts.headers.contains_key("retry-after"));
    assert_eq!(sim.stats().received, 1);
}

/// Over loopback, in real time (a few milliseconds): a request larger than a whole
/// minute's limit is answered 429 at once, in the provider's shape, and never sent.
#[tokio::test]
async fn an_oversized_request_is_refused_at_once_in_the_providers_shape() {
    let extra = r#"
[limits]
[[limits.model]]
provider = "anthropic"
model = "claude-*"
input_tokens_per_minute = 1000
"#;
    let setup = common::Setup::start_config(Script::from_toml_str(SCRIPT).unwrap(), |url| {
        config(url, extra).unwrap()
    })
    .await;
    let client = common::client();
    let started = std::time::Instant::now();
    let prompt = "word ".repeat(2000);

    let response = client
        .request(common::anthropic(
            &setup.url("/v1/messages"),
            MODEL,
            &prompt,
            false,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(common::header(&response, "x-should-retry"), Some("false"));
    assert_eq!(common::header(&response, "retry-after"), None);
    let body = common::json(response).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // A small one goes through.
    let response = client
        .request(common::anthropic(
            &setup.url("/v1/messages"),
            MODEL,
            "Hi",
            false,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        setup.sim.stats().received,
        1,
        "the oversized ones never went upstream"
    );
    setup.stop().await;
}

#[test]
fn bad_values_are_refused_naming_their_key() {
    let entry = "[[limits.model]]\nmodel = \"claude-sonnet-4-5\"\n";
    for (extra, key, says) in [
        (
            format!("[limits]\n{entry}requests_per_minute = 0\n"),
            "limits.model[0].requests_per_minute",
            "at least 1",
        ),
        (
            format!("[limits]\n{entry}tokens_per_minute = -5\n"),
            "limits.model[0].tokens_per_minute",
            "at least 1",
        ),
        (
            format!("[limits]\n{entry}rpm = 5\n"),
            "limits.model[0].rpm",
            "unknown field",
        ),
        (
            format!("[limits]\n{entry}provider = \"azure\"\n"),
            "limits.model[0].provider",
            "no provider is named `azure`",
        ),
        (
            format!("[limits]\n{entry}{entry}"),
            "limits.model[1].model",
            "earlier entry",
        ),
        (
            "[limits]\n[[limits.model]]\nmodel = \" \"\n".to_owned(),
            "limits.model[0].model",
            "names no model",
        ),
        (
            "[limits]\n[[limits.model]]\nmodel = \"c*s\"\n".to_owned(),
            "limits.model[0].model",
            "trailing",
        ),
        (
            format!("[limits]\nmax_wait = \"2h\"\n{entry}"),
            "limits.max_wait",
            "at most an hour",
        ),
        (
            format!("[limits]\nmax_wait = 30\n{entry}"),
            "limits.max_wait",
            "needs a unit",
        ),
        (
            format!("[limits]\ndefault_max_tokens = 0\n{entry}"),
            "limits.default_max_tokens",
            "at least 1",
        ),
        (
            format!("[limits]\non_limit = \"drop\"\n{entry}"),
            "limits.on_limit",
            "unknown variant",
        ),
        (
            format!("[limits]\nestimate = {{ bytes_per_token = 0.1 }}\n{entry}"),
            "limits.estimate.bytes_per_token",
            "at least 0.5",
        ),
        (
            format!("[limits]\nestimate = {{ margin = 2.0 }}\n{entry}"),
            "limits.estimate.margin",
            "[0, 1]",
        ),
        (
            "[limits]\nmax_wait = \"10s\"\n".to_owned(),
            "limits.model",
            "no [[limits.model]]",
        ),
        (
            "[limits]\nreplay_limit = 10\n".to_owned(),
            "limits.replay_limit",
            "body.replay_limit",
        ),
    ] {
        let e = config("http://127.0.0.1:9", &extra).unwrap_err();
        assert_eq!(e.key(), Some(key), "{extra}: {e}");
        assert!(e.message().contains(says), "{extra}: {e}");
    }
    // Off by default, and when enabled = false.
    let off = config("http://127.0.0.1:9", "").unwrap();
    assert!(off.rate_limits().is_none());
    let disabled = config(
        "http://127.0.0.1:9",
        &format!("[limits]\nenabled = false\n{entry}requests_per_minute = 5\n"),
    )
    .unwrap();
    assert!(disabled.rate_limits().is_none());
    let state = disabled
        .layers()
        .into_iter()
        .find(|l| l.name == "limit")
        .unwrap();
    assert!(!state.on && state.set);
}

#[test]
fn the_examples_commented_limits_are_valid() {
    let mut text = String::new();
    let mut inside = false;
    for line in brownout_gateway::EXAMPLE_CONFIG.lines() {
        if line.starts_with("# [limits]") {
            inside = true;
        }
        if line.starts_with("# An entry without numbers") {
            inside = false;
        }
        let line = match (inside, line.strip_prefix("# ")) {
            (true, Some(uncommented)) => uncommented,
            (true, None) => line.trim_start_matches('#'),
            (false, _) => line,
        };
        text.push_str(line);
        text.push('\n');
    }
    assert!(
        text.contains("\n[limits]\n"),
        "no [limits] block in the example"
    );
    let config = Config::from_toml_str_with_env(&text, |_| Some("sk-example".into())).unwrap();
    let limits = config
        .rate_limits()
        .expect("the uncommented block turns the limits on");
    let listed: Vec<String> = limits.entries().iter().map(ToString::to_string).collect();
    assert_eq!(
        listed,
        [
            "anthropic claude-sonnet-4-5: 50 requests, 30000 input tokens, 8000 output tokens a minute",
            "openai gpt-4.1: 500 requests, 30000 tokens a minute",
        ]
    );
    // Off as shipped.
    let shipped =
        Config::from_toml_str_with_env(brownout_gateway::EXAMPLE_CONFIG, |_| Some("sk".into()))
            .unwrap();
    assert!(shipped.rate_limits().is_none());
}

#[test]
fn check_lists_the_limits() {
    let dir = std::env::temp_dir().join(format!("brownout-gateway-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let text = config_text("http://127.0.0.1:9", MATCHING);
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_brownout-gateway"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env("SIM_ANTHROPIC_KEY", "sk-a")
        .env("SIM_OPENAI_KEY", "sk-o")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["limit", "on", "set"])),
        "{stdout}"
    );
    assert!(
        stdout.contains("limit anthropic claude-sonnet-4-5: 120 requests, 20000 input tokens, 8000 output tokens a minute"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// OpenAI's shape, in process (the exact token count's tables take a moment to load
/// in a debug build, which is CPU, not a wait).
#[tokio::test(start_paused = true)]
async fn an_oversized_openai_request_gets_openais_shape() {
    let extra = r#"
[limits]
[[limits.model]]
provider = "openai"
model = "gpt-4.1"
tokens_per_minute = 1000
"#;
    let sim = Sim::new(Script::from_toml_str(SCRIPT).unwrap());
    let config = config("http://sim.test", extra).unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, sim.clone(), sim.clone());
    let body = serde_json::json!({
        "model": "gpt-4.1", "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-caller")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let start = Instant::now();
    let (parts, body) = text_of(gateway.oneshot(request).await.unwrap()).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(parts.status, 429);
    assert_eq!(parts.headers["x-should-retry"], "false");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "tokens");
    assert_eq!(sim.stats().received, 0);
}

/// Each model of a cascade counts against its own limits; a refusal the gateway fell
/// back on is final for the SDK (`x-should-retry: false`), as every answer it handled.
#[tokio::test(start_paused = true)]
async fn each_model_of_a_cascade_counts_against_its_own_limits() {
    let extra = r#"
[limits]
max_wait = "0s"
[[limits.model]]
model = "claude-*"
requests_per_minute = 1
"#;
    let text = config_text("http://sim.test", extra).replace(
        "[routes.\"/v1/messages\"]\nprovider = \"anthropic\"\n",
        "[routes.\"/v1/messages\"]\nprovider = \"anthropic\"\ncascade = [{ model = \"claude-sonnet-4-5\" }, { model = \"claude-haiku-4-5\" }]\n",
    );
    assert!(text.contains("cascade"));
    let config = Config::from_toml_str_with_env(&text, |_| Some("sk-sim".into())).unwrap();
    let sim = Sim::new(Script::from_toml_str(SCRIPT).unwrap());
    let gateway: Router<Full<Bytes>> = Router::new(&config, sim.clone(), sim.clone());

    let first = gateway.clone().oneshot(messages(100)).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-brownout-model"], MODEL);
    // Sonnet's minute is spent: the cascade's next model answers.
    let second = gateway.clone().oneshot(messages(100)).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-brownout-model"], "claude-haiku-4-5");
    // Both are spent: the limiter's 429, which the gateway fell back on.
    let (parts, body) = text_of(gateway.clone().oneshot(messages(100)).await.unwrap()).await;
    assert_eq!(parts.status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(parts.headers["x-should-retry"], "false");
    assert_eq!(sim.stats().received, 2);
    let handle = &gateway.layers().rate_limits()[0].1;
    let mut models: Vec<String> = handle.keys().iter().map(|k| k.key.to_string()).collect();
    models.sort();
    assert_eq!(models.len(), 2, "{models:?}");
}
