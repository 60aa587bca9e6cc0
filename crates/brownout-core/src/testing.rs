//! Test helpers: a scripted upstream and request bodies that break. **For tests
//! only**, behind the `test-util` feature; nothing here is part of the stable API.
//!
//! [`Upstream`] is a `tower::Service<Request<Body>>` that answers from scripts and
//! records what it was sent. [`Upload`] is a request body that yields some bytes,
//! then breaks, stalls or ends.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::{sync::Semaphore, time::Instant};

use crate::{Body, BoxError, RequestFacts};

/// One scripted answer of an [`Upstream`].
#[derive(Clone, Debug)]
pub enum Step {
    /// Answer this status, these headers and this body.
    Answer(u16, Vec<(&'static str, String)>, &'static str),
    /// Answer this status with the upstream's default body.
    Status(u16),
    /// Fail with an I/O error of this kind, as a refused or reset connection does.
    Fail(io::ErrorKind),
    /// Never answer.
    Hang,
    /// Answer this status with the default body after this long.
    Slow(Duration, u16),
    /// Wait for a permit of [`Upstream::release`], then answer this status with the
    /// default body.
    Gate(u16),
}

/// What an [`Upstream`] saw of one request whose body arrived whole.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When the body had arrived.
    pub at: Instant,
    /// The request's method.
    pub method: Method,
    /// The request's URI.
    pub uri: Uri,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The request's body.
    pub body: Bytes,
    /// The [`RequestFacts`] in the request's extensions, if any.
    pub facts: Option<RequestFacts>,
    /// The model the request was answered as: see [`Upstream`].
    pub model: String,
}

type BodyFn = dyn Fn(usize, &str) -> String + Send + Sync;

#[derive(Default)]
struct Scripts {
    models: HashMap<String, VecDeque<Step>>,
    any: VecDeque<Step>,
    otherwise: Option<Step>,
}

/// A scripted upstream that records every request.
///
/// A request's model is that of the [`RequestFacts`] in its extensions when they name
/// one, else the top-level `"model"` of its JSON body, else `"none"`. It is answered
/// with the next step of its model's script ([`script`](Upstream::script)), else of
/// the script for any model ([`script_any`](Upstream::script_any)), else with the
/// standing step ([`otherwise`](Upstream::otherwise), `Status(200)` unless set).
///
/// Steps without a body of their own answer the default body: empty, unless set by
/// [`body_with`](Upstream::body_with).
#[derive(Clone)]
pub struct Upstream {
    name: &'static str,
    scripts: Arc<Mutex<Scripts>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    headers: Arc<Vec<(&'static str, String)>>,
    body: Option<Arc<BodyFn>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("calls", &self.calls())
            .field("attempts", &self.attempts())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream with no script: it answers `200` with an empty body.
    pub fn new() -> Self {
        Upstream {
            name: "",
            scripts: Arc::default(),
            seen: Arc::default(),
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            headers: Arc::default(),
            body: None,
        }
    }

    /// An upstream that answers any model with these steps first.
    pub fn scripted(steps: impl IntoIterator<Item = Step>) -> Self {
        let upstream = Upstream::new();
        upstream.script_any(steps);
        upstream
    }

    /// Names the upstream, for [`name`](Upstream::name) and default bodies.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The name given by [`named`](Upstream::named), or `""`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sets the default body, from the 0-based index of the call (as counted by
    /// [`calls`](Upstream::calls)) and the request's model.
    pub fn body_with(
        mut self,
        body: impl Fn(usize, &str) -> String + Send + Sync + 'static,
    ) -> Self {
        self.body = Some(Arc::new(body));
        self
    }

    /// Adds a header to every answer.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.headers).push((name, value.into()));
        self
    }

    /// Appends steps to the script of `model`.
    pub fn script(&self, model: &str, steps: impl IntoIterator<Item = Step>) {
        self.scripts
            .lock()
            .unwrap()
            .models
            .entry(model.into())
            .or_default()
            .extend(steps);
    }

    /// Appends steps to the script for any model, used once a model's own is done.
    pub fn script_any(&self, steps: impl IntoIterator<Item = Step>) {
        self.scripts.lock().unwrap().any.extend(steps);
    }

    /// Sets the step answered whenever the scripts are done (`Status(200)` unless set).
    pub fn otherwise(&self, step: Step) {
        self.scripts.lock().unwrap().otherwise = Some(step);
    }

    /// Lets `n` requests waiting at a [`Step::Gate`] through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// How many times the service was called, whether or not the body arrived.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every request whose body arrived, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests' bodies arrived.
    pub fn attempts(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many requests for `model` had their bodies arrive.
    pub fn attempts_of(&self, model: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.model == model)
            .count()
    }

    /// The time between consecutive requests' arrivals.
    pub fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen.lock().unwrap();
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }

    fn next_step(&self, model: &str) -> Step {
        let mut scripts = self.scripts.lock().unwrap();
        if let Some(step) = scripts.models.get_mut(model).and_then(VecDeque::pop_front) {
            return step;
        }
        if let Some(step) = scripts.any.pop_front() {
            return step;
        }
        scripts.otherwise.clone().unwrap_or(Step::Status(200))
    }
}

fn model_of(facts: Option<&RequestFacts>, body: &[u8]) -> String {
    if let Some(model) = facts.and_then(RequestFacts::model) {
        return model.to_owned();
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "none".into())
}

impl tower_service::Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let facts = RequestFacts::of(&parts.extensions).cloned();
            let model = model_of(facts.as_ref(), &body);
            this.seen.lock().unwrap().push(Seen {
                at: Instant::now(),
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body,
                facts,
                model: model.clone(),
            });
            let step = this.next_step(&model);
            let default_body = || match &this.body {
                Some(f) => f(n, &model),
                None => String::new(),
            };
            let (status, headers, body) = match step {
                Step::Answer(status, headers, body) => (status, headers, body.to_owned()),
                Step::Status(status) => (status, vec![], default_body()),
                Step::Fail(kind) => return Err(Box::new(io::Error::from(kind)) as BoxError),
                Step::Hang => std::future::pending().await,
                Step::Slow(delay, status) => {
                    tokio::time::sleep(delay).await;
                    (status, vec![], default_body())
                }
                Step::Gate(status) => {
                    this.gate.acquire().await?.forget();
                    (status, vec![], default_body())
                }
            };
            let mut response = Response::builder().status(status);
            for (name, value) in this.headers.iter().cloned().chain(headers) {
                response = response.header(name, value);
            }
            Ok(response.body(Body::from(body))?)
        })
    }
}

/// How an [`Upload`] goes on once its chunks are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadEnd {
    /// Fail with a `ConnectionReset` I/O error: a client that hung up mid-upload.
    Break,
    /// Never yield again.
    Stall,
    /// End the body.
    End,
}

/// A request body that yields its chunks one by one, then breaks, stalls or ends.
///
/// Its size hint is unknown unless declared with [`size_hint`](Upload::size_hint).
#[derive(Debug)]
pub struct Upload {
    chunks: VecDeque<Bytes>,
    end: UploadEnd,
    hint: SizeHint,
}

impl Upload {
    /// These chunks, then `end`.
    pub fn new<C: Into<Bytes>>(chunks: impl IntoIterator<Item = C>, end: UploadEnd) -> Self {
        Upload {
            chunks: chunks.into_iter().map(Into::into).collect(),
            end,
            hint: SizeHint::default(),
        }
    }

    /// `body` in chunks of `chunk` bytes (the last may be shorter), then `end`.
    pub fn chunked(body: &[u8], chunk: usize, end: UploadEnd) -> Self {
        Upload::new(body.chunks(chunk.max(1)).map(Bytes::copy_from_slice), end)
    }

    /// Declares an exact size hint of `len` bytes, true or not.
    pub fn size_hint(mut self, len: u64) -> Self {
        self.hint = SizeHint::with_exact(len);
        self
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match self.end {
            UploadEnd::Break => {
                Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::ConnectionReset))))
            }
            UploadEnd::Stall => Poll::Pending,
            UploadEnd::End => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
