//! One call: estimate, admission (and the wait), the call, learning, settlement.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use brownout_core::{
    body::{prepare_now, Need as Prepare},
    classify::parse_retry_after,
    event::Event,
    future::Output,
    provider::Api,
    Body, BoxError, RequestFacts,
};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Frame;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    bucket::{Admit, Need},
    config::OnLimit,
    refusal,
    shared::{Entry, Shared},
    tokens::{self, Estimate},
    usage::{self, Scanner},
    Deadline, LimitEvent, RateLimited, Resource, TooManyTokens,
};

static SDK_TIMEOUT: http::HeaderName = http::HeaderName::from_static("x-stainless-timeout");

/// The request's deadline: the [`Deadline`] in its extensions, or the timeout the
/// official SDKs send in `x-stainless-timeout` (seconds), whichever comes first.
fn deadline(parts: &http::request::Parts, now: Instant) -> Option<Instant> {
    let ext = parts.extensions.get::<Deadline>().map(|d| d.0);
    let sdk = parts
        .headers
        .get(&SDK_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(|s| now + Duration::from_secs_f64(s));
    match (ext, sdk) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Gives the taken tokens back if the call is dropped before the request is sent.
struct Unsent {
    entry: Option<Arc<Entry>>,
    need: Need,
}

impl Drop for Unsent {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            entry.lock().cancel(&self.need, Instant::now());
        }
    }
}

pub(crate) async fn call<S, B, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Request<B>,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let request = match prepare_now(request, Prepare::Facts) {
        Ok(Ok(request)) => request,
        // The caller's broken or invalid request: answered at once, counted nowhere.
        Ok(Err(error)) => return Err(error),
        Err(prepare) => prepare.await?,
    };
    let cfg = &shared.config;
    let now = Instant::now();
    let (mut parts, body) = request.into_parts();
    let head_facts;
    let facts = match RequestFacts::of(&parts.extensions) {
        Some(facts) => facts,
        None => {
            head_facts = RequestFacts::of_head(&parts);
            &head_facts
        }
    };
    let api = facts.api();
    let stream = facts.is_stream();
    let entry = shared.entry(&parts, facts, now);
    let llm = api != Api::Other;
    let estimate = match (llm, body.bytes()) {
        (false, _) => Estimate {
            raw: 0,
            exact: true,
        },
        (true, Some(bytes)) => tokens::estimate(api, facts.model(), bytes, &cfg.estimate),
        // Too long to buffer: its length, as text.
        (true, None) => {
            use http_body::Body as _;
            let len = body.size_hint().lower().max(body.prefix().len() as u64);
            Estimate {
                raw: (len as f64 / cfg.estimate.bytes_per_token).ceil() as u64,
                exact: false,
            }
        }
    };
    let input = entry.ratio.charge(estimate, cfg.estimate.margin);
    let output = if llm {
        facts.max_tokens().unwrap_or(cfg.default_max_tokens)
    } else {
        0
    };
    let need = Need::new(input, output);
    let deadline = deadline(&parts, now);
    let may_wait = deadline.map_or(cfg.max_wait, |d| {
        cfg.max_wait.min(d.saturating_duration_since(now))
    });
    let admit = entry.lock().admit(&need, now, may_wait);
    let waited = match admit {
        Admit::Taken(wait) => wait,
        Admit::Refused { wait, resource } => {
            Entry::count(&entry.sheds);
            cfg.events.emit(Event::new(
                "limit",
                &parts.method,
                &parts.uri,
                LimitEvent::Shed {
                    key: entry.name.clone(),
                    retry_after: wait,
                    resource,
                },
            ));
            let limited = RateLimited::new(entry.name.clone(), resource, wait);
            return match cfg.on_limit {
                OnLimit::Respond => Ok(refusal::rate_limited(api, limited)),
                OnLimit::Error => Err(Box::new(limited)),
            };
        }
        Admit::Oversized {
            resource,
            need,
            limit,
        } => {
            Entry::count(&entry.sheds);
            cfg.events.emit(Event::new(
                "limit",
                &parts.method,
                &parts.uri,
                LimitEvent::Oversized {
                    key: entry.name.clone(),
                    resource,
                    need,
                    limit,
                },
            ));
            let refused = TooManyTokens::new(entry.name.clone(), resource, need, limit);
            return match cfg.on_limit {
                OnLimit::Respond => Ok(refusal::too_many_tokens(api, refused)),
                OnLimit::Error => Err(Box::new(refused)),
            };
        }
    };
    if !waited.is_zero() {
        let mut unsent = Unsent {
            entry: Some(entry.clone()),
            need,
        };
        let start = now;
        let mut until = now + waited;
        loop {
            tokio::time::sleep_until(until).await;
            // A provider's 429 while this one waited: wait for its pause too, as far
            // as the deadline allows.
            let now = Instant::now();
            match entry.lock().paused_until(now) {
                Some(t) if deadline.is_none_or(|d| t <= d) && t - start <= cfg.max_wait => {
                    until = t
                }
                _ => break,
            }
        }
        unsent.entry = None;
        Entry::count(&entry.waits);
        cfg.events.emit(Event::new(
            "limit",
            &parts.method,
            &parts.uri,
            LimitEvent::Waited {
                key: entry.name.clone(),
                waited: Instant::now() - start,
                resource: None,
            },
        ));
    }
    let body = if api == Api::OpenAiChat && stream {
        ask_for_usage(&mut parts, body)
    } else {
        body
    };
    let ticket = Ticket {
        entry: entry.clone(),
        estimate,
        input,
        output,
    };
    let result = inner.call(Request::from_parts(parts, body)).await;
    let response = match result {
        Ok(response) => response,
        // No answer: the provider may have counted it all; the reservation stands.
        Err(error) => return Err(error.into()),
    };
    let now = Instant::now();
    let status = response.status();
    learn(&shared, &entry, api, &response, now);
    if !status.is_success() {
        // An error answer generated nothing: the tokens come back, the request
        // stays counted.
        ticket.refund_tokens(now);
        return Ok(response.map(Body::new));
    }
    let scanner = Scanner::new(api, stream);
    Ok(response.map(|body| {
        Body::new(Settle {
            inner: Body::new(body),
            scanner,
            ticket: Some(ticket),
        })
    }))
}

/// Tightens the key's buckets from the response's rate-limit headers, and pauses it
/// on a 429 that says how long.
fn learn<B>(shared: &Shared, entry: &Entry, api: Api, response: &Response<B>, now: Instant) {
    let mut changed = Vec::new();
    {
        let mut buckets = entry.lock();
        usage::learned(api, response.headers(), |l| {
            if buckets.learn(l.resource, l.limit, l.remaining, now) && l.limit.is_some() {
                changed.push(l);
            }
        });
        if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
            if let Some(delay) = retry_after(response.headers()) {
                buckets.pause(now + delay, now);
                drop(buckets);
                shared.config.events.emit(Event::detached(
                    "limit",
                    LimitEvent::Paused {
                        key: entry.name.clone(),
                        delay,
                    },
                ));
            }
        }
    }
    for l in changed {
        shared.config.events.emit(Event::detached(
            "limit",
            LimitEvent::Learned {
                key: entry.name.clone(),
                resource: l.resource,
                limit: l.limit,
                remaining: l.remaining,
            },
        ));
    }
}

fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e12)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// An OpenAI stream reports usage only when asked: ask, unless the caller said
/// anything about `stream_options` itself. The facts are read again from the new
/// body, so that a layer inside that edits it finds the right places.
fn ask_for_usage(parts: &mut http::request::Parts, body: Body) -> Body {
    let Some(bytes) = body.bytes() else {
        return body;
    };
    if brownout_core::json::find_top_level_span(bytes, "stream_options").is_some() {
        return body;
    }
    let Some(open) = bytes.iter().position(|b| *b == b'{') else {
        return body;
    };
    const ASK: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let mut out = BytesMut::with_capacity(bytes.len() + ASK.len());
    out.extend_from_slice(&bytes[..=open]);
    out.extend_from_slice(ASK);
    out.extend_from_slice(&bytes[open + 1..]);
    let out: Bytes = out.freeze();
    match RequestFacts::read(parts, &out, true) {
        Ok(facts) => {
            parts.extensions.insert(facts);
            parts.headers.remove(http::header::CONTENT_LENGTH);
            Body::from(out)
        }
        Err(_) => body,
    }
}

/// What a sent request took, to settle from its usage.
struct Ticket {
    entry: Arc<Entry>,
    estimate: Estimate,
    input: u64,
    output: u64,
}

impl Ticket {
    fn refund_tokens(&self, now: Instant) {
        let (input, output) = (self.input as f64, self.output as f64);
        self.entry
            .lock()
            .give_back_all([0.0, input, output, input + output], now);
    }

    /// Refunds the difference between what was taken and what `usage` reports; what
    /// it does not report stays taken.
    fn settle(&self, usage: &usage::Usage) {
        if usage.input.is_none() && usage.output.is_none() {
            return;
        }
        let mut back = [0.0; 4];
        if let Some(actual) = usage.input {
            back[Resource::InputTokens.index()] = self.input as f64 - actual as f64;
        }
        if let Some(actual) = usage.output {
            back[Resource::OutputTokens.index()] = self.output as f64 - actual as f64;
        }
        back[Resource::Tokens.index()] = back[1] + back[2];
        self.entry.lock().give_back_all(back, Instant::now());
        if let Some(prompt) = usage.prompt {
            self.entry
                .ratio
                .observe(self.estimate.raw, self.input, prompt);
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body, read for its usage as it passes; settled at its end, or
    /// when it is dropped.
    struct Settle {
        #[pin]
        inner: Body,
        scanner: Scanner,
        ticket: Option<Ticket>,
    }

    impl PinnedDrop for Settle {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(ticket) = this.ticket.take() {
                ticket.settle(&this.scanner.usage);
            }
        }
    }
}

impl http_body::Body for Settle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let last = this.inner.is_end_stream();
                    this.scanner.feed(data, last);
                }
            }
            None => {
                if let Some(ticket) = this.ticket.take() {
                    ticket.settle(&this.scanner.usage);
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
