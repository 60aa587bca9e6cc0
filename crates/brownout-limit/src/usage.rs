//! The `usage` a response reports, found as its body passes, and the rate-limit
//! headers it carries.

use brownout_core::provider::Api;
use http::{HeaderMap, HeaderName};

use crate::Resource;

/// What the `usage` objects of a response said so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Input tokens the provider counts against its input limit.
    pub input: Option<u64>,
    /// Every input token of the prompt, cache reads included: what the estimate is
    /// compared with.
    pub prompt: Option<u64>,
    /// Output tokens, once the final count is known.
    pub output: Option<u64>,
}

/// How far back of a `"usage"` key a stream's `message_delta` is looked for, and how
/// much of a usage object is kept while it is cut between frames.
const LOOKBACK: usize = 256;
const MAX_OBJECT: usize = 4096;

/// Finds `"usage"` objects in a body that arrives in frames: a JSON answer's one, an
/// Anthropic stream's `message_start` and `message_delta` ones, OpenAI's usage chunk
/// and Responses' `response.completed`. The limiter settles its reservations with it;
/// brownout-observe counts tokens with it.
///
/// ```
/// use brownout_core::provider::Api;
/// use brownout_limit::UsageScanner;
///
/// let mut scanner = UsageScanner::new(Api::AnthropicMessages, false);
/// scanner.feed(br#"{"type":"message","usage":{"input_tokens":12,"#, false);
/// scanner.feed(br#""output_tokens":30}}"#, true);
/// assert_eq!(scanner.usage().output, Some(30));
/// ```
#[derive(Debug)]
pub struct Scanner {
    stream: bool,
    anthropic: bool,
    /// The end of the bytes seen so far, kept for keys and objects cut between frames.
    carry: Vec<u8>,
    /// Where in `carry` the search for the next key starts.
    from: usize,
    pub(crate) usage: Usage,
}

static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));

impl Scanner {
    /// A scanner for an answer of `api`, streamed or not.
    pub fn new(api: Api, stream: bool) -> Self {
        Scanner {
            stream,
            anthropic: !api.is_openai(),
            carry: Vec::new(),
            from: 0,
            usage: Usage::default(),
        }
    }

    /// The usage of a whole answer held in memory (a cached or buffered one), in one
    /// call. A JSON answer's is its last `"usage"` object, found from the end, where
    /// both providers put it: the bytes before it are not looked at, and a tool's
    /// input that happens to hold a `"usage"` object earlier is not read. A stream is
    /// read as [`feed`](Self::feed) reads it.
    ///
    /// ```
    /// use brownout_core::provider::Api;
    /// use brownout_limit::UsageScanner;
    ///
    /// let answer = br#"{"content":[],"usage":{"input_tokens":12,"output_tokens":30}}"#;
    /// let usage = UsageScanner::whole(Api::AnthropicMessages, false, answer);
    /// assert_eq!((usage.input, usage.output), (Some(12), Some(30)));
    /// ```
    pub fn whole(api: Api, stream: bool, bytes: &[u8]) -> Usage {
        let mut scanner = Scanner::new(api, stream);
        if stream {
            scanner.feed(bytes, true);
            return scanner.usage;
        }
        let mut end = bytes.len();
        // Quote by quote from the end: the usage object is the last few dozen bytes,
        // closer than a substring search from the end costs to set up.
        while let Some(quote) = memchr::memrchr(b'"', &bytes[..end]) {
            end = quote;
            if quote < 6 || &bytes[quote - 6..quote] != b"\"usage" {
                continue;
            }
            let at = quote - 6;
            let i = after_key(bytes, at);
            if bytes.get(i) == Some(&b'{') {
                if let Some((object, _)) = UsageObject::parse(&bytes[i..]) {
                    scanner.read(object, &[]);
                    break;
                }
            }
            end = at;
        }
        scanner.usage
    }

    /// What the `usage` objects said so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Looks at the next frame's bytes; `last` when no frame follows.
    pub fn feed(&mut self, chunk: &[u8], last: bool) {
        if self.carry.is_empty() {
            let from = self.scan(chunk, 0);
            if !last {
                self.keep(chunk, from);
            }
        } else {
            let mut hay = std::mem::take(&mut self.carry);
            hay.extend_from_slice(chunk);
            let from = self.scan(&hay, self.from);
            if !last {
                self.keep(&hay, from);
            }
        }
    }

    /// Keeps the end of `hay` for the next frame: from `from` (an object cut short)
    /// when it is set, else the last bytes.
    fn keep(&mut self, hay: &[u8], from: Option<usize>) {
        let (start, search) = match from {
            Some(at) if hay.len() - at <= MAX_OBJECT => {
                let start = at.saturating_sub(LOOKBACK);
                (start, at - start)
            }
            _ => {
                let start = hay.len().saturating_sub(LOOKBACK);
                // The next search starts where a key cut at the end could begin.
                (start, (hay.len() - start).saturating_sub(6))
            }
        };
        self.carry.clear();
        self.carry.extend_from_slice(&hay[start..]);
        self.from = search;
    }

    /// Reads every usage object of `hay` from `from`; the position of one cut short.
    fn scan(&mut self, hay: &[u8], mut from: usize) -> Option<usize> {
        // Fewer bytes left than the key has: no search (the usual end of a JSON
        // answer, just after its usage object).
        while hay.len() - from >= 7 {
            let Some(found) = FINDER.find(&hay[from..]) else {
                break;
            };
            let at = from + found;
            let i = after_key(hay, at);
            if i >= hay.len() {
                return Some(at);
            }
            if hay[i] != b'{' {
                from = i;
                continue;
            }
            let Some((object, end)) = UsageObject::parse(&hay[i..]) else {
                return Some(at);
            };
            let before = &hay[at.saturating_sub(LOOKBACK)..at];
            self.read(object, before);
            from = i + end;
        }
        None
    }

    fn read(&mut self, u: UsageObject, before: &[u8]) {
        let input = u.input_tokens.or(u.prompt_tokens);
        if let Some(input) = input {
            let creation = u.cache_creation_input_tokens.unwrap_or(0);
            let read = u.cache_read_input_tokens.unwrap_or(0);
            self.usage.input = Some(input.saturating_add(creation));
            self.usage.prompt = Some(input.saturating_add(creation).saturating_add(read));
        }
        let output = u.output_tokens.or(u.completion_tokens);
        // In an Anthropic stream only `message_delta` has the final count;
        // `message_start`'s is the first token's.
        let last_of_stream = !self.stream
            || !self.anthropic
            || memchr::memmem::rfind(before, b"message_delta").is_some();
        if last_of_stream {
            if let Some(output) = output {
                self.usage.output = Some(output);
            }
        }
    }
}

/// The counts of a usage object.
#[derive(Debug, Default, PartialEq, Eq)]
struct UsageObject {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl UsageObject {
    /// Reads the whole-number members at the top level of the object at the start of
    /// `bytes`, and where it ends; `None` when it does not end there. One pass, by
    /// hand, since the serde parse was a fifth of the layer's own cost per call.
    /// Anything it does not understand is skipped; keys with escapes are not the ones
    /// looked for.
    fn parse(bytes: &[u8]) -> Option<(UsageObject, usize)> {
        let mut u = UsageObject::default();
        let n = bytes.len();
        if bytes.first() != Some(&b'{') {
            return None;
        }
        let mut i = 1;
        loop {
            i = skip(bytes, i, b",");
            match bytes.get(i)? {
                b'}' => return Some((u, i + 1)),
                b'"' => {}
                // Not an object member: not an object this reads.
                _ => return None,
            }
            let start = i + 1;
            let end = string_end(bytes, start)?;
            let key = &bytes[start..end];
            i = skip(bytes, end + 1, b"");
            if bytes.get(i)? != &b':' {
                return None;
            }
            i = skip(bytes, i + 1, b"");
            // By length first: a key compares as a few loads, not a call.
            let slot = match key.len() {
                12 if key == b"input_tokens" => Some(&mut u.input_tokens),
                13 if key == b"output_tokens" => Some(&mut u.output_tokens),
                13 if key == b"prompt_tokens" => Some(&mut u.prompt_tokens),
                17 if key == b"completion_tokens" => Some(&mut u.completion_tokens),
                27 if key == b"cache_creation_input_tokens" => {
                    Some(&mut u.cache_creation_input_tokens)
                }
                23 if key == b"cache_read_input_tokens" => Some(&mut u.cache_read_input_tokens),
                _ => None,
            };
            if let Some(slot) = slot {
                // A whole number, by hand: no string to check and parse.
                let first = i;
                let mut value: Option<u64> = Some(0);
                while i < n {
                    let d = bytes[i].wrapping_sub(b'0');
                    if d > 9 {
                        break;
                    }
                    value = value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(u64::from(d)));
                    i += 1;
                }
                if i > first && value.is_some() {
                    *slot = value;
                }
            }
            // The rest of the value (all of one that is not a counted number).
            i = value_end(bytes, i)?;
        }
    }
}

/// The position from `i` past JSON whitespace and the bytes of `also`.
fn skip(bytes: &[u8], mut i: usize, also: &[u8]) -> usize {
    while i < bytes.len()
        && (matches!(bytes[i], b' ' | b'\t' | b'\r' | b'\n') || also.contains(&bytes[i]))
    {
        i += 1;
    }
    i
}

/// Where the value of the `"usage"` key at `at` starts: past the key, its `:` and
/// whitespace (the length of `hay` when it ends first).
fn after_key(hay: &[u8], at: usize) -> usize {
    skip(hay, at + 7, b":")
}

/// Where the string whose first byte is at `start` ends (its closing quote).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', &bytes[i..])?;
        if bytes[at] == b'"' {
            return Some(at);
        }
        i = at + 2;
        if i > bytes.len() {
            return None;
        }
    }
}

/// Where the member value at `i` ends: the `,` or `}` after it.
fn value_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = string_end(bytes, i + 1)?,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return Some(i),
            b'}' | b']' => depth -= 1,
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// What a response's headers say of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Learned {
    pub(crate) resource: Resource,
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
}

const fn name(s: &'static str) -> HeaderName {
    HeaderName::from_static(s)
}

/// The limit and remaining headers of each resource: Anthropic's, then OpenAI's.
static HEADERS: [(Resource, HeaderName, HeaderName); 6] = [
    (
        Resource::Requests,
        name("anthropic-ratelimit-requests-limit"),
        name("anthropic-ratelimit-requests-remaining"),
    ),
    (
        Resource::InputTokens,
        name("anthropic-ratelimit-input-tokens-limit"),
        name("anthropic-ratelimit-input-tokens-remaining"),
    ),
    (
        Resource::OutputTokens,
        name("anthropic-ratelimit-output-tokens-limit"),
        name("anthropic-ratelimit-output-tokens-remaining"),
    ),
    (
        Resource::Tokens,
        name("anthropic-ratelimit-tokens-limit"),
        name("anthropic-ratelimit-tokens-remaining"),
    ),
    (
        Resource::Requests,
        name("x-ratelimit-limit-requests"),
        name("x-ratelimit-remaining-requests"),
    ),
    (
        Resource::Tokens,
        name("x-ratelimit-limit-tokens"),
        name("x-ratelimit-remaining-tokens"),
    ),
];

/// The limits a response's headers tell, Anthropic's or OpenAI's, by what the API is.
pub(crate) fn learned(api: Api, headers: &HeaderMap, mut each: impl FnMut(Learned)) {
    // One look at the names first: most answers of other APIs carry none of these,
    // and a pass over a dozen names is cheaper than eight hashed lookups.
    let prefix: &[u8] = if api.is_openai() {
        b"x-ratelimit-"
    } else {
        b"anthropic-ratelimit-"
    };
    if !headers
        .keys()
        .any(|name| name.as_str().as_bytes().starts_with(prefix))
    {
        return;
    }
    let range = if api.is_openai() { 4..6 } else { 0..4 };
    for (resource, limit, remaining) in &HEADERS[range] {
        let number =
            |n: &HeaderName| -> Option<u64> { headers.get(n)?.to_str().ok()?.trim().parse().ok() };
        let (limit, remaining) = (number(limit), number(remaining));
        if limit.is_some() || remaining.is_some() {
            each(Learned {
                resource: *resource,
                limit,
                remaining,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(api: Api, stream: bool, frames: &[&str]) -> Usage {
        let mut s = Scanner::new(api, stream);
        for (i, f) in frames.iter().enumerate() {
            s.feed(f.as_bytes(), i + 1 == frames.len());
        }
        s.usage
    }

    #[test]
    fn json_answers_give_their_usage() {
        let anthropic = r#"{"id":"msg_1","content":[{"type":"text","text":"the \"usage\" word"}],"usage":{"input_tokens":12,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":7}}"#;
        assert_eq!(
            scan(Api::AnthropicMessages, false, &[anthropic]),
            Usage {
                input: Some(15),
                prompt: Some(20),
                output: Some(7)
            }
        );
        let openai = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        // Cut anywhere between frames, the same usage.
        for cut in 1..openai.len() {
            let (a, b) = openai.split_at(cut);
            assert_eq!(
                scan(Api::OpenAiChat, false, &[a, b]),
                Usage {
                    input: Some(9),
                    prompt: Some(9),
                    output: Some(4)
                },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_whole_answer_gives_its_last_usage_object() {
        let anthropic = r#"{"id":"msg_1","content":[{"type":"text","text":"the \"usage\" word"}],"usage":{"input_tokens":12,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":7}}"#;
        for api in [Api::AnthropicMessages, Api::OpenAiChat] {
            assert_eq!(
                Scanner::whole(api, false, anthropic.as_bytes()),
                scan(api, false, &[anthropic])
            );
        }
        // A tool's input that holds a usage object of its own is not the answer's.
        let tool = r#"{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":999,"output_tokens":999}}}],"usage":{"input_tokens":4,"output_tokens":2}}"#;
        let usage = Scanner::whole(Api::AnthropicMessages, false, tool.as_bytes());
        assert_eq!((usage.input, usage.output), (Some(4), Some(2)));
        // A "usage" that is not an object, and none at all.
        let odd =
            r#"{"usage":{"prompt_tokens":9,"completion_tokens":4},"note":"usage","x":{"usage":3}}"#;
        let usage = Scanner::whole(Api::OpenAiChat, false, odd.as_bytes());
        assert_eq!((usage.prompt, usage.output), (Some(9), Some(4)));
        assert_eq!(
            Scanner::whole(Api::OpenAiChat, false, br#"{"id":"c"}"#),
            Usage::default()
        );
        // A stream is read whole as frames are.
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":31}}\n\n";
        assert_eq!(
            Scanner::whole(Api::AnthropicMessages, true, stream.as_bytes()),
            scan(Api::AnthropicMessages, true, &[stream])
        );
    }

    #[test]
    fn streams_give_the_final_count_only() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n";
        let delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":31}}\n\n";
        let cut_short = scan(Api::AnthropicMessages, true, &[start]);
        assert_eq!(
            cut_short,
            Usage {
                input: Some(20),
                prompt: Some(20),
                output: None
            }
        );
        let whole = scan(
            Api::AnthropicMessages,
            true,
            &[start, "event: ping\ndata: {}\n\n", delta],
        );
        assert_eq!(whole.output, Some(31));
        let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n";
        let last = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert_eq!(scan(Api::OpenAiChat, true, &[chunk]).output, None);
        assert_eq!(scan(Api::OpenAiChat, true, &[chunk, last]).output, Some(2));
    }

    #[test]
    fn usage_objects_are_read_at_their_top_level_only() {
        let body = br#"{ "prompt_tokens" : 12, "x":{"input_tokens":99}, "completion_tokens":3,"output_tokens":"7","input_tokens":null} tail"#;
        let (u, end) = UsageObject::parse(body).unwrap();
        assert_eq!(&body[end..], b" tail");
        assert_eq!(
            u,
            UsageObject {
                prompt_tokens: Some(12),
                completion_tokens: Some(3),
                ..Default::default()
            }
        );
        assert_eq!(UsageObject::parse(b"{\"input_tokens\":"), None);
        assert_eq!(
            UsageObject::parse(b"{\"input_tokens\":99999999999999999999999}"),
            Some((UsageObject::default(), 40))
        );
    }

    #[test]
    fn headers_are_read_per_api() {
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-input-tokens-limit",
            "30000".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-input-tokens-remaining",
            "29000".parse().unwrap(),
        );
        h.insert("x-ratelimit-limit-tokens", "5".parse().unwrap());
        let mut seen = vec![];
        learned(Api::AnthropicMessages, &h, |l| seen.push(l));
        assert_eq!(
            seen,
            vec![Learned {
                resource: Resource::InputTokens,
                limit: Some(30000),
                remaining: Some(29000)
            }]
        );
    }
}
