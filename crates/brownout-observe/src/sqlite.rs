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
//! transaction). A dedicated thread rather than a tokio task because every SQLite call
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
//! One table, `records`, one row per record; `kind` is `attempt` or `exchange`:
//!
//! | column | exchange | attempt |
//! |---|---|---|
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
//! Indexes on `(kind, ts)` (the report's window) and `ts` (retention by age).
//! Retention deletes rows older than [`SqliteConfig::max_age`] and the oldest rows
//! beyond [`SqliteConfig::max_rows`], when the log opens, every
//! [`SqliteConfig::retain_every`], and when it closes.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use brownout_core::classify::OutcomeKind;
use rusqlite::{params, Connection};

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
    /// costs more than a row: the gateway bench). A flush or close ends the wait.
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
    source: rusqlite::Error,
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
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
    Exchange(Exchange),
    Attempt(Attempt),
    Flush(mpsc::Sender<()>),
    Close,
}

impl SqliteLog {
    /// Opens (or creates) the log file, sets WAL mode and the schema, applies
    /// retention once, and starts the writer thread.
    pub fn open(config: SqliteConfig) -> Result<SqliteLog, SqliteError> {
        let fail = |source| SqliteError {
            path: config.path.clone(),
            source,
        };
        let conn = Connection::open(&config.path).map_err(fail)?;
        prepare(&conn).map_err(fail)?;
        retain(&conn, &config).map_err(fail)?;
        let (tx, rx) = mpsc::sync_channel(config.buffer);
        let shared = Arc::new(Shared {
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            writer: Mutex::new(None),
            path: config.path.clone(),
        });
        let writer = Writer {
            conn,
            rx,
            config,
            shared: Arc::clone(&shared),
        };
        let handle = std::thread::Builder::new()
            .name("brownout-sqlite".into())
            .spawn(move || writer.run())
            .map_err(|e| SqliteError {
                path: shared.path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        *shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(SqliteLog { tx, shared })
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
            let _ = writer.join();
        }
    }

    fn push(&self, message: Message) {
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Sink for SqliteLog {
    fn exchange(&self, exchange: &Exchange) {
        self.push(Message::Exchange(exchange.clone()));
    }

    fn attempt(&self, attempt: &Attempt) {
        self.push(Message::Attempt(attempt.clone()));
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT,
    served_by TEXT,
    outcome TEXT NOT NULL,
    status TEXT NOT NULL,
    http_code INTEGER,
    latency_ms REAL NOT NULL,
    attempt INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER
);
CREATE INDEX IF NOT EXISTS records_kind_ts ON records (kind, ts);
";

fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers (the report, an operator's sqlite3) never block the writer.
    // synchronous=NORMAL is the setting WAL is made for: a power cut may lose the last
    // transactions, never corrupt the file.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)
}

fn retain(conn: &Connection, config: &SqliteConfig) -> rusqlite::Result<usize> {
    let mut deleted = 0;
    if let Some(age) = config.max_age {
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
        // Through the (kind, ts) index: one index per row inserted, not two.
        deleted += conn.execute(
            "DELETE FROM records WHERE kind IN ('attempt', 'exchange') AND ts < ?1",
            [unix_ms(cutoff)],
        )?;
    }
    if let Some(rows) = config.max_rows {
        // Ids grow by one with each insert: the rows above `MAX(id) - rows` are the
        // newest `rows` ones (fewer where deletes by age left gaps). One index lookup,
        // where `ORDER BY id DESC LIMIT 1 OFFSET rows` would walk `rows` entries.
        deleted += conn.execute(
            "DELETE FROM records WHERE id <= (SELECT MAX(id) FROM records) - ?1",
            [i64::try_from(rows).unwrap_or(i64::MAX)],
        )?;
    }
    Ok(deleted)
}

/// The `status` column: whether the record is a usable answer.
fn exchange_status(answer: Answer) -> &'static str {
    if answer == Answer::CallerError {
        "caller_error"
    } else if answer.is_answered() {
        "ok"
    } else {
        "error"
    }
}

fn attempt_status(outcome: OutcomeKind) -> &'static str {
    match outcome {
        OutcomeKind::Success => "ok",
        OutcomeKind::ClientError => "caller_error",
        _ => "error",
    }
}

fn ms(latency: Duration) -> f64 {
    latency.as_secs_f64() * 1000.0
}

struct Writer {
    conn: Connection,
    rx: Receiver<Message>,
    config: SqliteConfig,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self) {
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
            let until = Instant::now() + self.config.linger;
            while !close
                && waiters.is_empty()
                && !batch.is_empty()
                && batch.len() < self.config.batch
            {
                let left = until.saturating_duration_since(Instant::now());
                let next = if left.is_zero() {
                    self.rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
                } else {
                    self.rx.recv_timeout(left)
                };
                match next {
                    Ok(message) => self.take(message, &mut batch, &mut waiters, &mut close),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => close = true,
                }
            }
            self.write(&mut batch);
            if close {
                // Whatever was queued behind the close is written too: nothing handed
                // over before `close` returned is lost.
                while let Ok(message) = self.rx.try_recv() {
                    self.take(message, &mut batch, &mut waiters, &mut close);
                    if batch.len() >= self.config.batch {
                        self.write(&mut batch);
                    }
                }
                self.write(&mut batch);
            }
            if close || last_retain.elapsed() >= self.config.retain_every {
                if let Err(error) = retain(&self.conn, &self.config) {
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

    fn write(&mut self, batch: &mut Vec<Message>) {
        if batch.is_empty() {
            return;
        }
        let rows = batch.len() as u64;
        match insert(&mut self.conn, batch) {
            Ok(()) => {
                self.shared.written.fetch_add(rows, Ordering::Relaxed);
            }
            Err(error) => {
                self.shared.dropped.fetch_add(rows, Ordering::Relaxed);
                tracing::warn!(path = %self.config.path.display(), %error, rows, "brownout-observe: sqlite log write failed");
            }
        }
        batch.clear();
    }
}

fn insert(conn: &mut Connection, batch: &[Message]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut statement = tx.prepare_cached(
            "INSERT INTO records (ts, kind, route, model, served_by, outcome, status, http_code, latency_ms, attempt, input_tokens, output_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for message in batch {
            match message {
                Message::Exchange(e) => statement.execute(params![
                    unix_ms(e.at),
                    "exchange",
                    &*e.route,
                    e.requested_model.as_deref(),
                    e.served_by.as_deref(),
                    e.answer.as_str(),
                    exchange_status(e.answer),
                    e.status,
                    ms(e.latency),
                    e.attempts,
                    e.input_tokens.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                    e.output_tokens
                        .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                ])?,
                Message::Attempt(a) => statement.execute(params![
                    unix_ms(a.at),
                    "attempt",
                    &*a.route,
                    a.model.as_deref(),
                    Option::<&str>::None,
                    a.outcome.as_str(),
                    attempt_status(a.outcome),
                    a.status,
                    ms(a.latency),
                    a.attempt,
                    Option::<i64>::None,
                    Option::<i64>::None,
                ])?,
                Message::Flush(_) | Message::Close => continue,
            };
        }
    }
    tx.commit()
}
