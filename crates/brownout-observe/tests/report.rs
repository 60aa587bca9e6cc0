//! The availability report on a fixed log: exact figures, the table and the JSON.
#![cfg(feature = "sqlite")]

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use brownout_core::classify::OutcomeKind;
use brownout_observe::{
    report::{parse_window, Report},
    Answer, Attempt, Exchange, Sink, SqliteConfig, SqliteLog,
};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The report's "now".
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_600_000)
}

fn exchange(model: &str, answer: Answer, latency_ms: u64, ago: Duration) -> Exchange {
    let status = match answer {
        Answer::Failed | Answer::Shed => 529,
        Answer::CallerError => 400,
        _ => 200,
    };
    let mut e = Exchange::new(
        Arc::from("anthropic.messages"),
        answer,
        status,
        Duration::from_millis(latency_ms),
    );
    e.at = now() - ago;
    e.requested_model = Some(Arc::from(model));
    e
}

fn attempt(model: &str, outcome: OutcomeKind) -> Attempt {
    let mut a = Attempt::new(
        Arc::from("anthropic.messages"),
        1,
        outcome,
        Duration::from_millis(20),
    );
    a.at = now() - Duration::from_secs(60);
    a.model = Some(Arc::from(model));
    a
}

/// A log with known rows: see each model's expected figures in the test.
fn fixed_log(name: &str) -> (Dir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("brownout-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log.db");
    let log = SqliteLog::open(SqliteConfig::new(&path).max_age(None)).unwrap();
    let minute = Duration::from_secs(60);
    let sonnet = "claude-sonnet-4-5";
    let haiku = "claude-haiku-4-5";
    for latency in [100, 200, 300, 400, 500, 600] {
        let mut e = exchange(sonnet, Answer::Live, latency, minute);
        e.served_by = Some(Arc::from(sonnet));
        e.input_tokens = Some(10);
        e.output_tokens = Some(20);
        log.exchange(&e);
    }
    for latency in [700, 800] {
        let mut e = exchange(sonnet, Answer::Fallback, latency, minute);
        e.served_by = Some(Arc::from(haiku));
        log.exchange(&e);
    }
    log.exchange(&exchange(sonnet, Answer::Cached, 50, minute));
    log.exchange(&exchange(sonnet, Answer::Failed, 1000, minute));
    log.exchange(&exchange(sonnet, Answer::CallerError, 5, minute));
    // Outside a 5-minute window.
    log.exchange(&exchange(sonnet, Answer::Live, 100, 10 * minute));
    for latency in [100, 200] {
        log.exchange(&exchange(haiku, Answer::Live, latency, minute));
    }
    log.exchange(&exchange(haiku, Answer::Degraded, 10, minute));
    log.exchange(&exchange(haiku, Answer::Shed, 5, minute));
    for outcome in [
        OutcomeKind::Overloaded,
        OutcomeKind::Overloaded,
        OutcomeKind::Timeout,
    ] {
        log.attempt(&attempt(sonnet, outcome));
    }
    log.attempt(&attempt(sonnet, OutcomeKind::Success));
    log.attempt(&attempt(sonnet, OutcomeKind::Success));
    log.attempt(&attempt(haiku, OutcomeKind::Success));
    log.attempt(&attempt(haiku, OutcomeKind::Success));
    log.close();
    assert_eq!(log.written(), 23);
    (Dir(dir), path)
}

#[test]
fn the_figures_per_model_over_the_window_are_exact() {
    let (_dir, path) = fixed_log("figures");
    let report = Report::read_at(&path, Some(Duration::from_secs(300)), now()).unwrap();
    assert_eq!(report.models.len(), 2);
    let haiku = &report.models[0];
    let sonnet = &report.models[1];

    assert_eq!(sonnet.model, "claude-sonnet-4-5");
    assert_eq!(
        (sonnet.requests, sonnet.caller_errors, sonnet.answered),
        (11, 1, 9)
    );
    assert_eq!(sonnet.availability_pct, Some(90.0));
    let outcomes: Vec<(&str, u64)> = sonnet
        .outcomes
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("cached", 1),
            ("caller_error", 1),
            ("failed", 1),
            ("fallback", 2),
            ("live", 6)
        ]
    );
    let latency = sonnet.latency_ms.unwrap();
    // Over 50,100,…,600,700,800,1000 (the caller's error left out): nearest rank.
    assert_eq!(
        (latency.p50, latency.p95, latency.p99),
        (400.0, 1000.0, 1000.0)
    );
    assert_eq!(sonnet.fallback_pct, Some(20.0));
    assert_eq!(sonnet.cached_pct, Some(10.0));
    assert_eq!(sonnet.degraded_pct, Some(0.0));
    assert_eq!((sonnet.input_tokens, sonnet.output_tokens), (60, 120));
    assert_eq!((sonnet.attempts, sonnet.failed_attempts), (5, 3));

    assert_eq!(haiku.model, "claude-haiku-4-5");
    assert_eq!(
        (haiku.requests, haiku.caller_errors, haiku.answered),
        (4, 0, 3)
    );
    assert_eq!(haiku.availability_pct, Some(75.0));
    let latency = haiku.latency_ms.unwrap();
    assert_eq!(
        (latency.p50, latency.p95, latency.p99),
        (10.0, 200.0, 200.0)
    );
    assert_eq!(haiku.degraded_pct, Some(25.0));
    assert_eq!((haiku.attempts, haiku.failed_attempts), (2, 0));

    assert_eq!(report.fallbacks.len(), 1);
    let pair = &report.fallbacks[0];
    assert_eq!(
        (
            pair.from.as_str(),
            pair.to.as_str(),
            pair.count,
            pair.share_pct
        ),
        ("claude-sonnet-4-5", "claude-haiku-4-5", 2, 20.0)
    );

    // The whole log counts the old request too.
    let all = Report::read_at(&path, None, now()).unwrap();
    let sonnet = &all.models[1];
    assert_eq!((sonnet.requests, sonnet.answered), (12, 10));
    assert!((sonnet.availability_pct.unwrap() - 1000.0 / 11.0).abs() < 1e-9);
    assert_eq!(all.window_secs, None);
}

#[test]
fn the_table_is_aligned() {
    let (_dir, path) = fixed_log("table");
    let report = Report::read_at(&path, Some(Duration::from_secs(300)), now()).unwrap();
    let expected = "\
availability over the last 5m
model              requests  avail%  live  fallback  cached  stale  degraded  shed  failed  caller  p50ms  p95ms  p99ms  fallback%  cached%  degraded%  tokens_in  tokens_out
claude-haiku-4-5          4    75.0     2         0       0      0         1     1       0       0     10    200    200        0.0      0.0       25.0          0           0
claude-sonnet-4-5        11    90.0     6         2       1      0         0     0       1       1    400   1000   1000       20.0     10.0        0.0         60         120

fallbacks (requested -> served)
  claude-sonnet-4-5 -> claude-haiku-4-5: 2 (20.0%)

upstream attempts
  claude-haiku-4-5: 2 sent, 0 failed
  claude-sonnet-4-5: 5 sent, 3 failed
";
    assert_eq!(report.to_string(), expected);
}

#[test]
fn the_json_holds_the_same_figures() {
    let (_dir, path) = fixed_log("json");
    let report = Report::read_at(&path, Some(Duration::from_secs(300)), now()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["window_secs"], 300.0);
    assert_eq!(json["to_ms"], 1_764_600_000_000i64);
    assert_eq!(json["from_ms"], 1_764_599_700_000i64);
    let sonnet = &json["models"][1];
    assert_eq!(sonnet["model"], "claude-sonnet-4-5");
    assert_eq!(sonnet["availability_pct"], 90.0);
    assert_eq!(sonnet["outcomes"]["live"], 6);
    assert_eq!(sonnet["outcomes"]["fallback"], 2);
    assert_eq!(sonnet["latency_ms"]["p50"], 400.0);
    assert_eq!(sonnet["fallback_pct"], 20.0);
    assert_eq!(sonnet["input_tokens"], 60);
    assert_eq!(sonnet["failed_attempts"], 3);
    assert_eq!(json["fallbacks"][0]["to"], "claude-haiku-4-5");
    assert_eq!(json["fallbacks"][0]["share_pct"], 20.0);
}

#[test]
fn an_empty_window_and_bad_files_say_so() {
    let (dir, path) = fixed_log("errors");
    let later = now() + Duration::from_secs(3600);
    let empty = Report::read_at(&path, Some(Duration::from_secs(60)), later).unwrap();
    assert!(empty.models.is_empty());
    assert_eq!(
        empty.to_string(),
        "availability over the last 1m\n(no requests in the window)\n"
    );

    let missing = dir.0.join("missing.db");
    let error = Report::read(&missing, None).unwrap_err();
    assert!(
        error.to_string().ends_with("missing.db: no such file"),
        "{error}"
    );

    let other = dir.0.join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .unwrap();
    let error = Report::read(&other, None).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not a brownout availability log"),
        "{error}"
    );
}

#[test]
fn windows_parse_with_units_and_refuse_the_rest() {
    assert_eq!(parse_window("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_window("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_window("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert_eq!(
        parse_window("0s"),
        Err("the window must be longer than zero".into())
    );
    assert_eq!(
        parse_window("5 minutes"),
        Err("`5 minutes` is not a duration such as \"5m\", \"1h\", \"90s\" or \"7d\"".into())
    );
}
