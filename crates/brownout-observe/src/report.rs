//! The availability report: what an availability log says about each model over a
//! window, as a text table or as JSON.
//!
//! ```
//! use std::time::Duration;
//! use brownout_observe::{report::Report, Answer, Exchange, Sink, SqliteConfig, SqliteLog};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("brownout-report-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let path = dir.join("brownout.db");
//! let log = SqliteLog::open(SqliteConfig::new(&path))?;
//! for answer in [Answer::Live, Answer::Live, Answer::Live, Answer::Failed] {
//!     let mut e = Exchange::new("anthropic.messages".into(), answer, 200, Duration::from_millis(500));
//!     e.requested_model = Some("claude-sonnet-4-5".into());
//!     log.exchange(&e);
//! }
//! log.close();
//!
//! let report = Report::read(&path, Some(Duration::from_secs(300)))?;
//! assert_eq!(report.models[0].availability_pct, Some(75.0));
//! println!("{report}");          // the aligned table
//! println!("{}", report.to_json());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! # What it counts
//!
//! Per requested model (`-` for requests that named none), from the log's exchanges
//! in the window:
//!
//! - **availability**: answered (live, fallback, cached, stale or degraded) over all
//!   requests, not counting the callers' own errors; `None` when nothing counts;
//! - **outcomes**: requests by [`Answer`] label;
//! - **latency**: p50, p95 and p99 (nearest rank) over the requests that count;
//! - **shares** of the requests that count: fallback, cached (fresh or stale), degraded;
//! - **tokens** in and out, from the answers' `usage`;
//! - **attempts**: upstream calls to the model (from the attempt rows) and how many failed.
//!
//! And each fallback pair (requested → served) with its count and share of the
//! requested model's requests.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::Path,
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::{
    record::{unix_ms, Answer},
    sqlite::{
        check_schema, first_id_from, ANSWER_CODES, KIND_EXCHANGE, OUTCOME_CODES, TS_DISORDER_MS,
    },
};

/// The report over one window of a log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The window's length in seconds, `None` for the whole log.
    pub window_secs: Option<f64>,
    /// The window's start, ms since the Unix epoch (`None`: the whole log).
    pub from_ms: Option<i64>,
    /// The window's end (when the report was made), ms since the Unix epoch.
    pub to_ms: i64,
    /// One entry per requested model, by name.
    pub models: Vec<ModelReport>,
    /// Each fallback pair, by count (most first), then names.
    pub fallbacks: Vec<FallbackPair>,
}

/// What the log says about one requested model.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ModelReport {
    /// The requested model (`-`: the requests named none).
    pub model: String,
    /// Every request, the callers' errors included.
    pub requests: u64,
    /// Requests that were the callers' own errors (not counted below).
    pub caller_errors: u64,
    /// Requests that got a usable answer.
    pub answered: u64,
    /// `answered` over the requests that count, in percent.
    pub availability_pct: Option<f64>,
    /// Requests by answer (`live`, `fallback`, `cached`, `stale`, `degraded`, `shed`,
    /// `failed`, `caller_error`); only those that occurred.
    pub outcomes: BTreeMap<String, u64>,
    /// Latency percentiles in ms over the requests that count.
    pub latency_ms: Option<Percentiles>,
    /// Answered by a later target of the cascade, in percent of the requests that count.
    pub fallback_pct: Option<f64>,
    /// Answered from the cache (fresh or stale), in percent.
    pub cached_pct: Option<f64>,
    /// Answered by the degrade layer, in percent.
    pub degraded_pct: Option<f64>,
    /// Input tokens of the answers.
    pub input_tokens: u64,
    /// Output tokens of the answers.
    pub output_tokens: u64,
    /// Upstream calls sent to this model (attempt rows).
    pub attempts: u64,
    /// Of them, those that failed (not counting the callers' own errors).
    pub failed_attempts: u64,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 99th percentile.
    pub p99: f64,
}

/// Requests for `from` that `to` answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FallbackPair {
    /// The requested model.
    pub from: String,
    /// The model that answered.
    pub to: String,
    /// How many.
    pub count: u64,
    /// Of the requests for `from` that count, in percent.
    pub share_pct: f64,
}

/// The log could not be read: which file, and why.
#[derive(Debug)]
pub struct ReportError {
    message: String,
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReportError {}

/// Reads a report window: a duration such as `"5m"`, `"1h30m"`, `"90s"` or `"7d"`.
/// The error says what was expected.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let days = text
        .strip_suffix('d')
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| Duration::from_secs(n.saturating_mul(86_400)));
    let window = days.or_else(|| brownout_core::classify::parse_go_duration(text));
    match window {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("the window must be longer than zero".into()),
        None => Err(format!(
            "`{text}` is not a duration such as \"5m\", \"1h\", \"90s\" or \"7d\""
        )),
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    caller_errors: u64,
    answered: u64,
    outcomes: BTreeMap<String, u64>,
    latencies: Vec<f64>,
    fallback: u64,
    cached: u64,
    degraded: u64,
    input_tokens: u64,
    output_tokens: u64,
    attempts: u64,
    failed_attempts: u64,
}

impl Report {
    /// The report over the last `window` of the log at `path` (the whole log for
    /// `None`), ending now.
    pub fn read(path: impl AsRef<Path>, window: Option<Duration>) -> Result<Report, ReportError> {
        Report::read_at(path, window, SystemTime::now())
    }

    /// The report over the `window` ending at `now`.
    pub fn read_at(
        path: impl AsRef<Path>,
        window: Option<Duration>,
        now: SystemTime,
    ) -> Result<Report, ReportError> {
        let path = path.as_ref();
        let fail = |e: rusqlite::Error| ReportError {
            message: format!("{}: {e}", path.display()),
        };
        if !path.exists() {
            return Err(ReportError {
                message: format!("{}: no such file", path.display()),
            });
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
        match check_schema(&conn).map_err(fail)? {
            Ok(true) => {}
            Ok(false) => {
                return Err(ReportError {
                    message: format!(
                        "{}: not a brownout availability log (no `log` table)",
                        path.display()
                    ),
                })
            }
            Err(why) => {
                return Err(ReportError {
                    message: format!("{}: {why}", path.display()),
                })
            }
        }
        let to_ms = unix_ms(now);
        let from_ms = window.map(|w| unix_ms(now.checked_sub(w).unwrap_or(SystemTime::UNIX_EPOCH)));
        let from = from_ms.unwrap_or(i64::MIN);
        // No index on `ts`: the rows from the first id that may be in the window (see
        // `first_id_from`), each then checked against it.
        let first_id = match from_ms {
            Some(from) => {
                first_id_from(&conn, from.saturating_sub(TS_DISORDER_MS)).map_err(fail)?
            }
            None => 0,
        };
        let mut names: HashMap<i64, String> = HashMap::new();
        {
            let mut statement = conn.prepare("SELECT id, name FROM names").map_err(fail)?;
            let mut rows = statement.query([]).map_err(fail)?;
            while let Some(row) = rows.next().map_err(fail)? {
                names.insert(row.get(0).map_err(fail)?, row.get(1).map_err(fail)?);
            }
        }
        let name = |id: Option<i64>| -> String {
            id.and_then(|id| names.get(&id).cloned())
                .unwrap_or_else(|| "-".into())
        };
        let mut models: BTreeMap<String, Tally> = BTreeMap::new();
        let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();

        let mut statement = conn
            .prepare(
                "SELECT model, served_by, (code >> 1) & 255, latency_us / 1000.0, input_tokens,
                        output_tokens
                 FROM log WHERE id >= ?1 AND (code & 1) = ?2 AND ts >= ?3 AND ts <= ?4",
            )
            .map_err(fail)?;
        let mut rows = statement
            .query([first_id, KIND_EXCHANGE, from, to_ms])
            .map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            let model = name(row.get(0).map_err(fail)?);
            let served_by: Option<i64> = row.get(1).map_err(fail)?;
            let code: i64 = row.get(2).map_err(fail)?;
            let latency: f64 = row.get(3).map_err(fail)?;
            let input: Option<i64> = row.get(4).map_err(fail)?;
            let output: Option<i64> = row.get(5).map_err(fail)?;
            let answer = usize::try_from(code)
                .ok()
                .and_then(|i| ANSWER_CODES.get(i))
                .map(|(answer, _)| *answer);
            let t = models.entry(model.clone()).or_default();
            t.requests += 1;
            let label = answer.map_or("other", Answer::as_str);
            *t.outcomes.entry(label.to_owned()).or_default() += 1;
            t.input_tokens += input.map_or(0, |n| n.max(0) as u64);
            t.output_tokens += output.map_or(0, |n| n.max(0) as u64);
            match answer {
                Some(Answer::CallerError) => {
                    t.caller_errors += 1;
                    continue;
                }
                Some(Answer::Live) => t.answered += 1,
                Some(Answer::Fallback) => {
                    t.answered += 1;
                    t.fallback += 1;
                    *pairs.entry((model, name(served_by))).or_default() += 1;
                }
                Some(Answer::Cached | Answer::Stale) => {
                    t.answered += 1;
                    t.cached += 1;
                }
                Some(Answer::Degraded) => {
                    t.answered += 1;
                    t.degraded += 1;
                }
                _ => {}
            }
            t.latencies.push(latency);
        }
        drop(rows);

        // The attempts: rows of their own, and the first ones that their exchanges carry.
        for sql in [
            "SELECT model, (code >> 1) & 255, COUNT(*) FROM log
             WHERE id >= ?1 AND (code & 1) = 1 AND ts >= ?2 AND ts <= ?3 GROUP BY 1, 2",
            "SELECT first_model, first_code & 255, COUNT(*) FROM log
             WHERE id >= ?1 AND first_code IS NOT NULL
               AND ts + (first_code >> 18) >= ?2 AND ts + (first_code >> 18) <= ?3
             GROUP BY 1, 2",
        ] {
            let mut statement = conn.prepare(sql).map_err(fail)?;
            let mut rows = statement.query([first_id, from, to_ms]).map_err(fail)?;
            while let Some(row) = rows.next().map_err(fail)? {
                let model = name(row.get(0).map_err(fail)?);
                let code: i64 = row.get(1).map_err(fail)?;
                let count: i64 = row.get(2).map_err(fail)?;
                let t = models.entry(model).or_default();
                t.attempts += count as u64;
                let status = usize::try_from(code)
                    .ok()
                    .and_then(|i| OUTCOME_CODES.get(i))
                    .map_or("error", |(_, status)| *status);
                if status == "error" {
                    t.failed_attempts += count as u64;
                }
            }
        }

        let counted = |t: &Tally| t.requests - t.caller_errors;
        let pct = |n: u64, of: u64| (of > 0).then(|| n as f64 * 100.0 / of as f64);
        let mut fallbacks: Vec<FallbackPair> = pairs
            .into_iter()
            .map(|((from, to), count)| {
                let of = models.get(&from).map_or(0, counted);
                FallbackPair {
                    share_pct: pct(count, of).unwrap_or(0.0),
                    from,
                    to,
                    count,
                }
            })
            .collect();
        fallbacks.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to)))
        });
        let models = models
            .into_iter()
            .map(|(model, mut t)| {
                let of = counted(&t);
                t.latencies.sort_by(f64::total_cmp);
                ModelReport {
                    model,
                    requests: t.requests,
                    caller_errors: t.caller_errors,
                    answered: t.answered,
                    availability_pct: pct(t.answered, of),
                    outcomes: t.outcomes,
                    latency_ms: (!t.latencies.is_empty()).then(|| Percentiles {
                        p50: nearest_rank(&t.latencies, 50.0),
                        p95: nearest_rank(&t.latencies, 95.0),
                        p99: nearest_rank(&t.latencies, 99.0),
                    }),
                    fallback_pct: pct(t.fallback, of),
                    cached_pct: pct(t.cached, of),
                    degraded_pct: pct(t.degraded, of),
                    input_tokens: t.input_tokens,
                    output_tokens: t.output_tokens,
                    attempts: t.attempts,
                    failed_attempts: t.failed_attempts,
                }
            })
            .collect();
        Ok(Report {
            window_secs: window.map(|w| w.as_secs_f64()),
            from_ms,
            to_ms,
            models,
            fallbacks,
        })
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The nearest-rank percentile of sorted, non-empty `values`.
fn nearest_rank(values: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The table columns after the model, in order.
const COLUMNS: [&str; 18] = [
    "requests",
    "avail%",
    "live",
    "fallback",
    "cached",
    "stale",
    "degraded",
    "shed",
    "failed",
    "caller",
    "p50ms",
    "p95ms",
    "p99ms",
    "fallback%",
    "cached%",
    "degraded%",
    "tokens_in",
    "tokens_out",
];

impl ModelReport {
    fn cells(&self) -> Vec<String> {
        let count = |label: &str| self.outcomes.get(label).copied().unwrap_or(0).to_string();
        let pct = |p: Option<f64>| p.map_or_else(|| "-".into(), |p| format!("{p:.1}"));
        let lat = |f: fn(&Percentiles) -> f64| {
            self.latency_ms
                .as_ref()
                .map_or_else(|| "-".into(), |l| format!("{:.0}", f(l)))
        };
        vec![
            self.requests.to_string(),
            pct(self.availability_pct),
            count("live"),
            count("fallback"),
            count("cached"),
            count("stale"),
            count("degraded"),
            count("shed"),
            count("failed"),
            count("caller_error"),
            lat(|l| l.p50),
            lat(|l| l.p95),
            lat(|l| l.p99),
            pct(self.fallback_pct),
            pct(self.cached_pct),
            pct(self.degraded_pct),
            self.input_tokens.to_string(),
            self.output_tokens.to_string(),
        ]
    }
}

/// The aligned text table: a line on the window, one row per model (numbers right
/// aligned), then the fallback pairs and the attempts.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.window_secs {
            Some(secs) => writeln!(f, "availability over the last {}", human(secs))?,
            None => writeln!(f, "availability over the whole log")?,
        }
        if self.models.is_empty() {
            return writeln!(f, "(no requests in the window)");
        }
        let rows: Vec<(String, Vec<String>)> = self
            .models
            .iter()
            .map(|m| (m.model.clone(), m.cells()))
            .collect();
        let model_width = rows.iter().map(|(m, _)| m.len()).max().unwrap_or(0).max(5);
        let widths: Vec<usize> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, h)| {
                rows.iter()
                    .map(|(_, c)| c[i].len())
                    .max()
                    .unwrap_or(0)
                    .max(h.len())
            })
            .collect();
        write!(f, "{:<model_width$}", "model")?;
        for (h, w) in COLUMNS.iter().zip(&widths) {
            write!(f, "  {h:>w$}")?;
        }
        writeln!(f)?;
        for (model, cells) in &rows {
            write!(f, "{model:<model_width$}")?;
            for (c, w) in cells.iter().zip(&widths) {
                write!(f, "  {c:>w$}")?;
            }
            writeln!(f)?;
        }
        if !self.fallbacks.is_empty() {
            writeln!(f, "\nfallbacks (requested -> served)")?;
            for p in &self.fallbacks {
                writeln!(
                    f,
                    "  {} -> {}: {} ({:.1}%)",
                    p.from, p.to, p.count, p.share_pct
                )?;
            }
        }
        if self.models.iter().any(|m| m.attempts > 0) {
            writeln!(f, "\nupstream attempts")?;
            for m in self.models.iter().filter(|m| m.attempts > 0) {
                writeln!(
                    f,
                    "  {}: {} sent, {} failed",
                    m.model, m.attempts, m.failed_attempts
                )?;
            }
        }
        Ok(())
    }
}

/// `300` → `5m`, `5400` → `1h30m`, `1.5` → `1.5s`.
fn human(secs: f64) -> String {
    if secs.fract() != 0.0 || secs < 60.0 {
        return format!("{secs}s");
    }
    let total = secs as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}
