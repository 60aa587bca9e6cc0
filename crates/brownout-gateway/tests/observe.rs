//! `[observe]` through the served gateway on loopback, brownout-sim as the upstream
//! with a scripted outage of the preferred model: the metrics count what the
//! simulator served, the label values stay bounded, the status JSON shows the open
//! breaker, and a real browser renders the status page.

mod common;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use brownout_sim::{Fault, ModelScript, Script};
use common::{anthropic, client, json, Setup};
use http_body_util::BodyExt;

const SONNET: &str = "claude-sonnet-4-5";
const HAIKU: &str = "claude-haiku-4-5";

/// Sonnet overloaded throughout, haiku healthy; a breaker that opens after two failed
/// (retried) calls and stays open for the test.
const OBSERVED: &str = r#"
[breaker]
consecutive_failures = 2
open_for = "5m"

[degrade]
enabled = false

[observe]
metrics = true
status = true
"#;

fn outage() -> Script {
    Script::new()
        .seed(5)
        .model(SONNET, ModelScript::new().fault(Fault::overloaded()))
        .model(HAIKU, ModelScript::new())
}

async fn outage_run(requests: usize) -> Setup {
    let setup = Setup::start_with(outage(), OBSERVED).await;
    for i in 0..requests {
        let response = client()
            .request(anthropic(
                &setup.url("/v1/messages"),
                SONNET,
                &format!("hello {i}"),
                false,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "haiku answers every request");
        let _ = response.into_body().collect().await.unwrap();
    }
    setup
}

async fn get(setup: &Setup, path: &str) -> (u16, String, String) {
    let request = http::Request::get(setup.url(path))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// The value of each sample of `name` in Prometheus text, keyed by its labels.
fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => {
                    let (labels, value) = rest.split_once("} ")?;
                    (labels.to_owned(), value)
                }
                None => (String::new(), rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

fn sample(text: &str, name: &str, labels: &str) -> f64 {
    samples(text, name).get(labels).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_after_a_scripted_outage_count_what_the_simulator_served() {
    let setup = outage_run(8).await;
    let stats = setup.sim.stats();
    let (status, content_type, text) = get(&setup, "/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    // Every call the simulator answered is one attempt, by model and outcome.
    let sonnet_calls = stats.by_model[SONNET] as f64;
    let haiku_calls = stats.by_model[HAIKU] as f64;
    assert!(sonnet_calls >= 2.0, "the outage was seen: {stats:?}");
    assert_eq!(
        sample(
            &text,
            "brownout_attempts_total",
            &format!(r#"model="{SONNET}",outcome="overloaded""#)
        ),
        sonnet_calls
    );
    assert_eq!(
        sample(
            &text,
            "brownout_attempts_total",
            &format!(r#"model="{SONNET}",outcome="success""#)
        ),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            "brownout_attempts_total",
            &format!(r#"model="{HAIKU}",outcome="success""#)
        ),
        haiku_calls
    );
    assert_eq!(stats.by_answer["overloaded"] as f64, sonnet_calls);
    assert_eq!(stats.by_answer["ok"] as f64, haiku_calls);

    // Every request was for sonnet and answered by haiku: a fallback each.
    assert_eq!(
        sample(
            &text,
            "brownout_requests_total",
            &format!(r#"route="anthropic.messages",model="{SONNET}",outcome="fallback""#)
        ),
        8.0
    );
    assert_eq!(
        sample(
            &text,
            "brownout_requests_total",
            &format!(r#"route="anthropic.messages",model="{SONNET}",outcome="live""#)
        ),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            "brownout_fallbacks_total",
            &format!(r#"from="{SONNET}",to="{HAIKU}""#)
        ),
        8.0
    );
    assert_eq!(haiku_calls, 8.0, "one haiku call per request");
    // The tokens the answers reported in their `usage`, read as the bodies passed.
    let tokens = samples(&text, "brownout_tokens_total");
    let output: f64 = tokens
        .iter()
        .filter(|(labels, _)| labels.contains(r#"direction="output""#))
        .map(|(_, v)| v)
        .sum();
    assert!(output >= 8.0, "output tokens counted: {tokens:?}");
    assert_eq!(
        sample(
            &text,
            "brownout_request_duration_seconds_count",
            &format!(r#"route="anthropic.messages",model="{SONNET}""#)
        ),
        8.0
    );
    // The breaker opened (2) and says so; haiku's stayed closed (0).
    assert_eq!(
        sample(
            &text,
            "brownout_breaker_state",
            &format!(r#"key="{SONNET}""#)
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "brownout_breaker_state",
            &format!(r#"key="{HAIKU}""#)
        ),
        0.0
    );
    assert!(
        sample(
            &text,
            "brownout_events_total",
            r#"layer="breaker",event="circuit_state_changed""#
        ) >= 1.0
    );
    // No credential reaches the metrics.
    assert!(!text.contains("sk-ant-test-caller"));
    setup.stop().await;
}

#[tokio::test]
async fn a_caller_naming_many_models_adds_no_series() {
    let setup = Setup::start_with(outage(), OBSERVED).await;
    let (_, _, before) = get(&setup, "/metrics").await;
    for i in 0..40 {
        let response = client()
            .request(anthropic(
                &setup.url("/v1/messages"),
                &format!("made-up-model-{i}"),
                "hello",
                false,
            ))
            .await
            .unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    let (_, _, after) = get(&setup, "/metrics").await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("brownout_requests_total") || l.starts_with("brownout_attempts_total")
            })
            .count()
    };
    assert_eq!(series(&before), series(&after));
    assert!(!after.contains("made-up-model"));
    assert_eq!(
        sample(
            &after,
            "brownout_requests_total",
            // Sent down the cascade (sonnet is down): haiku answered each.
            r#"route="anthropic.messages",model="other",outcome="fallback""#
        ),
        40.0
    );
    setup.stop().await;
}

#[tokio::test]
async fn status_json_shows_the_open_breaker_and_the_answers() {
    let setup = outage_run(6).await;
    let stats = setup.sim.stats();
    let (status, content_type, text) = get(&setup, "/brownout/status.json").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    let models = status["models"].as_array().unwrap();
    let model = |name: &str| {
        models
            .iter()
            .find(|m| m["model"] == name)
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let sonnet = model(SONNET);
    assert_eq!(sonnet["breaker"]["state"], "open");
    assert_eq!(sonnet["breaker"]["open"], true);
    assert_eq!(sonnet["availability"], 0.0);
    assert_eq!(sonnet["calls"], stats.by_model[SONNET]);
    assert_eq!(sonnet["answers"]["fallback"], 6);
    assert_eq!(sonnet["answers"]["live"], 0);
    assert_eq!(sonnet["ok"].as_array().unwrap().len(), 60);
    let haiku = model(HAIKU);
    assert_eq!(haiku["availability"], 1.0);
    assert_eq!(haiku["calls"], stats.by_model[HAIKU]);
    assert_eq!(haiku["breaker"]["state"], "closed");
    // No request asked for haiku itself.
    assert_eq!(haiku["answers"]["live"], 0);
    assert!(status["alerts"].as_array().unwrap().is_empty());

    let (status, content_type, page) = get(&setup, "/brownout/status").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    assert!(!page.contains("<script"), "no script");
    assert!(!page.contains("src=\"http"), "no external asset");
    setup.stop().await;
}

#[tokio::test]
async fn without_observe_the_pages_are_not_served() {
    let setup = Setup::start(outage()).await;
    let (status, _, _) = get(&setup, "/brownout/status").await;
    assert_ne!(status, 200);
    let (status, _, _) = get(&setup, "/metrics").await;
    assert_ne!(status, 200);
    setup.stop().await;
}

#[tokio::test]
async fn a_model_name_is_escaped_on_the_page() {
    let setup = Setup::start_with(outage(), OBSERVED).await;
    let response = client()
        .request(anthropic(
            &setup.url("/v1/messages"),
            "<img src=x onerror=alert(1)>",
            "hello",
            false,
        ))
        .await
        .unwrap();
    let _ = json(response).await;
    let (_, _, page) = get(&setup, "/brownout/status").await;
    assert!(
        !page.contains("<img"),
        "the caller's model never reaches the page"
    );
    setup.stop().await;
}

#[test]
fn an_unknown_observe_key_is_refused_by_name() {
    let text = common::config_text("http://127.0.0.1:9", "[observe]\nmetric = true\n");
    let error = brownout_gateway::Config::from_toml_str(&text)
        .unwrap_err()
        .to_string();
    assert!(error.contains("metric"), "{error}");
    assert!(error.contains("observe"), "{error}");
    // Each page is off unless its key says so.
    let text = common::config_text("http://127.0.0.1:9", "[observe]\nmetrics = true\n");
    let observe = brownout_gateway::Config::from_toml_str(&text)
        .unwrap()
        .observe();
    assert!(observe.metrics && !observe.status && observe.is_on());
    let text = common::config_text("http://127.0.0.1:9", "[observe]\n");
    let observe = brownout_gateway::Config::from_toml_str(&text)
        .unwrap()
        .observe();
    assert!(!observe.is_on());
}

/// Runs chromium headless with `args`, for at most a minute.
fn chromium(args: &[String]) -> std::process::Output {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--user-data-dir=/tmp/brownout-chromium-test",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chromium_available() -> bool {
    Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_renders_the_status_page_with_the_open_breaker() {
    if !chromium_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing under CI: .ci/run installs it"
        );
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    }
    let setup = outage_run(6).await;
    let url = setup.url("/brownout/status");
    let dom = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || chromium(&["--dump-dom".to_owned(), url]))
            .await
            .unwrap()
    };
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8(dom.stdout).unwrap();
    assert!(dom.contains("<h1>brownout status</h1>"), "{dom}");
    for model in [SONNET, HAIKU] {
        assert!(
            dom.contains(&format!("data-model=\"{model}\"")),
            "{model} in {dom}"
        );
    }
    // Sonnet's row shows its breaker open; haiku's closed.
    let row = |model: &str| {
        let start = dom.find(&format!("data-model=\"{model}\"")).unwrap();
        let end = dom[start..].find("</tr>").unwrap() + start;
        dom[start..end].to_owned()
    };
    assert!(
        row(SONNET).contains("class=\"breaker open\" data-state=\"open\""),
        "{}",
        row(SONNET)
    );
    assert!(
        row(HAIKU).contains("data-state=\"closed\""),
        "{}",
        row(HAIKU)
    );
    assert!(
        row(SONNET).contains("<svg"),
        "the availability chart is rendered"
    );

    let shot: PathBuf = [env!("CARGO_TARGET_TMPDIR"), "brownout-status-page.png"]
        .iter()
        .collect();
    let _ = std::fs::remove_file(&shot);
    let out = {
        let args = vec![
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,900".to_owned(),
            url,
        ];
        tokio::task::spawn_blocking(move || chromium(&args))
            .await
            .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot is saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() > 5_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
    setup.stop().await;
}
