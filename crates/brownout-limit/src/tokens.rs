//! Input tokens, counted before sending.
//!
//! OpenAI models: exact BPE counts with the model's encoding (`o200k_base` for the
//! GPT-4o, GPT-4.1, GPT-5 and o-series families, `cl100k_base` for GPT-4 and GPT-3.5),
//! through the `bpe-openai` crate (GitHub's `rust-gems`), which ships the encodings'
//! ranks and compiles them into the binary at build time: nothing is downloaded at run
//! time, and the ranks are loaded once, on the first request for a model of that
//! encoding. It counts the same tokens as OpenAI's `tiktoken` (the tests compare it
//! with `tiktoken-rs` 0.12, which ships the same ranks), in a third fewer instructions
//! than `tiktoken-rs` on a 2 KB prompt (`benches/limit.rs`), which matters since the
//! count runs on every request. Counts of long texts are remembered (see
//! [`EstimateConfig::cache_counts`](crate::EstimateConfig::cache_counts)): a
//! conversation is sent again, whole, on each turn. A chat request counts as OpenAI's cookbook counts
//! it: 3 tokens of framing per message, 1 more for a `name`, 3 to prime the reply.
//!
//! Claude models have no public tokenizer: the first estimate is the text's bytes
//! over [`EstimateConfig::bytes_per_token`](crate::EstimateConfig::bytes_per_token),
//! and each model's `usage` corrects it by a running ratio (see [`Ratio`]).
//!
//! Either way system prompts, tool definitions (as their JSON), tool calls and results
//! and images count: an image as a fixed number of tokens, since its size is not
//! known without decoding it.

use std::{borrow::Cow, fmt, marker::PhantomData, sync::Mutex};

use bpe_openai::Tokenizer;
use brownout_core::provider::Api;
use serde::{
    de::{SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

use crate::config::EstimateConfig;

/// How a request's input tokens were estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// The count before any correction.
    pub(crate) raw: u64,
    /// Whether `raw` is an exact BPE count.
    pub(crate) exact: bool,
}

/// The model families of each encoding, by name prefix, as OpenAI's `tiktoken`
/// maps them; a dated or fine-tuned name (`gpt-4o-2024-08-06`, `ft:gpt-4o-mini:…`)
/// has its family's encoding.
const O200K: [&str; 8] = [
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "chatgpt-4o",
    "o1",
    "o3",
    "o4",
];
const CL100K: [&str; 4] = [
    "gpt-4",
    "gpt-3.5",
    "text-embedding-3",
    "text-embedding-ada-002",
];

/// The BPE of an OpenAI model, if it has a known one.
pub(crate) fn openai_bpe(model: &str) -> Option<&'static Tokenizer> {
    let model = model.strip_prefix("ft:").unwrap_or(model);
    let model = model.rsplit('/').next().unwrap_or(model);
    if O200K.iter().any(|p| model.starts_with(p)) || model.starts_with("gpt-oss") {
        Some(bpe_openai::o200k_base())
    } else if CL100K.iter().any(|p| model.starts_with(p)) {
        Some(bpe_openai::cl100k_base())
    } else {
        None
    }
}

/// The first estimate of a request's input tokens, before any usage corrected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate {
    /// The tokens.
    pub tokens: u64,
    /// Whether it is an exact BPE count (an OpenAI model with a known encoding).
    pub exact: bool,
}

/// Counts the input tokens of a request body of `api` for `model`, as the layer does
/// before sending (without the per-model correction the layer learns from usage).
///
/// ```
/// use brownout_core::provider::Api;
/// use brownout_limit::{estimate_input_tokens, EstimateConfig};
///
/// let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#;
/// let count = estimate_input_tokens(Api::OpenAiChat, Some("gpt-4o"), body, &EstimateConfig::new());
/// assert!(count.exact);
/// assert_eq!(count.tokens, 9); // 3 per message, "user", "hello world", 3 for the reply
/// ```
pub fn estimate_input_tokens(
    api: Api,
    model: Option<&str>,
    body: &[u8],
    config: &EstimateConfig,
) -> TokenEstimate {
    let e = estimate(api, model, body, config);
    TokenEstimate {
        tokens: e.raw,
        exact: e.exact,
    }
}

/// Counts the input tokens of a request body of `api` for `model`.
pub(crate) fn estimate(
    api: Api,
    model: Option<&str>,
    body: &[u8],
    cfg: &EstimateConfig,
) -> Estimate {
    match parse(body) {
        Some(request) => count(api, model, &request, cfg),
        // Not a chat request we can read: the whole body, as text.
        None => Estimate {
            raw: bytes_estimate(body.len(), cfg),
            exact: false,
        },
    }
}

/// A JSON object read as a chat request (serde would read an array as one too).
fn parse(body: &[u8]) -> Option<ChatRequest<'_>> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice::<ChatRequest<'_>>(body).ok()
}

/// A chat request read once for its facts and its input: what the layer reads when
/// no layer outside it read the request's facts.
pub(crate) struct Read<'a> {
    request: ChatRequest<'a>,
    model: Option<Cow<'a, str>>,
    max_tokens: Option<u64>,
    stream: bool,
}

impl Read<'_> {
    /// The top-level `model`.
    pub(crate) fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The token limit (`max_tokens`, `max_completion_tokens` or `max_output_tokens`).
    pub(crate) fn max_tokens(&self) -> Option<u64> {
        self.max_tokens
    }

    /// Whether the caller asked for a stream.
    pub(crate) fn is_stream(&self) -> bool {
        self.stream
    }
}

/// Reads `body` in one pass for its facts (model, token limit, stream) and its input.
/// `None` when that one pass cannot say what brownout-core's facts would: not a chat
/// request serde reads (a member named twice, `model` among them), a `model` that is
/// not a string, a token limit that is not a whole number, a `stream` that is not a
/// boolean, or more than one token limit member (brownout-core takes the first in
/// the body's order).
pub(crate) fn read(body: &[u8]) -> Option<Read<'_>> {
    let request = parse(body)?;
    let model = match request.model {
        // Borrowed from the body unless it has escapes.
        Some(raw) => Some(match serde_json::from_str::<&str>(raw.get()) {
            Ok(model) => Cow::Borrowed(model),
            Err(_) => Cow::Owned(serde_json::from_str::<String>(raw.get()).ok()?),
        }),
        None => None,
    };
    let mut limits = [
        request.max_tokens,
        request.max_completion_tokens,
        request.max_output_tokens,
    ]
    .into_iter()
    .flatten();
    let max_tokens = match (limits.next(), limits.next()) {
        (None, _) => None,
        (Some(raw), None) => Some(raw.get().parse::<u64>().ok()?),
        (Some(_), Some(_)) => return None,
    };
    let stream = match request.stream.map(RawValue::get) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return None,
    };
    Some(Read {
        request,
        model,
        max_tokens,
        stream,
    })
}

/// Counts the input tokens of a request `read`, of `api` for `model`.
pub(crate) fn count_read(
    api: Api,
    model: Option<&str>,
    read: &Read<'_>,
    cfg: &EstimateConfig,
) -> Estimate {
    count(api, model, &read.request, cfg)
}

fn count(
    api: Api,
    model: Option<&str>,
    request: &ChatRequest<'_>,
    cfg: &EstimateConfig,
) -> Estimate {
    let bpe = match api {
        Api::OpenAiChat | Api::OpenAiResponses => model.and_then(openai_bpe),
        _ => None,
    };
    let mut counter = Counter {
        bpe,
        cfg,
        image_tokens: if api.is_openai() {
            cfg.image_tokens_openai
        } else {
            cfg.image_tokens_anthropic
        },
        total: 0,
    };
    counter.request(api, request);
    Estimate {
        raw: counter.total,
        exact: bpe.is_some(),
    }
}

fn bytes_estimate(len: usize, cfg: &EstimateConfig) -> u64 {
    (len as f64 / cfg.bytes_per_token).ceil() as u64
}

struct Counter<'c> {
    bpe: Option<&'static Tokenizer>,
    cfg: &'c EstimateConfig,
    image_tokens: u64,
    total: u64,
}

/// The framing OpenAI's cookbook counts per message, per name, and for the reply.
const PER_MESSAGE: u64 = 3;
const PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;
/// What Anthropic adds for tool use: its published tool-use system prompt is
/// 313–346 tokens depending on `tool_choice`.
const ANTHROPIC_TOOLS_PROMPT: u64 = 346;

impl Counter<'_> {
    fn text(&mut self, text: &str) {
        self.total += match self.bpe {
            Some(bpe) if self.cfg.cache_counts && text.len() >= CACHED_FROM => {
                COUNTS.count(bpe, text)
            }
            Some(bpe) => bpe.count(text) as u64,
            None => bytes_estimate(text.len(), self.cfg),
        };
    }

    fn raw(&mut self, raw: &RawValue) {
        self.text(raw.get());
    }

    fn request(&mut self, api: Api, r: &ChatRequest<'_>) {
        if let Some(system) = &r.system {
            self.content(system);
        }
        if let Some(instructions) = &r.instructions {
            self.text(instructions);
        }
        for m in &r.messages {
            self.total += PER_MESSAGE;
            if let Some(role) = &m.role {
                self.text(role);
            }
            if let Some(name) = &m.name {
                self.text(name);
                self.total += PER_NAME;
            }
            if let Some(content) = &m.content {
                self.content(content);
            }
            if let Some(calls) = m.tool_calls {
                self.raw(calls);
            }
        }
        if let Some(input) = &r.input {
            self.content(input);
        }
        if !r.messages.is_empty() && api.is_openai() {
            self.total += REPLY_PRIMING;
        }
        for tools in [r.tools, r.functions].into_iter().flatten() {
            self.raw(tools);
            if !api.is_openai() {
                self.total += ANTHROPIC_TOOLS_PROMPT;
            }
        }
    }

    fn content(&mut self, c: &Content<'_>) {
        match c {
            Content::None => {}
            Content::Text(text) => self.text(text),
            Content::Parts(parts) => {
                for p in parts {
                    self.part(p);
                }
            }
        }
    }

    fn part(&mut self, p: &Part<'_>) {
        let kind = p.kind.as_deref().unwrap_or("");
        match kind {
            "image" | "image_url" | "input_image" => {
                let low = p.image_url.is_some_and(|raw| raw.get().contains("\"low\""))
                    || p.detail.as_deref() == Some("low");
                self.total += if low && self.bpe.is_some() {
                    85
                } else {
                    self.image_tokens
                };
            }
            "document" | "input_file" | "file" => {
                // A PDF: about an image's worth per 100 KB of its base64.
                let len = p.source.map_or(0, |s| s.get().len()) as u64;
                self.total += self.image_tokens * (1 + len / 100_000);
            }
            _ => {
                if let Some(text) = &p.text {
                    self.text(text);
                }
                if let Some(content) = &p.content {
                    self.content(content);
                }
                if let Some(input) = p.input {
                    self.raw(input);
                }
                if let Some(arguments) = &p.arguments {
                    self.text(arguments);
                }
                if let Some(output) = &p.output {
                    self.content(output);
                }
            }
        }
    }
}

/// Texts this long or longer have their counts remembered.
const CACHED_FROM: usize = 512;

/// The BPE counts of the texts seen last, process-wide: a chat client sends the whole
/// conversation again on every turn, so most of a request's text was counted before,
/// and hashing a text costs about a hundredth of counting it.
///
/// A direct-mapped table of 4,096 slots, each one atomic word: 40 bits of the text's
/// hash (keyed per process) and its count (below 2²⁴). A text whose slot holds another
/// text's hash is counted, and takes the slot. Two texts would have to agree on 52 bits
/// of a keyed hash to be confused, and the usage a response reports settles the
/// estimate anyway.
static COUNTS: std::sync::LazyLock<CountCache> = std::sync::LazyLock::new(CountCache::new);

struct CountCache {
    slots: Box<[std::sync::atomic::AtomicU64]>,
    seed: foldhash::quality::RandomState,
}

impl CountCache {
    const SLOTS: usize = 4096;

    fn new() -> Self {
        CountCache {
            slots: (0..Self::SLOTS)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            seed: foldhash::quality::RandomState::default(),
        }
    }

    fn count(&self, bpe: &'static Tokenizer, text: &str) -> u64 {
        use std::{
            hash::{BuildHasher, Hasher},
            sync::atomic::Ordering,
        };
        let mut h = self.seed.build_hasher();
        h.write_usize(bpe as *const Tokenizer as usize);
        h.write(text.as_bytes());
        let hash = h.finish();
        let slot = &self.slots[(hash as usize) & (Self::SLOTS - 1)];
        let tag = hash >> 24;
        let held = slot.load(Ordering::Relaxed);
        if held != 0 && held >> 24 == tag {
            return held & 0xFF_FFFF;
        }
        let count = bpe.count(text) as u64;
        if count < 1 << 24 {
            slot.store(tag << 24 | count, Ordering::Relaxed);
        }
        count
    }
}

/// The parts of a chat request that hold input, Anthropic Messages, OpenAI Chat
/// Completions and Responses alike, and its facts. Every other member is skipped.
#[derive(Deserialize)]
struct ChatRequest<'a> {
    // The facts, as they are: read only by `read`.
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    system: Option<Content<'a>>,
    #[serde(borrow, default)]
    instructions: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
    #[serde(borrow, default)]
    input: Option<Content<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    output: Option<Content<'a>>,
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    detail: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
}

/// A `content`: a string, or a list of parts; anything else counts nothing.
enum Content<'a> {
    None,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of content parts")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }

            fn visit_unit<E>(self) -> Result<Content<'a>, E> {
                Ok(Content::None)
            }

            fn visit_none<E>(self) -> Result<Content<'a>, E> {
                Ok(Content::None)
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Content<'a>, S::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(part) = seq.next_element::<Part<'a>>()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A model's running correction: the ratio of the input tokens its responses
/// reported to the first estimate, and the estimates' error.
///
/// The first report sets the ratio; each one after moves it a tenth of the way, so
/// that one odd prompt does not swing it.
#[derive(Debug)]
pub(crate) struct Ratio {
    inner: Mutex<RatioState>,
    /// The ratio in force, as `f64` bits: read by every request without the lock.
    current: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct RatioState {
    ratio: Option<f64>,
    samples: u64,
    raw_error: f64,
    charged_error: f64,
}

/// How far the estimates of one model were from the usage its responses reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimateError {
    /// How many responses reported usage.
    pub samples: u64,
    /// The ratio of reported to first-estimated input tokens now in force.
    pub ratio: f64,
    /// The mean relative error of the first estimates, `|estimate − usage| / usage`.
    pub raw: f64,
    /// The mean relative error of the corrected estimates that were charged.
    pub corrected: f64,
}

impl Ratio {
    pub(crate) fn new() -> Self {
        Ratio {
            inner: Mutex::new(RatioState::default()),
            current: std::sync::atomic::AtomicU64::new(1.0f64.to_bits()),
        }
    }

    /// The tokens to charge for a first estimate of `raw`.
    pub(crate) fn charge(&self, estimate: Estimate, margin: f64) -> u64 {
        let ratio = f64::from_bits(self.current.load(std::sync::atomic::Ordering::Relaxed));
        let margin = if estimate.exact { 0.0 } else { margin };
        (estimate.raw as f64 * ratio * (1.0 + margin)).ceil() as u64
    }

    /// A response reported `actual` input tokens for a request first estimated at
    /// `raw` and charged `charged`.
    pub(crate) fn observe(&self, raw: u64, charged: u64, actual: u64) {
        if actual == 0 || raw == 0 {
            return;
        }
        let mut s = self.lock();
        let sample = actual as f64 / raw as f64;
        let ratio = match s.ratio {
            None => sample,
            Some(r) => r + (sample - r) * 0.1,
        };
        s.ratio = Some(ratio);
        self.current
            .store(ratio.to_bits(), std::sync::atomic::Ordering::Relaxed);
        s.samples += 1;
        let rel = |n: u64| (n as f64 - actual as f64).abs() / actual as f64;
        s.raw_error += rel(raw);
        s.charged_error += rel(charged);
    }

    pub(crate) fn error(&self) -> EstimateError {
        let s = *self.lock();
        let n = s.samples.max(1) as f64;
        EstimateError {
            samples: s.samples,
            ratio: s.ratio.unwrap_or(1.0),
            raw: s.raw_error / n,
            corrected: s.charged_error / n,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RatioState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(model: &str, body: &str) -> u64 {
        let e = estimate(
            Api::OpenAiChat,
            Some(model),
            body.as_bytes(),
            &EstimateConfig::new(),
        );
        assert!(e.exact);
        e.raw
    }

    /// A fixed set of prompts: prose, code, numbers, whitespace runs, contractions,
    /// non-Latin scripts, emoji, and text that looks like special tokens.
    const PROMPTS: &[&str] = &[
        "hello world",
        "tiktoken is great!",
        "You are a helpful assistant. Answer in one sentence.",
        "What's the weather in Zürich? I'd like to know, they've said it'll rain.",
        "fn main() {\n    println!(\"{}\", 40 + 2);\n}\n\n\n    // trailing   spaces   ",
        "1234567890 3.14159 1,000,000 2026-12-01T12:00:00Z",
        "日本語のテキストも数えます。Привет, мир! مرحبا بالعالم",
        "emoji 🎉🚀 and ZWJ 👩‍💻 sequences",
        "<|endoftext|> is only text here, <|im_start|> too",
        "  leading spaces\ttabs\r\nand CRLF\r\n",
        "HTTPRequest XMLParser camelCaseWords snake_case_words SCREAMING_CASE",
    ];

    #[test]
    fn openai_counts_match_the_reference_encodings() {
        use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton};
        let cases = [
            ("gpt-4o", o200k_base_singleton()),
            ("gpt-4", cl100k_base_singleton()),
        ];
        for (model, reference) in cases {
            let bpe = openai_bpe(model).unwrap();
            for prompt in PROMPTS {
                assert_eq!(
                    bpe.count(*prompt),
                    reference.encode_ordinary(prompt).len(),
                    "{model}: {prompt:?}"
                );
            }
        }
        // Remembered counts are the counts.
        let long = PROMPTS.concat().repeat(8);
        let bpe = openai_bpe("gpt-4o").unwrap();
        assert_eq!(COUNTS.count(bpe, &long), COUNTS.count(bpe, &long));
        assert_eq!(COUNTS.count(bpe, &long), bpe.count(&*long) as u64);
        let other = openai_bpe("gpt-4").unwrap();
        assert_eq!(COUNTS.count(other, &long), other.count(&*long) as u64);
        // Known counts of the encodings.
        assert_eq!(openai_bpe("gpt-4").unwrap().count("tiktoken is great!"), 6);
        assert_eq!(openai_bpe("gpt-4o").unwrap().count("hello world"), 2);
    }

    #[test]
    fn models_get_their_family_s_encoding() {
        let o200k = bpe_openai::o200k_base() as *const Tokenizer;
        let cl100k = bpe_openai::cl100k_base() as *const Tokenizer;
        let of = |m: &str| openai_bpe(m).map(|t| t as *const Tokenizer);
        for m in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.1-mini",
            "gpt-5",
            "o3-mini",
            "ft:gpt-4o-mini:org::id",
        ] {
            assert_eq!(of(m), Some(o200k), "{m}");
        }
        for m in ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"] {
            assert_eq!(of(m), Some(cl100k), "{m}");
        }
        assert_eq!(of("claude-opus-4-1"), None);
        assert_eq!(of("llama-3"), None);
    }

    #[test]
    fn chat_framing_is_counted_as_the_cookbook_does() {
        // 3 per message + role + content, 3 for the reply.
        let body = r#"{"model":"gpt-4","messages":[{"role":"user","content":"hello world"}]}"#;
        assert_eq!(openai("gpt-4", body), 3 + 1 + 2 + 3);
        let named = r#"{"model":"gpt-4","messages":[{"role":"user","name":"bob","content":"hello world"}]}"#;
        assert_eq!(openai("gpt-4", named), 3 + 1 + 2 + 3 + 1 + 1);
    }

    #[test]
    fn system_tools_and_images_count() {
        let cfg = EstimateConfig::new();
        let plain =
            r#"{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
        let with_all = r#"{"model":"claude-x","max_tokens":10,"system":[{"type":"text","text":"You are terse and exact, always."}],
            "tools":[{"name":"get_weather","description":"Weather for a city","input_schema":{"type":"object"}}],
            "messages":[{"role":"user","content":[{"type":"text","text":"hi"},
              {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}"#;
        let a = estimate(
            Api::AnthropicMessages,
            Some("claude-x"),
            plain.as_bytes(),
            &cfg,
        )
        .raw;
        let b = estimate(
            Api::AnthropicMessages,
            Some("claude-x"),
            with_all.as_bytes(),
            &cfg,
        )
        .raw;
        assert!(b >= a + 1600 + ANTHROPIC_TOOLS_PROMPT + 9, "{a} {b}");
    }

    #[test]
    fn one_pass_reads_the_facts_brownout_core_reads() {
        let parts = http::Request::post("https://api.anthropic.com/v1/messages")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let bodies = [
            r#"{"model":"claude-opus-4-1","max_tokens":1024,"messages":[]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"model":"gpt-4o","max_completion_tokens":7}"#,
            r#"{"model":"m\u0065","max_output_tokens":3,"stream":false}"#,
            r#"{"max_tokens":null,"model":null}"#,
            r#"{"messages":[]}"#,
        ];
        for body in bodies {
            let core = brownout_core::RequestFacts::read(&parts, body.as_bytes(), true).unwrap();
            let one = read(body.as_bytes()).expect(body);
            assert_eq!(one.model(), core.model(), "{body}");
            assert_eq!(one.max_tokens(), core.max_tokens(), "{body}");
            assert_eq!(one.is_stream(), core.is_stream(), "{body}");
        }
        // What one pass cannot decide as brownout-core does is left to brownout-core.
        for body in [
            r#"{"model":"a","messages":[],"model":"b"}"#,
            r#"{"model":"a","mod\u0065l":"b"}"#,
            r#"{"model":7}"#,
            r#"{"model":"a","max_tokens":1.5}"#,
            r#"{"model":"a","max_tokens":1,"max_completion_tokens":2}"#,
            r#"{"model":"a","stream":"yes"}"#,
            r#"["model"]"#,
        ] {
            assert!(read(body.as_bytes()).is_none(), "{body}");
        }
    }

    #[test]
    fn bad_bodies_are_estimated_by_their_length() {
        let cfg = EstimateConfig::new();
        for body in ["", "not json", "[1,2]", r#"{"messages":7}"#] {
            let e = estimate(Api::AnthropicMessages, None, body.as_bytes(), &cfg);
            assert_eq!(e.raw, bytes_estimate(body.len(), &cfg), "{body}");
        }
    }

    #[test]
    fn the_ratio_learns_from_usage() {
        let r = Ratio::new();
        let e = Estimate {
            raw: 100,
            exact: false,
        };
        assert_eq!(r.charge(e, 0.0), 100);
        r.observe(100, 100, 150);
        assert_eq!(r.charge(e, 0.0), 150);
        r.observe(100, 150, 250);
        assert_eq!(r.charge(e, 0.0), 160);
        let err = r.error();
        assert_eq!(err.samples, 2);
        assert!((err.raw - (0.5 / 1.5 + 0.6) / 2.0).abs() < 1e-9);
    }
}
