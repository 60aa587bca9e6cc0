//! [`StatusBoard`]: the last hour per model, for a status page.

use std::{
    collections::HashMap,
    fmt,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use brownout_breaker::BreakerHandle;
use brownout_core::classify::OutcomeKind;
use brownout_limit::LimitHandle;
use brownout_queue::QueueHandle;
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    metrics::OTHER,
    record::{AlertFeed, AlertNotice, Answer, Attempt, Exchange, Sink},
};

/// How many one-minute buckets a board keeps: an hour.
pub const WINDOW_MINUTES: usize = 60;

/// How many recent alerts a snapshot lists.
const RECENT_ALERTS: usize = 20;

/// One minute's counts, packed in one word so that recording is one compare-and-swap
/// (no lock shared by every request for a model): which minute since the board
/// started (24 bits), the calls that passed and those that failed (20 bits each,
/// saturating at a million a minute).
#[derive(Default)]
struct Minute(AtomicU64);

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const MINUTE_MASK: u64 = (1 << 24) - 1;

impl Minute {
    fn unpack(word: u64) -> (u64, u32, u32) {
        (
            word >> (2 * COUNT_BITS),
            ((word >> COUNT_BITS) & COUNT_MAX) as u32,
            (word & COUNT_MAX) as u32,
        )
    }

    fn pack(at: u64, ok: u64, failed: u64) -> u64 {
        ((at & MINUTE_MASK) << (2 * COUNT_BITS))
            | (ok.min(COUNT_MAX) << COUNT_BITS)
            | failed.min(COUNT_MAX)
    }

    /// Counts one call in minute `now`, starting the bucket afresh when it held an
    /// older minute.
    fn count(&self, now: u64, ok: bool) {
        let now = now & MINUTE_MASK;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (at, passed, failed) = Minute::unpack(word);
                let (passed, failed) = if at == now {
                    (u64::from(passed), u64::from(failed))
                } else {
                    (0, 0)
                };
                Some(if ok {
                    Minute::pack(now, passed + 1, failed)
                } else {
                    Minute::pack(now, passed, failed + 1)
                })
            });
    }

    /// The minute and its counts.
    fn read(&self) -> (u64, u32, u32) {
        Minute::unpack(self.0.load(Ordering::Relaxed))
    }
}

struct ModelBoard {
    minutes: [Minute; WINDOW_MINUTES],
    /// Answers to requests for this model since the board started, by [`Answer`].
    answers: [AtomicU64; 8],
}

impl Default for ModelBoard {
    fn default() -> Self {
        ModelBoard {
            minutes: std::array::from_fn(|_| Minute::default()),
            answers: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A [`Sink`] keeping, per model, the last hour of upstream calls in one-minute
/// buckets and the answers its requests got, with what the layers' handles say now:
/// what `GET /brownout/status` shows.
///
/// Models outside the configured set are counted together as `other`, so callers
/// cannot grow it. Recording is an atomic add or one compare-and-swap: no lock, no
/// allocation. [`snapshot`](Self::snapshot), [`html`](Self::html) and
/// [`json`](Self::json) read it.
///
/// The availability of a model is the share of its upstream calls (each try, retry and
/// fallback target, from an [`AttemptLayer`](crate::AttemptLayer)) that the upstream
/// answered: calls refused by a brownout layer and the caller's own errors do not count.
///
/// ```
/// use std::sync::Arc;
/// use brownout_observe::{Answer, Exchange, Sink, StatusBoard};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let board = Arc::new(StatusBoard::new(["claude-haiku-4-5"]));
/// let mut exchange = Exchange::new(Arc::from("anthropic.messages"), Answer::Live, 200, Default::default());
/// exchange.requested_model = Some(Arc::from("claude-haiku-4-5"));
/// board.exchange(&exchange);
/// let status = board.snapshot();
/// assert_eq!(status.models[0].model, "claude-haiku-4-5");
/// assert_eq!(status.models[0].answers.live, 1);
/// assert!(board.html().contains("claude-haiku-4-5"));
/// # }
/// ```
pub struct StatusBoard {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    boards: Vec<ModelBoard>,
    started: Instant,
    watched: Mutex<Watched>,
}

/// The handles and the feed a board reads when it is shown.
#[derive(Default)]
struct Watched {
    breakers: Option<BreakerHandle>,
    queue: Option<QueueHandle>,
    limits: Vec<(Arc<str>, LimitHandle)>,
    alerts: Option<Arc<dyn AlertFeed>>,
}

impl fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusBoard")
            .field("models", &self.names)
            .finish_non_exhaustive()
    }
}

impl StatusBoard {
    /// A board for `models` (and `other`), its clock started now.
    pub fn new<I, M>(models: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Arc<str>>,
    {
        let mut names: Vec<Arc<str>> = Vec::new();
        for model in models {
            let model = model.into();
            if &*model != OTHER && !names.contains(&model) {
                names.push(model);
            }
        }
        names.push(Arc::from(OTHER));
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let boards = names.iter().map(|_| ModelBoard::default()).collect();
        StatusBoard {
            names,
            index,
            boards,
            started: Instant::now(),
            watched: Mutex::new(Watched::default()),
        }
    }

    /// Shows each model's breaker state from `handle`. (Takes `&self`: a board is
    /// made before the layers whose handles it reads, since they send it events.)
    pub fn watch_breakers(&self, handle: BreakerHandle) {
        self.watch(|w| w.breakers = Some(handle));
    }

    /// Shows each model's queue depth from `handle`.
    pub fn watch_queue(&self, handle: QueueHandle) {
        self.watch(|w| w.queue = Some(handle));
    }

    /// Shows the headroom of the rate limiter `name` from `handle`.
    pub fn watch_limits(&self, name: impl Into<Arc<str>>, handle: LimitHandle) {
        let name = name.into();
        self.watch(|w| w.limits.push((name, handle)));
    }

    /// Lists the recent alerts of `feed`.
    pub fn watch_alerts(&self, feed: Arc<dyn AlertFeed>) {
        self.watch(|w| w.alerts = Some(feed));
    }

    fn watch(&self, f: impl FnOnce(&mut Watched)) {
        if let Ok(mut watched) = self.watched.lock() {
            f(&mut watched);
        }
    }

    fn of(&self, model: Option<&str>) -> usize {
        let other = self.names.len() - 1;
        match model {
            // A gateway's few models compare for less than a hash of the name costs.
            Some(m) if self.names.len() <= crate::metrics::SCAN_NAMES => {
                self.names.iter().position(|n| **n == *m).unwrap_or(other)
            }
            Some(m) => self.index.get(m).copied().unwrap_or(other),
            None => other,
        }
    }

    fn minute(&self) -> u64 {
        self.started.elapsed().as_secs() / 60
    }

    /// What the board shows now.
    pub fn snapshot(&self) -> StatusSnapshot {
        let now = self.minute();
        let (breakers, queue, limits, alerts) = match self.watched.lock() {
            Ok(w) => (
                w.breakers.clone(),
                w.queue.clone(),
                w.limits.clone(),
                w.alerts.clone(),
            ),
            Err(_) => (None, None, Vec::new(), None),
        };
        let models = self
            .names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let board = &self.boards[i];
                let mut ok = vec![0u32; WINDOW_MINUTES];
                let mut failed = vec![0u32; WINDOW_MINUTES];
                let current = now & MINUTE_MASK;
                for minute in board.minutes.iter() {
                    let (at, passed, fails) = minute.read();
                    // How many minutes ago, on the 24-bit minute clock.
                    let ago = current.wrapping_sub(at) & MINUTE_MASK;
                    if passed + fails == 0 || ago >= WINDOW_MINUTES as u64 {
                        continue;
                    }
                    // Oldest first: the current minute is the last.
                    let slot = WINDOW_MINUTES - 1 - ago as usize;
                    ok[slot] = passed;
                    failed[slot] = fails;
                }
                let calls: u64 = ok.iter().chain(&failed).map(|n| u64::from(*n)).sum();
                let answered: u64 = ok.iter().map(|n| u64::from(*n)).sum();
                let answers =
                    Answers::from(&board.answers.each_ref().map(|a| a.load(Ordering::Relaxed)));
                let other = &**name == OTHER;
                if other && calls == 0 && answers.total() == 0 {
                    return None;
                }
                let breaker = (!other)
                    .then(|| breakers.as_ref()?.state(name))
                    .flatten()
                    .map(|s| BreakerStatus {
                        state: s.state.as_str(),
                        open: matches!(
                            s.state,
                            brownout_breaker::CircuitState::Open
                                | brownout_breaker::CircuitState::ForcedOpen
                        ),
                        open_for_ms: s.open_for.map(|d| d.as_millis() as u64),
                        failures: s.failures,
                        calls: s.calls,
                    });
                let queue_depth = queue.as_ref().filter(|_| !other).map(|q| q.depth(name));
                Some(ModelStatus {
                    model: name.to_string(),
                    availability: (calls > 0).then(|| answered as f64 / calls as f64),
                    calls,
                    ok,
                    failed,
                    answers,
                    breaker,
                    queue_depth,
                })
            })
            .collect();
        let mut limit_rows = Vec::new();
        for (name, handle) in &limits {
            for key in handle.keys() {
                for remaining in &key.remaining {
                    limit_rows.push(LimitStatus {
                        limiter: name.to_string(),
                        key: key.key.to_string(),
                        resource: remaining.resource.as_str(),
                        remaining: remaining.remaining.max(0.0),
                        limit: remaining.limit,
                    });
                }
            }
        }
        let mut notices = Vec::new();
        if let Some(feed) = &alerts {
            feed.recent(RECENT_ALERTS, &mut notices);
        }
        StatusSnapshot {
            generated_at: unix_secs(SystemTime::now()),
            window_minutes: WINDOW_MINUTES,
            models,
            limits: limit_rows,
            alerts: notices.iter().map(AlertStatus::from).collect(),
        }
    }

    /// The snapshot as JSON (`GET /brownout/status.json`).
    pub fn json(&self) -> String {
        serde_json::to_string(&self.snapshot()).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The snapshot as one self-contained HTML page (`GET /brownout/status`): no
    /// external asset, no script; every string is escaped.
    pub fn html(&self) -> String {
        render_html(&self.snapshot())
    }
}

impl Sink for StatusBoard {
    fn exchange(&self, exchange: &Exchange) {
        let i = self.of(exchange.requested_model.as_deref());
        self.boards[i].answers[answer_slot(exchange.answer)].fetch_add(1, Ordering::Relaxed);
    }

    fn attempt(&self, attempt: &Attempt) {
        let ok = match attempt.outcome {
            OutcomeKind::Success => true,
            // Neither says anything of the upstream's health.
            OutcomeKind::ClientError | OutcomeKind::Rejected => return,
            _ => false,
        };
        let now = self.minute();
        let i = self.of(attempt.model.as_deref());
        self.boards[i].minutes[(now % WINDOW_MINUTES as u64) as usize].count(now, ok);
    }
}

fn answer_slot(answer: Answer) -> usize {
    match answer {
        Answer::Live => 0,
        Answer::Fallback => 1,
        Answer::Cached => 2,
        Answer::Stale => 3,
        Answer::Degraded => 4,
        Answer::Shed => 5,
        Answer::Failed => 6,
        Answer::CallerError => 7,
    }
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// What a [`StatusBoard`] shows: the body of `GET /brownout/status.json`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StatusSnapshot {
    /// When it was taken, in seconds since the Unix epoch.
    pub generated_at: u64,
    /// How many minutes the series cover.
    pub window_minutes: usize,
    /// One entry per configured model, and `other` when it saw anything.
    pub models: Vec<ModelStatus>,
    /// The rate limiters' headroom, per key and resource.
    pub limits: Vec<LimitStatus>,
    /// The most recent alerts, newest last.
    pub alerts: Vec<AlertStatus>,
}

/// One model on the board.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ModelStatus {
    /// The model (or `other`).
    pub model: String,
    /// The share of its upstream calls of the last hour that the upstream answered;
    /// `None` without a call.
    pub availability: Option<f64>,
    /// Its upstream calls of the last hour.
    pub calls: u64,
    /// Calls the upstream answered, per minute, oldest first.
    pub ok: Vec<u32>,
    /// Calls that failed (overloaded, rate limited, server error, timeout, connection
    /// failed), per minute, oldest first.
    pub failed: Vec<u32>,
    /// How the requests for it were answered, since the board started.
    pub answers: Answers,
    /// Its circuit breaker, when the breaker layer is on and has seen it.
    pub breaker: Option<BreakerStatus>,
    /// Requests the queue holds for it, when the queue layer is on.
    pub queue_depth: Option<usize>,
}

/// How a model's requests were answered.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[non_exhaustive]
pub struct Answers {
    /// By the model itself.
    pub live: u64,
    /// By a later model of the cascade.
    pub fallback: u64,
    /// From the cache, fresh.
    pub cached: u64,
    /// From the cache, stale.
    pub stale: u64,
    /// With a canned answer.
    pub degraded: u64,
    /// Refused by the queue, a breaker or the limiter.
    pub shed: u64,
    /// The upstream's failure.
    pub failed: u64,
    /// The caller's own error.
    pub caller_error: u64,
}

impl Answers {
    fn from(counts: &[u64; 8]) -> Self {
        Answers {
            live: counts[0],
            fallback: counts[1],
            cached: counts[2],
            stale: counts[3],
            degraded: counts[4],
            shed: counts[5],
            failed: counts[6],
            caller_error: counts[7],
        }
    }

    /// Every answer counted.
    pub fn total(&self) -> u64 {
        self.live
            + self.fallback
            + self.cached
            + self.stale
            + self.degraded
            + self.shed
            + self.failed
            + self.caller_error
    }
}

/// A circuit breaker, now.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BreakerStatus {
    /// `closed`, `open`, `half_open`, `forced_open` or `forced_closed`.
    pub state: &'static str,
    /// Whether it refuses calls now (open or forced open).
    pub open: bool,
    /// How long it stays open, when open.
    pub open_for_ms: Option<u64>,
    /// Failures counted towards its policy.
    pub failures: u32,
    /// Calls in its window.
    pub calls: u32,
}

/// The headroom of one limiter key.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LimitStatus {
    /// The limiter (a provider's name in the gateway).
    pub limiter: String,
    /// The key.
    pub key: String,
    /// `requests`, `input_tokens`, …
    pub resource: &'static str,
    /// What remains this minute.
    pub remaining: f64,
    /// The limit per minute.
    pub limit: u64,
}

/// One alert notice.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AlertStatus {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// The rule.
    pub rule: String,
    /// What it is about.
    pub key: String,
    /// Whether it says the condition cleared.
    pub resolved: bool,
    /// The message.
    pub message: String,
}

impl From<&AlertNotice> for AlertStatus {
    fn from(notice: &AlertNotice) -> Self {
        AlertStatus {
            at: unix_secs(notice.at),
            rule: notice.rule.to_string(),
            key: notice.key.to_string(),
            resolved: notice.resolved,
            message: notice.message.clone(),
        }
    }
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}\
h1{font-size:1.4rem}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{border-bottom:1px solid #ddd;padding:.4rem .6rem;text-align:left;vertical-align:middle}\
th{background:#f0f0f0;font-weight:600}.open{color:#fff;background:#c62828;padding:.1rem .4rem;border-radius:3px}\
.closed{color:#1b5e20}.half_open{color:#e65100}.num{font-variant-numeric:tabular-nums}\
.muted{color:#888}svg{display:block}";

/// One model's availability per minute as bars: green for the calls that passed, red
/// for those that failed, a grey line without a call.
fn chart(model: &ModelStatus) -> String {
    let (w, h) = (4u32, 32u32);
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" role=\"img\" aria-label=\"availability per minute\">",
        w * WINDOW_MINUTES as u32
    );
    for (i, (ok, failed)) in model.ok.iter().zip(&model.failed).enumerate() {
        let calls = ok + failed;
        let x = i as u32 * w;
        if calls == 0 {
            let _ = write!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"2\" fill=\"#ccc\"/>",
                h - 2,
                w - 1
            );
            continue;
        }
        // Full height: the answered share green at the bottom, the failed share red
        // above it.
        let good = ((f64::from(*ok) / f64::from(calls)) * f64::from(h)).round() as u32;
        let _ = write!(
            svg,
            "<g><title>{ok} ok, {failed} failed</title><rect x=\"{x}\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#c62828\"/><rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{good}\" fill=\"#2e7d32\"/></g>",
            w - 1,
            h - good,
            h - good,
            w - 1,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The page of a snapshot.
pub fn render_html(status: &StatusSnapshot) -> String {
    let mut page = String::with_capacity(8 * 1024);
    page.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    page.push_str("<title>brownout status</title><style>");
    page.push_str(STYLE);
    page.push_str("</style></head><body><h1>brownout status</h1>");
    let _ = write!(
        page,
        "<p class=\"muted\">Availability of each model's upstream calls over the last {} minutes (one bar a minute, newest right); answers since the gateway started.</p>",
        status.window_minutes
    );
    page.push_str("<table id=\"models\"><thead><tr><th>model</th><th>availability (1 h)</th><th>last hour</th><th>breaker</th><th>live</th><th>fallback</th><th>cached</th><th>degraded</th><th>shed</th><th>failed</th><th>queue</th></tr></thead><tbody>");
    for model in &status.models {
        let name = escape_html(&model.model);
        let availability = match model.availability {
            Some(a) => format!(
                "{:.1}% <span class=\"muted\">of {}</span>",
                a * 100.0,
                model.calls
            ),
            None => "<span class=\"muted\">no calls</span>".to_owned(),
        };
        let breaker = match &model.breaker {
            Some(b) => format!(
                "<span class=\"breaker {}\" data-state=\"{}\">{}</span>",
                if b.open { "open" } else { b.state },
                b.state,
                b.state.replace('_', " ")
            ),
            None => "<span class=\"muted\">–</span>".to_owned(),
        };
        let queue = model.queue_depth.map_or_else(
            || "<span class=\"muted\">–</span>".to_owned(),
            |d| d.to_string(),
        );
        let a = &model.answers;
        let _ = write!(
            page,
            "<tr class=\"model\" data-model=\"{name}\"><td class=\"name\">{name}</td><td class=\"num\">{availability}</td><td>{}</td><td>{breaker}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{queue}</td></tr>",
            chart(model),
            a.live,
            a.fallback,
            a.cached + a.stale,
            a.degraded,
            a.shed,
            a.failed,
        );
    }
    page.push_str("</tbody></table>");
    if !status.limits.is_empty() {
        page.push_str("<h2>rate limits</h2><table id=\"limits\"><thead><tr><th>limiter</th><th>key</th><th>resource</th><th>remaining</th><th>limit / min</th></tr></thead><tbody>");
        for limit in &status.limits {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{:.0}</td><td class=\"num\">{}</td></tr>",
                escape_html(&limit.limiter),
                escape_html(&limit.key),
                limit.resource,
                limit.remaining,
                limit.limit
            );
        }
        page.push_str("</tbody></table>");
    }
    page.push_str("<h2>recent alerts</h2>");
    if status.alerts.is_empty() {
        page.push_str("<p id=\"alerts\" class=\"muted\">none</p>");
    } else {
        page.push_str("<table id=\"alerts\"><thead><tr><th>at (unix s)</th><th>rule</th><th>key</th><th>state</th><th>message</th></tr></thead><tbody>");
        for alert in status.alerts.iter().rev() {
            let _ = write!(
                page,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                alert.at,
                escape_html(&alert.rule),
                escape_html(&alert.key),
                if alert.resolved { "resolved" } else { "firing" },
                escape_html(&alert.message)
            );
        }
        page.push_str("</tbody></table>");
    }
    let _ = write!(
        page,
        "<p class=\"muted\">generated at {} (unix seconds) · <a href=\"status.json\">status.json</a> · <a href=\"/metrics\">metrics</a></p></body></html>",
        status.generated_at
    );
    page
}
