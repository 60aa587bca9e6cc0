//! The availability log: every attempt and every exchange, written to SQLite off the
//! request's path.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use brownout_observe::{Answer, Exchange, Sink, SqliteConfig, SqliteLog};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("brownout-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let log = SqliteLog::open(SqliteConfig::new(dir.join("brownout.db")).max_rows(Some(100_000)))?;
//! let mut exchange = Exchange::new("anthropic.messages".into(), Answer::Live, 200, Duration::from_millis(840));
//! exchange.requested_model = Some("claude-sonnet-4-5".into());
//! log.exchange(&exchange); // a try_send: never waits for SQLite
//! log.close();             // writes what is buffered, then stops the writer
//! assert_eq!((log.written(), log.dropped()), (1, 0));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! To answer "how available was each model over the last hour, and how often did we
//! fall back" after the fact, with [`report`](crate::report), or with any SQLite
//! client: the file is plain SQLite in WAL mode, readable while the gateway writes.
//! Metrics answer the same live; the log keeps the per-request detail.
//!
//! # How it writes
//!
//! [`SqliteLog`] is a [`Sink`]: on the request's path it copies the record (a few
//! reference-counted strings and numbers, no allocation) into a bounded channel with
//! `try_send`. One writer thread owns the connection and writes the rows in batches,
//! one transaction each, as they come (at most [`SqliteConfig::batch`] rows a
//! transaction), in `INSERT`s of up to 32 rows whose parameters are bound only where
//! they changed since the statement's last use. A dedicated thread rather than a tokio task because every SQLite call
//! blocks.
//!
//! # On failure
//!
//! A full buffer (the disk is slower than the traffic) drops the row and counts it
//! ([`SqliteLog::dropped`]); the writer logs the drops at WARN at most once per
//! [`SqliteConfig::warn_every`]. A failed write (disk full, the file removed) is logged
//! at WARN with the rows it lost, which count as dropped too; the writer keeps going.
//! Opening a file that cannot be created or is not a SQLite database is an error of
//! [`SqliteLog::open`], before anything is served.
//!
//! # Schema
//!
//! Schema 3 (`PRAGMA user_version = 3`). The rows are in the table `log`, in integer
//! codes, and the view `records` reads them with names, one row per record, with the
//! columns schema 1 had (so `SELECT ts, model, status, latency_ms, http_code FROM
//! records` reads as it did):
//!
//! | `records` column | exchange | attempt |
//! |---|---|---|
//! | `id` | the `log` row | the `log` row (a first attempt carried by its exchange: the exchange's) |
//! | `ts` | arrival, ms since the Unix epoch | sending, ms since the Unix epoch |
//! | `kind` | `exchange` | `attempt` |
//! | `route` | the route | the route |
//! | `model` | the requested model | the model it was sent to |
//! | `served_by` | the model that answered | — |
//! | `outcome` | [`Answer`]: `live`, `fallback`, `cached`, … | [`OutcomeKind`]: `success`, `overloaded`, … |
//! | `status` | `ok`, `error` or `caller_error` | the same |
//! | `http_code` | the status the caller got | the upstream's status, when it answered |
//! | `latency_ms` | to the response head | to the response head or the error |
//! | `attempt` | upstream calls made | 1 for the first call, 2 for the next, … |
//! | `input_tokens`, `output_tokens` | from the answer's `usage` | — |
//!
//! `log` holds one row per exchange, and **its first attempt folded in**, in eleven
//! integer columns: `ts`; `route`, `model` and `served_by` as ids of the table
//! `names`; `code`, which packs the kind (bit 0: 0 for an exchange, 1 for an attempt),
//! the outcome (bits 1–8: a code of the table `answer_codes` for an exchange,
//! `outcome_codes` for an attempt, each with its name and `status`), the status
//! (bits 9–18, 0 for none) and the attempt (from bit 19), so `(code >> 1) & 255` is
//! the outcome; `latency_us`; `input_tokens`, `output_tokens`; and the first attempt's
//! `first_code` (its outcome in bits 0–7, its status in bits 8–17, its start in
//! milliseconds after `ts` from bit 18; NULL when the row carries none),
//! `first_model` and `first_latency_us`. An attempt has a row of its own
//! (kind 1) when it is not the first of its request (retries, fallback targets), or
//! when its request's exchange was not recorded into the same log (an
//! [`AttemptLayer`](crate::AttemptLayer) without an [`ObserveLayer`](crate::ObserveLayer)
//! over it into the same sink). So a request answered at the first call is one row,
//! and every attempt is still a row of `records`. The codes:
//!
//! | code | `answer_codes` (exchange) | `outcome_codes` (attempt) |
//! |---|---|---|
//! | 0 | `live` (ok) | `success` (ok) |
//! | 1 | `fallback` (ok) | `client_error` (caller_error) |
//! | 2 | `cached` (ok) | `rate_limited` (error) |
//! | 3 | `stale` (ok) | `overloaded` (error) |
//! | 4 | `degraded` (ok) | `server_error` (error) |
//! | 5 | `shed` (error) | `timeout` (error) |
//! | 6 | `failed` (error) | `connection_failed` (error) |
//! | 7 | `caller_error` (caller_error) | `rejected` (error) |
//! | 255 | — | `other` (error), a kind this version does not know |
//!
//! Why: a row of text columns cost about 11,600 instructions to write, two rows a
//! request, with an index on `(kind, ts)`; one row of integers without a secondary
//! index costs a fraction of that, and every column a row has costs SQLite's insert
//! work of its own (schema 2 had sixteen; `BENCHMARKS.md`).
//!
//! There is no index but the rowid. A row is written when its record ends, so ids
//! follow `ts` up to the longest request (a stream's exchange is recorded when its body
//! ends). Readers find the first id of a window by a binary search over the ids, from
//! 15 minutes before the window's start (`TS_DISORDER_MS`), and check `ts` on each row
//! after it: a window misses a row only when the row was written more than 15 minutes
//! after its `ts`, behind rows older than the window. Retention by age deletes the rows
//! before the first id at the cutoff whose `ts` is older than it; a row written late
//! goes at a later pass. Retention by count deletes the oldest ids (a row with its
//! folded attempt counts once).
//!
//! Retention deletes rows older than [`SqliteConfig::max_age`] and the oldest rows
//! beyond [`SqliteConfig::max_rows`], when the log opens, every
//! [`SqliteConfig::retain_every`], and when it closes.
//!
//! **Older files**: a file of schema 2 is rewritten as schema 3 when [`SqliteLog::open`]
//! opens it, in one transaction (the report, which only reads, asks for that first). A
//! file of schema 1 (a `records` table of text columns, written
//! before this version) is refused by [`SqliteLog::open`] and by the report with an
//! error that says so; move it aside (it stays readable with `sqlite3`) and start a new
//! file. It is not migrated: the two schemas' rows would have to be rewritten, and an
//! availability log is kept for days, not years.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError},
        Arc, Mutex,
    },
    thread::{JoinHandle, Thread},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use brownout_core::classify::OutcomeKind;
use rusqlite::{params, types::Null, Connection, Statement};

use crate::record::{unix_ms, Answer, Attempt, Exchange, Sink};

/// The settings of a [`SqliteLog`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    path: PathBuf,
    buffer: usize,
    batch: usize,
    linger: Duration,
    max_age: Option<Duration>,
    max_rows: Option<u64>,
    retain_every: Duration,
    warn_every: Duration,
}

impl SqliteConfig {
    /// A log in the file at `path` (created when missing), with the defaults: a buffer
    /// of 65,536 records, batches of up to 4,096 rows, rows kept 7 days and at most
    /// 10 million of them, retention every minute, drops logged at most every 10 s.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            buffer: 65_536,
            batch: 4_096,
            linger: Duration::from_millis(100),
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_rows: Some(10_000_000),
            retain_every: Duration::from_secs(60),
            warn_every: Duration::from_secs(10),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records held for the writer at most; one more is dropped and counted. At least 1.
    pub fn buffer(mut self, records: usize) -> Self {
        self.buffer = records.max(1);
        self
    }

    /// Rows written in one transaction at most. At least 1.
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// How long the writer waits for more rows after the first of a batch, so that a
    /// steady trickle is written in a few transactions rather than one each (a commit
    /// costs more than a row: the gateway bench). The writer sleeps meanwhile, so a
    /// row handed over wakes nobody; a flush, a close or a full batch ends the wait.
    /// 100 ms by default.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Rows older than this are deleted; `None` keeps them however old.
    pub fn max_age(mut self, age: Option<Duration>) -> Self {
        self.max_age = age;
        self
    }

    /// At most this many rows are kept, the newest; `None` keeps any number.
    pub fn max_rows(mut self, rows: Option<u64>) -> Self {
        self.max_rows = rows;
        self
    }

    /// How often the writer applies retention (besides when it opens and closes).
    pub fn retain_every(mut self, every: Duration) -> Self {
        self.retain_every = every;
        self
    }

    /// Dropped records are logged at WARN at most this often.
    pub fn warn_every(mut self, every: Duration) -> Self {
        self.warn_every = every;
        self
    }
}

/// The log could not be opened: the file, and why.
#[derive(Debug)]
pub struct SqliteError {
    path: PathBuf,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Sqlite(rusqlite::Error),
    /// The file holds something else than this schema.
    Schema(String),
    /// The writer thread could not start.
    Thread(std::io::Error),
}

impl From<rusqlite::Error> for Cause {
    fn from(error: rusqlite::Error) -> Self {
        Cause::Sqlite(error)
    }
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Sqlite(e) => write!(f, "{}: {e}", self.path.display()),
            Cause::Schema(e) => write!(f, "{}: {e}", self.path.display()),
            Cause::Thread(e) => write!(f, "{}: cannot start the writer: {e}", self.path.display()),
        }
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Sqlite(e) => Some(e),
            Cause::Schema(_) => None,
            Cause::Thread(e) => Some(e),
        }
    }
}

/// A [`Sink`] that writes every attempt and every exchange to SQLite from a writer
/// thread; see the [module docs](self).
///
/// Cheap to clone: clones share the channel, the counters and the writer.
#[derive(Clone)]
pub struct SqliteLog {
    tx: SyncSender<Message>,
    shared: Arc<Shared>,
    /// The writer, woken for a flush, a close or a full batch (a row alone does not
    /// wake it while it lingers).
    writer: Thread,
    /// Rows a full batch holds.
    batch: u64,
}

struct Shared {
    sent: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.shared.path)
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// What goes through the channel: a row, or a request of the handle.
enum Message {
    Row(Row),
    Flush(mpsc::Sender<()>),
    Close,
}

impl SqliteLog {
    /// Opens (or creates) the log file, sets WAL mode and the schema, applies
    /// retention once, and starts the writer thread.
    pub fn open(config: SqliteConfig) -> Result<SqliteLog, SqliteError> {
        let fail = |cause| SqliteError {
            path: config.path.clone(),
            cause,
        };
        let conn = Connection::open(&config.path).map_err(|e| fail(e.into()))?;
        prepare(&conn).map_err(fail)?;
        retain(&conn, &config).map_err(|e| fail(e.into()))?;
        let (tx, rx) = mpsc::sync_channel(config.buffer);
        let shared = Arc::new(Shared {
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            writer: Mutex::new(None),
            path: config.path.clone(),
        });
        let writer = Writer {
            rx,
            config,
            shared: Arc::clone(&shared),
            names: Names::default(),
        };
        let batch = writer.config.batch as u64;
        let handle = std::thread::Builder::new()
            .name("brownout-sqlite".into())
            .spawn(move || writer.run(&conn))
            .map_err(|e| SqliteError {
                path: shared.path.clone(),
                cause: Cause::Thread(e),
            })?;
        let writer = handle.thread().clone();
        *shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(SqliteLog {
            tx,
            shared,
            writer,
            batch,
        })
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Records handed to it (written, buffered or dropped).
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Records dropped: the buffer was full, a write failed, or the log was closed.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Rows written and committed.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Waits until every record handed over before the call is written (or counted as
    /// dropped). Blocks the calling thread: from async code, call it in
    /// `spawn_blocking`. Returns at once when the log is closed.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            self.writer.unpark();
            let _ = wait.recv();
        }
    }

    /// Writes what is buffered, applies retention, and stops the writer, waiting for
    /// it. Records handed over afterwards are dropped and counted. Blocks the calling
    /// thread, like [`flush`](Self::flush); a second call returns at once.
    pub fn close(&self) {
        let writer = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(writer) = writer {
            let _ = self.tx.send(Message::Close);
            writer.thread().unpark();
            let _ = writer.join();
        }
    }

    fn push(&self, message: Message) {
        let records = match &message {
            Message::Row(row) => row.records(),
            _ => 0,
        };
        let before = self.shared.sent.fetch_add(records, Ordering::Relaxed);
        match self.tx.try_send(message) {
            Ok(()) => {
                // A full batch is written at once, not at the end of the linger.
                let done = self.shared.written.load(Ordering::Relaxed)
                    + self.shared.dropped.load(Ordering::Relaxed);
                if (before + records).saturating_sub(done) >= self.batch {
                    self.writer.unpark();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(records, Ordering::Relaxed);
            }
        }
    }
}

impl Sink for SqliteLog {
    fn exchange(&self, exchange: &Exchange) {
        self.push(Message::Row(Row::exchange(exchange)));
    }

    fn attempt(&self, attempt: &Attempt) {
        // Written with its exchange, which carries it.
        if !attempt.in_exchange {
            self.push(Message::Row(Row::attempt(attempt)));
        }
    }
}

/// The schema's version, in `PRAGMA user_version`: 2 since the integer-coded table
/// `log` (version 1, never written to the pragma, was one `records` table of text).
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// `log.kind`.
pub(crate) const KIND_EXCHANGE: i64 = 0;
/// `log.kind`.
pub(crate) const KIND_ATTEMPT: i64 = 1;

/// The codes of `log.outcome` for an exchange, in order: the [`Answer`]s, and the
/// `status` each has (the table `answer_codes`).
pub(crate) const ANSWER_CODES: [(Answer, &str); 8] = [
    (Answer::Live, "ok"),
    (Answer::Fallback, "ok"),
    (Answer::Cached, "ok"),
    (Answer::Stale, "ok"),
    (Answer::Degraded, "ok"),
    (Answer::Shed, "error"),
    (Answer::Failed, "error"),
    (Answer::CallerError, "caller_error"),
];

/// The codes of `log.outcome` for an attempt, in order: the [`OutcomeKind`]s and the
/// `status` each has (the table `outcome_codes`); 255 is a kind this version does not
/// know.
pub(crate) const OUTCOME_CODES: [(&str, &str); 8] = [
    ("success", "ok"),
    ("client_error", "caller_error"),
    ("rate_limited", "error"),
    ("overloaded", "error"),
    ("server_error", "error"),
    ("timeout", "error"),
    ("connection_failed", "error"),
    ("rejected", "error"),
];

/// The code of an unknown outcome kind.
const OUTCOME_OTHER: i64 = 255;

fn answer_code(answer: Answer) -> i64 {
    ANSWER_CODES
        .iter()
        .position(|(a, _)| *a == answer)
        .map_or(ANSWER_CODES.len() as i64 - 1, |i| i as i64)
}

fn outcome_code(kind: OutcomeKind) -> i64 {
    match kind {
        OutcomeKind::Success => 0,
        OutcomeKind::ClientError => 1,
        OutcomeKind::RateLimited => 2,
        OutcomeKind::Overloaded => 3,
        OutcomeKind::ServerError => 4,
        OutcomeKind::Timeout => 5,
        OutcomeKind::ConnectionFailed => 6,
        OutcomeKind::Rejected => 7,
        _ => OUTCOME_OTHER,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS answer_codes (
    code INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcome_codes (
    code INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL
);
";

/// The table `log` (schema 3): made in a new file, and by the migration from schema 2.
const LOG_TABLE: &str = "
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    route INTEGER NOT NULL,
    model INTEGER,
    served_by INTEGER,
    code INTEGER NOT NULL,
    latency_us INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    first_code INTEGER,
    first_model INTEGER,
    first_latency_us INTEGER
);
";

/// The view that reads `log` back with names, one row per record, in schema 1's
/// columns; its codes unpacked as [`code`] and [`first_code`] pack them.
const RECORDS_VIEW: &str = "
CREATE VIEW IF NOT EXISTS records AS
SELECT l.id AS id, l.ts AS ts, 'exchange' AS kind, r.name AS route, m.name AS model,
       s.name AS served_by, c.name AS outcome, c.status AS status,
       NULLIF((l.code >> 9) & 1023, 0) AS http_code, l.latency_us / 1000.0 AS latency_ms,
       l.code >> 19 AS attempt, l.input_tokens AS input_tokens,
       l.output_tokens AS output_tokens
  FROM log l JOIN names r ON r.id = l.route LEFT JOIN names m ON m.id = l.model
  LEFT JOIN names s ON s.id = l.served_by
  LEFT JOIN answer_codes c ON c.code = (l.code >> 1) & 255
 WHERE (l.code & 1) = 0
UNION ALL
SELECT l.id, l.ts, 'attempt', r.name, m.name, NULL, c.name, c.status,
       NULLIF((l.code >> 9) & 1023, 0), l.latency_us / 1000.0, l.code >> 19, NULL, NULL
  FROM log l JOIN names r ON r.id = l.route LEFT JOIN names m ON m.id = l.model
  LEFT JOIN outcome_codes c ON c.code = (l.code >> 1) & 255
 WHERE (l.code & 1) = 1
UNION ALL
SELECT l.id, l.ts + (l.first_code >> 18), 'attempt', r.name, m.name, NULL, c.name, c.status,
       NULLIF((l.first_code >> 8) & 1023, 0), l.first_latency_us / 1000.0, 1, NULL, NULL
  FROM log l JOIN names r ON r.id = l.route LEFT JOIN names m ON m.id = l.first_model
  LEFT JOIN outcome_codes c ON c.code = l.first_code & 255
 WHERE l.first_code IS NOT NULL;
";

/// Schema 2's `log` set aside, first of the steps that rewrite it as schema 3's in the
/// transaction that opens the file.
const RENAME_SCHEMA_2: &str = "
DROP VIEW IF EXISTS records;
ALTER TABLE log RENAME TO log_schema_2;
";

/// Schema 2's rows copied into schema 3's `log` (made by [`LOG_TABLE`] after
/// [`RENAME_SCHEMA_2`]; latencies rounded to the microsecond), and the old table dropped.
const COPY_SCHEMA_2: &str = "
INSERT INTO log
SELECT id, ts, route, model, served_by,
       kind | ((outcome & 255) << 1) | ((COALESCE(http_code, 0) & 1023) << 9) | (attempt << 19),
       CAST(ROUND(latency_ms * 1000) AS INTEGER), input_tokens, output_tokens,
       CASE WHEN first_outcome IS NULL THEN NULL
            ELSE (first_outcome & 255) | ((COALESCE(first_http_code, 0) & 1023) << 8)
                 | (MAX(COALESCE(first_ts, ts) - ts, 0) << 18) END,
       first_model, CAST(ROUND(first_latency_ms * 1000) AS INTEGER)
  FROM log_schema_2;
DROP TABLE log_schema_2;
";

/// A row's `code`: the kind (bit 0), the outcome's code (bits 1-8), the status (bits
/// 9-18, 0 for none) and the attempt (from bit 19).
fn code(kind: i64, outcome: i64, status: Option<u16>, attempt: u32) -> i64 {
    kind | ((outcome & 0xff) << 1)
        | ((i64::from(status.unwrap_or(0)) & 0x3ff) << 9)
        | (i64::from(attempt) << 19)
}

/// The `first_code` of an exchange's folded first attempt: its outcome's code (bits
/// 0-7), its status (bits 8-17, 0 for none), and its start, in milliseconds after the
/// exchange's `ts` (from bit 18).
fn first_code(outcome: i64, status: Option<u16>, after_ms: i64) -> i64 {
    (outcome & 0xff) | ((i64::from(status.unwrap_or(0)) & 0x3ff) << 8) | (after_ms.max(0) << 18)
}

/// What an existing file holds: nothing yet, this schema, or something else (the
/// message says what).
pub(crate) fn check_schema(conn: &Connection) -> rusqlite::Result<Result<bool, String>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let table = |name: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row(
            "SELECT type FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
    };
    Ok(match version {
        SCHEMA_VERSION if table("log")?.is_some() => Ok(true),
        2 if table("log")?.is_some() => Err(
            "an availability log of schema 2 (an older brownout): brownout-gateway, or \
             `SqliteLog::open`, rewrites it as schema 3 when it opens the file"
                .into(),
        ),
        0 => match table("records")?.as_deref() {
            None => Ok(false),
            Some("table") => Err(
                "an availability log of an older brownout (schema 1: one `records` table of \
                 text columns), which this version neither reads nor writes: move it aside \
                 (or `sqlite3 FILE .dump` it) and start a new file"
                    .into(),
            ),
            Some(_) => Err("not a brownout availability log (`records` is not its table)".into()),
        },
        v => Err(format!(
            "not an availability log this brownout knows (schema version {v}, expected {SCHEMA_VERSION})"
        )),
    })
}

fn prepare(conn: &Connection) -> Result<(), Cause> {
    // WAL: readers (the report, an operator's sqlite3) never block the writer.
    // synchronous=NORMAL is the setting WAL is made for: a power cut may lose the last
    // transactions, never corrupt the file.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 2 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(RENAME_SCHEMA_2)?;
        tx.execute_batch(LOG_TABLE)?;
        tx.execute_batch(COPY_SCHEMA_2)?;
        tx.execute_batch(RECORDS_VIEW)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    if check_schema(conn)?.map_err(Cause::Schema)? {
        return Ok(());
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(LOG_TABLE)?;
    conn.execute_batch(RECORDS_VIEW)?;
    for (code, (answer, status)) in ANSWER_CODES.iter().enumerate() {
        conn.execute(
            "INSERT OR IGNORE INTO answer_codes VALUES (?1, ?2, ?3)",
            params![code as i64, answer.as_str(), status],
        )?;
    }
    for (code, (name, status)) in OUTCOME_CODES.iter().enumerate() {
        conn.execute(
            "INSERT OR IGNORE INTO outcome_codes VALUES (?1, ?2, ?3)",
            params![code as i64, name, status],
        )?;
    }
    conn.execute(
        "INSERT OR IGNORE INTO outcome_codes VALUES (?1, 'other', 'error')",
        [OUTCOME_OTHER],
    )?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// How long after its `ts` a row may be written at most, for reading the log by id
/// rather than through an index on `ts`: a row is written when its record ends (an
/// exchange when its answer's body does), so ids follow `ts` only up to this.
pub(crate) const TS_DISORDER_MS: i64 = 15 * 60 * 1000;

/// The first id whose row, and every later row's, may have `ts >= at`, found by a
/// binary search over the ids (`ts` grows with the id, up to [`TS_DISORDER_MS`]):
/// every row before it was written before a row with `ts < at`. A row whose `ts` is
/// more than [`TS_DISORDER_MS`] older than its writing may sit before it.
pub(crate) fn first_id_from(conn: &Connection, at: i64) -> rusqlite::Result<i64> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        // Two subqueries: SQLite reads a lone MIN or MAX of the rowid off the B-tree's
        // ends, but `SELECT MIN(id), MAX(id)` scans every row.
        conn.query_row(
            "SELECT (SELECT MIN(id) FROM log), (SELECT MAX(id) FROM log)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    let (Some(mut lo), Some(hi)) = (lo, hi) else {
        return Ok(0);
    };
    let mut hi = hi + 1;
    let mut probe =
        conn.prepare_cached("SELECT id, ts FROM log WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, i64)> = probe
            .query_row([mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        match row {
            Some((id, ts)) if ts < at => lo = id + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

fn retain(conn: &Connection, config: &SqliteConfig) -> rusqlite::Result<usize> {
    let mut deleted = 0;
    if let Some(age) = config.max_age {
        let cutoff = unix_ms(SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH));
        // No index on `ts` (one fewer B-tree per row written): the rows before the
        // first id at the cutoff, less any written late; a late row after it goes at a
        // later pass.
        let below = first_id_from(conn, cutoff)?;
        deleted += conn.execute("DELETE FROM log WHERE id < ?1 AND ts < ?2", [below, cutoff])?;
    }
    if let Some(rows) = config.max_rows {
        // Ids grow by one with each insert: the rows above `MAX(id) - rows` are the
        // newest `rows` ones (fewer where deletes by age left gaps). One index lookup,
        // where `ORDER BY id DESC LIMIT 1 OFFSET rows` would walk `rows` entries.
        // (A row carrying its exchange's first attempt counts once.)
        deleted += conn.execute(
            "DELETE FROM log WHERE id <= (SELECT MAX(id) FROM log) - ?1",
            [i64::try_from(rows).unwrap_or(i64::MAX)],
        )?;
    }
    Ok(deleted)
}

/// A record as the writer needs it: copied on the request's path (reference-counted
/// names, numbers), turned into codes and ids on the writer's thread.
struct Row {
    ts: i64,
    kind: i64,
    route: Arc<str>,
    model: Option<Arc<str>>,
    served_by: Option<Arc<str>>,
    outcome: i64,
    http_code: Option<u16>,
    latency: Duration,
    attempt: u32,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    first: Option<FirstRow>,
}

/// An exchange's first attempt, written in the exchange's row.
struct FirstRow {
    ts: i64,
    model: Option<Arc<str>>,
    outcome: i64,
    http_code: Option<u16>,
    latency: Duration,
}

impl Row {
    fn exchange(e: &Exchange) -> Row {
        Row {
            ts: unix_ms(e.at),
            kind: KIND_EXCHANGE,
            route: e.route.clone(),
            model: e.requested_model.clone(),
            served_by: e.served_by.clone(),
            outcome: answer_code(e.answer),
            http_code: Some(e.status),
            latency: e.latency,
            attempt: e.attempts,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            first: e.first_attempt.as_ref().map(|a| FirstRow {
                ts: unix_ms(a.at),
                model: a.model.clone(),
                outcome: outcome_code(a.outcome),
                http_code: a.status,
                latency: a.latency,
            }),
        }
    }

    fn attempt(a: &Attempt) -> Row {
        Row {
            ts: unix_ms(a.at),
            kind: KIND_ATTEMPT,
            route: a.route.clone(),
            model: a.model.clone(),
            served_by: None,
            outcome: outcome_code(a.outcome),
            http_code: a.status,
            latency: a.latency,
            attempt: a.attempt,
            input_tokens: None,
            output_tokens: None,
            first: None,
        }
    }

    /// The records it holds: an exchange and its first attempt count two.
    fn records(&self) -> u64 {
        1 + u64::from(self.first.is_some())
    }
}

/// A latency in whole microseconds (as `INTEGER`, smaller and cheaper to write
/// than a `REAL` of milliseconds; `records` gives milliseconds).
fn us(latency: Duration) -> i64 {
    i64::try_from(latency.as_micros()).unwrap_or(i64::MAX)
}

fn tokens(n: Option<u64>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// The ids of the names written so far (routes and models), so that a row costs no
/// text: looked up, or added, once per name.
#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, i64, foldhash::fast::RandomState>,
    /// The last names looked up, most recent last: a gateway's rows name a few
    /// routes and models, compared here for less than a hash of the name costs.
    recent: Vec<(Arc<str>, i64)>,
}

/// Names in [`Names::recent`].
const RECENT_NAMES: usize = 8;

/// Names remembered at most; past it the memory starts afresh (callers may name any
/// number of models; the table keeps them all).
const NAMES_KEPT: usize = 4096;

impl Names {
    fn id(&mut self, tx: &Connection, name: &Arc<str>) -> rusqlite::Result<i64> {
        if let Some((_, id)) = self
            .recent
            .iter()
            .rev()
            .find(|(n, _)| Arc::ptr_eq(n, name) || **n == **name)
        {
            return Ok(*id);
        }
        let id = self.lookup(tx, name)?;
        if self.recent.len() >= RECENT_NAMES {
            self.recent.remove(0);
        }
        self.recent.push((name.clone(), id));
        Ok(id)
    }

    fn lookup(&mut self, tx: &Connection, name: &Arc<str>) -> rusqlite::Result<i64> {
        if let Some(id) = self.ids.get(&**name) {
            return Ok(*id);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO names (name) VALUES (?1)")?
            .execute([&**name])?;
        let id = tx
            .prepare_cached("SELECT id FROM names WHERE name = ?1")?
            .query_row([&**name], |r| r.get(0))?;
        if self.ids.len() >= NAMES_KEPT {
            self.ids.clear();
        }
        self.ids.insert(name.clone(), id);
        Ok(id)
    }

    /// Forgets every id (their transaction was rolled back).
    fn clear(&mut self) {
        self.ids.clear();
        self.recent.clear();
    }

    fn opt(&mut self, tx: &Connection, name: &Option<Arc<str>>) -> rusqlite::Result<Option<i64>> {
        name.as_ref().map(|n| self.id(tx, n)).transpose()
    }
}

struct Writer {
    rx: Receiver<Message>,
    config: SqliteConfig,
    shared: Arc<Shared>,
    names: Names,
}

/// The `INSERT`s of [`INSERT_ROWS`] rows, each prepared on its first use and kept for
/// the writer's life (with the values last bound to it).
type Inserts<'c> = [Option<Insert<'c>>; INSERT_ROWS.len()];

impl Writer {
    /// Writes what comes, over `conn`, until the log is closed.
    fn run(mut self, conn: &Connection) {
        let mut inserts: Inserts<'_> = Default::default();
        let mut batch: Vec<Message> = Vec::with_capacity(self.config.batch);
        let mut last_retain = Instant::now();
        let mut last_warn = Instant::now();
        let mut warned_dropped = 0;
        // Wake at least this often for retention and the drop warning, however quiet.
        let tick = self
            .config
            .warn_every
            .min(self.config.retain_every)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            let mut waiters = Vec::new();
            let mut close = false;
            match self.rx.recv_timeout(tick) {
                Ok(message) => self.take(message, &mut batch, &mut waiters, &mut close),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => close = true,
            }
            // More rows for the same transaction, for up to `linger` after the first
            // (a flush or a close writes at once).
            // The writer sleeps while it lingers, rather than waiting on the channel:
            // a row handed over then costs its sender no wake-up (and the writer
            // none per row); a flush, a close and a full batch unpark it.
            let until = Instant::now() + self.config.linger;
            while !close
                && waiters.is_empty()
                && !batch.is_empty()
                && batch.len() < self.config.batch
            {
                match self.rx.try_recv() {
                    Ok(message) => self.take(message, &mut batch, &mut waiters, &mut close),
                    Err(TryRecvError::Disconnected) => close = true,
                    Err(TryRecvError::Empty) => {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::park_timeout(left);
                    }
                }
            }
            self.write(conn, &mut inserts, &mut batch);
            if close {
                // Whatever was queued behind the close is written too: nothing handed
                // over before `close` returned is lost.
                while let Ok(message) = self.rx.try_recv() {
                    self.take(message, &mut batch, &mut waiters, &mut close);
                    if batch.len() >= self.config.batch {
                        self.write(conn, &mut inserts, &mut batch);
                    }
                }
                self.write(conn, &mut inserts, &mut batch);
            }
            if close || last_retain.elapsed() >= self.config.retain_every {
                if let Err(error) = retain(conn, &self.config) {
                    tracing::warn!(path = %self.config.path.display(), %error, "brownout-observe: sqlite log retention failed");
                }
                last_retain = Instant::now();
            }
            let dropped = self.shared.dropped.load(Ordering::Relaxed);
            if dropped > warned_dropped && (close || last_warn.elapsed() >= self.config.warn_every)
            {
                tracing::warn!(
                    path = %self.config.path.display(),
                    dropped = dropped - warned_dropped,
                    total_dropped = dropped,
                    "brownout-observe: sqlite log dropped records (buffer full or write failed)"
                );
                warned_dropped = dropped;
                last_warn = Instant::now();
            }
            for waiter in waiters {
                let _ = waiter.send(());
            }
            if close {
                return;
            }
        }
    }

    fn take(
        &self,
        message: Message,
        batch: &mut Vec<Message>,
        waiters: &mut Vec<mpsc::Sender<()>>,
        close: &mut bool,
    ) {
        match message {
            Message::Flush(done) => waiters.push(done),
            Message::Close => *close = true,
            row => batch.push(row),
        }
    }

    fn write<'c>(
        &mut self,
        conn: &'c Connection,
        inserts: &mut Inserts<'c>,
        batch: &mut Vec<Message>,
    ) {
        if batch.is_empty() {
            return;
        }
        let rows: u64 = batch
            .iter()
            .map(|m| match m {
                Message::Row(row) => row.records(),
                _ => 0,
            })
            .sum();
        match insert(conn, &mut self.names, inserts, batch) {
            Ok(()) => {
                self.shared.written.fetch_add(rows, Ordering::Relaxed);
            }
            Err(error) => {
                // The names added in the rolled-back transaction are gone.
                self.names.clear();
                self.shared.dropped.fetch_add(rows, Ordering::Relaxed);
                tracing::warn!(path = %self.config.path.display(), %error, rows, "brownout-observe: sqlite log write failed");
            }
        }
        batch.clear();
    }
}

/// Rows per `INSERT` statement, largest first: a batch is written in statements of
/// these sizes (32 rows in one run of one program, rather than 32 runs).
const INSERT_ROWS: [usize; 4] = [32, 8, 2, 1];

/// The columns of `log` an `INSERT` binds, in order.
const COLUMNS: usize = 11;

/// The `INSERT` of `rows` rows. `OR FAIL`: a row that breaks a constraint (none
/// should) ends the statement where it is, rather than undoing the rows before it;
/// the writer rolls the whole transaction back then all the same, and SQLite keeps
/// no statement journal for an `INSERT` of many rows that cannot half-undo itself.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR FAIL INTO log (ts, route, model, served_by, code, latency_us, input_tokens, \
         output_tokens, first_code, first_model, first_latency_us) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..COLUMNS {
            if column > 0 {
                sql.push(',');
            }
            sql.push('?');
        }
        sql.push(')');
    }
    sql
}

/// A value of a `log` column.
#[derive(Clone, Copy, PartialEq)]
enum Value {
    Int(i64),
    Null,
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Value::Null, Value::Int)
    }
}

/// One `INSERT` of [`INSERT_ROWS`] rows, and the value bound to each of its
/// parameters: SQLite keeps a statement's bindings from one run to the next, so a
/// parameter is bound only when its value changed. Most of a gateway's rows repeat
/// their neighbours' route, models, outcome and status; what changes is the time, the
/// latency and the tokens.
struct Insert<'c> {
    statement: Statement<'c>,
    bound: Vec<Value>,
}

impl<'c> Insert<'c> {
    fn new(conn: &'c Connection, rows: usize) -> rusqlite::Result<Self> {
        Ok(Insert {
            statement: conn.prepare(&insert_sql(rows))?,
            // A new statement's parameters are all NULL.
            bound: vec![Value::Null; rows * COLUMNS],
        })
    }

    /// Binds what changed of the `rows`' values and runs the statement.
    fn run(&mut self, rows: &[[Value; COLUMNS]]) -> rusqlite::Result<()> {
        for (r, row) in rows.iter().enumerate() {
            for (c, &value) in row.iter().enumerate() {
                let i = r * COLUMNS + c;
                if value == self.bound[i] {
                    continue;
                }
                match value {
                    Value::Int(v) => self.statement.raw_bind_parameter(i + 1, v)?,
                    Value::Null => self.statement.raw_bind_parameter(i + 1, Null)?,
                }
                self.bound[i] = value;
            }
        }
        self.statement.raw_execute()?;
        Ok(())
    }
}

/// A row's values, in the order of [`insert_sql`]'s columns.
fn values(tx: &Connection, names: &mut Names, row: &Row) -> rusqlite::Result<[Value; COLUMNS]> {
    let route = names.id(tx, &row.route)?;
    let model = names.opt(tx, &row.model)?;
    let served_by = names.opt(tx, &row.served_by)?;
    let first = row.first.as_ref();
    let first_model = match first {
        Some(first) => names.opt(tx, &first.model)?,
        None => None,
    };
    Ok([
        Value::Int(row.ts),
        Value::Int(route),
        model.into(),
        served_by.into(),
        Value::Int(code(row.kind, row.outcome, row.http_code, row.attempt)),
        Value::Int(us(row.latency)),
        tokens(row.input_tokens).into(),
        tokens(row.output_tokens).into(),
        first
            .map(|f| first_code(f.outcome, f.http_code, f.ts - row.ts))
            .into(),
        first_model.into(),
        first.map(|f| us(f.latency)).into(),
    ])
}

/// Writes the batch's rows in one transaction. A statement that failed is prepared
/// afresh next time (what it holds bound is not known then).
fn insert<'c>(
    conn: &'c Connection,
    names: &mut Names,
    inserts: &mut Inserts<'c>,
    batch: &[Message],
) -> rusqlite::Result<()> {
    // `unchecked_transaction` borrows the connection shared, so that the statements
    // prepared on it outlive the transaction; the writer runs one at a time.
    let tx = conn.unchecked_transaction()?;
    let mut rows = Vec::with_capacity(batch.len());
    for message in batch {
        if let Message::Row(row) = message {
            rows.push(values(&tx, names, row)?);
        }
    }
    let mut left = &rows[..];
    while !left.is_empty() {
        let k = INSERT_ROWS
            .iter()
            .position(|&n| n <= left.len())
            .expect("the smallest INSERT is of one row");
        let n = INSERT_ROWS[k];
        let done = match &mut inserts[k] {
            Some(insert) => insert.run(&left[..n]),
            empty => Insert::new(conn, n).and_then(|insert| empty.insert(insert).run(&left[..n])),
        };
        if let Err(error) = done {
            inserts[k] = None;
            return Err(error);
        }
        left = &left[n..];
    }
    tx.commit()
}
