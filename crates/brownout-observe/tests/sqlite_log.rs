//! The availability log's writer: nothing lost at speed, drops counted, retention.
#![cfg(feature = "sqlite")]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use brownout_core::classify::OutcomeKind;
use brownout_observe::{Answer, Attempt, Exchange, Sink, SqliteConfig, SqliteLog};
use rusqlite::Connection;

/// A fresh directory for one test, removed when it ends.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("brownout-observe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("log.db")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rows(path: &Path, filter: &str) -> u64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM records {filter}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

fn exchange(i: u64) -> Exchange {
    let mut e = Exchange::new(
        Arc::from("anthropic.messages"),
        Answer::Live,
        200,
        Duration::from_micros(i),
    );
    e.requested_model = Some(Arc::from("claude-sonnet-4-5"));
    e.served_by = Some(Arc::from("claude-sonnet-4-5"));
    e.attempts = 1;
    e.input_tokens = Some(i);
    e
}

#[test]
fn twenty_thousand_records_as_fast_as_possible_lose_nothing() {
    let dir = Dir::new("fast");
    let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
    let route: Arc<str> = Arc::from("anthropic.messages");
    let model: Arc<str> = Arc::from("claude-sonnet-4-5");
    for i in 0..10_000u64 {
        log.exchange(&exchange(i));
        let mut a = Attempt::new(
            Arc::clone(&route),
            1,
            OutcomeKind::Overloaded,
            Duration::from_millis(3),
        );
        a.model = Some(Arc::clone(&model));
        a.status = Some(529);
        log.attempt(&a);
    }
    log.close();
    assert_eq!(log.sent(), 20_000);
    assert_eq!(
        log.dropped(),
        0,
        "the default buffer holds a burst of 20,000"
    );
    assert_eq!(log.written(), 20_000);
    assert_eq!(rows(&dir.db(), ""), 20_000);
    assert_eq!(rows(&dir.db(), "WHERE kind = 'attempt' AND outcome = 'overloaded' AND http_code = 529 AND status = 'error'"), 10_000);
    assert_eq!(rows(&dir.db(), "WHERE kind = 'exchange' AND outcome = 'live' AND status = 'ok' AND model = 'claude-sonnet-4-5'"), 10_000);
    // Every exchange is there once: the input tokens 0..10,000 sum up.
    let conn = Connection::open(dir.db()).unwrap();
    let sum: i64 = conn
        .query_row(
            "SELECT SUM(input_tokens) FROM records WHERE kind = 'exchange'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sum, (0..10_000i64).sum::<i64>());
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_small_buffer_drops_and_counts_every_record_it_cannot_hold() {
    let dir = Dir::new("small");
    let log = SqliteLog::open(SqliteConfig::new(dir.db()).buffer(8).batch(4)).unwrap();
    for i in 0..20_000 {
        log.exchange(&exchange(i));
    }
    log.close();
    let written = rows(&dir.db(), "");
    assert_eq!(log.written(), written);
    assert_eq!(
        written + log.dropped(),
        20_000,
        "every record is written or counted as dropped"
    );
    assert!(log.dropped() > 0, "8 slots cannot hold a burst of 20,000");
}

#[test]
fn records_after_close_are_counted_as_dropped_and_close_twice_is_harmless() {
    let dir = Dir::new("closed");
    let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
    log.exchange(&exchange(1));
    log.close();
    log.close();
    log.exchange(&exchange(2));
    log.flush(); // returns at once
    assert_eq!((log.sent(), log.written(), log.dropped()), (2, 1, 1));
    assert_eq!(rows(&dir.db(), ""), 1);
}

#[test]
fn flush_waits_until_the_rows_are_readable() {
    let dir = Dir::new("flush");
    let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
    for i in 0..500 {
        log.exchange(&exchange(i));
    }
    log.flush();
    // Readable by another connection while the writer still runs (WAL).
    assert_eq!(rows(&dir.db(), ""), 500);
    assert_eq!(log.written(), 500);
    log.close();
}

#[test]
fn retention_keeps_the_newest_rows_and_drops_old_ones() {
    let dir = Dir::new("retention");
    let day = Duration::from_secs(86_400);
    let log = SqliteLog::open(
        SqliteConfig::new(dir.db())
            .max_rows(Some(30))
            .max_age(Some(day)),
    )
    .unwrap();
    let now = SystemTime::now();
    // 20 rows two days old, then 100 recent ones: age removes the 20, the row cap
    // keeps the newest 30 of the 100.
    for i in 0..120 {
        let mut e = exchange(i);
        e.at = if i < 20 { now - 2 * day } else { now };
        log.exchange(&e);
    }
    log.close();
    assert_eq!(rows(&dir.db(), ""), 30);
    let conn = Connection::open(dir.db()).unwrap();
    let (min, max): (i64, i64) = conn
        .query_row(
            "SELECT MIN(input_tokens), MAX(input_tokens) FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((min, max), (90, 119));
    drop(conn);

    // Opening with a smaller cap applies it before anything is written.
    let log = SqliteLog::open(SqliteConfig::new(dir.db()).max_rows(Some(10))).unwrap();
    assert_eq!(rows(&dir.db(), ""), 10);
    log.close();
}

#[test]
fn the_writer_applies_retention_periodically() {
    let dir = Dir::new("periodic");
    let log = SqliteLog::open(
        SqliteConfig::new(dir.db())
            .max_rows(Some(5))
            .retain_every(Duration::ZERO),
    )
    .unwrap();
    for i in 0..50 {
        log.exchange(&exchange(i));
    }
    // After a flush the writer has passed its retention step at least once.
    log.flush();
    assert_eq!(rows(&dir.db(), ""), 5);
    log.close();
}

#[test]
fn a_file_that_cannot_be_opened_is_an_error_naming_it() {
    let dir = Dir::new("bad");
    let missing = dir.0.join("no-such-dir").join("log.db");
    let error = SqliteLog::open(SqliteConfig::new(&missing)).unwrap_err();
    assert!(error.to_string().contains("no-such-dir/log.db"), "{error}");

    let not_sqlite = dir.0.join("text.db");
    std::fs::write(
        &not_sqlite,
        "this is not a database, it is a text file of some length",
    )
    .unwrap();
    let error = SqliteLog::open(SqliteConfig::new(&not_sqlite)).unwrap_err();
    assert!(error.to_string().contains("text.db"), "{error}");
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_with_one_attempt_is_one_row_and_every_attempt_is_readable() {
    use brownout_core::{Body, BoxError};
    use http::{Request, Response, StatusCode};
    use std::sync::Mutex;
    use tower::{ServiceBuilder, ServiceExt};

    let dir = Dir::new("folded");
    let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
    let sink: Arc<dyn Sink> = Arc::new(log.clone());
    // The upstream fails the first two calls of the second request.
    let calls = Arc::new(Mutex::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_: Request<Body>| {
            let calls = calls.clone();
            async move {
                let mut n = calls.lock().unwrap();
                *n += 1;
                let mut response = Response::new(Body::from("{}"));
                *response.status_mut() = if *n == 2 || *n == 3 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                Ok::<_, BoxError>(response)
            }
        })
    };
    let retry = brownout_retry::RetryLayer::new(
        brownout_retry::RetryConfig::new().max_attempts(3).backoff(
            brownout_retry::Backoff::full_jitter(
                Duration::from_millis(1),
                Duration::from_millis(1),
            )
            .unwrap(),
        ),
    );
    let service = ServiceBuilder::new()
        .layer(brownout_observe::ObserveLayer::new(sink.clone()))
        .layer(retry)
        .layer(brownout_observe::AttemptLayer::new(sink.clone()))
        .service(upstream);
    for _ in 0..2 {
        let request = Request::post("/v1/messages")
            .body(Body::from(r#"{"model":"claude-haiku-4-5","max_tokens":5}"#))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    log.close();
    // Two exchanges and four attempts: the first request's attempt and the second's
    // first travel in their exchanges' rows; the second's two retries have their own.
    assert_eq!((log.sent(), log.written(), log.dropped()), (6, 6, 0));
    let conn = Connection::open(dir.db()).unwrap();
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM log"), 4);
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM log WHERE code & 1 = 0 AND first_code & 255 = 0"
        ),
        1
    );
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM log WHERE code & 1 = 0 AND first_code & 255 = 3"
        ),
        1
    );
    assert_eq!(
        rows(&dir.db(), "WHERE kind = 'exchange' AND outcome = 'live'"),
        2
    );
    assert_eq!(
        rows(
            &dir.db(),
            "WHERE kind = 'attempt' AND model = 'claude-haiku-4-5'"
        ),
        4
    );
    assert_eq!(rows(&dir.db(), "WHERE kind = 'attempt' AND attempt = 1"), 2);
    assert_eq!(
        rows(
            &dir.db(),
            "WHERE kind = 'attempt' AND status = 'error' AND http_code = 503"
        ),
        2
    );
    // The seed's columns read as they did.
    let (ts, model, status, latency, code): (i64, String, String, f64, i64) = conn
        .query_row(
            "SELECT ts, model, status, latency_ms, http_code FROM records WHERE kind = 'exchange' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert!(ts > 1_700_000_000_000);
    assert_eq!((&*model, &*status, code), ("claude-haiku-4-5", "ok", 200));
    assert!(latency >= 0.0);
    let report = brownout_observe::Report::read(dir.db(), None).unwrap();
    let haiku = &report.models[0];
    assert_eq!(
        (haiku.requests, haiku.attempts, haiku.failed_attempts),
        (2, 4, 2)
    );
}

#[test]
fn a_file_of_the_older_schema_is_refused_with_a_clear_error() {
    let dir = Dir::new("old-schema");
    Connection::open(dir.db())
        .unwrap()
        .execute_batch("CREATE TABLE records (id INTEGER PRIMARY KEY, ts INTEGER, kind TEXT)")
        .unwrap();
    let error = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap_err();
    assert!(error.to_string().contains("older brownout"), "{error}");
    let error = brownout_observe::Report::read(dir.db(), None).unwrap_err();
    assert!(error.to_string().contains("older brownout"), "{error}");
}

#[test]
fn a_file_opened_again_keeps_its_rows_and_names() {
    let dir = Dir::new("reopen");
    for _ in 0..2 {
        let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
        log.exchange(&exchange(1));
        log.close();
    }
    assert_eq!(rows(&dir.db(), "WHERE model = 'claude-sonnet-4-5'"), 2);
    let conn = Connection::open(dir.db()).unwrap();
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM names"), 2);
}

/// Rows go in `INSERT`s of several rows, each parameter bound only when it changes:
/// a NULL after a value in the same place of a statement must be NULL in the file.
#[test]
fn values_and_nulls_mixed_in_one_batch_are_written_as_they_were() {
    let dir = Dir::new("mixed");
    let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
    // 101 rows: whole INSERTs of 32 and the smaller ones, in one transaction.
    for i in 0..101u64 {
        let mut e = exchange(i);
        if i % 3 != 0 {
            e.input_tokens = None;
            e.served_by = None;
        }
        if i % 5 == 0 {
            e.requested_model = None;
        }
        log.exchange(&e);
    }
    log.close();
    assert_eq!(log.written(), 101);
    let conn = Connection::open(dir.db()).unwrap();
    let with_tokens = (0..101).filter(|i| i % 3 == 0).count() as i64;
    let sum: i64 = (0..101i64).filter(|i| i % 3 == 0).sum();
    assert_eq!(
        count(&conn, "SELECT COUNT(input_tokens) FROM records"),
        with_tokens
    );
    assert_eq!(count(&conn, "SELECT SUM(input_tokens) FROM records"), sum);
    assert_eq!(
        count(&conn, "SELECT COUNT(served_by) FROM records"),
        with_tokens
    );
    assert_eq!(count(&conn, "SELECT COUNT(model) FROM records"), 101 - 21);
    // Each row's own values, in order.
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM records WHERE (input_tokens IS NULL) = ((CAST(ROUND(latency_ms * 1000) AS INTEGER) % 3) != 0)"
        ),
        101
    );
}

/// Schema 2's tables, as brownout wrote them before schema 3.
const SCHEMA_2: &str = "
CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE answer_codes (code INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE outcome_codes (code INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE log (
    id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind INTEGER NOT NULL,
    route INTEGER NOT NULL, model INTEGER, served_by INTEGER, outcome INTEGER NOT NULL,
    http_code INTEGER, latency_ms REAL NOT NULL, attempt INTEGER NOT NULL,
    input_tokens INTEGER, output_tokens INTEGER, first_ts INTEGER, first_model INTEGER,
    first_outcome INTEGER, first_http_code INTEGER, first_latency_ms REAL
);
CREATE VIEW records AS SELECT id FROM log;
INSERT INTO names VALUES (1, 'anthropic.messages'), (2, 'claude-sonnet-4-5'), (3, 'claude-haiku-4-5');
INSERT INTO answer_codes VALUES (0, 'live', 'ok'), (1, 'fallback', 'ok');
INSERT INTO outcome_codes VALUES (0, 'success', 'ok'), (3, 'overloaded', 'error'),
    (5, 'timeout', 'error');
PRAGMA user_version = 2;
";

/// Schema 2's rows, `?1` a minute ago in ms since the epoch (retention keeps it).
const ROWS_2: &str = "
-- a fallback answer: sonnet overloaded at its first attempt (folded in), haiku at the second
INSERT INTO log VALUES (1, ?1, 0, 1, 2, 3, 1, 200, 812.5, 2, 30, 40, ?1 + 4, 2, 3, 529, 20.25);
INSERT INTO log VALUES (2, ?1 + 30, 1, 1, 3, NULL, 0, 200, 780.0, 2, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL);
-- an attempt that timed out, with no status
INSERT INTO log VALUES (3, ?1 + 1000, 1, 1, 2, NULL, 5, NULL, 30000.0, 1, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL);
";

#[test]
fn a_file_of_schema_2_is_rewritten_as_schema_3_with_every_record() {
    let dir = Dir::new("schema2");
    let base = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    {
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute_batch(SCHEMA_2).unwrap();
        for insert in ROWS_2.split(';').filter(|s| s.contains("INSERT")) {
            conn.execute(insert, [base]).unwrap();
        }
    }
    let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
    log.close();
    let conn = Connection::open(dir.db()).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let mut statement = conn
        .prepare(
            "SELECT id, ts, kind, route, model, served_by, outcome, status, http_code,
                    latency_ms, attempt, input_tokens, output_tokens
               FROM records ORDER BY ts, kind DESC",
        )
        .unwrap();
    // Each record as `column|column|…`, NULL as `-`.
    let records: Vec<String> = statement
        .query_map([], |r| {
            let mut columns = Vec::new();
            for i in 0..13 {
                columns.push(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "-".to_string(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(x) => x.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(_) => "blob".to_string(),
                });
            }
            Ok(columns.join("|"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        records,
        [
            format!("1|{base}|exchange|anthropic.messages|claude-sonnet-4-5|claude-haiku-4-5|fallback|ok|200|812.5|2|30|40"),
            format!("1|{}|attempt|anthropic.messages|claude-sonnet-4-5|-|overloaded|error|529|20.25|1|-|-", base + 4),
            format!("2|{}|attempt|anthropic.messages|claude-haiku-4-5|-|success|ok|200|780|2|-|-", base + 30),
            format!("3|{}|attempt|anthropic.messages|claude-sonnet-4-5|-|timeout|error|-|30000|1|-|-", base + 1000),
        ]
    );
    // The new rows go after the old ones, in the same file.
    let log = SqliteLog::open(SqliteConfig::new(dir.db())).unwrap();
    log.exchange(&exchange(7));
    log.close();
    assert_eq!(rows(&dir.db(), "WHERE kind = 'exchange'"), 2);
    assert_eq!(rows(&dir.db(), "WHERE id = 4 AND latency_ms = 0.007"), 1);
}
