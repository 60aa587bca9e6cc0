//! Behaviour of the degrade layer against mock upstreams.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use brownout_core::{
    body::BodyLimits,
    error::{find, AttemptTimedOut, BrokenBody, DeadlineExceeded, InvalidRequest, Rejected},
    event::Event,
    Body as BrownoutBody, BoxError, OutcomeKind,
};
use brownout_degrade::{
    Degrade, DegradeConfig, DegradeEvent, DegradeLayer, Degraded, Rule, DEFAULT_GENERIC_ANSWER,
};
use bytes::Bytes;
use http::{response::Parts, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::{json, Value};
use tower::{service_fn, util::BoxCloneService, Layer, ServiceExt};

type Inner = BoxCloneService<Request<BrownoutBody>, Response<BrownoutBody>, BoxError>;

const ANTHROPIC: &str = "https://api.anthropic.com/v1/messages?beta=true";
const OPENAI: &str = "https://api.openai.com/v1/chat/completions";
const API_KEY: &str = "sk-ant-secret-123";

const REFUNDS: &str = "You can request a refund from Settings › Billing.";
const OUTAGE: &str = "We are aware of the outage; see status.example.com.";

/// What the upstream was sent.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Bytes>>>);

impl Seen {
    fn bodies(&self) -> Vec<Bytes> {
        self.0.lock().unwrap().clone()
    }
}

/// An upstream that answers `status` with `body` and an extra header, and records
/// each request body.
fn answering(status: u16, body: &'static str) -> (Inner, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let service = service_fn(move |request: Request<BrownoutBody>| {
        let record = record.clone();
        async move {
            let bytes = request.into_body().collect().await?.to_bytes();
            record.0.lock().unwrap().push(bytes);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("request-id", "req_upstream")
                .body(BrownoutBody::from(body))?;
            Ok::<_, BoxError>(response)
        }
    });
    (BoxCloneService::new(service), seen)
}

/// An upstream that fails with an error.
fn failing(error: fn() -> BoxError) -> Inner {
    BoxCloneService::new(service_fn(move |_: Request<BrownoutBody>| async move {
        Err::<Response<BrownoutBody>, _>(error())
    }))
}

fn overloaded() -> Inner {
    answering(
        529,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )
    .0
}

fn rules() -> DegradeConfig {
    DegradeConfig::new([
        Rule::new("refunds", r"(?i)\brefund", REFUNDS).unwrap(),
        Rule::new("outage", r"(?i)\b(down|outage)\b", OUTAGE).unwrap(),
    ])
    .unwrap()
    .seed(7)
}

fn request(url: &str, body: Value) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("x-api-key", API_KEY)
        .header("authorization", format!("Bearer {API_KEY}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn anthropic(messages: Value) -> Request<Full<Bytes>> {
    request(
        ANTHROPIC,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": messages}),
    )
}

fn openai(messages: Value) -> Request<Full<Bytes>> {
    request(
        OPENAI,
        json!({"model": "gpt-4.1-mini", "messages": messages}),
    )
}

async fn call(
    config: DegradeConfig,
    inner: Inner,
    request: Request<Full<Bytes>>,
) -> (Parts, Bytes) {
    let response = Degrade::new(inner, config).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// The text a degraded answer carries, in whichever of the four shapes it is.
fn answer_text(parts: &Parts, body: &[u8]) -> String {
    let content_type = parts.headers["content-type"].to_str().unwrap();
    if content_type == "text/event-stream" {
        return sse(body)
            .iter()
            .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
            .filter_map(|v| {
                v["delta"]["text"]
                    .as_str()
                    .or(v["choices"][0]["delta"]["content"].as_str())
                    .map(str::to_owned)
            })
            .collect();
    }
    let v: Value = serde_json::from_slice(body).unwrap();
    v["content"][0]["text"]
        .as_str()
        .or(v["choices"][0]["message"]["content"].as_str())
        .unwrap()
        .to_owned()
}

/// Splits an SSE stream into (event name, data) pairs, checking its framing.
fn sse(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "a stream ends with a blank line");
    text.split_terminator("\n\n")
        .map(|event| {
            let mut name = None;
            let mut data = Vec::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    assert!(name.replace(n.to_owned()).is_none(), "one name per event");
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            assert_eq!(data.len(), 1, "one data line per event: {event:?}");
            (name, data[0].to_owned())
        })
        .collect()
}

fn is_degraded(parts: &Parts) -> bool {
    parts.headers.get("x-brownout-degraded").is_some()
        || parts.extensions.get::<Degraded>().is_some()
}

/// A layer's refusal, as a breaker's `CircuitOpen` gives it: a `Rejected` as its
/// source.
#[derive(Debug)]
struct Refused(Rejected);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("circuit open")
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

// --- When it degrades -----------------------------------------------------------

#[tokio::test]
async fn overloads_outages_and_timeouts_are_degraded() {
    let cases: Vec<(&str, Inner, OutcomeKind)> = vec![
        ("529", overloaded(), OutcomeKind::Overloaded),
        ("503", answering(503, "unavailable").0, OutcomeKind::Overloaded),
        ("500", answering(500, r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#).0, OutcomeKind::ServerError),
        ("502", answering(502, "<html>bad gateway</html>").0, OutcomeKind::ServerError),
        ("504", answering(504, "").0, OutcomeKind::Timeout),
        ("429", answering(429, r#"{"error":{"type":"requests","code":"rate_limit_exceeded","message":"slow down"}}"#).0, OutcomeKind::RateLimited),
        ("attempt timeout", failing(|| Box::new(AttemptTimedOut::new(Duration::from_secs(30)))), OutcomeKind::Timeout),
        ("deadline", failing(|| Box::new(DeadlineExceeded::new(Duration::from_secs(60), 3))), OutcomeKind::Timeout),
        ("io timeout", failing(|| Box::new(io::Error::from(io::ErrorKind::TimedOut))), OutcomeKind::Timeout),
        ("circuit open", failing(|| Box::new(Refused(Rejected::new(Some(Duration::from_secs(20)))))), OutcomeKind::Rejected),
        ("connection refused", failing(|| Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))), OutcomeKind::ConnectionFailed),
    ];
    for (label, inner, kind) in cases {
        let events = Arc::new(Mutex::new(Vec::<Event>::new()));
        let sink = events.clone();
        let config = rules().listener(move |e: &Event| sink.lock().unwrap().push(e.clone()));
        let request = anthropic(json!([{"role": "user", "content": "is it down?"}]));
        let (parts, body) = call(config, inner, request).await;
        assert_eq!(parts.status, 200, "{label}");
        assert_eq!(parts.headers["x-brownout-degraded"], "true", "{label}");
        assert_eq!(
            parts.headers["x-brownout-degraded-rule"], "outage",
            "{label}"
        );
        assert_eq!(answer_text(&parts, &body), OUTAGE, "{label}");
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1, "{label}");
        match events[0].data::<DegradeEvent>() {
            Some(DegradeEvent::Degraded { rule, outcome }) => {
                assert_eq!(rule.as_deref(), Some("outage"), "{label}");
                assert_eq!(outcome.as_ref().map(|o| o.kind()), Some(kind), "{label}");
            }
            _ => panic!("{label}: unexpected event {:?}", events[0]),
        }
    }
}

#[tokio::test]
async fn client_errors_and_successes_pass_through_byte_for_byte() {
    let cases: [(u16, &'static str); 8] = [
        (
            200,
            r#"{"id":"msg_real","type":"message","content":[{"type":"text","text":"hi"}]}"#,
        ),
        (
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"refund?"}}"#,
        ),
        (
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"bad key"}}"#,
        ),
        (
            403,
            r#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#,
        ),
        (
            404,
            r#"{"type":"error","error":{"type":"not_found_error","message":"no model"}}"#,
        ),
        (
            413,
            r#"{"type":"error","error":{"type":"request_too_large","message":"big"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        ),
        (200, "data: {\"partial\": \"stream\"}\n\n"),
    ];
    for (status, upstream_body) in cases {
        let events = Arc::new(AtomicUsize::new(0));
        let count = events.clone();
        let config = rules().listener(move |_: &Event| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        let (inner, seen) = answering(status, upstream_body);
        let sent = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "refund"}]});
        let (parts, body) = call(config, inner, request(ANTHROPIC, sent.clone())).await;
        assert_eq!(parts.status, status);
        assert_eq!(&body[..], upstream_body.as_bytes(), "{status}: body intact");
        assert_eq!(
            parts.headers["request-id"], "req_upstream",
            "{status}: headers intact"
        );
        assert!(!is_degraded(&parts), "{status} is not degraded");
        assert_eq!(events.load(Ordering::SeqCst), 0, "{status}: no event");
        assert_eq!(
            seen.bodies(),
            vec![Bytes::from(sent.to_string())],
            "{status}: request intact"
        );
    }
}

#[tokio::test]
async fn degrade_when_narrows_what_is_answered() {
    let config =
        || rules().degrade_when(|o: &brownout_core::Outcome| o.kind() == OutcomeKind::Overloaded);
    let messages = json!([{"role": "user", "content": "hello"}]);
    let (parts, body) = call(
        config(),
        answering(500, "boom").0,
        anthropic(messages.clone()),
    )
    .await;
    assert_eq!(parts.status, 500);
    assert_eq!(&body[..], b"boom");
    assert!(!is_degraded(&parts));

    let (parts, _) = call(config(), overloaded(), anthropic(messages)).await;
    assert_eq!(parts.status, 200);
    assert!(is_degraded(&parts));
}

// --- Which answer -----------------------------------------------------------------

#[tokio::test]
async fn rules_match_the_last_user_message_only() {
    type MakeRequest = fn(Value) -> Request<Full<Bytes>>;
    let providers: [(&str, MakeRequest); 2] = [("anthropic", anthropic), ("openai", openai)];
    for (provider, make) in providers {
        for blocks in [false, true] {
            let content = |text: &str| {
                if blocks {
                    json!([{"type": "text", "text": "Hello."}, {"type": "text", "text": text}])
                } else {
                    json!(text)
                }
            };
            let label = format!("{provider}, blocks: {blocks}");

            // A refund was asked about before; the last question is about something else.
            let earlier = json!([
                {"role": "user", "content": content("I want a refund")},
                {"role": "assistant", "content": "Sure, about your refund…"},
                {"role": "user", "content": content("What are your opening hours?")},
            ]);
            let (parts, body) = call(rules(), overloaded(), make(earlier)).await;
            assert_eq!(
                answer_text(&parts, &body),
                DEFAULT_GENERIC_ANSWER,
                "{label}"
            );
            assert!(
                parts.headers.get("x-brownout-degraded-rule").is_none(),
                "{label}"
            );
            assert_eq!(
                parts.extensions.get::<Degraded>().unwrap().rule(),
                None,
                "{label}"
            );

            // The last user message matches, even with an assistant turn after it.
            let last = json!([
                {"role": "user", "content": content("Is the service down?")},
                {"role": "user", "content": content("Also: how do I get a REFUND?")},
                {"role": "assistant", "content": "The service is down."},
            ]);
            let (parts, body) = call(rules(), overloaded(), make(last)).await;
            assert_eq!(answer_text(&parts, &body), REFUNDS, "{label}");
            assert_eq!(
                parts.headers["x-brownout-degraded-rule"], "refunds",
                "{label}"
            );
            assert_eq!(
                parts.extensions.get::<Degraded>().unwrap().rule(),
                Some("refunds"),
                "{label}"
            );
        }
    }
}

#[tokio::test]
async fn the_first_matching_rule_wins() {
    let messages = json!([{"role": "user", "content": "the site is down, I want a refund"}]);
    let (parts, _) = call(rules(), overloaded(), anthropic(messages)).await;
    assert_eq!(parts.headers["x-brownout-degraded-rule"], "refunds");
}

#[tokio::test]
async fn blocks_of_other_types_are_not_text() {
    // The word only appears in an image's alt text and a tool result: no match.
    let messages = json!([{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "refund"}},
        {"type": "tool_result", "tool_use_id": "t1", "content": "refund"},
        {"type": "text", "text": "what does this say?"},
    ]}]);
    let (parts, body) = call(rules(), overloaded(), anthropic(messages)).await;
    assert_eq!(answer_text(&parts, &body), DEFAULT_GENERIC_ANSWER);
}

#[tokio::test]
async fn user_text_never_changes_the_answer() {
    let answer = "Refunds: see {{template}}, $1, ${0}, \\1 and {user}.";
    let config = || {
        DegradeConfig::new([Rule::new("refunds", "(?i)refund", answer).unwrap()])
            .unwrap()
            .generic("Back soon. {{template}} $0")
            .unwrap()
    };
    for text in [
        "refund (.*) $0 ${1} \\1 {{template}}",
        "{{template}} refund {{answer}}",
        "refund [a-z]+ ^$ | .* (?P<x>)",
        "REFUND\u{0}\n\r\t\"quoted\"",
    ] {
        let marker = "Z9Q-unique-user-marker";
        let text = format!("{text} {marker}");
        let (parts, body) = call(
            config(),
            overloaded(),
            anthropic(json!([{"role": "user", "content": text}])),
        )
        .await;
        assert_eq!(answer_text(&parts, &body), answer, "{text:?}");
        assert!(
            !String::from_utf8_lossy(&body).contains(marker),
            "the user's text is not echoed"
        );
    }
    let (parts, body) = call(
        config(),
        overloaded(),
        anthropic(json!([{"role": "user", "content": "{{template}} (.*)"}])),
    )
    .await;
    assert_eq!(answer_text(&parts, &body), "Back soon. {{template}} $0");
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_the_generic_answer_in_the_paths_shape() {
    for url in [ANTHROPIC, OPENAI] {
        let request = Request::post(url)
            .body(Full::new(Bytes::from_static(b"refund, not JSON {")))
            .unwrap();
        let (parts, body) = call(rules(), overloaded(), request).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["content-type"], "application/json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], brownout_degrade::UNKNOWN_MODEL);
        assert_eq!(answer_text(&parts, &body), DEFAULT_GENERIC_ANSWER);
        let object = if url == OPENAI {
            &v["object"]
        } else {
            &v["type"]
        };
        assert_eq!(
            object,
            if url == OPENAI {
                "chat.completion"
            } else {
                "message"
            }
        );
    }
}

#[tokio::test]
async fn a_body_of_an_odd_shape_keeps_its_model_and_stream() {
    // `messages` is not a list: its text cannot be read, but the request's facts can.
    let request = request(
        ANTHROPIC,
        json!({"model": "claude-sonnet-4-5", "stream": true, "messages": "refund"}),
    );
    let (parts, body) = call(rules(), overloaded(), request).await;
    assert_eq!(parts.headers["content-type"], "text/event-stream");
    assert!(parts.headers.get("x-brownout-degraded-rule").is_none());
    assert_eq!(answer_text(&parts, &body), DEFAULT_GENERIC_ANSWER);
    assert!(String::from_utf8_lossy(&body).contains(r#""model":"claude-sonnet-4-5""#));
}

#[tokio::test]
async fn a_body_over_the_replay_limit_is_sent_whole_and_answered_generically() {
    let filler = "x".repeat(4096);
    let sent = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 10,
        "messages": [{"role": "user", "content": format!("{filler} refund")}],
    });
    let (inner, seen) = answering(529, "overloaded");
    let mut request = request(ANTHROPIC, sent.clone());
    request
        .extensions_mut()
        .insert(BodyLimits::new().replay_limit(1024));
    let (parts, body) = call(rules(), inner, request).await;
    assert_eq!(
        seen.bodies(),
        vec![Bytes::from(sent.to_string())],
        "sent whole, once"
    );
    assert!(is_degraded(&parts));
    // The text was not kept, so no rule can match.
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(answer_text(&parts, &body), DEFAULT_GENERIC_ANSWER);
}

/// A request body that arrives in chunks, with no length known in advance.
struct Chunks(std::collections::VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_long_streamed_body_is_answered_in_the_shape_its_start_asked_for() {
    let start = r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":10,"messages":[{"role":"user","content":""#;
    let parts = [start.to_owned(), "x".repeat(2048), "refund\"}]}".to_owned()];
    let whole: String = parts.concat();
    let seen = Seen::default();
    let record = seen.clone();
    let inner = service_fn(move |request: Request<BrownoutBody>| {
        let record = record.clone();
        async move {
            let bytes = request.into_body().collect().await?.to_bytes();
            record.0.lock().unwrap().push(bytes);
            Ok::<_, BoxError>(
                Response::builder()
                    .status(529)
                    .body(BrownoutBody::empty())?,
            )
        }
    });
    let body = Chunks(parts.iter().map(|p| Bytes::from(p.clone())).collect());
    let request = Request::post(ANTHROPIC)
        .extension(BodyLimits::new().replay_limit(1024))
        .body(body)
        .unwrap();
    let response = Degrade::new(inner, rules()).oneshot(request).await.unwrap();
    assert_eq!(seen.bodies(), vec![Bytes::from(whole)], "sent whole, once");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    // The start of the body says that it streams, and for which model.
    assert_eq!(parts.headers["content-type"], "text/event-stream");
    assert_eq!(answer_text(&parts, &body), DEFAULT_GENERIC_ANSWER);
    assert!(String::from_utf8_lossy(&body).contains(r#""model":"claude-sonnet-4-5""#));
}

// --- What it looks like --------------------------------------------------------------

/// The Anthropic Messages response, as an SDK reads it.
#[derive(Debug, Deserialize)]
struct Message {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    role: String,
    model: String,
    content: Vec<ContentBlock>,
    stop_reason: String,
    stop_sequence: Option<String>,
    usage: MessageUsage,
}

#[derive(Debug, Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    text: String,
}

#[derive(Debug, Deserialize)]
struct MessageUsage {
    input_tokens: u64,
    output_tokens: u64,
}

/// The OpenAI chat completion, as an SDK reads it.
#[derive(Debug, Deserialize)]
struct ChatCompletion {
    id: String,
    object: String,
    created: u64,
    model: String,
    choices: Vec<CompletionChoice>,
    usage: CompletionUsage,
}

#[derive(Debug, Deserialize)]
struct CompletionChoice {
    index: u32,
    message: CompletionMessage,
    finish_reason: String,
    logprobs: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CompletionMessage {
    role: String,
    content: String,
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// One chunk of an OpenAI stream.
#[derive(Debug, Deserialize)]
struct ChatCompletionChunk {
    id: String,
    object: String,
    created: u64,
    model: String,
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<CompletionUsage>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    index: u32,
    delta: ChunkDelta,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    role: Option<String>,
    content: Option<String>,
}

#[tokio::test]
async fn the_anthropic_answer_is_a_messages_response() {
    let messages = json!([{"role": "user", "content": "refund"}]);
    let (parts, body) = call(rules(), overloaded(), anthropic(messages)).await;
    assert_eq!(parts.headers["content-type"], "application/json");
    let message: Message = serde_json::from_slice(&body).unwrap();
    assert!(
        message.id.starts_with("msg_") && message.id.len() > 10,
        "{}",
        message.id
    );
    assert_eq!(message.kind, "message");
    assert_eq!(message.role, "assistant");
    assert_eq!(message.model, "claude-sonnet-4-5");
    assert_eq!(message.content.len(), 1);
    assert_eq!(message.content[0].kind, "text");
    assert_eq!(message.content[0].text, REFUNDS);
    assert_eq!(message.stop_reason, "end_turn");
    assert_eq!(message.stop_sequence, None);
    assert_eq!(message.usage.input_tokens, 0);
    assert!(message.usage.output_tokens > 0);
    // Nullable fields are present, as the API sends them.
    let raw: Value = serde_json::from_slice(&body).unwrap();
    assert!(raw.as_object().unwrap().contains_key("stop_sequence"));
}

#[tokio::test]
async fn the_openai_answer_is_a_chat_completion() {
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "refund?"}]);
    let (parts, body) = call(rules(), overloaded(), openai(messages)).await;
    assert_eq!(parts.headers["content-type"], "application/json");
    let completion: ChatCompletion = serde_json::from_slice(&body).unwrap();
    assert!(completion.id.starts_with("chatcmpl-"), "{}", completion.id);
    assert_eq!(completion.object, "chat.completion");
    assert!(completion.created > 1_600_000_000);
    assert_eq!(completion.model, "gpt-4.1-mini");
    assert_eq!(completion.choices.len(), 1);
    let choice = &completion.choices[0];
    assert_eq!(choice.index, 0);
    assert_eq!(choice.message.role, "assistant");
    assert_eq!(choice.message.content, REFUNDS);
    assert_eq!(choice.message.refusal, None);
    assert_eq!(choice.finish_reason, "stop");
    assert!(choice.logprobs.is_none());
    assert_eq!(completion.usage.prompt_tokens, 0);
    assert!(completion.usage.completion_tokens > 0);
    assert_eq!(
        completion.usage.total_tokens,
        completion.usage.completion_tokens
    );
}

#[tokio::test]
async fn the_anthropic_stream_is_a_valid_event_stream() {
    let sent = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "refund"}]});
    let (parts, body) = call(rules(), overloaded(), request(ANTHROPIC, sent)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], "text/event-stream");
    assert_eq!(parts.headers["x-brownout-degraded"], "true");

    let events = sse(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    let without_pings: Vec<&str> = names.iter().copied().filter(|n| *n != "ping").collect();
    assert_eq!(without_pings[..2], ["message_start", "content_block_start"]);
    assert!(without_pings[2..without_pings.len() - 3]
        .iter()
        .all(|n| *n == "content_block_delta"));
    assert!(without_pings.len() >= 6);
    assert_eq!(
        without_pings[without_pings.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );

    let mut text = String::new();
    for (name, data) in &events {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            v["type"],
            name.as_deref().unwrap(),
            "each event's data names it"
        );
        match name.as_deref().unwrap() {
            "message_start" => {
                let m = &v["message"];
                assert!(m["id"].as_str().unwrap().starts_with("msg_"));
                assert_eq!(m["type"], "message");
                assert_eq!(m["role"], "assistant");
                assert_eq!(m["model"], "claude-sonnet-4-5");
                assert_eq!(m["content"], json!([]));
                assert!(m["stop_reason"].is_null());
                assert_eq!(m["usage"]["input_tokens"], 0);
            }
            "content_block_start" => {
                assert_eq!(v["index"], 0);
                assert_eq!(v["content_block"], json!({"type": "text", "text": ""}));
            }
            "content_block_delta" => {
                assert_eq!(v["index"], 0);
                assert_eq!(v["delta"]["type"], "text_delta");
                text.push_str(v["delta"]["text"].as_str().unwrap());
            }
            "content_block_stop" => assert_eq!(v["index"], 0),
            "message_delta" => {
                assert_eq!(v["delta"]["stop_reason"], "end_turn");
                assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
            }
            "message_stop" | "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(text, REFUNDS);
}

#[tokio::test]
async fn the_openai_stream_is_a_valid_event_stream() {
    for include_usage in [false, true] {
        let mut sent = json!({"model": "gpt-4.1-mini", "stream": true,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "refund"}]}]});
        if include_usage {
            sent["stream_options"] = json!({"include_usage": true});
        }
        let (parts, body) = call(rules(), overloaded(), request(OPENAI, sent)).await;
        assert_eq!(parts.headers["content-type"], "text/event-stream");
        let events = sse(&body);
        assert!(
            events.iter().all(|(name, _)| name.is_none()),
            "OpenAI streams have no event names"
        );
        let (last, chunks) = events.split_last().unwrap();
        assert_eq!(last.1, "[DONE]");
        let chunks: Vec<ChatCompletionChunk> = chunks
            .iter()
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c.object == "chat.completion.chunk"
            && c.id == chunks[0].id
            && c.id.starts_with("chatcmpl-")
            && c.model == "gpt-4.1-mini"
            && c.created == chunks[0].created));
        let (usage, choices) = if include_usage {
            let (usage, rest) = chunks.split_last().unwrap();
            assert!(usage.choices.is_empty());
            assert!(usage.usage.as_ref().unwrap().completion_tokens > 0);
            (usage.usage.as_ref(), rest)
        } else {
            (None, &chunks[..])
        };
        assert_eq!(usage.is_some(), include_usage);
        assert!(choices
            .iter()
            .all(|c| c.choices.len() == 1 && c.choices[0].index == 0 && c.usage.is_none()));
        assert_eq!(
            choices[0].choices[0].delta.role.as_deref(),
            Some("assistant")
        );
        let (stop, content) = choices.split_last().unwrap();
        assert_eq!(stop.choices[0].finish_reason.as_deref(), Some("stop"));
        assert!(content.iter().all(|c| c.choices[0].finish_reason.is_none()));
        let text: String = content
            .iter()
            .filter_map(|c| c.choices[0].delta.content.clone())
            .collect();
        assert_eq!(text, REFUNDS);
    }
}

#[tokio::test]
async fn status_and_retry_after_are_configurable() {
    let config = rules()
        .status(http::StatusCode::SERVICE_UNAVAILABLE)
        .unwrap()
        .retry_after(Duration::from_millis(1500));
    let (parts, body) = call(
        config,
        overloaded(),
        anthropic(json!([{"role": "user", "content": "hi"}])),
    )
    .await;
    assert_eq!(parts.status, 503);
    assert_eq!(
        parts.headers["retry-after"], "2",
        "rounded up to whole seconds"
    );
    assert_eq!(answer_text(&parts, &body), DEFAULT_GENERIC_ANSWER);

    let (parts, _) = call(
        rules(),
        overloaded(),
        anthropic(json!([{"role": "user", "content": "hi"}])),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers.get("retry-after").is_none());

    assert!(rules().status(http::StatusCode::NO_CONTENT).is_err());
    assert!(rules().status(http::StatusCode::FOUND).is_err());
    assert!(rules().generic("  ").is_err());
}

#[tokio::test]
async fn the_event_names_the_request_but_never_its_secrets() {
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let sink = events.clone();
    let config = rules().listener(move |e: &Event| sink.lock().unwrap().push(e.clone()));
    let messages = json!([{"role": "user", "content": "refund"}]);
    let (parts, _) = call(config, overloaded(), anthropic(messages)).await;
    assert!(is_degraded(&parts));
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.layer, "degrade");
    assert_eq!(event.name(), "degraded");
    assert!(event.data::<DegradeEvent>().is_some());
    assert_eq!(event.method, Some(http::Method::POST));
    assert_eq!(event.path.as_deref(), Some("/v1/messages"));
    let printed = format!("{event:?}");
    assert!(!printed.contains(API_KEY), "{printed}");
    assert!(!printed.contains("beta=true"), "no query: {printed}");
}

#[tokio::test]
async fn seeded_ids_repeat_and_differ_between_answers() {
    let ids = |seed| async move {
        let service = Degrade::new(overloaded(), DegradeConfig::default().seed(seed));
        let mut ids = Vec::new();
        for _ in 0..3 {
            let response = service.clone().oneshot(anthropic(json!([]))).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let message: Message = serde_json::from_slice(&body).unwrap();
            ids.push(message.id);
        }
        ids
    };
    let first = ids(42).await;
    assert_eq!(first, ids(42).await);
    assert_ne!(first, ids(43).await);
    assert!(first[0] != first[1] && first[1] != first[2], "{first:?}");
}

// --- Around it ------------------------------------------------------------------------

/// A request body that fails after its first chunk.
struct Broken(bool);

impl Body for Broken {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(Some(Err(io::Error::other("client went away"))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"model\":")))))
    }
}

/// An upstream that reads the whole request body, as an HTTP client sending it does,
/// and fails with the body's error when it meets one; else it is overloaded. Counts
/// its calls.
fn reading_upstream() -> (Inner, Arc<AtomicUsize>) {
    reading_upstream_wrapping(false)
}

/// [`reading_upstream`], wrapping the body's error in an `io::Error` when `in_io`
/// (as brownout-sim and other io-based upstreams do).
fn reading_upstream_wrapping(in_io: bool) -> (Inner, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let service = service_fn(move |request: Request<BrownoutBody>| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            if let Err(error) = request.into_body().collect().await {
                return Err(if in_io {
                    Box::new(io::Error::other(error)) as BoxError
                } else {
                    error
                });
            }
            Ok::<_, BoxError>(
                Response::builder()
                    .status(529)
                    .body(BrownoutBody::empty())?,
            )
        }
    });
    (BoxCloneService::new(service), calls)
}

/// A degrade config that answers every failure, and counts its events.
fn degrade_everything() -> (DegradeConfig, Arc<AtomicUsize>) {
    let events = Arc::new(AtomicUsize::new(0));
    let count = events.clone();
    let config = rules()
        .degrade_when(|_: &brownout_core::Outcome| true)
        .listener(move |_: &Event| {
            count.fetch_add(1, Ordering::SeqCst);
        });
    (config, events)
}

#[tokio::test]
async fn a_request_body_that_fails_is_refused_and_never_degraded() {
    for (config, events) in [
        (rules(), Arc::new(AtomicUsize::new(0))),
        degrade_everything(),
    ] {
        let (inner, calls) = reading_upstream();
        let request = Request::post(ANTHROPIC).body(Broken(false)).unwrap();
        let error = Degrade::new(inner, config)
            .oneshot(request)
            .await
            .unwrap_err();
        assert!(
            find::<BrokenBody>(error.as_ref()).is_some(),
            "a BrokenBody: {error}"
        );
        assert!(error.to_string().contains("client went away"), "{error}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the upstream is not asked");
        assert_eq!(events.load(Ordering::SeqCst), 0, "no event");
    }
}

/// An upload that declares 50 MiB (`content-length: 52428800`), sends `chunks` chunks
/// of 1 KB and fails.
struct CutUpload {
    chunks: usize,
}

const FIFTY_MB: u64 = 52_428_800;

impl Body for CutUpload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.chunks == 0 {
            return Poll::Ready(Some(Err(io::Error::other("client went away"))));
        }
        self.chunks -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; 1024])))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(FIFTY_MB)
    }
}

#[tokio::test]
async fn an_upload_over_the_limit_that_breaks_is_never_degraded() {
    // 1 KB then a failure: refused while its start is read for the facts, or met by
    // the upstream as it streams the body (at most one call either way). 128 KB then a
    // failure: past any start read for the facts, so the upstream meets it.
    for chunks in [1, 128] {
        for ((config, events), in_io) in [
            ((rules(), Arc::new(AtomicUsize::new(0))), false),
            (degrade_everything(), false),
            ((rules(), Arc::new(AtomicUsize::new(0))), true),
        ] {
            let (inner, calls) = reading_upstream_wrapping(in_io);
            let request = Request::post(ANTHROPIC)
                .header("content-type", "application/json")
                .header("content-length", FIFTY_MB.to_string())
                .body(CutUpload { chunks })
                .unwrap();
            let result = Degrade::new(inner, config).oneshot(request).await;
            let error = match result {
                Ok(response) => panic!(
                    "a broken upload was answered {} (degraded: {})",
                    response.status(),
                    response.headers().contains_key("x-brownout-degraded")
                ),
                Err(error) => error,
            };
            assert!(
                find::<BrokenBody>(error.as_ref()).is_some(),
                "{chunks} KB: a BrokenBody in the chain: {error}"
            );
            let calls = calls.load(Ordering::SeqCst);
            if chunks == 1 {
                assert!(calls <= 1, "sent once at most: {calls}");
            } else {
                assert_eq!(calls, 1, "streamed to the upstream once");
            }
            assert_eq!(events.load(Ordering::SeqCst), 0, "no event");
        }
    }
}

#[tokio::test]
async fn a_body_naming_its_model_twice_is_refused_and_never_degraded() {
    let (config, events) = degrade_everything();
    let (inner, calls) = reading_upstream();
    let request = Request::post(ANTHROPIC)
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"refund"}],"model":"claude-opus-4-1"}"#,
        )))
        .unwrap();
    let error = Degrade::new(inner, config)
        .oneshot(request)
        .await
        .unwrap_err();
    assert!(
        find::<InvalidRequest>(error.as_ref()).is_some(),
        "an InvalidRequest: {error}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the upstream is not asked");
    assert_eq!(events.load(Ordering::SeqCst), 0, "no event");
}

#[tokio::test(start_paused = true)]
async fn the_errors_of_the_layers_inside_are_degraded() {
    use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy};
    use brownout_fallback::{Exhausted, FallbackConfig, FallbackLayer, Target};

    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let upstream = service_fn(move |_: Request<BrownoutBody>| {
        count.fetch_add(1, Ordering::SeqCst);
        async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(529)
                    .body(BrownoutBody::empty())
                    .unwrap(),
            )
        }
    });
    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::new().policy(FailurePolicy::consecutive(1).unwrap()),
    );
    let fallback = FallbackLayer::new(
        FallbackConfig::new([
            Target::new("claude-opus-4-1"),
            Target::new("claude-haiku-4-5"),
        ])
        .unwrap()
        .on_exhausted(Exhausted::Error),
    );
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let sink = events.clone();
    let degrade =
        DegradeLayer::new(rules().listener(move |e: &Event| sink.lock().unwrap().push(e.clone())));
    let client = degrade.layer(fallback.layer(breaker.layer(upstream)));

    let ask = || {
        request(
            ANTHROPIC,
            json!({"model": "claude-opus-4-1", "max_tokens": 64, "messages": [{"role": "user", "content": "refund"}]}),
        )
    };
    // Both models answer 529: the fallback gives up with its all-failed error.
    let response = client.clone().oneshot(ask()).await.unwrap();
    assert_eq!(response.headers()["x-brownout-degraded-rule"], "refunds");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Both breakers are open now: the fallback's error is made of refusals, and the
    // upstream is not called.
    let response = client.clone().oneshot(ask()).await.unwrap();
    assert_eq!(response.headers()["x-brownout-degraded-rule"], "refunds");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let events = events.lock().unwrap();
    let outcomes: Vec<OutcomeKind> = events
        .iter()
        .filter_map(|e| match e.data::<DegradeEvent>() {
            Some(DegradeEvent::Degraded { outcome, .. }) => outcome.as_ref().map(|o| o.kind()),
            _ => None,
        })
        .collect();
    // The fallback's report is not an error the classifier knows: a connection failure.
    assert_eq!(
        outcomes,
        [OutcomeKind::ConnectionFailed, OutcomeKind::ConnectionFailed]
    );
}

#[tokio::test]
async fn the_layer_and_the_service_agree() {
    let layered = Degrade::<Inner>::layer(rules()).layer(overloaded());
    assert!(format!("{layered:?}").contains("refunds"));
    let mut service = Degrade::new(overloaded(), rules());
    let _: &Inner = service.get_ref();
    let _: &mut Inner = service.get_mut();
    let response = layered
        .oneshot(anthropic(json!([{"role": "user", "content": "refund"}])))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-brownout-degraded-rule"], "refunds");
    let _: Inner = service.into_inner();
}
