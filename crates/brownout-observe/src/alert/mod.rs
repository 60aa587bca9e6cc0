//! Alert rules: a model failing again and again, availability or the degraded share
//! past a threshold over a window, a breaker opening — each sent as a JSON webhook
//! and/or a command, at most once per rule and key per cool-down, with a resolved
//! notice when the condition clears.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use brownout_observe::{
//!     alert::{AlertConfig, AlertRule, Alerts, Condition},
//!     AlertFeed, Answer, Exchange, Sink,
//! };
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rule = AlertRule::new(
//!     "sonnet-availability",
//!     Condition::AvailabilityBelow { percent: 90.0, window: Duration::from_secs(300), min_requests: 10 },
//! )?
//! .cooldown(Duration::from_secs(600));
//! // .webhook("http://alerts.internal/brownout".parse()?) and/or .command(["page-oncall"])
//! let alerts = Alerts::new(AlertConfig::new([rule]))?;
//!
//! for _ in 0..10 {
//!     let mut e = Exchange::new("anthropic.messages".into(), Answer::Failed, 529, Duration::from_millis(30));
//!     e.requested_model = Some("claude-sonnet-4-5".into());
//!     alerts.exchange(&e);
//! }
//! let mut recent = Vec::new();
//! alerts.recent(10, &mut recent);
//! assert_eq!(recent.len(), 1);
//! assert_eq!(&*recent[0].key, "claude-sonnet-4-5");
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! To be told, by a chat webhook or a pager command, when the cascade starts hiding an
//! outage (the preferred model fails, the answers still come from a fallback) or stops
//! hiding it (availability drops). [`Alerts`] is a [`Sink`]: give it the records and
//! events of the stack; it is also the [`AlertFeed`] the status page lists.
//!
//! # The rules
//!
//! Each [`Condition`] is evaluated per key, from the records as they come:
//!
//! - [`ConsecutiveFailures`](Condition::ConsecutiveFailures): upstream calls to one
//!   model (attempt records) that failed in a row; a success resolves it. Callers'
//!   errors and calls a breaker refused are not counted either way.
//! - [`AvailabilityBelow`](Condition::AvailabilityBelow) and
//!   [`DegradedAbove`](Condition::DegradedAbove): over the requests for a model
//!   (exchange records, the callers' own errors left out) in a sliding window (20
//!   buckets of a twentieth of it each), once it holds `min_requests`.
//! - [`BreakerOpen`](Condition::BreakerOpen): the breaker layer's
//!   `circuit_state_changed` event to `open` or `forced_open`, per breaker key;
//!   back to `closed` (or `forced_closed`) resolves it.
//!
//! A key that fires is notified unless the rule sent one for it within its cool-down;
//! a firing still on when the cool-down is over is notified at the next record that
//! finds it on. A notified firing that clears gets one resolved notice. Flapping thus
//! sends at most two notices per rule and key per cool-down. The keys a rule tracks
//! are bounded ([`AlertConfig::max_keys`]): records of further keys are ignored, so a
//! caller naming random models cannot grow the state.
//!
//! # Delivery, and on failure
//!
//! On the request's path a rule only updates counters under its own short lock; a
//! notice is built only when a key fires or clears, and handed to a background task
//! (a bounded channel: when it is full the notice is dropped and logged). The task
//! POSTs the notice's JSON to the rule's webhook (with [`AlertConfig::webhook_timeout`]
//! per try, and [`AlertConfig::retries`] more tries with a doubling backoff after a
//! transport error, a timeout, a 408, a 429 or a 5xx) and runs its command (the JSON on
//! standard input and in `BROWNOUT_ALERT_*` variables, killed after
//! [`AlertConfig::command_timeout`]). A delivery that fails for good is logged at
//! WARN; it never affects a request. The webhook goes through a [`WebhookClient`]:
//! plain HTTP with hyper-util's client by default ([`HttpWebhook`]); any tower
//! service, such as brownout's HTTPS client, with [`ServiceWebhook`].
//!
//! The JSON body:
//!
//! ```json
//! {"rule":"sonnet-availability","key":"claude-sonnet-4-5","state":"firing",
//!  "condition":"availability_below","value":0.0,"threshold":90.0,
//!  "message":"availability of claude-sonnet-4-5 is 0.0% over 5m (10 requests; threshold 90%)",
//!  "at_ms":1764600000000}
//! ```

mod deliver;
mod window;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_core::{
    classify::OutcomeKind,
    error::InvalidConfig,
    event::{Event, Value},
};
use bytes::Bytes;
use http::Uri;
use tokio::{sync::mpsc, time::Instant};

use crate::record::{AlertFeed, AlertNotice, Answer, Attempt, Exchange, Sink};

pub use deliver::{HttpWebhook, ServiceWebhook, WebhookClient};
use window::Window;

/// What a rule watches for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Condition {
    /// This many upstream calls to one model failed in a row.
    ConsecutiveFailures {
        /// At least 1.
        count: u32,
    },
    /// The share of a model's requests that got a usable answer fell below `percent`
    /// over `window`, with at least `min_requests` in it.
    AvailabilityBelow {
        /// Above 0, at most 100.
        percent: f64,
        /// Longer than zero.
        window: Duration,
        /// At least 1.
        min_requests: u64,
    },
    /// A circuit breaker opened.
    BreakerOpen,
    /// The share of a model's requests answered by the degrade layer rose above
    /// `percent` over `window`, with at least `min_requests` in it.
    DegradedAbove {
        /// At least 0, below 100.
        percent: f64,
        /// Longer than zero.
        window: Duration,
        /// At least 1.
        min_requests: u64,
    },
}

impl Condition {
    /// Its name in the notices (`"availability_below"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Condition::ConsecutiveFailures { .. } => "consecutive_failures",
            Condition::AvailabilityBelow { .. } => "availability_below",
            Condition::BreakerOpen => "breaker_open",
            Condition::DegradedAbove { .. } => "degraded_above",
        }
    }

    fn check(&self) -> Result<(), InvalidConfig> {
        let fail = |field, message: &str| Err(InvalidConfig::new("alert", field, message));
        match *self {
            Condition::ConsecutiveFailures { count: 0 } => fail("count", "must be at least 1"),
            Condition::AvailabilityBelow { percent, .. }
                if !(percent > 0.0 && percent <= 100.0) =>
            {
                fail("percent", "must be above 0 and at most 100")
            }
            Condition::DegradedAbove { percent, .. } if !(0.0..100.0).contains(&percent) => {
                fail("percent", "must be at least 0 and below 100")
            }
            Condition::AvailabilityBelow { window, .. }
            | Condition::DegradedAbove { window, .. }
                if window.is_zero() =>
            {
                fail("window", "must be longer than zero")
            }
            Condition::AvailabilityBelow {
                min_requests: 0, ..
            }
            | Condition::DegradedAbove {
                min_requests: 0, ..
            } => fail("min_requests", "must be at least 1"),
            _ => Ok(()),
        }
    }
}

/// One alert rule: a name, a condition, a cool-down, and where its notices go.
///
/// Its `Debug` shows the webhook's scheme and host only: webhook URLs often carry a
/// token in their path or query.
#[derive(Clone)]
pub struct AlertRule {
    name: Arc<str>,
    condition: Condition,
    cooldown: Duration,
    webhook: Option<Uri>,
    command: Option<Arc<[String]>>,
}

impl fmt::Debug for AlertRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let webhook = self.webhook.as_ref().map(|url| {
            format!(
                "{}://{}/…",
                url.scheme_str().unwrap_or("?"),
                url.host().unwrap_or("?")
            )
        });
        f.debug_struct("AlertRule")
            .field("name", &self.name)
            .field("condition", &self.condition)
            .field("cooldown", &self.cooldown)
            .field("webhook", &webhook)
            .field("command", &self.command)
            .finish()
    }
}

impl AlertRule {
    /// A rule named `name` (not empty) on `condition` (checked), with a cool-down of
    /// 10 minutes and no delivery but the [`AlertFeed`].
    ///
    /// A refusal is the layers' one [`InvalidConfig`]: its key is the field at fault
    /// (`"name"`, `"count"`, `"percent"`, `"window"`, `"min_requests"`), and it names
    /// the rule.
    pub fn new(
        name: impl Into<Arc<str>>,
        condition: Condition,
    ) -> Result<AlertRule, InvalidConfig> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(InvalidConfig::new("alert", "name", "a rule needs a name"));
        }
        condition
            .check()
            .map_err(|e| e.in_item("rule", None, &name))?;
        Ok(AlertRule {
            name,
            condition,
            cooldown: Duration::from_secs(600),
            webhook: None,
            command: None,
        })
    }

    /// At most one notice per key within this.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// POSTs each notice's JSON to `url`.
    pub fn webhook(mut self, url: Uri) -> Self {
        self.webhook = Some(url);
        self
    }

    /// Runs `argv` (a program and its arguments, no shell) for each notice. An empty
    /// `argv` is ignored.
    pub fn command<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        self.command = (!argv.is_empty()).then(|| argv.into());
        self
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it watches for.
    pub fn condition(&self) -> &Condition {
        &self.condition
    }
}

/// The rules, and how their notices are delivered.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    rules: Vec<AlertRule>,
    webhook_timeout: Duration,
    retries: u32,
    backoff: Duration,
    command_timeout: Duration,
    feed: usize,
    max_keys: usize,
    queue: usize,
}

impl AlertConfig {
    /// `rules`, with the defaults: webhook timeout 5 s, 3 retries after 500 ms
    /// (doubling), command timeout 10 s, the last 100 notices kept for the feed, 1,024
    /// keys per rule, 1,024 notices waiting for delivery.
    pub fn new(rules: impl IntoIterator<Item = AlertRule>) -> Self {
        AlertConfig {
            rules: rules.into_iter().collect(),
            webhook_timeout: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(500),
            command_timeout: Duration::from_secs(10),
            feed: 100,
            max_keys: 1024,
            queue: 1024,
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// How long one webhook try may take.
    pub fn webhook_timeout(mut self, timeout: Duration) -> Self {
        self.webhook_timeout = timeout;
        self
    }

    /// Tries after the first one, for a webhook that failed in a way worth retrying.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The wait before the first retry; each further one waits twice as long.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// A command still running after this is killed.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Notices kept for [`AlertFeed::recent`].
    pub fn feed(mut self, notices: usize) -> Self {
        self.feed = notices;
        self
    }

    /// Keys (models, breaker keys) tracked per rule at most.
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }
}

/// Alerts need a tokio runtime for their delivery task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRuntime;

impl fmt::Display for NoRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("alerts must be started inside a tokio runtime")
    }
}

impl std::error::Error for NoRuntime {}

/// The alert rules as a [`Sink`] and an [`AlertFeed`]; see the [module docs](self).
///
/// Cheap to clone: clones share the rules' state, the feed and the delivery task.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    rules: Vec<RuleState>,
    feed: Mutex<VecDeque<AlertNotice>>,
    feed_len: usize,
    max_keys: usize,
    origin: Instant,
    tx: mpsc::Sender<deliver::Delivery>,
    /// The key of requests that named no model (`-`), made once.
    no_model: Arc<str>,
}

struct RuleState {
    rule: AlertRule,
    keys: Mutex<HashMap<Arc<str>, KeyState>>,
}

struct KeyState {
    firing: bool,
    notified: bool,
    last_sent: Option<Instant>,
    consecutive: u32,
    window: Option<Window>,
}

impl fmt::Debug for Alerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerts")
            .field(
                "rules",
                &self
                    .inner
                    .rules
                    .iter()
                    .map(|r| r.rule.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a record says about one key of one rule.
struct Reading {
    /// Whether the condition holds now; `None`: the record does not tell.
    on: Option<bool>,
    value: f64,
    /// For the message: the requests in the window, or the failures in a row.
    count: u64,
}

impl Alerts {
    /// Starts the rules of `config` with the plain-HTTP webhook client. Call it inside
    /// a tokio runtime: the delivery task runs there.
    pub fn new(config: AlertConfig) -> Result<Alerts, NoRuntime> {
        Alerts::with_client(config, Arc::new(HttpWebhook::new()))
    }

    /// Starts the rules of `config`, sending webhooks with `client`.
    pub fn with_client(
        config: AlertConfig,
        client: Arc<dyn WebhookClient>,
    ) -> Result<Alerts, NoRuntime> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        runtime.spawn(deliver::run(
            rx,
            client,
            deliver::Settings {
                webhook_timeout: config.webhook_timeout,
                retries: config.retries,
                backoff: config.backoff,
                command_timeout: config.command_timeout,
            },
        ));
        let rules = config
            .rules
            .into_iter()
            .map(|rule| RuleState {
                rule,
                keys: Mutex::new(HashMap::new()),
            })
            .collect();
        Ok(Alerts {
            inner: Arc::new(Inner {
                rules,
                feed: Mutex::new(VecDeque::with_capacity(config.feed.min(1024))),
                feed_len: config.feed,
                max_keys: config.max_keys,
                origin: Instant::now(),
                tx,
                no_model: Arc::from("-"),
            }),
        })
    }

    /// Feeds every rule whose condition `reads` (returning `None` for the others).
    fn feed(
        &self,
        key: &Arc<str>,
        applies: fn(&Condition) -> bool,
        reads: impl Fn(&Condition, &mut KeyState, Instant) -> Option<Reading>,
    ) {
        let now = Instant::now();
        // No lock, no key state for a rule this kind of record says nothing to.
        for state in self
            .inner
            .rules
            .iter()
            .filter(|r| applies(&r.rule.condition))
        {
            let notice = {
                let mut keys = state.keys.lock().unwrap_or_else(|e| e.into_inner());
                let len = keys.len();
                let entry = match keys.get_mut(key) {
                    Some(entry) => entry,
                    None if len >= self.inner.max_keys => continue,
                    None => keys.entry(Arc::clone(key)).or_insert_with(|| KeyState {
                        firing: false,
                        notified: false,
                        last_sent: None,
                        consecutive: 0,
                        window: None,
                    }),
                };
                let Some(reading) = reads(&state.rule.condition, entry, now) else {
                    continue;
                };
                transition(&state.rule, key, entry, &reading, now)
            };
            if let Some(resolved) = notice {
                self.notify(&state.rule, key, resolved);
            }
        }
    }

    fn notify(
        &self,
        rule: &AlertRule,
        key: &Arc<str>,
        (resolved, message, value): (bool, String, f64),
    ) {
        let notice = AlertNotice::new(Arc::clone(&rule.name), Arc::clone(key), resolved, message);
        let json = notice_json(rule, &notice, value);
        {
            let mut feed = self.inner.feed.lock().unwrap_or_else(|e| e.into_inner());
            if self.inner.feed_len > 0 {
                if feed.len() >= self.inner.feed_len {
                    feed.pop_front();
                }
                feed.push_back(notice.clone());
            }
        }
        if resolved {
            tracing::info!(rule = %rule.name, key = %key, "brownout-observe: alert resolved: {}", notice.message);
        } else {
            tracing::warn!(rule = %rule.name, key = %key, "brownout-observe: alert: {}", notice.message);
        }
        if rule.webhook.is_none() && rule.command.is_none() {
            return;
        }
        let delivery = deliver::Delivery {
            rule: Arc::clone(&rule.name),
            key: Arc::clone(key),
            resolved,
            message: notice.message.clone(),
            json,
            webhook: rule.webhook.clone(),
            command: rule.command.clone(),
        };
        if self.inner.tx.try_send(delivery).is_err() {
            tracing::warn!(rule = %rule.name, key = %key, "brownout-observe: alert delivery queue full or stopped: notice not sent");
        }
    }

    fn window<'a>(&self, entry: &'a mut KeyState, window: Duration) -> &'a mut Window {
        entry.window.get_or_insert_with(|| Window::new(window))
    }
}

/// Applies a reading to a key's state; returns the notice to send: (resolved,
/// message, value).
fn transition(
    rule: &AlertRule,
    key: &str,
    state: &mut KeyState,
    reading: &Reading,
    now: Instant,
) -> Option<(bool, String, f64)> {
    match reading.on? {
        true => {
            if !state.firing {
                state.firing = true;
                state.notified = false;
            }
            let cooled = state
                .last_sent
                .is_none_or(|sent| now.saturating_duration_since(sent) >= rule.cooldown);
            if !state.notified && cooled {
                state.notified = true;
                state.last_sent = Some(now);
                return Some((false, message(rule, key, reading, false), reading.value));
            }
            None
        }
        false => {
            if !state.firing {
                return None;
            }
            state.firing = false;
            if !state.notified {
                return None;
            }
            state.notified = false;
            Some((true, message(rule, key, reading, true), reading.value))
        }
    }
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn message(rule: &AlertRule, key: &str, reading: &Reading, resolved: bool) -> String {
    let figures = match &rule.condition {
        Condition::ConsecutiveFailures { count } if !resolved => {
            format!(
                "{} upstream calls failed in a row (threshold {count})",
                reading.count
            )
        }
        Condition::ConsecutiveFailures { .. } => "an upstream call succeeded again".into(),
        Condition::AvailabilityBelow {
            percent, window, ..
        } => format!(
            "availability {:.1}% over {} ({} requests; threshold {percent}%)",
            reading.value,
            human(*window),
            reading.count
        ),
        Condition::DegradedAbove {
            percent, window, ..
        } => format!(
            "degraded share {:.1}% over {} ({} requests; threshold {percent}%)",
            reading.value,
            human(*window),
            reading.count
        ),
        Condition::BreakerOpen if !resolved => "circuit breaker open".into(),
        Condition::BreakerOpen => "circuit breaker closed".into(),
    };
    let state = if resolved { "resolved" } else { "firing" };
    format!("{key}: {figures} [{} {state}]", rule.name)
}

fn notice_json(rule: &AlertRule, notice: &AlertNotice, value: f64) -> Bytes {
    let threshold = match rule.condition {
        Condition::ConsecutiveFailures { count } => Some(f64::from(count)),
        Condition::AvailabilityBelow { percent, .. } | Condition::DegradedAbove { percent, .. } => {
            Some(percent)
        }
        Condition::BreakerOpen => None,
    };
    let body = serde_json::json!({
        "rule": &*notice.rule,
        "key": &*notice.key,
        "state": if notice.resolved { "resolved" } else { "firing" },
        "condition": rule.condition.as_str(),
        "value": value,
        "threshold": threshold,
        "message": &notice.message,
        "at_ms": crate::record::unix_ms(notice.at),
    });
    Bytes::from(body.to_string())
}

impl Sink for Alerts {
    fn exchange(&self, exchange: &Exchange) {
        if exchange.answer == Answer::CallerError {
            return;
        }
        let key = match &exchange.requested_model {
            Some(model) => Arc::clone(model),
            None => Arc::clone(&self.inner.no_model),
        };
        let origin = self.inner.origin;
        let applies = |c: &Condition| {
            matches!(
                c,
                Condition::AvailabilityBelow { .. } | Condition::DegradedAbove { .. }
            )
        };
        self.feed(&key, applies, |condition, entry, now| {
            let (window, min, percent, good, below) = match *condition {
                Condition::AvailabilityBelow {
                    percent,
                    window,
                    min_requests,
                } => (
                    window,
                    min_requests,
                    percent,
                    exchange.answer.is_answered(),
                    true,
                ),
                Condition::DegradedAbove {
                    percent,
                    window,
                    min_requests,
                } => (
                    window,
                    min_requests,
                    percent,
                    exchange.answer == Answer::Degraded,
                    false,
                ),
                _ => return None,
            };
            let w = self.window(entry, window);
            w.add(now.saturating_duration_since(origin), good);
            let (total, hits) = w.sums();
            if total < min {
                return Some(Reading {
                    on: None,
                    value: 0.0,
                    count: total,
                });
            }
            let share = hits as f64 * 100.0 / total as f64;
            Some(Reading {
                on: Some(if below {
                    share < percent
                } else {
                    share > percent
                }),
                value: share,
                count: total,
            })
        });
    }

    fn attempt(&self, attempt: &Attempt) {
        let Some(model) = &attempt.model else { return };
        let outcome = attempt.outcome;
        let applies = |c: &Condition| matches!(c, Condition::ConsecutiveFailures { .. });
        self.feed(model, applies, |condition, entry, _| {
            let Condition::ConsecutiveFailures { count } = *condition else {
                return None;
            };
            if outcome == OutcomeKind::Success {
                let before = entry.consecutive;
                entry.consecutive = 0;
                return Some(Reading {
                    on: Some(false),
                    value: 0.0,
                    count: u64::from(before),
                });
            }
            if !outcome.is_upstream_failure() {
                return None;
            }
            entry.consecutive = entry.consecutive.saturating_add(1);
            Some(Reading {
                on: Some(entry.consecutive >= count),
                value: f64::from(entry.consecutive),
                count: u64::from(entry.consecutive),
            })
        });
    }

    fn event(&self, event: &Event) {
        if event.layer != "breaker" || event.name() != "circuit_state_changed" {
            return;
        }
        // Read through the event's generic fields: this crate names no layer crate.
        let mut key: Option<Arc<str>> = None;
        let mut open = None;
        event.kind().fields(&mut |name, value| match (name, value) {
            ("key", Value::Str(k)) => key = Some(Arc::from(k)),
            ("to", Value::Str("open" | "forced_open")) => open = Some(true),
            ("to", Value::Str("closed" | "forced_closed")) => open = Some(false),
            _ => {}
        });
        let (Some(key), Some(open)) = (key, open) else {
            return;
        };
        let applies = |c: &Condition| matches!(c, Condition::BreakerOpen);
        self.feed(&key, applies, |condition, _, _| {
            matches!(condition, Condition::BreakerOpen).then_some(Reading {
                on: Some(open),
                value: if open { 1.0 } else { 0.0 },
                count: 0,
            })
        });
    }
}

impl AlertFeed for Alerts {
    fn recent(&self, limit: usize, out: &mut Vec<AlertNotice>) {
        let feed = self.inner.feed.lock().unwrap_or_else(|e| e.into_inner());
        let skip = feed.len().saturating_sub(limit);
        out.extend(feed.iter().skip(skip).cloned());
    }
}
