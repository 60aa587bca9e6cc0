//! What a run came to, as a table and as JSON.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Serialize;

use super::{Record, Runner, Source};
use crate::{script::api_name, SimStats};

/// The result of one run of one client stack. Serializes to JSON with serde; its
/// Display is [`table`] of this one report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The client stack's name.
    pub stack: String,
    /// The model every request asked for.
    pub model: String,
    /// The API requests spoke, as scripts name it (`"anthropic"`, `"openai"`).
    pub endpoint: String,
    /// Whether requests asked for a stream.
    pub stream: bool,
    /// Client requests sent.
    pub requests: u64,
    /// Client requests in flight at most.
    pub concurrency: usize,
    /// The script's seed.
    pub seed: u64,
    /// Client requests answered, by source.
    pub answered: Answered,
    /// Answers from a fallback, per model that served them.
    pub fallback_models: BTreeMap<String, u64>,
    /// Client requests that failed, per error (`"529 overloaded_error"`).
    pub errors: BTreeMap<String, u64>,
    /// What the upstream received.
    pub upstream: Upstream,
    /// The client's view of latency, errors included.
    pub latency: LatencySummary,
    /// The latency the client's layers added: each request's latency less its answer's
    /// own service time (the simulator's `x-sim-latency-ms`; a cached or degraded
    /// answer, an answer of the layers' own or a timeout counts whole). See the
    /// [runner](super)'s docs.
    pub added_latency: LatencySummary,
    /// Answers that are whole: a 2xx JSON answer, or a 2xx stream that ends the
    /// provider's way (`message_stop`; `data: [DONE]`; `response.completed`) with no
    /// error event in it. For a streamed run, the share of streams that ended complete.
    pub complete: Complete,
    /// How long the run took on tokio's clock, in milliseconds.
    pub elapsed_ms: f64,
}

/// Client requests answered, by where the answer came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Answered {
    /// All answered requests (the sum of the others).
    pub total: u64,
    /// Live, from the model requested.
    pub first_choice: u64,
    /// Live, from another model.
    pub fallback: u64,
    /// From a cache (`x-brownout-cache` other than `miss`).
    pub cached: u64,
    /// A degraded answer (`x-brownout-degraded`).
    pub degraded: u64,
    /// A 2xx answer that names no model.
    pub unknown: u64,
}

/// What the upstream received during the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Upstream {
    /// Requests the simulator received.
    pub requests: u64,
    /// Upstream requests per client request: the load amplification.
    pub amplification: f64,
    /// Requests received per model.
    pub by_model: BTreeMap<String, u64>,
    /// The simulator's answers by kind (`"ok"`, `"overloaded"`, …).
    pub by_answer: BTreeMap<String, u64>,
}

/// How many answers were whole, and how soon their first bytes came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Complete {
    /// Client requests whose answer was whole.
    pub answers: u64,
    /// `answers` over the requests sent.
    pub share: f64,
    /// From sending the request to the first byte of its 2xx answer's body.
    pub first_byte: LatencySummary,
}

/// Latency percentiles (nearest rank), in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl LatencySummary {
    fn of(mut latencies: Vec<Duration>) -> Self {
        if latencies.is_empty() {
            return LatencySummary::default();
        }
        latencies.sort();
        let rank = |q: f64| {
            let index = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            ms(latencies[index - 1])
        };
        let total: Duration = latencies.iter().sum();
        LatencySummary {
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: ms(*latencies.last().expect("not empty")),
            mean_ms: ms(total / latencies.len() as u32),
        }
    }
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn difference(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(key, count)| {
            let count = count - before.get(key).copied().unwrap_or(0);
            (count > 0).then(|| (key.clone(), count))
        })
        .collect()
}

pub(super) fn build(
    runner: &Runner,
    stack: &str,
    records: Vec<Record>,
    before: SimStats,
    after: SimStats,
    elapsed: Duration,
) -> Report {
    let mut answered = Answered::default();
    let mut fallback_models = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut latencies = Vec::with_capacity(records.len());
    let mut added = Vec::with_capacity(records.len());
    let mut first_bytes = Vec::with_capacity(records.len());
    let mut complete = 0;
    for record in records {
        latencies.push(record.latency);
        added.push(record.added);
        first_bytes.extend(record.first_byte);
        complete += u64::from(record.complete);
        match record.source {
            Source::FirstChoice => answered.first_choice += 1,
            Source::Fallback(model) => {
                answered.fallback += 1;
                *fallback_models.entry(model).or_insert(0) += 1;
            }
            Source::Cached => answered.cached += 1,
            Source::Degraded => answered.degraded += 1,
            Source::Unknown => answered.unknown += 1,
            Source::Error(error) => *errors.entry(error).or_insert(0) += 1,
        }
    }
    answered.total = answered.first_choice
        + answered.fallback
        + answered.cached
        + answered.degraded
        + answered.unknown;
    let upstream_requests = after.received - before.received;
    Report {
        stack: stack.to_owned(),
        model: runner.model.clone(),
        endpoint: api_name(runner.api).to_owned(),
        stream: runner.stream,
        requests: runner.requests,
        concurrency: runner.concurrency,
        seed: runner.script.seed,
        answered,
        fallback_models,
        errors,
        upstream: Upstream {
            requests: upstream_requests,
            amplification: if runner.requests == 0 {
                0.0
            } else {
                upstream_requests as f64 / runner.requests as f64
            },
            by_model: difference(&after.by_model, &before.by_model),
            by_answer: difference(&after.by_answer, &before.by_answer),
        },
        latency: LatencySummary::of(latencies),
        added_latency: LatencySummary::of(added),
        complete: Complete {
            answers: complete,
            share: if runner.requests == 0 {
                0.0
            } else {
                complete as f64 / runner.requests as f64
            },
            first_byte: LatencySummary::of(first_bytes),
        },
        elapsed_ms: ms(elapsed),
    }
}

impl Report {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&table(std::slice::from_ref(self)))
    }
}

/// Several reports side by side, one column per stack, as a plain-text table.
///
/// ```text
///                          naive          retry-only
/// requests                 600            600
/// answered                 352 (58.7%)    ...
///   first choice           352
/// ...
/// ```
pub fn table(reports: &[Report]) -> String {
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            "0.0%".to_owned()
        } else {
            format!("{:.1}%", 100.0 * part as f64 / whole as f64)
        }
    };
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, cell: &dyn Fn(&Report) -> String| {
        rows.push((label.to_owned(), reports.iter().map(cell).collect()));
    };
    row("", &|r| r.stack.clone());
    row("requests", &|r| r.requests.to_string());
    row("answered", &|r| {
        format!(
            "{} ({})",
            r.answered.total,
            percent(r.answered.total, r.requests)
        )
    });
    row("  first choice", &|r| r.answered.first_choice.to_string());
    row("  fallback", &|r| r.answered.fallback.to_string());
    row("  cached", &|r| r.answered.cached.to_string());
    row("  degraded", &|r| r.answered.degraded.to_string());
    if reports.iter().any(|r| r.answered.unknown > 0) {
        row("  unknown source", &|r| r.answered.unknown.to_string());
    }
    let error_total = |r: &Report| r.errors.values().sum::<u64>();
    row("errors", &|r| {
        format!(
            "{} ({})",
            error_total(r),
            percent(error_total(r), r.requests)
        )
    });
    let mut kinds: Vec<&String> = reports.iter().flat_map(|r| r.errors.keys()).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        row(&format!("  {kind}"), &|r| {
            r.errors.get(kind).copied().unwrap_or(0).to_string()
        });
    }
    row("complete answers", &|r| {
        format!(
            "{} ({})",
            r.complete.answers,
            percent(r.complete.answers, r.requests)
        )
    });
    row("upstream requests", &|r| r.upstream.requests.to_string());
    row("amplification", &|r| {
        format!("{:.2}x", r.upstream.amplification)
    });
    row("latency p50", &|r| human(r.latency.p50_ms));
    row("latency p95", &|r| human(r.latency.p95_ms));
    row("latency p99", &|r| human(r.latency.p99_ms));
    row("latency max", &|r| human(r.latency.max_ms));
    row("added by the layers p50", &|r| {
        human(r.added_latency.p50_ms)
    });
    row("added by the layers p99", &|r| {
        human(r.added_latency.p99_ms)
    });
    if reports.iter().any(|r| r.stream) {
        row("first byte p50", &|r| human(r.complete.first_byte.p50_ms));
        row("first byte p99", &|r| human(r.complete.first_byte.p99_ms));
    }
    row("run time (tokio clock)", &|r| human(r.elapsed_ms));

    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..reports.len())
        .map(|i| {
            rows.iter()
                .map(|(_, c)| c[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (label, cells) in rows {
        let mut line = format!("{label:<label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            line.push_str(&format!("  {cell:>width$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Milliseconds in a unit a reader takes in at a glance.
fn human(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        let secs = (ms / 1000.0).round() as u64;
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let latencies = (1..=100).map(Duration::from_millis).collect();
        let summary = LatencySummary::of(latencies);
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p95_ms, 95.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
        assert_eq!(summary.mean_ms, 50.5);
        assert_eq!(LatencySummary::of(vec![]).max_ms, 0.0);
    }

    #[test]
    fn humans_read_durations() {
        assert_eq!(human(0.25), "250 µs");
        assert_eq!(human(12.4), "12 ms");
        assert_eq!(human(1500.0), "1.50 s");
        assert_eq!(human(601_000.0), "10m01s");
        assert_eq!(human(599_900.0), "10m00s");
    }
}
