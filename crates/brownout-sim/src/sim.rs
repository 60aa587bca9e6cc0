//! The simulated upstream as a `tower::Service`.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use brownout_core::{provider::Api, BoxError};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::Service;

use crate::{
    body::{After, SimBody},
    provider::{self, Answer, Failure},
    script::{served_api, Enforced, Fault, FaultKind, ModelScript, Script},
};

/// The largest request body the simulator reads: 32 MiB, as Anthropic's API. A larger
/// one gets 413.
pub const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;

/// The key under which [`SimStats::by_model`] counts requests for models the script
/// does not name.
pub const OTHER_MODELS: &str = "*";

/// The simulator-only response header that says how long the simulator itself took
/// over the answer, in milliseconds to the microsecond (`1234.567`): the latency the
/// script drew for it, and for a stream also the pacing of its events (the stream
/// interval between them). No provider sends it (OpenAI's `openai-processing-ms` is
/// the closest); the [runner](crate::runner) subtracts it from the caller's latency to
/// find the latency the client's layers added.
pub const LATENCY_HEADER: &str = "x-sim-latency-ms";

/// An Anthropic/OpenAI-compatible upstream that follows a [`Script`].
///
/// A `tower::Service<http::Request<B>>` for any request body `B`, answering
/// `http::Response<`[`SimBody`]`>`. Clones share one clock (started by
/// [`Sim::new`]), one request counter and one set of statistics, so a clone per
/// connection or per client behaves as one upstream.
///
/// - `POST /v1/messages` answers in the Anthropic Messages shape, `POST
///   /v1/chat/completions` in the OpenAI Chat Completions shape, echoing the
///   request's `model`; `"stream": true` gets server-sent events. Other paths get 404,
///   other methods 405, a body that is not JSON or has no `model` 400, all in the
///   provider's error shape.
/// - Each answer has an id, `usage` (about four request bytes a token in, one word a
///   token out, cut at the request's `max_tokens` / `max_completion_tokens`), a
///   request id (`request-id` / `x-request-id`) and the provider's request rate-limit
///   headers, counted per model per minute of the simulator's clock.
/// - Each answer, error answers included, carries [`LATENCY_HEADER`]
///   (`x-sim-latency-ms`), the simulator's own service time for it: a simulator-only
///   header, as `openai-processing-ms` is OpenAI's, so that a client can tell the
///   upstream's time from its own.
/// - Faults come from the script (see [`crate::script`]). A `reset` is an
///   [`io::Error`] of kind `ConnectionReset` in process; the [server](crate::SimServer)
///   drops the connection instead.
///
/// ```
/// use brownout_sim::{Fault, ModelScript, Script, Sim};
/// use http_body_util::{BodyExt, Full};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let sim = Sim::new(Script::new().model("claude-sonnet-4-5", ModelScript::new().fault(Fault::overloaded())));
/// let request = http::Request::post("/v1/messages")
///     .body(Full::new(bytes::Bytes::from(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[]}"#)))?;
/// let response = sim.clone().oneshot(request).await?;
/// assert_eq!(response.status(), 529);
/// let body = response.into_body().collect().await?.to_bytes();
/// assert_eq!(body, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
/// assert_eq!(sim.stats().received, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

struct Shared {
    script: Script,
    start: Instant,
    start_wall: SystemTime,
    received: AtomicU64,
    /// One per scripted model, in the script's order, then one for the rest.
    models: Vec<ModelState>,
    answers: [AtomicU64; ANSWER_LABELS.len()],
}

#[derive(Default)]
struct ModelState {
    received: AtomicU64,
    /// The current minute of the simulator's clock (high 32 bits) and how many
    /// requests arrived in it (low 32 bits), for the rate-limit headers.
    window: AtomicU64,
    /// The enforced limits' buckets, made on the model's first request.
    buckets: Mutex<Option<SimBuckets>>,
}

/// An enforced model's token buckets: a minute's limit each, refilled continuously.
struct SimBuckets {
    limits: [Option<u64>; 4],
    levels: [f64; 4],
    at: Instant,
}

impl SimBuckets {
    fn new(limits: &Enforced, now: Instant) -> Self {
        SimBuckets {
            limits: limits.per_minute,
            levels: limits.per_minute.map(|l| l.unwrap_or(0) as f64),
            at: now,
        }
    }

    /// Takes `need` (requests, input, output, both) if every bucket has it; else the
    /// wait until they do and the index of the binding limit.
    fn take(&mut self, need: [f64; 4], now: Instant) -> Result<(), (Duration, usize)> {
        let minutes = now.saturating_duration_since(self.at).as_secs_f64() / 60.0;
        self.at = now;
        let mut short = None;
        for (i, (level, limit)) in self.levels.iter_mut().zip(self.limits).enumerate() {
            let Some(limit) = limit else { continue };
            let limit = limit as f64;
            *level = (*level + limit * minutes).min(limit);
            if *level < need[i] {
                let wait = Duration::from_secs_f64((need[i] - *level) / limit * 60.0);
                if short.is_none_or(|(w, _)| wait > w) {
                    short = Some((wait, i));
                }
            }
        }
        if let Some(short) = short {
            return Err(short);
        }
        for (level, need) in self.levels.iter_mut().zip(need) {
            *level -= need;
        }
        Ok(())
    }
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.shared.script.seed)
            .field("elapsed", &self.elapsed())
            .field("received", &self.shared.received.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What the simulator has answered so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SimStats {
    /// Requests received.
    pub received: u64,
    /// Requests received per model named in the script; others under
    /// [`OTHER_MODELS`]. Requests rejected before their model was read are in
    /// neither.
    pub by_model: BTreeMap<String, u64>,
    /// Answers by what they were: `"ok"`, a [`FaultKind`] name (`"overloaded"`,
    /// `"hang"`, `"stream_error"`…), or `"rejected"` for malformed requests. Only
    /// answers that have started are counted, so hangs count when they begin.
    pub by_answer: BTreeMap<String, u64>,
}

const ANSWER_LABELS: [&str; 16] = [
    "ok",
    "rejected",
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
    "over_limit",
];

fn answer_index(label: &str) -> usize {
    ANSWER_LABELS
        .iter()
        .position(|l| *l == label)
        .expect("every answer has a label")
}

impl Sim {
    /// A simulator following `script`, its clock starting now (tokio's clock, so a
    /// paused runtime controls it).
    pub fn new(script: Script) -> Self {
        let models = (0..=script.models.len())
            .map(|_| ModelState::default())
            .collect();
        Sim {
            shared: Arc::new(Shared {
                script,
                start: Instant::now(),
                start_wall: SystemTime::now(),
                received: AtomicU64::new(0),
                models,
                answers: Default::default(),
            }),
        }
    }

    /// The script it follows.
    pub fn script(&self) -> &Script {
        &self.shared.script
    }

    /// Time since the simulator started, on tokio's clock.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// A snapshot of what it has answered so far.
    pub fn stats(&self) -> SimStats {
        let shared = &self.shared;
        let mut by_model = BTreeMap::new();
        for (i, state) in shared.models.iter().enumerate() {
            let count = state.received.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let name = shared
                .script
                .models
                .get(i)
                .map_or(OTHER_MODELS, |(name, _)| name.as_str());
            by_model.insert(name.to_owned(), count);
        }
        let by_answer = ANSWER_LABELS
            .iter()
            .zip(&shared.answers)
            .filter_map(|(label, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then(|| ((*label).to_owned(), count))
            })
            .collect();
        SimStats {
            received: shared.received.load(Ordering::Relaxed),
            by_model,
            by_answer,
        }
    }
}

impl<B> Service<Request<B>> for Sim
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<SimBody>;
    type Error = io::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        // The arrival number and time are taken here, in call order, so that outcomes
        // follow the order requests were sent, not the order their bodies arrive.
        let n = self.shared.received.fetch_add(1, Ordering::Relaxed);
        let arrived = Instant::now();
        ResponseFuture {
            inner: Box::pin(handle(self.shared.clone(), n, arrived, request)),
        }
    }
}

/// The future of a [`Sim`] answer.
pub struct ResponseFuture {
    // Boxed: the simulator is the far end of a stack, and a benchmark of it
    // (benches/sim.rs) shows the allocation is a small part of its cost.
    inner: Pin<Box<dyn Future<Output = io::Result<Response<SimBody>>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = io::Result<Response<SimBody>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The part of a chat request the simulator reads; every other field is ignored.
#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A per-request seed: the script's seed and the arrival number, mixed (splitmix64)
/// so that neighbouring requests draw unrelated numbers.
fn request_seed(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_id(rng: &mut fastrand::Rng, prefix: &str, len: usize, alphabet: &[u8]) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        id.push(char::from(alphabet[rng.usize(..alphabet.len())]));
    }
    id
}

/// What the rate-limit headers say.
struct Limits {
    limit: u32,
    remaining: u32,
    reset_in: Duration,
}

impl Shared {
    fn model_index(&self, model: &str) -> usize {
        self.script
            .models
            .iter()
            .position(|(name, _)| name == model)
            .unwrap_or(self.script.models.len())
    }

    fn model_script(&self, index: usize) -> &ModelScript {
        self.script
            .models
            .get(index)
            .map_or(&self.script.default, |(_, m)| m)
    }

    fn count(&self, label: &str) {
        self.answers[answer_index(label)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the request in its model's current minute and says what the rate-limit
    /// headers advertise.
    fn limits(&self, index: usize, rpm: u32, elapsed: Duration) -> Limits {
        let minute = elapsed.as_secs() / 60;
        let window = &self.models[index].window;
        let mut current = window.load(Ordering::Relaxed);
        let count = loop {
            let next = if (current >> 32) == minute {
                current.saturating_add(1)
            } else {
                (minute << 32) | 1
            };
            match window.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break (next & 0xFFFF_FFFF) as u32,
                Err(actual) => current = actual,
            }
        };
        let into_minute = elapsed - Duration::from_secs(minute * 60);
        Limits {
            limit: rpm,
            remaining: rpm.saturating_sub(count),
            reset_in: Duration::from_secs(60) - into_minute,
        }
    }
}

async fn handle<B>(
    shared: Arc<Shared>,
    n: u64,
    arrived: Instant,
    request: Request<B>,
) -> io::Result<Response<SimBody>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let elapsed = arrived.saturating_duration_since(shared.start);
    let mut rng = fastrand::Rng::with_seed(request_seed(shared.script.seed, n));
    let (parts, body) = request.into_parts();
    let Some(api) = served_api(parts.uri.path()) else {
        // Not served here: a 404 in the shape of the API the path looks like.
        let guess = match Api::from_path(parts.uri.path()) {
            Api::Other if parts.uri.path().contains("chat") => Api::OpenAiChat,
            other => other,
        };
        return Ok(reject(&shared, &mut rng, guess, Failure::NotFound));
    };
    if parts.method != Method::POST {
        return Ok(reject(&shared, &mut rng, api, Failure::MethodNotAllowed));
    }
    let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return Ok(reject(&shared, &mut rng, api, Failure::TooLarge))
        }
        Err(error) => return Err(io::Error::other(error)),
    };
    let parsed: ChatRequest = match serde_json::from_slice(&bytes) {
        Ok(parsed) => parsed,
        Err(error) => {
            let message = format!("the request body is not valid JSON: {error}");
            return Ok(reject(&shared, &mut rng, api, Failure::Invalid(&message)));
        }
    };
    let Some(model) = parsed.model.as_deref() else {
        return Ok(reject(
            &shared,
            &mut rng,
            api,
            Failure::Invalid("model: Field required"),
        ));
    };

    let index = shared.model_index(model);
    shared.models[index]
        .received
        .fetch_add(1, Ordering::Relaxed);
    let script = shared.model_script(index);
    let stream = parsed.stream;
    let fault = pick_fault(script, elapsed, stream, rng.f64());
    let mut limits = shared.limits(index, script.requests_per_minute, elapsed);
    let max_tokens = parsed.max_completion_tokens.or(parsed.max_tokens);
    let words_given = max_tokens.map_or(script.output_tokens, |max| max.min(script.output_tokens));
    let input_tokens = (bytes.len() / 4).max(1) as u32;
    let mut enforced_headers = None;
    if let Some(enforced) = &script.enforced {
        let mut buckets = shared.models[index]
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let buckets = buckets.get_or_insert_with(|| SimBuckets::new(enforced, arrived));
        let (input, output) = (f64::from(input_tokens), f64::from(words_given));
        let taken = buckets.take([1.0, input, output, input + output], arrived);
        if let Some(rpm) = buckets.limits[0] {
            limits.limit = rpm as u32;
            limits.remaining = buckets.levels[0].max(0.0) as u32;
        }
        enforced_headers = Some((buckets.limits, buckets.levels));
        if let Err((wait, _)) = taken {
            shared.count("over_limit");
            let fault = Fault::rate_limited(wait.max(Duration::from_millis(1)));
            limits.remaining = 0;
            let mut response = fault_response(&mut rng, api, &fault, model, limits, Duration::ZERO);
            token_headers(response.headers_mut(), api, enforced_headers);
            return Ok(response);
        }
    }
    tracing::trace!(
        n,
        model,
        elapsed_ms = elapsed.as_millis() as u64,
        fault = fault.map(|f| f.kind.as_str()),
        "simulated request"
    );

    if let Some(fault) = fault.filter(|f| !f.kind.is_stream()) {
        shared.count(fault.kind.as_str());
        match fault.kind {
            FaultKind::Hang => std::future::pending::<()>().await,
            FaultKind::Reset => {
                wait(arrived, fault.latency.sample(&mut rng)).await;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset by the simulated upstream",
                ));
            }
            _ => {}
        }
        let latency = fault.latency.sample(&mut rng);
        let response = fault_response(&mut rng, api, fault, model, limits, latency);
        wait(arrived, latency).await;
        return Ok(response);
    }

    let latency = script.latency.sample(&mut rng);
    let id = if api.is_openai() {
        random_id(&mut rng, "chatcmpl-", 29, BASE62)
    } else {
        random_id(&mut rng, "msg_01", 22, BASE62)
    };
    let words_wanted = script.output_tokens;
    let words: Vec<&'static str> = (0..words_given)
        .map(|_| provider::WORDS[rng.usize(..provider::WORDS.len())])
        .collect();
    let created = shared
        .start_wall
        .checked_add(elapsed)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let answer = Answer {
        model,
        id: &id,
        created,
        input_tokens,
        words: &words,
        truncated: words_given < words_wanted,
    };
    let mut headers = provider_headers(&mut rng, api, &limits, latency);
    token_headers(&mut headers, api, enforced_headers);
    let body = if stream {
        shared.count(fault.map_or("ok", |f| f.kind.as_str()));
        let include_usage = parsed.stream_options.is_some_and(|o| o.include_usage);
        let (break_after, after) = match fault.map(|f| (f.kind, f.after_deltas)) {
            Some((FaultKind::StreamStall, n)) => (Some(n), After::Stall),
            Some((FaultKind::StreamCut, n)) => (Some(n), After::Cut),
            _ => (None, After::End),
        };
        let error_after = fault
            .filter(|f| f.kind == FaultKind::StreamError)
            .map(|f| f.after_deltas);
        let mut events = provider::success_events(api, &answer, include_usage, error_after);
        if let Some(n) = break_after {
            // The opening events and `n` content deltas, then the stall or the cut.
            let opening = if api.is_openai() { 1 } else { 3 };
            events.truncate(opening + (n as usize).min(words.len()));
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // The first event goes when the latency is over, each later one an interval
        // after the one before.
        let pacing = script
            .stream_interval
            .saturating_mul(u32::try_from(events.len().saturating_sub(1)).unwrap_or(u32::MAX));
        headers.insert(LATENCY_HEADER, latency_value(latency + pacing));
        SimBody::events_then(events, script.stream_interval, after)
    } else {
        shared.count("ok");
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(LATENCY_HEADER, latency_value(latency));
        SimBody::full(provider::success_json(api, &answer))
    };
    wait(arrived, latency).await;
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    Ok(response)
}

/// The fault that hits this request, if any: `u` walks the active faults' rates.
fn pick_fault(script: &ModelScript, elapsed: Duration, stream: bool, u: f64) -> Option<&Fault> {
    let mut upto = 0.0;
    for fault in &script.faults {
        if !fault.is_active_at(elapsed) || (fault.kind.is_stream() && !stream) {
            continue;
        }
        upto += fault.rate;
        if u < upto {
            return Some(fault);
        }
    }
    None
}

async fn wait(arrived: Instant, latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep_until(arrived + latency).await;
    }
}

fn reject(
    shared: &Shared,
    rng: &mut fastrand::Rng,
    api: Api,
    failure: Failure<'_>,
) -> Response<SimBody> {
    shared.count("rejected");
    let (status, body) = provider::error(api, failure, "", 0, "");
    let mut response = Response::new(SimBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_request_id(headers, rng, api);
    headers.insert(LATENCY_HEADER, latency_value(Duration::ZERO));
    response
}

fn insert_request_id(headers: &mut HeaderMap, rng: &mut fastrand::Rng, api: Api) {
    let (name, id) = if api.is_openai() {
        (
            "x-request-id",
            random_id(rng, "req_", 32, b"0123456789abcdef"),
        )
    } else {
        ("request-id", random_id(rng, "req_01", 22, BASE62))
    };
    headers.insert(name, HeaderValue::try_from(id).expect("ids are ASCII"));
}

fn provider_headers(
    rng: &mut fastrand::Rng,
    api: Api,
    limits: &Limits,
    latency: Duration,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    insert_request_id(&mut headers, rng, api);
    if !api.is_openai() {
        headers.insert(
            "anthropic-ratelimit-requests-limit",
            HeaderValue::from(limits.limit),
        );
        headers.insert(
            "anthropic-ratelimit-requests-remaining",
            HeaderValue::from(limits.remaining),
        );
        headers.insert(
            "anthropic-ratelimit-requests-reset",
            rfc3339_after(limits.reset_in),
        );
    } else {
        headers.insert(
            "openai-processing-ms",
            HeaderValue::from(latency.as_millis() as u64),
        );
        headers.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from(limits.limit),
        );
        headers.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from(limits.remaining),
        );
        headers.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::try_from(go_duration(limits.reset_in)).expect("ASCII"),
        );
    }
    headers
}

/// The token limits of an enforced model and what remains of them, in the provider's
/// headers.
fn token_headers(headers: &mut HeaderMap, api: Api, state: Option<([Option<u64>; 4], [f64; 4])>) {
    let Some((limits, levels)) = state else {
        return;
    };
    let names: &[(usize, &'static str, &'static str)] = if api.is_openai() {
        &[(
            3,
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
        )]
    } else {
        &[
            (
                1,
                "anthropic-ratelimit-input-tokens-limit",
                "anthropic-ratelimit-input-tokens-remaining",
            ),
            (
                2,
                "anthropic-ratelimit-output-tokens-limit",
                "anthropic-ratelimit-output-tokens-remaining",
            ),
            (
                3,
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
            ),
        ]
    };
    for (i, limit, remaining) in names {
        if let Some(l) = limits[*i] {
            headers.insert(*limit, HeaderValue::from(l));
            headers.insert(*remaining, HeaderValue::from(levels[*i].max(0.0) as u64));
        }
    }
}

fn fault_response(
    rng: &mut fastrand::Rng,
    api: Api,
    fault: &Fault,
    model: &str,
    mut limits: Limits,
    latency: Duration,
) -> Response<SimBody> {
    if let Some(delay) = fault
        .retry_after
        .filter(|_| fault.kind == FaultKind::RateLimited)
    {
        limits.remaining = 0;
        limits.reset_in = delay;
    }
    let retry_after = fault.retry_after.map(go_duration).unwrap_or_default();
    let (status, body) = provider::error(
        api,
        Failure::Fault(fault.kind),
        model,
        limits.limit,
        &retry_after,
    );
    let mut headers = provider_headers(rng, api, &limits, latency);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(LATENCY_HEADER, latency_value(latency));
    if let Some(delay) = fault.retry_after {
        // Whole seconds, rounded up, as the header's grammar requires.
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if fault.kind == FaultKind::RateLimited || status.is_server_error() {
        headers.insert("x-should-retry", HeaderValue::from_static("true"));
    }
    let mut response = Response::new(SimBody::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A service time as [`LATENCY_HEADER`] carries it: milliseconds, to the microsecond.
fn latency_value(latency: Duration) -> HeaderValue {
    let micros = latency.as_micros();
    HeaderValue::try_from(format!("{}.{:03}", micros / 1000, micros % 1000)).expect("ASCII")
}

/// The wall-clock instant `after` from now, as RFC 3339 in whole seconds (rounded up,
/// so that a client waiting until then never comes back early).
fn rfc3339_after(after: Duration) -> HeaderValue {
    let at = SystemTime::now() + after;
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let text = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    HeaderValue::try_from(text).expect("RFC 3339 is ASCII")
}

/// A duration as Go prints it, as OpenAI's reset headers do: `6m0s`, `1.5s`, `120ms`.
pub(crate) fn go_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let total_ms = d.as_millis();
    let (hours, rest) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (secs, millis) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if millis == 0 {
        out.push_str(&format!("{secs}s"));
    } else {
        let fraction = format!("{millis:03}");
        out.push_str(&format!("{secs}.{}s", fraction.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use brownout_core::classify::parse_go_duration;

    #[test]
    fn go_durations_round_trip() {
        for (d, text) in [
            (Duration::from_millis(120), "120ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_secs(3725), "1h2m5s"),
        ] {
            assert_eq!(go_duration(d), text);
            assert_eq!(parse_go_duration(text), Some(d));
        }
    }

    #[test]
    fn request_seeds_differ_and_repeat() {
        assert_eq!(request_seed(1, 5), request_seed(1, 5));
        assert_ne!(request_seed(1, 5), request_seed(1, 6));
        assert_ne!(request_seed(1, 5), request_seed(2, 5));
    }

    #[test]
    fn faults_accumulate_in_order() {
        let script = ModelScript::new()
            .fault(Fault::overloaded().rate(0.3))
            .fault(Fault::stream_error(1).rate(0.2))
            .fault(Fault::rate_limited(Duration::from_secs(1)).rate(0.1));
        let at = Duration::ZERO;
        let kind = |u, stream| pick_fault(&script, at, stream, u).map(|f| f.kind);
        assert_eq!(kind(0.29, false), Some(FaultKind::Overloaded));
        assert_eq!(kind(0.35, true), Some(FaultKind::StreamError));
        // Without streaming the stream error's share is skipped.
        assert_eq!(kind(0.35, false), Some(FaultKind::RateLimited));
        assert_eq!(kind(0.55, true), Some(FaultKind::RateLimited));
        assert_eq!(kind(0.61, true), None);
    }
}
