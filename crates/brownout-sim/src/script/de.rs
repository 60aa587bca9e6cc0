//! Scripts read from TOML, and the error that says where a file went wrong.
//!
//! The file is deserialized into private mirror types that check each value as it is
//! read (so toml knows the value's position), and `serde_path_to_error` records which
//! key was being read when something failed: together they give the key and the line.

use std::{
    collections::BTreeMap,
    fmt,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{de, Deserialize, Deserializer};

use brownout_core::provider::Api;

use super::{Fault, FaultKind, Latency, ModelScript, RunPlan, Script};

/// A script that could not be read or built: what is wrong and, for a file, where.
///
/// Its Display reads like `outage.toml: line 12, column 8, key
/// models.claude-sonnet-4-5.faults[0].rate: rate must be between 0 and 1, got 1.5`,
/// followed by the offending line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError(Box<Details>);

// Boxed: errors are rare, and `Result<Script, ScriptError>` stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Details {
    message: String,
    key: Option<String>,
    line: Option<usize>,
    column: Option<usize>,
    source_line: Option<String>,
    file: Option<PathBuf>,
}

impl ScriptError {
    pub(crate) fn invalid(message: String) -> Self {
        ScriptError(Box::new(Details {
            message,
            key: None,
            line: None,
            column: None,
            source_line: None,
            file: None,
        }))
    }

    pub(super) fn io(path: &Path, error: std::io::Error) -> Self {
        ScriptError::invalid(format!("cannot read the script: {error}")).in_file(path)
    }

    pub(super) fn in_file(mut self, path: &Path) -> Self {
        self.0.file = Some(path.to_owned());
        self
    }

    fn located(message: String, input: &str, span: Option<std::ops::Range<usize>>) -> Self {
        let mut error = ScriptError::invalid(message);
        if let Some(span) = span {
            let start = span.start.min(input.len());
            let line_start = input[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = input[start..].find('\n').map_or(input.len(), |i| start + i);
            error.0.line = Some(input[..start].matches('\n').count() + 1);
            error.0.column = Some(input[line_start..start].chars().count() + 1);
            error.0.source_line = Some(input[line_start..line_end].trim_end().to_owned());
        }
        error
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The key being read, as a path (`models.claude-sonnet-4-5.faults[0].rate`), when
    /// the problem is in a value rather than in the TOML syntax.
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// The line of the problem, from 1.
    pub fn line(&self) -> Option<usize> {
        self.0.line
    }

    /// The column of the problem, from 1.
    pub fn column(&self) -> Option<usize> {
        self.0.column
    }

    /// The file, for [`Script::from_file`].
    pub fn file(&self) -> Option<&Path> {
        self.0.file.as_deref()
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let details = &*self.0;
        if let Some(file) = &details.file {
            write!(f, "{}: ", file.display())?;
        }
        if let (Some(line), Some(column)) = (details.line, details.column) {
            write!(f, "line {line}, column {column}, ")?;
        }
        if let Some(key) = &details.key {
            write!(f, "key {key}: ")?;
        }
        f.write_str(&details.message)?;
        if let (Some(line), Some(text)) = (details.line, &details.source_line) {
            write!(f, "\n  {line} | {text}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScriptError {}

pub(super) fn parse(input: &str) -> Result<Script, ScriptError> {
    let deserializer = toml::de::Deserializer::parse(input)
        .map_err(|e| ScriptError::located(e.message().to_owned(), input, e.span()))?;
    let raw: RawScript = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let mut error = ScriptError::located(inner.message().to_owned(), input, inner.span());
        error.0.key = (key != ".").then_some(key);
        error
    })?;
    Ok(raw.into_script())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    #[serde(default)]
    seed: u64,
    run: Option<RawRun>,
    default: Option<RawModel>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
}

impl RawScript {
    fn into_script(self) -> Script {
        let plan = self.run.map_or_else(RunPlan::default, |run| RunPlan {
            model: run.model,
            api: run.endpoint.map(|e| e.0),
            requests: run.requests,
            concurrency: run.concurrency.map(NonZeroUsize::get),
            over: run.over.map(|d| d.0),
            timeout: run.timeout.map(|d| d.0),
            stream: run.stream,
        });
        Script {
            seed: self.seed,
            default: self
                .default
                .map_or_else(ModelScript::new, RawModel::into_model),
            models: self
                .models
                .into_iter()
                .map(|(name, model)| (name, model.into_model()))
                .collect(),
            plan,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    model: Option<String>,
    endpoint: Option<EndpointDe>,
    requests: Option<u64>,
    concurrency: Option<NonZeroUsize>,
    over: Option<Dur>,
    timeout: Option<Dur>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    latency: Option<LatencyDe>,
    stream_interval: Option<Dur>,
    output_tokens: Option<u32>,
    requests_per_minute: Option<u32>,
    enforce: Option<RawEnforced>,
    #[serde(default)]
    faults: Vec<FaultDe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnforced {
    requests_per_minute: Option<u64>,
    input_tokens_per_minute: Option<u64>,
    output_tokens_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

impl RawModel {
    fn into_model(self) -> ModelScript {
        let mut model = ModelScript::new();
        if let Some(latency) = self.latency {
            model = model.latency(latency.0);
        }
        if let Some(interval) = self.stream_interval {
            model = model.stream_interval(interval.0);
        }
        if let Some(tokens) = self.output_tokens {
            model = model.output_tokens(tokens);
        }
        if let Some(limit) = self.requests_per_minute {
            model = model.requests_per_minute(limit);
        }
        if let Some(e) = self.enforce {
            model = model.enforce(super::Enforced {
                per_minute: [
                    e.requests_per_minute,
                    e.input_tokens_per_minute,
                    e.output_tokens_per_minute,
                    e.tokens_per_minute,
                ],
            });
        }
        model.faults = self.faults.into_iter().map(|f| f.0).collect();
        model
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: KindDe,
    rate: Option<Rate>,
    from: Option<Dur>,
    until: Option<Dur>,
    latency: Option<LatencyDe>,
    retry_after: Option<Dur>,
    after_deltas: Option<u32>,
}

/// A fault, checked as a whole (its window, and which keys go with its kind).
#[derive(Deserialize)]
#[serde(try_from = "RawFault")]
struct FaultDe(Fault);

impl TryFrom<RawFault> for FaultDe {
    type Error = String;

    fn try_from(raw: RawFault) -> Result<Self, String> {
        let kind = raw.kind.0;
        let mut fault = Fault::new(kind);
        if let Some(rate) = raw.rate {
            fault = fault.rate(rate.0);
        }
        if let Some(from) = raw.from {
            fault = fault.from(from.0);
        }
        if let Some(until) = raw.until {
            if until.0 <= fault.from {
                return Err(format!(
                    "until ({:?}) must be later than from ({:?})",
                    until.0, fault.from
                ));
            }
            fault = fault.until(until.0);
        }
        if let Some(latency) = raw.latency {
            if kind == FaultKind::Hang {
                return Err("latency does not apply to a hang, which never answers".into());
            }
            if kind.is_stream() {
                return Err(format!("latency does not apply to a {kind}, which uses the model's latency and stream_interval"));
            }
            fault = fault.latency(latency.0);
        }
        if let Some(retry_after) = raw.retry_after {
            if !kind.is_http_error() {
                return Err(format!(
                    "retry_after applies only to faults that answer with an HTTP error, not to {kind}"
                ));
            }
            fault = fault.retry_after(retry_after.0);
        }
        if let Some(after) = raw.after_deltas {
            if !kind.is_stream() {
                return Err(format!(
                    "after_deltas applies only to stream_error, stream_stall and stream_cut, not to {kind}"
                ));
            }
            fault.after_deltas = after;
        }
        Ok(FaultDe(fault))
    }
}

struct KindDe(FaultKind);

impl<'de> Deserialize<'de> for KindDe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const KINDS: &[&str] = &[
            "overloaded",
            "unavailable",
            "server_error",
            "bad_gateway",
            "rate_limited",
            "quota_exceeded",
            "bad_request",
            "unauthorized",
            "hang",
            "reset",
            "stream_error",
            "stream_stall",
            "stream_cut",
        ];
        let name = String::deserialize(deserializer)?;
        let kind = match name.as_str() {
            "overloaded" => FaultKind::Overloaded,
            "unavailable" => FaultKind::Unavailable,
            "server_error" => FaultKind::ServerError,
            "bad_gateway" => FaultKind::BadGateway,
            "rate_limited" => FaultKind::RateLimited,
            "quota_exceeded" => FaultKind::QuotaExceeded,
            "bad_request" => FaultKind::BadRequest,
            "unauthorized" => FaultKind::Unauthorized,
            "hang" => FaultKind::Hang,
            "reset" => FaultKind::Reset,
            "stream_error" => FaultKind::StreamError,
            "stream_stall" => FaultKind::StreamStall,
            "stream_cut" => FaultKind::StreamCut,
            other => return Err(de::Error::unknown_variant(other, KINDS)),
        };
        Ok(KindDe(kind))
    }
}

/// The API requests speak, by the names scripts have always used: `"anthropic"`
/// (Messages) and `"openai"` (Chat Completions).
struct EndpointDe(Api);

impl<'de> Deserialize<'de> for EndpointDe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "anthropic" => Ok(EndpointDe(Api::AnthropicMessages)),
            "openai" => Ok(EndpointDe(Api::OpenAiChat)),
            other => Err(de::Error::unknown_variant(other, &["anthropic", "openai"])),
        }
    }
}

/// A duration written as a string: `"800ms"`, `"2s"`, `"1.5s"`, `"1m30s"`, `"10m"`.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"800ms\", \"2s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Dur, E> {
                brownout_core::classify::parse_go_duration(value)
                    .map(Dur)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(value), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A probability.
struct Rate(f64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rate = f64::deserialize(deserializer)?;
        if (0.0..=1.0).contains(&rate) {
            Ok(Rate(rate))
        } else {
            Err(de::Error::custom(format!(
                "rate must be between 0 and 1, got {rate}"
            )))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawLatency {
    Fixed(Dur),
    Uniform {
        min: Dur,
        max: Dur,
    },
    Lognormal {
        median: Dur,
        sigma: f64,
        max: Option<Dur>,
    },
    Pareto {
        scale: Dur,
        shape: f64,
        max: Option<Dur>,
    },
}

/// A latency table, `{ fixed = "800ms" }`, `{ uniform = { min = "100ms", max = "2s" } }`,
/// `{ lognormal = { median = "900ms", sigma = 0.5, max = "30s" } }` or
/// `{ pareto = { scale = "300ms", shape = 1.5, max = "60s" } }`, checked as a whole.
#[derive(Deserialize)]
#[serde(try_from = "RawLatency")]
struct LatencyDe(Latency);

impl TryFrom<RawLatency> for LatencyDe {
    type Error = String;

    fn try_from(raw: RawLatency) -> Result<Self, String> {
        let capped = |latency: Result<Latency, ScriptError>, max: Option<Dur>| {
            latency
                .map(|l| match max {
                    Some(max) => l.max(max.0),
                    None => l,
                })
                .map_err(|e| e.0.message)
        };
        let latency = match raw {
            RawLatency::Fixed(delay) => Ok(Latency::fixed(delay.0)),
            RawLatency::Uniform { min, max } => {
                Latency::uniform(min.0, max.0).map_err(|e| e.0.message)
            }
            RawLatency::Lognormal { median, sigma, max } => {
                capped(Latency::lognormal(median.0, sigma), max)
            }
            RawLatency::Pareto { scale, shape, max } => {
                capped(Latency::pareto(scale.0, shape), max)
            }
        };
        latency.map(LatencyDe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key() {
        let script = Script::from_toml_str(
            r#"
seed = 42

[run]
model = "m"
endpoint = "openai"
requests = 10
concurrency = 2
over = "1m"
timeout = "5s"
stream = true

[default]
latency = { fixed = "10ms" }

[models.m]
latency = { uniform = { min = "10ms", max = "20ms" } }
stream_interval = "5ms"
output_tokens = 3
requests_per_minute = 50

[[models.m.faults]]
kind = "rate_limited"
rate = 0.25
from = "10s"
until = "1m30s"
retry_after = "2s"
latency = { pareto = { scale = "1ms", shape = 2.0, max = "1s" } }

[[models.m.faults]]
kind = "stream_error"
after_deltas = 1

[models."other.model"]
latency = { lognormal = { median = "1s", sigma = 0.3 } }
"#,
        )
        .unwrap();
        assert_eq!(script.seed, 42);
        assert_eq!(script.plan.api, Some(Api::OpenAiChat));
        assert_eq!(script.plan.concurrency, Some(2));
        assert_eq!(script.plan.over, Some(Duration::from_secs(60)));
        assert_eq!(
            script.default.latency,
            Latency::fixed(Duration::from_millis(10))
        );
        let m = script.model_script("m");
        assert_eq!(m.output_tokens, 3);
        assert_eq!(m.requests_per_minute, 50);
        assert_eq!(m.stream_interval, Duration::from_millis(5));
        assert_eq!(
            m.faults[0],
            Fault::rate_limited(Duration::from_secs(2))
                .rate(0.25)
                .between(Duration::from_secs(10), Duration::from_secs(90))
                .latency(
                    Latency::pareto(Duration::from_millis(1), 2.0)
                        .unwrap()
                        .max(Duration::from_secs(1))
                )
        );
        assert_eq!(m.faults[1], Fault::stream_error(1));
        assert!(script.model_names().any(|n| n == "other.model"));
    }

    fn error(toml: &str) -> ScriptError {
        Script::from_toml_str(toml).expect_err("the script is invalid")
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e =
            error("seed = 1\n[models.a]\n[[models.a.faults]]\nkind = \"overloaded\"\nrate = 1.5\n");
        assert_eq!(e.key(), Some("models.a.faults[0].rate"), "{e}");
        assert_eq!(e.line(), Some(5), "{e}");
        assert!(e.message().contains("between 0 and 1"), "{e}");
        assert!(e.to_string().contains("5 | rate = 1.5"), "{e}");

        let e = error("[models.a]\noutput_tokens = 3\nlatncy = { fixed = \"1s\" }\n");
        assert!(e.message().contains("unknown field `latncy`"), "{e}");
        assert_eq!(e.line(), Some(3), "{e}");

        let e = error("[models.a]\nlatency = { fixed = \"soon\" }\n");
        assert_eq!(e.key(), Some("models.a.latency.fixed"), "{e}");
        assert_eq!(e.line(), Some(2), "{e}");
        assert!(e.message().contains("\"800ms\""), "{e}");

        let e = error("[models.a]\nlatency = { gamma = \"1s\" }\n");
        assert!(e.message().contains("unknown variant `gamma`"), "{e}");

        let e = error("\n\n[[models.a.faults]]\nkind = \"meltdown\"\n");
        assert_eq!(e.key(), Some("models.a.faults[0].kind"), "{e}");
        assert_eq!(e.line(), Some(4), "{e}");
        assert!(e.message().contains("unknown variant `meltdown`"), "{e}");

        let e = error("[run]\nconcurrency = 0\n");
        assert_eq!(e.key(), Some("run.concurrency"), "{e}");
        assert_eq!(e.line(), Some(2), "{e}");

        let e = error("seed = \"seven\"\n");
        assert_eq!(e.key(), Some("seed"), "{e}");
        assert_eq!(e.line(), Some(1), "{e}");

        let e = error("[[models.a.faults]]\nrate = 0.5\n");
        assert!(e.message().contains("missing field `kind`"), "{e}");
        assert_eq!(e.line(), Some(1), "{e}");
    }

    #[test]
    fn whole_tables_are_checked() {
        let e =
            error("[[models.a.faults]]\nkind = \"overloaded\"\nfrom = \"2m\"\nuntil = \"1m\"\n");
        assert!(e.message().contains("must be later than from"), "{e}");
        assert_eq!(e.key(), Some("models.a.faults[0]"), "{e}");
        assert_eq!(e.line(), Some(1), "{e}");

        let e = error("[models.b]\n[[models.b.faults]]\nkind = \"hang\"\nretry_after = \"1s\"\n");
        assert!(e.message().contains("retry_after applies only"), "{e}");
        assert_eq!(e.line(), Some(2), "{e}");

        let e = error("[models.b]\nlatency = { uniform = { min = \"2s\", max = \"1s\" } }\n");
        assert!(e.message().contains("greater than max"), "{e}");
        assert_eq!(e.key(), Some("models.b.latency"), "{e}");
        assert_eq!(e.line(), Some(2), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_line_and_no_key() {
        let e = error("seed = 1\n[models.a\n");
        assert_eq!(e.key(), None, "{e}");
        assert_eq!(e.line(), Some(2), "{e}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let e = Script::from_file("/nonexistent/brownout.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/brownout.toml: "),
            "{e}"
        );
        assert!(e.message().contains("cannot read"), "{e}");
    }
}
