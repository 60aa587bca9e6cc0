//! Resume: a stream that fails after content reached the caller, continued on the
//! next model of the cascade and stitched into one message. See the
//! [module docs](super#resume).

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use brownout_core::{
    event::Event,
    provider::Api,
    shape,
    sse::{self, Splitter},
    Body, BoxError,
};
use bytes::Bytes;
use http::{header, Method, Response, Uri};
use http_body::{Frame, SizeHint};
use serde_json::{json, Value};

use super::{guard::failure_events, StreamEvent, StreamFailure};

/// Which models wrote a streamed answer, in order, in the response's extensions when
/// the fallback layer resumes streams ([`AfterFirstByte::Resume`](super::AfterFirstByte)).
/// It fills as the stream goes: read it once the body has ended.
///
/// ```
/// use brownout_fallback::stream::StreamResumes;
///
/// let resumes = StreamResumes::default();
/// assert!(resumes.models().is_empty());
/// assert!(!resumes.resumed());
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamResumes {
    models: Arc<Mutex<Vec<Arc<str>>>>,
}

impl StreamResumes {
    /// The models that wrote the answer so far, the first one first.
    pub fn models(&self) -> Vec<Arc<str>> {
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether another model continued the answer.
    pub fn resumed(&self) -> bool {
        self.models.lock().unwrap_or_else(|e| e.into_inner()).len() > 1
    }

    fn push(&self, model: Arc<str>) {
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(model);
    }
}

/// The next part of a resumed answer: its stream and the cascade position of the
/// model that writes it.
pub(crate) type Next = Pin<Box<dyn Future<Output = Option<(Body, usize)>> + Send>>;

/// How to start the next part: from cascade position `from` on, with this
/// continuation request body.
pub(crate) type Start = Arc<dyn Fn(usize, Bytes) -> Next + Send + Sync>;

/// What a resuming stream needs to go on.
pub(crate) struct ResumeContext {
    pub(crate) api: Api,
    /// The original request body.
    pub(crate) data: Bytes,
    /// The models of the cascade, in order.
    pub(crate) models: Vec<Arc<str>>,
    /// The position of the model that answered.
    pub(crate) position: usize,
    pub(crate) start: Start,
    pub(crate) request: (Method, Uri),
    pub(crate) events: brownout_core::event::Events,
}

/// Whether the answer is a stream this module can resume.
fn resumable<B>(api: Api, response: &Response<B>) -> bool {
    matches!(api, Api::AnthropicMessages | Api::OpenAiChat)
        && response.status().is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.as_bytes().get(..17))
            .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"))
}

/// `response`, its stream resumed on the next model when it fails after content.
pub(crate) fn resume_mode(ctx: ResumeContext, response: Response<Body>) -> Response<Body> {
    if !resumable(ctx.api, &response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let resumes = StreamResumes::default();
    resumes.push(ctx.models[ctx.position].clone());
    parts.extensions.insert(resumes.clone());
    let body = ResumeBody {
        stitch: Stitch::new(ctx.api),
        ctx,
        resumes,
        state: RState::Streaming {
            body,
            splitter: Splitter::new(),
        },
        out: VecDeque::new(),
    };
    Response::from_parts(parts, Body::new(body))
}

enum RState {
    Streaming { body: Body, splitter: Splitter },
    Starting { next: Next, failure: Failure },
    Done,
}

/// How a part failed: the error event it ended with, if it sent one.
struct Failure {
    kind: StreamFailure,
    event: Option<Bytes>,
}

/// A resumed stream: the first model's events as they came, then each next model's,
/// stitched. See the [module docs](super#resume).
struct ResumeBody {
    ctx: ResumeContext,
    stitch: Stitch,
    resumes: StreamResumes,
    state: RState,
    out: VecDeque<Bytes>,
}

impl fmt::Debug for ResumeBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumeBody")
            .field("api", &self.ctx.api)
            .finish_non_exhaustive()
    }
}

impl ResumeBody {
    /// The part failed: start the next, or end the stream well-formed.
    fn failed(&mut self, failure: Failure) {
        let continuation = self
            .stitch
            .resumable()
            .then(|| continuation(self.ctx.api, &self.ctx.data, &self.stitch.text))
            .flatten();
        let from = self.stitch_position() + 1;
        match continuation {
            Some(body) if from < self.ctx.models.len() => {
                let next = (self.ctx.start)(from, body);
                self.state = RState::Starting { next, failure };
            }
            _ => self.end(failure),
        }
    }

    fn stitch_position(&self) -> usize {
        self.stitch.position.unwrap_or(self.ctx.position)
    }

    /// Ends the stream with the part's error event, or one of our own.
    fn end(&mut self, failure: Failure) {
        self.state = RState::Done;
        match failure.event {
            Some(event) => {
                self.out.push_back(event);
                if self.ctx.api == Api::OpenAiChat {
                    self.out.push_back(Bytes::from_static(shape::SSE_DONE));
                }
            }
            None => self.out.extend(failure_events(self.ctx.api, failure.kind)),
        }
        let (method, uri) = &self.ctx.request;
        self.ctx.events.emit(Event::new(
            "stream",
            method,
            uri,
            StreamEvent::EndedAfterContent {
                failure: failure.kind,
            },
        ));
    }
}

impl http_body::Body for ResumeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            match &mut this.state {
                RState::Done => return Poll::Ready(None),
                RState::Starting { next, .. } => {
                    let started = ready!(next.as_mut().poll(cx));
                    let RState::Starting { failure, .. } =
                        std::mem::replace(&mut this.state, RState::Done)
                    else {
                        unreachable!("starting")
                    };
                    match started {
                        Some((body, position)) => {
                            let from = this.ctx.models[this.stitch_position()].clone();
                            let to = this.ctx.models[position].clone();
                            let (method, uri) = &this.ctx.request;
                            this.ctx.events.emit(Event::new(
                                "stream",
                                method,
                                uri,
                                StreamEvent::Resuming {
                                    from,
                                    to: to.clone(),
                                },
                            ));
                            this.resumes.push(to);
                            this.stitch.next_part(position, this.resumes.models());
                            this.state = RState::Streaming {
                                body,
                                splitter: Splitter::new(),
                            };
                        }
                        None => this.end(failure),
                    }
                }
                RState::Streaming { body, splitter } => {
                    let frame = ready!(Pin::new(body).poll_frame(cx));
                    let data = match frame {
                        None if this.stitch.ended => {
                            this.state = RState::Done;
                            continue;
                        }
                        None => {
                            this.failed(Failure {
                                kind: StreamFailure::EndedEarly,
                                event: None,
                            });
                            continue;
                        }
                        Some(Err(_)) if this.stitch.ended => {
                            this.state = RState::Done;
                            continue;
                        }
                        Some(Err(_)) => {
                            this.failed(Failure {
                                kind: StreamFailure::Cut,
                                event: None,
                            });
                            continue;
                        }
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => data,
                            Err(_) => continue,
                        },
                    };
                    if this.stitch.ended {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let whole = splitter.push(data);
                    let mut failure = None;
                    let mut offset = 0;
                    for event in sse::events(&whole) {
                        let end = offset + event.raw.len();
                        let raw = whole.slice(offset..end);
                        offset = end;
                        if let Some(error) = this.stitch.event(&event, raw, &mut this.out) {
                            failure = Some(error);
                            break;
                        }
                    }
                    if let Some(event) = failure {
                        this.failed(Failure {
                            kind: StreamFailure::ErrorEvent,
                            event: Some(event),
                        });
                    } else if splitter.held() > super::MAX_EVENT_BYTES {
                        // An event that never ends: a broken upstream, not one to hold
                        // in memory. Ended like a cut.
                        splitter.clear();
                        this.failed(Failure {
                            kind: StreamFailure::Cut,
                            event: None,
                        });
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.out.is_empty() && matches!(self.state, RState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

/// The kind of the content block open at the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Other,
}

/// What the caller has seen of a resumed stream, and how the next part's events
/// are rewritten to continue it.
struct Stitch {
    api: Api,
    /// The cascade position of the model writing the current part; `None` for the
    /// first.
    position: Option<usize>,
    /// The answer's text so far.
    text: String,
    /// Output tokens of the finished parts (counted from their deltas where the
    /// provider never said); of the current one, as its provider reported them and
    /// as its deltas count them.
    tokens_before: u64,
    reported_now: u64,
    deltas_now: u64,
    /// Anthropic: the block open at the caller, its index, and the next index.
    open: Option<(u64, Block)>,
    next_index: u64,
    /// Where the current part's block 0 goes, and whether it merges into the block
    /// open at the caller.
    base: u64,
    merge: bool,
    /// The first part's id (OpenAI chunks of later parts carry it).
    id: Option<String>,
    /// An OpenAI tool call was seen.
    tool_call: bool,
    /// The answer said it was done (Anthropic's `message_delta`, an OpenAI finish
    /// reason): nothing is left to continue.
    finished: bool,
    /// The stream has ended the provider's way.
    ended: bool,
    /// Models that wrote the answer, once it was resumed.
    written_by: Option<Vec<Arc<str>>>,
}

impl Stitch {
    fn new(api: Api) -> Self {
        Stitch {
            api,
            position: None,
            text: String::new(),
            tokens_before: 0,
            reported_now: 0,
            deltas_now: 0,
            open: None,
            next_index: 0,
            base: 0,
            merge: false,
            id: None,
            tool_call: false,
            finished: false,
            ended: false,
            written_by: None,
        }
    }

    /// Whether the answer can be continued by another model: text so far, no tool
    /// use cut mid-way, and not already finished (a stream that fails between its
    /// finish and its last event is ended, not continued).
    fn resumable(&self) -> bool {
        !self.finished
            && !self.text.trim().is_empty()
            && !self.tool_call
            && !matches!(self.open, Some((_, Block::Other)))
    }

    /// A new part starts, written by the model at `position`.
    fn next_part(&mut self, position: usize, models: Vec<Arc<str>>) {
        self.position = Some(position);
        self.tokens_before += self.reported_now.max(self.deltas_now);
        self.reported_now = 0;
        self.deltas_now = 0;
        match self.open {
            Some((index, Block::Text)) => {
                self.base = index;
                self.merge = true;
            }
            _ => {
                self.base = self.next_index;
                self.merge = false;
            }
        }
        self.written_by = Some(models);
    }

    fn first(&self) -> bool {
        self.position.is_none()
    }

    /// Takes one event of the current part, pushing what the caller gets to `out`;
    /// the event's bytes when it is the part's failure.
    fn event(
        &mut self,
        event: &sse::Event<'_>,
        raw: Bytes,
        out: &mut VecDeque<Bytes>,
    ) -> Option<Bytes> {
        match self.api {
            Api::OpenAiChat => self.chat_event(event, raw, out),
            _ => self.anthropic_event(event, raw, out),
        }
    }

    fn anthropic_event(
        &mut self,
        event: &sse::Event<'_>,
        raw: Bytes,
        out: &mut VecDeque<Bytes>,
    ) -> Option<Bytes> {
        let name = event.name.unwrap_or("");
        if name == "error" {
            return Some(raw);
        }
        let first = self.first();
        let mut data: Value = match serde_json::from_slice(&event.data) {
            Ok(data) => data,
            Err(_) => {
                if first {
                    out.push_back(raw);
                }
                return None;
            }
        };
        match name {
            "message_start" => {
                self.reported_now = data["message"]["usage"]["output_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                // A later part's message_start is not the caller's: it has had one.
                if first {
                    out.push_back(raw);
                }
                return None;
            }
            "ping" => {
                if first {
                    out.push_back(raw);
                }
                return None;
            }
            "content_block_start" => {
                let j = data["index"].as_u64().unwrap_or(0);
                let block = if data["content_block"]["type"] == "text" {
                    Block::Text
                } else {
                    Block::Other
                };
                if !first && self.merge && j == 0 {
                    // The continuing model's first text block goes on in the block
                    // open at the caller.
                    return None;
                }
                let index = self.index(j);
                self.open = Some((index, block));
                self.next_index = self.next_index.max(index + 1);
                if first {
                    out.push_back(raw);
                } else {
                    data["index"] = json!(index);
                    out.push_back(shape::sse_frame(Some(name), data.to_string().as_bytes()));
                }
            }
            "content_block_delta" => {
                if let Some(text) = data["delta"]["text"].as_str() {
                    if data["delta"]["type"] == "text_delta" {
                        self.text.push_str(text);
                    }
                }
                self.deltas_now += 1;
                if first {
                    out.push_back(raw);
                } else {
                    let j = data["index"].as_u64().unwrap_or(0);
                    data["index"] = json!(self.index(j));
                    out.push_back(shape::sse_frame(Some(name), data.to_string().as_bytes()));
                }
            }
            "content_block_stop" => {
                let index = if first {
                    data["index"].as_u64().unwrap_or(0)
                } else {
                    self.index(data["index"].as_u64().unwrap_or(0))
                };
                if self.open.is_some_and(|(i, _)| i == index) {
                    self.open = None;
                }
                if first {
                    out.push_back(raw);
                } else {
                    data["index"] = json!(index);
                    out.push_back(shape::sse_frame(Some(name), data.to_string().as_bytes()));
                }
            }
            "message_delta" => {
                self.finished = true;
                let reported = data["usage"]["output_tokens"].as_u64().unwrap_or(0);
                if first {
                    out.push_back(raw);
                } else {
                    data["usage"]["output_tokens"] = json!(self.tokens_before + reported);
                    out.push_back(shape::sse_frame(Some(name), data.to_string().as_bytes()));
                }
                self.reported_now = reported;
            }
            "message_stop" => {
                if let Some(models) = &self.written_by {
                    let models: Vec<&str> = models.iter().map(|m| &**m).collect();
                    let record = json!({"type": "brownout", "models": models});
                    out.push_back(shape::sse_frame(
                        Some("brownout"),
                        record.to_string().as_bytes(),
                    ));
                }
                out.push_back(raw);
                self.ended = true;
            }
            _ => {
                if first {
                    out.push_back(raw);
                }
            }
        }
        None
    }

    /// The caller's index of the current part's block `j`.
    fn index(&self, j: u64) -> u64 {
        if self.first() {
            j
        } else {
            self.base + j
        }
    }

    fn chat_event(
        &mut self,
        event: &sse::Event<'_>,
        raw: Bytes,
        out: &mut VecDeque<Bytes>,
    ) -> Option<Bytes> {
        if &*event.data == b"[DONE]" {
            out.push_back(raw);
            self.ended = true;
            return None;
        }
        let mut data: Value = match serde_json::from_slice(&event.data) {
            Ok(data) => data,
            Err(_) => {
                if self.first() {
                    out.push_back(raw);
                }
                return None;
            }
        };
        if data.get("error").is_some() {
            return Some(raw);
        }
        let first = self.first();
        if first && self.id.is_none() {
            self.id = data["id"].as_str().map(str::to_owned);
        }
        let mut role_only = true;
        let mut finishing = false;
        if let Some(choices) = data["choices"].as_array() {
            for choice in choices {
                let delta = &choice["delta"];
                if let Some(text) = delta["content"].as_str() {
                    if !text.is_empty() {
                        self.text.push_str(text);
                        self.deltas_now += 1;
                        role_only = false;
                    }
                }
                if delta.get("tool_calls").is_some_and(|t| !t.is_null()) {
                    self.tool_call = true;
                    role_only = false;
                }
                if choice["finish_reason"].is_string() {
                    finishing = true;
                    self.finished = true;
                    role_only = false;
                }
            }
            if choices.is_empty() {
                role_only = false;
            }
        }
        if let Some(usage) = data.get_mut("usage").filter(|u| u.is_object()) {
            let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
            self.reported_now = completion;
            if !first {
                usage["completion_tokens"] = json!(self.tokens_before + completion);
                let total = usage["total_tokens"].as_u64().unwrap_or(0);
                usage["total_tokens"] = json!(total + self.tokens_before);
            }
        }
        if first {
            out.push_back(raw);
            return None;
        }
        if role_only {
            // The continuing model's opening chunk: the caller has had one.
            return None;
        }
        if let Some(id) = &self.id {
            data["id"] = json!(id);
        }
        if finishing {
            if let Some(models) = &self.written_by {
                let models: Vec<&str> = models.iter().map(|m| &**m).collect();
                data["brownout"] = json!({"models": models});
            }
        }
        out.push_back(shape::sse_frame(None, data.to_string().as_bytes()));
        None
    }
}

/// The continuation request: the original body with the text so far as the
/// assistant's (a prefill for Anthropic, which may not end in whitespace; an
/// assistant message and a request to go on for OpenAI). `None` when the body is not
/// a JSON object with `messages`, or its last message is already the assistant's.
fn continuation(api: Api, data: &[u8], text: &str) -> Option<Bytes> {
    let mut body: Value = serde_json::from_slice(data).ok()?;
    let messages = body.get_mut("messages")?.as_array_mut()?;
    if messages.last().is_some_and(|m| m["role"] == "assistant") {
        return None;
    }
    match api {
        Api::OpenAiChat => {
            messages.push(json!({"role": "assistant", "content": text}));
            messages.push(json!({
                "role": "user",
                "content": "Your previous answer was cut off. Continue it exactly where it stopped, without repeating any of it and without comment.",
            }));
        }
        _ => {
            messages.push(json!({"role": "assistant", "content": text.trim_end()}));
        }
    }
    Some(Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_carry_the_text_so_far() {
        let body = br#"{"model":"a","max_tokens":9,"messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
        let next = continuation(Api::AnthropicMessages, body, "Hello there ").unwrap();
        let next: Value = serde_json::from_slice(&next).unwrap();
        assert_eq!(
            next["messages"][1],
            json!({"role": "assistant", "content": "Hello there"})
        );
        assert_eq!(next["stream"], true);
        let next = continuation(Api::OpenAiChat, body, "Hello there ").unwrap();
        let next: Value = serde_json::from_slice(&next).unwrap();
        assert_eq!(next["messages"][1]["content"], "Hello there ");
        assert_eq!(next["messages"][2]["role"], "user");
        let prefilled =
            br#"{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"{"}]}"#;
        assert!(continuation(Api::AnthropicMessages, prefilled, "x").is_none());
        assert!(continuation(Api::AnthropicMessages, b"[]", "x").is_none());
    }
}
