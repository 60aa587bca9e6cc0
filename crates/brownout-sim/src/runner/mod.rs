//! The outage scenario runner: N requests at concurrency C through client stacks,
//! against a script, and what came of them.
//!
//! The runner measures stacks it is given: a [`Stack`] is a name and how to build the
//! client over a simulator. [`Runner::compare`] runs several side by side, each over a
//! fresh [`Sim`] made from the same script, so that each meets the same outage.
//! [`Stack::naive`] (one attempt per request, straight to the upstream) is the one
//! baseline the simulator ships, since it depends on no layer: a retry-only stack, or
//! a brownout pipeline, is built by the caller (`brownout-gateway demo` compares the
//! naive client, a retry-only one and the gateway's pipeline).
//!
//! [`Runner::run`] makes a fresh [`Sim`] from the script, builds the client stack on
//! top of it with the closure it is given, and sends the requests: `concurrency`
//! workers each send the next request as soon as the previous one is done, and when
//! the run is spread over a duration ([`Runner::spread_over`], the script's
//! `[run] over`), request `i` of `n` does not start before `i/n` of it has passed, so
//! a ten-minute script is crossed from end to end. Each request's body is read to its
//! end; the caller waits at most [`Runner::timeout`] for all of it.
//!
//! Everything runs on tokio's clock: in a runtime with paused time (a
//! `#[tokio::test(start_paused = true)]`, or `brownout-sim run` without
//! `--real-time`) a ten-minute outage runs in well under a second, with the same
//! report as in real time.
//!
//! # What the report counts
//!
//! - **Answered, by source.** The simulator depends on no layer, so it reads what the
//!   layers write in the headers (the gateway writes them; a library stack writes
//!   them when configured to). A 2xx answer is *degraded* when it has an
//!   `x-brownout-degraded` header, *cached* when it has an `x-brownout-cache` header
//!   other than `miss`, and otherwise *first choice* or *fallback*, depending on
//!   whether the model that served it (the `x-brownout-model` header, else the body's
//!   `model`) is the one requested. A
//!   stream that ends in an error event is an error, whatever its status.
//! - **Errors, by what they were**: `529 overloaded_error`, `429 rate_limit_error`,
//!   `timeout: …`, `connection_failed: …`, `200 stream overloaded_error`.
//! - **Upstream requests** counted by the simulator, and the amplification: upstream
//!   requests per client request.
//! - **Latency** of the client's view (p50, p95, p99, max), from sending the request
//!   to the end of its body, errors included.
//! - **Added latency**: the same, less the answer's own service time, which the
//!   simulator sends in its [`LATENCY_HEADER`] (`x-sim-latency-ms`) — what the
//!   client's layers added: waiting in a queue, failed attempts, backoffs, the
//!   cascade's earlier models. An answer without that header (the layers' own: a
//!   degraded answer, a queue's shed, a gateway error; or a timeout) counts its whole
//!   latency, and so does a cached answer (`x-brownout-cache` other than `miss`),
//!   whatever header it kept: the header a cache stored is the service time of the
//!   upstream answer it once was, not of this one. Clamped at zero. Over a network
//!   ([`SimServer`](crate::SimServer)) the transfer counts as added.
//! - **Complete answers**: a 2xx JSON answer, or a 2xx stream that ends the
//!   provider's way (`message_stop`, `data: [DONE]`, `response.completed`) with no
//!   error event anywhere in it — what a caller of a streamed request can use. A
//!   stream cut, stalled (the caller's timeout) or ended by an error event is not;
//!   nor is one that ends without its last event. With the time to the first byte
//!   of each 2xx answer's body.

mod report;
mod stack;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use brownout_core::{
    classify::{Classify, DefaultClassifier, Observed},
    provider::Api,
    BoxError,
};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::{task::JoinSet, time::Instant};
use tower::{Service, ServiceExt};

pub use self::report::{table, Answered, Complete, LatencySummary, Report, Upstream};
pub use self::stack::{Client, Stack};

use crate::{script::api_path, Script, Sim, LATENCY_HEADER};

/// The largest response body the runner reads; longer ones count as errors.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// Drives a script through client stacks and reports what the caller saw.
///
/// ```
/// use std::time::Duration;
/// use brownout_sim::{runner::Stack, Fault, ModelScript, Runner, Script, Sim};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let script = Script::new().seed(1).model(
///     "claude-sonnet-4-5",
///     ModelScript::new().fault(Fault::overloaded().until(Duration::from_secs(10))),
/// );
/// let runner = Runner::new(script)
///     .model("claude-sonnet-4-5")
///     .requests(20)
///     .concurrency(2)
///     .spread_over(Duration::from_secs(20));
///
/// // A stack of your own: here, every request sent twice when the first answer is an
/// // error (a layer such as brownout-retry would go here).
/// let twice = Stack::new("twice", |sim: Sim| {
///     tower::service_fn(move |request: http::Request<http_body_util::Full<bytes::Bytes>>| {
///         let sim = sim.clone();
///         async move {
///             let (parts, body) = request.into_parts();
///             let first = http::Request::from_parts(parts.clone(), body.clone());
///             let response = sim.clone().oneshot(first).await?;
///             if response.status().is_success() {
///                 return Ok(response);
///             }
///             sim.oneshot(http::Request::from_parts(parts, body)).await
///         }
///     })
/// });
/// let reports = runner.compare(&[Stack::naive(), twice]).await;
/// let [naive, twice] = &reports[..] else { unreachable!() };
/// // The first half of the requests arrive during the outage.
/// assert_eq!(naive.stack, "naive");
/// assert_eq!(naive.answered.first_choice, 10);
/// assert_eq!(naive.errors["529 overloaded_error"], 10);
/// assert_eq!(naive.upstream.requests, 20);
/// assert_eq!(twice.upstream.requests, 30);
/// println!("{}", brownout_sim::runner::table(&reports));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Runner {
    script: Script,
    model: String,
    api: Api,
    requests: u64,
    concurrency: usize,
    over: Option<Duration>,
    timeout: Duration,
    stream: bool,
    base_url: String,
    max_tokens: u32,
}

impl Runner {
    /// A runner for `script`, with the script's `[run]` settings where it has them,
    /// else: the script's first model on the Anthropic Messages API, 100 requests, 10
    /// at a time, not spread, a 60 s timeout, no streaming.
    pub fn new(script: Script) -> Self {
        let plan = script.plan.clone();
        let model = plan
            .model
            .or_else(|| script.model_names().next().map(str::to_owned))
            .unwrap_or_else(|| "claude-sonnet-4-5".to_owned());
        Runner {
            model,
            api: plan.api.unwrap_or(Api::AnthropicMessages),
            requests: plan.requests.unwrap_or(100),
            concurrency: plan.concurrency.unwrap_or(10),
            over: plan.over,
            timeout: plan.timeout.unwrap_or(Duration::from_secs(60)),
            stream: plan.stream.unwrap_or(false),
            base_url: "http://127.0.0.1".to_owned(),
            max_tokens: 1024,
            script,
        }
    }

    /// The model every request asks for (the first choice).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// The API the requests speak: [`Api::AnthropicMessages`] (the default) or
    /// [`Api::OpenAiChat`], the two the simulator serves (a script's
    /// `endpoint = "anthropic"` or `"openai"`). Requests for another API go to its path
    /// (`/v1/responses`, or `/`) and are answered 404 by the simulator, as by an
    /// upstream without that API.
    pub fn api(mut self, api: Api) -> Self {
        self.api = api;
        self
    }

    /// How many requests to send.
    pub fn requests(mut self, requests: u64) -> Self {
        self.requests = requests;
        self
    }

    /// How many requests are in flight at most (0 is taken as 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Spreads the request starts evenly over `duration`.
    pub fn spread_over(mut self, duration: Duration) -> Self {
        self.over = Some(duration);
        self
    }

    /// Sends each request as soon as a worker is free.
    pub fn no_spread(mut self) -> Self {
        self.over = None;
        self
    }

    /// How long the caller waits for a whole answer before it gives up (a
    /// `timeout: …` error in the report).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether requests ask for a streamed answer.
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// The scheme and authority of request URIs, for client stacks that send them
    /// over the network (`http://127.0.0.1:8080`). The in-process simulator ignores
    /// it.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into().trim_end_matches('/').to_owned();
        self
    }

    /// The script.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The API the requests speak.
    pub fn api_value(&self) -> Api {
        self.api
    }

    /// The `i`-th request the runner sends: a short chat request for the runner's
    /// model in the API's shape, with the provider's usual headers.
    pub fn request(&self, i: u64) -> Request<Full<Bytes>> {
        let prompt = format!("Request {i}: summarise the incident report in one line.");
        let body = match self.api {
            Api::OpenAiChat => serde_json::json!({
                "model": self.model,
                "max_completion_tokens": self.max_tokens,
                "stream": self.stream,
                "messages": [{"role": "user", "content": prompt}],
            }),
            Api::OpenAiResponses => serde_json::json!({
                "model": self.model,
                "max_output_tokens": self.max_tokens,
                "stream": self.stream,
                "input": prompt,
            }),
            _ => serde_json::json!({
                "model": self.model,
                "max_tokens": self.max_tokens,
                "stream": self.stream,
                "messages": [{"role": "user", "content": prompt}],
            }),
        };
        let builder = Request::post(format!("{}{}", self.base_url, api_path(self.api))).header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let builder = if self.api.is_openai() {
            builder.header(header::AUTHORIZATION, "Bearer sk-sim")
        } else {
            builder
                .header("x-api-key", "sk-ant-sim")
                .header("anthropic-version", "2023-06-01")
        };
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("the runner's requests are valid")
    }

    /// Runs each of `stacks` in turn, each over a fresh [`Sim`] made from the script
    /// (so each meets the same outage), and reports on each, in order.
    pub async fn compare(&self, stacks: &[Stack]) -> Vec<Report> {
        let mut reports = Vec::with_capacity(stacks.len());
        for stack in stacks {
            reports.push(self.run_stack(stack).await);
        }
        reports
    }

    /// Runs one stack over a fresh [`Sim`] made from the script.
    pub async fn run_stack(&self, stack: &Stack) -> Report {
        self.run(stack.name(), |sim| stack.build(sim)).await
    }

    /// Makes a fresh [`Sim`] from the script, builds the client stack over it with
    /// `make_client`, and runs the scenario through it. `stack` names the stack in
    /// the report.
    pub async fn run<F, S, B>(&self, stack: &str, make_client: F) -> Report
    where
        F: FnOnce(Sim) -> S,
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let sim = Sim::new(self.script.clone());
        let client = make_client(sim.clone());
        self.run_with(stack, &sim, client).await
    }

    /// Runs the scenario through `client`, counting upstream requests on `sim`: for a
    /// client that reaches the simulator some other way, such as over a
    /// [`SimServer`](crate::SimServer) (set [`base_url`](Self::base_url) then).
    pub async fn run_with<S, B>(&self, stack: &str, sim: &Sim, client: S) -> Report
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let before = sim.stats();
        let start = Instant::now();
        let shared = Arc::new((self.clone(), AtomicU64::new(0)));
        let mut workers = JoinSet::new();
        for _ in 0..self.concurrency.min(self.requests.max(1) as usize) {
            workers.spawn(worker(shared.clone(), client.clone(), start));
        }
        let mut records = Vec::with_capacity(self.requests as usize);
        while let Some(result) = workers.join_next().await {
            match result {
                Ok(mut done) => records.append(&mut done),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            }
        }
        let elapsed = start.elapsed();
        records.sort_by_key(|r| r.index);
        report::build(self, stack, records, before, sim.stats(), elapsed)
    }
}

/// What happened to one client request.
pub(crate) struct Record {
    pub(crate) index: u64,
    pub(crate) latency: Duration,
    /// `latency` less the served answer's own service time (see the module docs).
    pub(crate) added: Duration,
    pub(crate) source: Source,
    pub(crate) complete: bool,
    pub(crate) first_byte: Option<Duration>,
}

/// Where an answer came from, or what went wrong.
pub(crate) enum Source {
    FirstChoice,
    Fallback(String),
    Cached,
    Degraded,
    Unknown,
    Error(String),
}

async fn worker<S, B>(shared: Arc<(Runner, AtomicU64)>, client: S, start: Instant) -> Vec<Record>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let (runner, next) = &*shared;
    let mut records = Vec::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= runner.requests {
            return records;
        }
        if let Some(over) = runner.over {
            let at = over.mul_f64(index as f64 / runner.requests as f64);
            tokio::time::sleep_until(start + at).await;
        }
        let request = runner.request(index);
        let sent = Instant::now();
        let mut seen = Seen {
            sent,
            first_byte: None,
            complete: false,
            service: None,
        };
        let source = match tokio::time::timeout(
            runner.timeout,
            exchange(client.clone(), request, &runner.model, &mut seen),
        )
        .await
        {
            Ok(source) => source,
            Err(_) => {
                seen.complete = false;
                seen.service = None;
                Source::Error(format!("timeout: no answer within {:?}", runner.timeout))
            }
        };
        let latency = sent.elapsed();
        records.push(Record {
            index,
            latency,
            added: latency.saturating_sub(seen.service.unwrap_or_default()),
            source,
            complete: seen.complete,
            first_byte: seen.first_byte,
        });
    }
}

/// What the runner saw of one answer besides its source.
struct Seen {
    sent: Instant,
    first_byte: Option<Duration>,
    complete: bool,
    /// The answer's own service time, from the simulator's header, when it is the
    /// simulator's answer (not a cached or degraded one).
    service: Option<Duration>,
}

/// Sends one request, reads its answer to the end, and says what it was.
async fn exchange<S, B>(
    client: S,
    request: Request<Full<Bytes>>,
    requested: &str,
    seen: &mut Seen,
) -> Source
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let response = match client.oneshot(request).await {
        Ok(response) => response,
        Err(error) => return Source::Error(error_label(&*error.into())),
    };
    let (parts, body) = response.into_parts();
    seen.service = service_time(&parts.headers);
    let mut body = std::pin::pin!(Limited::new(body, MAX_RESPONSE_BODY));
    let mut bytes = bytes::BytesMut::new();
    let failed = loop {
        match body.frame().await {
            None => break None,
            Some(Err(error)) => break Some(error),
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data() {
                    use bytes::Buf as _;
                    if seen.first_byte.is_none()
                        && data.has_remaining()
                        && parts.status.is_success()
                    {
                        seen.first_byte = Some(seen.sent.elapsed());
                    }
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        let n = chunk.len();
                        bytes.extend_from_slice(chunk);
                        data.advance(n);
                    }
                }
            }
        }
    };
    if let Some(error) = failed {
        return Source::Error(format!(
            "{} body failed: {}",
            parts.status.as_u16(),
            root(&*error)
        ));
    }
    let body = bytes.freeze();
    seen.complete = parts.status.is_success() && is_complete(&body);
    if !parts.status.is_success() {
        let outcome = DefaultClassifier::new().classify(Observed::Response {
            status: parts.status,
            headers: &parts.headers,
            body: Some(&body),
        });
        return Source::Error(match outcome.error_type() {
            Some(error_type) => format!("{} {error_type}", parts.status.as_u16()),
            None => parts.status.as_u16().to_string(),
        });
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // The simulator knows no layer: it reads what the layers say in the headers any
    // client sees (the gateway's, or a stack configured to write them).
    if header("x-brownout-degraded").is_some() {
        return Source::Degraded;
    }
    if header("x-brownout-cache").is_some_and(|v| !v.eq_ignore_ascii_case("miss")) {
        return Source::Cached;
    }
    let from_body = match read_answer(&body) {
        Read::StreamError(error_type) => {
            return Source::Error(format!("{} stream {error_type}", parts.status.as_u16()))
        }
        Read::Model(model) => model,
    };
    let served = header("x-brownout-model").map(str::to_owned).or(from_body);
    match served {
        Some(model) if model == requested => Source::FirstChoice,
        Some(model) => Source::Fallback(model),
        None => Source::Unknown,
    }
}

/// The service time the simulator says it took over this answer, unless the answer is
/// a cached or degraded one: a cache keeps the headers of the answer it stored, and
/// its own answer took none of that time.
fn service_time(headers: &http::HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if text("x-brownout-degraded").is_some()
        || text("x-brownout-cache").is_some_and(|v| !v.eq_ignore_ascii_case("miss"))
    {
        return None;
    }
    let ms: f64 = text(LATENCY_HEADER)?.parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
}

enum Read {
    Model(Option<String>),
    StreamError(String),
}

#[derive(Deserialize)]
struct ModelField {
    model: Option<String>,
    message: Option<Box<ModelField>>,
    error: Option<ErrorField>,
}

#[derive(Deserialize)]
struct ErrorField {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
}

/// The model named by a JSON answer or a stream of server-sent events, or the error a
/// stream ended with.
fn read_answer(body: &[u8]) -> Read {
    if let Ok(answer) = serde_json::from_slice::<ModelField>(body) {
        return Read::Model(answer.model);
    }
    let text = String::from_utf8_lossy(body);
    let mut model = None;
    let mut event = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim();
            continue;
        }
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        let Ok(parsed) = serde_json::from_str::<ModelField>(data) else {
            continue;
        };
        if let Some(error) = parsed.error {
            return Read::StreamError(error.code.or(error.kind).unwrap_or_else(|| "error".into()));
        }
        if event == "error" {
            return Read::StreamError("error".into());
        }
        if model.is_none() {
            model = parsed
                .model
                .or_else(|| parsed.message.and_then(|m| m.model));
        }
    }
    Read::Model(model)
}

/// Whether a 2xx body is a whole answer: JSON, or a stream that ends the provider's
/// way with no error event in it.
fn is_complete(body: &[u8]) -> bool {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return true;
    }
    let text = String::from_utf8_lossy(body);
    let mut ended = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line == "event: error" || line == "event:error" || line.starts_with("data: {\"error\"") {
            return false;
        }
        ended |= line == "event: message_stop"
            || line == "data: [DONE]"
            || line == "event: response.completed"
            || line == "event: response.incomplete";
    }
    ended
}

fn error_label(error: &(dyn std::error::Error + 'static)) -> String {
    let outcome = DefaultClassifier::new().classify(Observed::Error(error));
    format!("{}: {}", outcome.kind(), root(error))
}

/// The innermost cause of an error, which says the most.
fn root(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_models_and_stream_errors() {
        assert!(matches!(read_answer(br#"{"model":"a","x":1}"#), Read::Model(Some(m)) if m == "a"));
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"b\"}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert!(
            matches!(read_answer(anthropic.as_bytes()), Read::StreamError(t) if t == "overloaded_error")
        );
        let openai = "data: {\"model\":\"c\",\"choices\":[]}\n\ndata: [DONE]\n\n";
        assert!(matches!(read_answer(openai.as_bytes()), Read::Model(Some(m)) if m == "c"));
        assert!(matches!(read_answer(b"not json"), Read::Model(None)));
    }

    #[test]
    fn complete_answers_end_the_providers_way() {
        assert!(is_complete(br#"{"model":"a"}"#));
        let start = "event: message_start\ndata: {}\n\n";
        assert!(is_complete(
            format!("{start}event: message_stop\ndata: {{}}\n\n").as_bytes()
        ));
        assert!(!is_complete(start.as_bytes()), "no message_stop");
        assert!(!is_complete(
            format!("{start}event: error\ndata: {{}}\n\nevent: message_stop\ndata: {{}}\n\n")
                .as_bytes()
        ));
        assert!(is_complete(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"));
        assert!(!is_complete(b"data: {\"choices\":[]}\n\n"));
        assert!(!is_complete(
            b"data: {\"error\":{\"type\":\"server_error\"}}\n\ndata: [DONE]\n\n"
        ));
    }
}
