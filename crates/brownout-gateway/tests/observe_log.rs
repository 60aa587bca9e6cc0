//! `[observe]`: the availability log and the alerts from the configuration, fed
//! directly with records; `brownout-gateway report` on the log it wrote.

use std::{
    convert::Infallible,
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout::observe::{Answer, Attempt, Exchange, Sink};
use brownout::OutcomeKind;
use brownout_gateway::{Config, Observers};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const BIN: &str = env!("CARGO_BIN_EXE_brownout-gateway");

const BASE: &str = r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://127.0.0.1:8787"
pass_through_key = true

[routes."/v1/messages"]
provider = "anthropic"
cascade = [{ model = "claude-sonnet-4-5" }, { model = "claude-haiku-4-5" }]
"#;

fn config(extra: &str) -> Result<Config, brownout_gateway::ConfigError> {
    Config::from_toml_str_with_env(&format!("{BASE}{extra}"), |_| None)
}

/// The error of `extra`: (key, message).
fn refused(extra: &str) -> (String, String) {
    let error = config(extra).unwrap_err();
    (
        error.key().unwrap_or_default().to_owned(),
        error.to_string(),
    )
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("brownout-gw-observe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn without_the_section_nothing_is_on() {
    let config = config("").unwrap();
    assert!(config.observe_log().sqlite().is_none());
    assert!(config.observe_log().alerts().is_none());
}

#[test]
fn the_section_is_read_into_the_log_and_the_rules() {
    let config = config(
        r#"
[observe]
sqlite = "brownout.db"
retain_for = "24h"
retain_rows = 5000
log_buffer = 1024
webhook_timeout = "2s"
webhook_retries = 1

[[observe.alert]]
name = "sonnet-failing"
when = "consecutive_failures"
count = 5
cooldown = "1m"
webhook = "https://hooks.example.com/T000/secret"
command = ["/bin/true"]

[[observe.alert]]
name = "availability"
when = "availability_below"
percent = 95
window = "5m"
min_requests = 20

[[observe.alert]]
name = "breaker"
when = "breaker_open"
"#,
    )
    .unwrap();
    let sqlite = config.observe_log().sqlite().unwrap();
    assert_eq!(sqlite.path(), std::path::Path::new("brownout.db"));
    let rules = config.observe_log().alerts().unwrap().rules();
    let names: Vec<&str> = rules.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["sonnet-failing", "availability", "breaker"]);
    assert_eq!(rules[0].condition().as_str(), "consecutive_failures");
    assert_eq!(
        rules[1].condition(),
        &brownout::observe::Condition::AvailabilityBelow {
            percent: 95.0,
            window: Duration::from_secs(300),
            min_requests: 20,
        }
    );
}

#[test]
fn the_log_file_is_relative_to_the_configuration() {
    let dir = Dir::new("relative");
    let file = dir.0.join("gateway.toml");
    std::fs::write(&file, format!("{BASE}\n[observe]\nsqlite = \"logs.db\"\n")).unwrap();
    let config = Config::from_file(&file).unwrap();
    assert_eq!(
        config.observe_log().sqlite().unwrap().path(),
        dir.0.join("logs.db")
    );
}

#[test]
fn mistakes_are_refused_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("[observe]\nsqlit = \"x.db\"\n", "observe.sqlit", "unknown field"),
        ("[observe]\nretain_rows = 10\n", "observe.retain_rows", "set observe.sqlite"),
        ("[observe]\nsqlite = \"x.db\"\nretain_for = \"0s\"\n", "observe.retain_for", "longer than zero"),
        ("[observe]\nsqlite = \"x.db\"\nretain_rows = 0\n", "observe.retain_rows", "at least 1"),
        ("[observe]\nsqlite = \"\"\n", "observe.sqlite", "needs a file name"),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"sometimes\"\n",
            "observe.alert[0].when",
            "unknown variant",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"availability_below\"\npercent = 90\nwindow = \"5m\"\n",
            "observe.alert[0].min_requests",
            "needs percent, window, min_requests",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"breaker_open\"\ncount = 3\n",
            "observe.alert[0].count",
            "not a setting of when = \"breaker_open\"",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"degraded_above\"\npercent = 100\nwindow = \"5m\"\nmin_requests = 5\n",
            "observe.alert[0].percent",
            "below 100",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"availability_below\"\npercent = 90\nwindow = \"5 minutes\"\nmin_requests = 5\n",
            "observe.alert[0].window",
            "not a duration",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"consecutive_failures\"\ncount = 0\n",
            "observe.alert[0].count",
            "at least 1",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"breaker_open\"\nwebhook = \"ftp://hooks.example.com/x\"\n",
            "observe.alert[0].webhook",
            "https:// or http://",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"breaker_open\"\ncommand = []\n",
            "observe.alert[0].command",
            "needs a program",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"breaker_open\"\n[[observe.alert]]\nname = \"a\"\nwhen = \"breaker_open\"\n",
            "observe.alert[1].name",
            "earlier rule",
        ),
        (
            "[[observe.alert]]\nname = \"a\"\nwhen = \"breaker_open\"\ncolldown = \"1m\"\n",
            "observe.alert[0].colldown",
            "unknown field",
        ),
    ];
    for (extra, key, message) in cases {
        let (got_key, text) = refused(extra);
        assert_eq!(&got_key, key, "{extra}: {text}");
        assert!(text.contains(message), "{extra}: {text}");
    }
}

#[test]
fn a_webhook_with_a_token_is_never_repeated_in_an_error() {
    let (key, text) = refused(
        "[[observe.alert]]\nname = \"a\"\nwhen = \"breaker_open\"\nwebhook = \"https://user:sekret@hooks.example.com/x\"\n",
    );
    assert_eq!(key, "observe.alert[0].webhook");
    assert!(!text.contains("sekret"), "{text}");
}

fn exchange(model: &str, answer: Answer, served_by: &str) -> Exchange {
    let mut e = Exchange::new(
        Arc::from("anthropic.messages"),
        answer,
        200,
        Duration::from_millis(120),
    );
    e.requested_model = Some(Arc::from(model));
    e.served_by = Some(Arc::from(served_by));
    e
}

#[tokio::test]
async fn the_log_written_through_the_sinks_is_what_report_prints() {
    let dir = Dir::new("report");
    let db = dir.0.join("brownout.db");
    let config = config(&format!(
        "[observe]\nsqlite = {:?}\n",
        db.display().to_string()
    ))
    .unwrap();
    let observers = Observers::new(&config).unwrap();
    let sinks = observers.sinks();
    for _ in 0..3 {
        sinks.exchange(&exchange(
            "claude-sonnet-4-5",
            Answer::Live,
            "claude-sonnet-4-5",
        ));
    }
    sinks.exchange(&exchange(
        "claude-sonnet-4-5",
        Answer::Fallback,
        "claude-haiku-4-5",
    ));
    let mut attempt = Attempt::new(
        Arc::from("anthropic.messages"),
        1,
        OutcomeKind::Overloaded,
        Duration::from_millis(40),
    );
    attempt.model = Some(Arc::from("claude-sonnet-4-5"));
    sinks.attempt(&attempt);
    observers.close().await;
    assert_eq!(observers.sqlite().unwrap().written(), 5);

    let output = Command::new(BIN)
        .args(["report", "--db", db.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["window_secs"], 3600.0);
    let sonnet = &json["models"][0];
    assert_eq!(sonnet["model"], "claude-sonnet-4-5");
    assert_eq!(sonnet["requests"], 4);
    assert_eq!(sonnet["availability_pct"], 100.0);
    assert_eq!(sonnet["fallback_pct"], 25.0);
    assert_eq!(sonnet["failed_attempts"], 1);

    let output = Command::new(BIN)
        .args(["report", "--db", db.to_str().unwrap(), "--window", "all"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.starts_with("availability over the whole log\nmodel "),
        "{table}"
    );
    assert!(
        table.contains("claude-sonnet-4-5 -> claude-haiku-4-5: 1 (25.0%)"),
        "{table}"
    );
}

#[test]
fn report_names_a_bad_window_and_a_missing_file() {
    let output = Command::new(BIN)
        .args(["report", "--db", "x.db", "--window", "5x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--window"), "{stderr}");
    assert!(stderr.contains("`5x` is not a duration"), "{stderr}");

    let output = Command::new(BIN)
        .args(["report", "--db", "/nonexistent/brownout.db"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/brownout.db: no such file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_alert_rule_from_the_configuration_posts_its_webhook() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, tx) = (Arc::clone(&seen), tx.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (seen, tx) = (Arc::clone(&seen), tx.clone());
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            seen.lock().unwrap().push(body);
                            let _ = tx.send(());
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let config = config(&format!(
        "[[observe.alert]]\nname = \"breaker\"\nwhen = \"breaker_open\"\nwebhook = \"http://{addr}/hook\"\n"
    ))
    .unwrap();
    let observers = Observers::new(&config).unwrap();
    assert!(observers.sqlite().is_none());
    let breakers = brownout::breaker::CircuitBreakerLayer::new(
        brownout::breaker::BreakerConfig::new().listener({
            let sinks = observers.sinks();
            move |event: &brownout::event::Event| sinks.event(event)
        }),
    );
    breakers.handle().force_open("claude-sonnet-4-5");
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the webhook arrives")
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(json["rule"], "breaker");
    assert_eq!(json["key"], "claude-sonnet-4-5");
    assert_eq!(json["state"], "firing");
    let mut recent = Vec::new();
    observers.alert_feed().unwrap().recent(10, &mut recent);
    assert_eq!(recent.len(), 1);
}

#[test]
fn check_lists_the_log_and_the_rules() {
    let dir = Dir::new("check");
    let file = dir.0.join("gateway.toml");
    std::fs::write(
        &file,
        format!("{BASE}\n[observe]\nsqlite = \"logs.db\"\n\n[[observe.alert]]\nname = \"breaker\"\nwhen = \"breaker_open\"\n"),
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "  sqlite log {}\n",
            dir.0.join("logs.db").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("    alert breaker (breaker_open)\n"),
        "{stdout}"
    );
    // `check` opens nothing.
    assert!(!dir.0.join("logs.db").exists());
}

#[tokio::test]
async fn the_guard_closes_the_log_when_dropped() {
    let dir = Dir::new("guard");
    let db = dir.0.join("brownout.db");
    let config = config(&format!(
        "[observe]\nsqlite = {:?}\n",
        db.display().to_string()
    ))
    .unwrap();
    let guard = Observers::new(&config).unwrap().close_on_drop();
    let observers = guard.observers().clone();
    for _ in 0..100 {
        observers.sinks().exchange(&exchange(
            "claude-sonnet-4-5",
            Answer::Live,
            "claude-sonnet-4-5",
        ));
    }
    drop(guard);
    let log = observers.sqlite().unwrap();
    assert_eq!((log.written(), log.dropped()), (100, 0));
    // Closed: a record now is dropped, not written.
    observers.sinks().exchange(&exchange(
        "claude-sonnet-4-5",
        Answer::Live,
        "claude-sonnet-4-5",
    ));
    assert_eq!((log.written(), log.dropped()), (100, 1));
}

#[test]
fn serve_opens_the_log_and_closes_it_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = Dir::new("serve");
    let file = dir.0.join("gateway.toml");
    std::fs::write(
        &file,
        format!("{BASE}\n[observe]\nsqlite = \"served.db\"\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("brownout-gateway: listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    // Serving (and so listening for the signal) once it answers.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // A request through the pipeline, which the log records (the upstream is not
        // there: the answer is the gateway's own error, recorded all the same).
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"Hi"}]}"#;
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /v1/messages HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nx-api-key: sk-ant-test\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}\n{stderr}", output.status);
    assert!(stderr.contains("availability log closed"), "{stderr}");
    // The file is a log, in WAL mode, that the report reads.
    // The pipeline fed it: the request and its failed attempts (both targets).
    let report = brownout::observe::Report::read(dir.0.join("served.db"), None).unwrap();
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let sonnet = json["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "claude-sonnet-4-5")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(sonnet["requests"], 1, "{json}");
    assert!(sonnet["failed_attempts"].as_u64().unwrap() >= 1, "{json}");
}
