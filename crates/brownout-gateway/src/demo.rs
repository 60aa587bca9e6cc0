//! The outage demo: three client stacks against the same simulated outage, side by
//! side.
//!
//! The upstream is brownout-sim in this process, running a [`Script`] (the shipped
//! outage script by default); the traffic is brownout-sim's scenario [`Runner`]; the
//! clock is tokio's paused clock, so ten simulated minutes take seconds. The stacks:
//! the runner's two baselines (one attempt; six attempts with backoff) and the
//! gateway's own [`Router`] built from [`EXAMPLE_CONFIG`] by the same code as
//! `brownout-gateway serve`, with the simulator in place of the HTTP client.
//!
//! ```
//! use brownout_gateway::demo::Demo;
//!
//! // A short run: 60 requests over the outage script's ten minutes.
//! let report = Demo::new().requests(60).run().unwrap();
//! let [naive, _retry, brownout] = &report.reports[..] else { panic!() };
//! assert!(brownout.answered.total > naive.answered.total);
//! ```

use std::fmt;

use std::sync::Arc;

use brownout::retry::{RetryConfig, RetryLayer};
use brownout_sim::{
    runner::{self, Report},
    Api, Runner, Script, Sim, Stack,
};
use tower::Layer;

use crate::{Config, ConfigError, Router};

/// The example configuration shipped with the crate (`gateway.example.toml`): the
/// demo's pipeline.
pub use crate::config::EXAMPLE_CONFIG;

/// A demo run's settings. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Demo {
    script: Script,
    script_name: String,
    shipped: bool,
    config: Option<(String, String)>,
    requests: Option<u64>,
    concurrency: Option<usize>,
    stream: bool,
}

impl Default for Demo {
    fn default() -> Self {
        Demo::new()
    }
}

impl Demo {
    /// The shipped outage script and the example configuration.
    pub fn new() -> Self {
        Demo {
            script: Script::outage(),
            script_name: "the shipped outage script".into(),
            shipped: true,
            config: None,
            requests: None,
            concurrency: None,
            stream: false,
        }
    }

    /// Another script; `name` says which in the printed text.
    pub fn script(mut self, script: Script, name: impl Into<String>) -> Self {
        self.script = script;
        self.script_name = name.into();
        self.shipped = false;
        self
    }

    /// Another gateway configuration (its text, and a name for the printed text) for
    /// the brownout stack. Its providers' addresses are ignored: the simulator answers.
    pub fn config(mut self, text: impl Into<String>, name: impl Into<String>) -> Self {
        self.config = Some((text.into(), name.into()));
        self
    }

    /// How many requests each stack sends (the script's `[run]` says 600).
    pub fn requests(mut self, requests: u64) -> Self {
        self.requests = Some(requests);
        self
    }

    /// How many requests are in flight at most.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Whether requests ask for streamed answers.
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Runs the three stacks on a runtime with a paused clock of its own.
    pub fn run(&self) -> Result<DemoReport, ConfigError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(|e| ConfigError::new(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(self.run_here())
    }

    /// Runs the three stacks on the current runtime, whose clock should be paused
    /// (else the run takes the script's whole duration).
    pub async fn run_here(&self) -> Result<DemoReport, ConfigError> {
        let (text, config_name) = match &self.config {
            Some((text, name)) => (text.as_str(), name.clone()),
            None => (EXAMPLE_CONFIG, "gateway.example.toml".to_owned()),
        };
        // Keys never matter to the simulator: no environment variable is read.
        let config = Config::from_toml_str_with_env(text, |_| Some("sk-demo".into()))?
            .with_seed(self.script.seed_value());
        let mut runner = Runner::new(self.script.clone()).stream(self.stream);
        if let Some(requests) = self.requests {
            runner = runner.requests(requests);
        }
        if let Some(concurrency) = self.concurrency {
            runner = runner.concurrency(concurrency);
        }
        // The stacks the runner compares come from here: the simulator knows no layer.
        let seed = self.script.seed_value();
        let retry_only = Stack::new("retry-only", move |sim: Sim| {
            RetryLayer::new(RetryConfig::new().max_attempts(6).no_budget().seed(seed)).layer(sim)
        });
        let shared = Arc::new(config.clone());
        let brownout = Stack::new("brownout", move |sim: Sim| {
            Router::new(&shared, sim.clone(), sim)
        });
        let reports = runner
            .compare(&[Stack::naive(), retry_only, brownout])
            .await;
        Ok(DemoReport {
            reports,
            script_name: self.script_name.clone(),
            config_name,
            seed: self.script.seed_value(),
            endpoint: match runner.api_value() {
                Api::OpenAiChat => "OpenAI Chat Completions",
                _ => "Anthropic Messages",
            },
            shipped: self.shipped,
            cascade: cascade_text(&config, runner.api_value()),
            queue: config.queue().is_some(),
        })
    }
}

fn cascade_text(config: &Config, api: Api) -> String {
    let route = match api {
        Api::OpenAiChat => config.chat_completions(),
        _ => config.messages(),
    };
    match route.and_then(|r| r.cascade()) {
        Some(cascade) => cascade
            .targets()
            .iter()
            .map(|t| t.model())
            .collect::<Vec<_>>()
            .join(" → "),
        None => "no cascade".into(),
    }
}

/// What a demo run came to: one report per stack, and what to say about them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DemoReport {
    /// naive, retry-only and brownout, in that order.
    pub reports: Vec<Report>,
    script_name: String,
    config_name: String,
    seed: u64,
    endpoint: &'static str,
    shipped: bool,
    cascade: String,
    queue: bool,
}

impl DemoReport {
    /// The three reports as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.reports).unwrap_or_default()
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = &self.reports[0];
        let brownout = self.reports.last().unwrap_or(first);
        writeln!(
            f,
            "brownout demo: one simulated provider outage, three client stacks"
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Everything below is simulated; nothing reaches a network or a real model."
        )?;
        writeln!(
            f,
            "  upstream  brownout-sim in this process, speaking the {} API, running {}",
            self.endpoint, self.script_name
        )?;
        writeln!(
            f,
            "            (print the shipped one with `cargo run -p brownout-sim -- script`)"
        )?;
        let spread = if self.shipped {
            ", spread over ten minutes; the caller gives up after 60 s"
        } else {
            ", as the script's [run] section says"
        };
        writeln!(
            f,
            "  traffic   {} requests for {}, {} at a time{spread}",
            first.requests, first.model, first.concurrency
        )?;
        writeln!(
            f,
            "  clock     tokio's paused clock: simulated minutes pass in seconds, and every"
        )?;
        writeln!(f, "            latency below is simulated time")?;
        writeln!(
            f,
            "  fairness  each stack gets a fresh simulator with the same seed ({}): the same outage",
            self.seed
        )?;
        writeln!(f)?;
        writeln!(f, "  naive       one attempt per request")?;
        writeln!(
            f,
            "  retry-only  up to 6 attempts, exponential backoff with full jitter, no budget"
        )?;
        writeln!(
            f,
            "  brownout    the gateway's pipeline from {}, built by the code that serves it:",
            self.config_name
        )?;
        writeln!(
            f,
            "              degrade > cache > fallback ({}) > breaker > {}retry",
            self.cascade,
            if self.queue { "queue > " } else { "" }
        )?;
        writeln!(f)?;
        f.write_str(&runner::table(&self.reports))?;
        writeln!(f)?;
        writeln!(f, "How to read it:")?;
        writeln!(f, "  fallback       answered live by a lighter model; the response says which (x-brownout-model)")?;
        if self.queue {
            writeln!(f, "  queue          a request for a model in a short overload waits for it (up to prefer_wait) instead")?;
            writeln!(f, "                 of moving on; compare --script crates/brownout-sim/scripts/bursts.toml")?;
        }
        if brownout.answered.cached == 0 {
            writeln!(
                f,
                "  cached         a stored answer to the same request; every request here is different, so none"
            )?;
        } else {
            writeln!(f, "  cached         a stored answer to the same request, marked x-brownout-cache: stale")?;
        }
        writeln!(
            f,
            "  degraded       a canned answer, marked x-brownout-degraded, given only when every live path failed"
        )?;
        writeln!(f, "  amplification  upstream requests per client request: the load the stack adds to the outage")?;
        let broken_streams = self
            .reports
            .iter()
            .any(|r| r.errors.keys().any(|e| e.contains(" stream ")));
        if broken_streams {
            writeln!(
                f,
                "  200 stream …   a stream that broke after its first events reached the caller: no layer can take it back"
            )?;
        }
        Ok(())
    }
}
