//! The limits, how requests are keyed, and how long they may wait.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    error::InvalidConfig,
    event::{Events, Listener},
    RequestFacts,
};
use http::request::Parts;

use crate::{LimitStore, LocalLimitStore};

/// Per-minute limits for one key: any subset of requests, input tokens, output tokens,
/// and input and output tokens together.
///
/// ```
/// use brownout_limit::Limits;
///
/// // Anthropic's tier 1 for a Sonnet model.
/// let sonnet = Limits::new()
///     .requests_per_minute(50)
///     .input_tokens_per_minute(30_000)
///     .output_tokens_per_minute(8_000);
/// // OpenAI counts input and output together.
/// let gpt = Limits::new().requests_per_minute(500).tokens_per_minute(30_000);
/// # let _ = (sonnet, gpt);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub(crate) per_minute: [Option<u64>; 4],
}

impl Limits {
    /// No limit: only what the provider's headers teach is enforced.
    pub const fn new() -> Self {
        Limits {
            per_minute: [None; 4],
        }
    }

    /// Requests per minute.
    pub const fn requests_per_minute(mut self, n: u64) -> Self {
        self.per_minute[0] = Some(n);
        self
    }

    /// Input tokens per minute (Anthropic's ITPM).
    pub const fn input_tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[1] = Some(n);
        self
    }

    /// Output tokens per minute (Anthropic's OTPM).
    pub const fn output_tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[2] = Some(n);
        self
    }

    /// Input and output tokens together per minute (OpenAI's TPM).
    pub const fn tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[3] = Some(n);
        self
    }

    /// The configured limit of `resource`.
    pub fn get(&self, resource: crate::Resource) -> Option<u64> {
        self.per_minute[resource.index()]
    }
}

/// What the layer does with a request it will not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnLimit {
    /// Answer a `429` `rate_limit_error` in the provider's shape, with `retry-after`
    /// (the default): what an SDK expects of a rate-limited API.
    #[default]
    Respond,
    /// Fail with [`RateLimited`](crate::RateLimited) or
    /// [`TooManyTokens`](crate::TooManyTokens) as a `BoxError`.
    Error,
}

/// How a request's key is found from its head and facts.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts, &RequestFacts) -> String + Send + Sync>;

/// The settings of a [`RateLimitLayer`](crate::RateLimitLayer).
#[derive(Clone)]
pub struct RateLimitConfig {
    pub(crate) default: Limits,
    pub(crate) models: Vec<(String, Limits)>,
    pub(crate) key_by: Option<KeyFn>,
    pub(crate) max_wait: Duration,
    pub(crate) on_limit: OnLimit,
    pub(crate) default_max_tokens: u64,
    pub(crate) estimate: EstimateConfig,
    pub(crate) max_keys: usize,
    pub(crate) events: Events,
    pub(crate) store: Arc<dyn LimitStore>,
}

/// How input tokens are estimated; see [`RateLimitConfig::estimate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimateConfig {
    pub(crate) bytes_per_token: f64,
    pub(crate) margin: f64,
    pub(crate) image_tokens_anthropic: u64,
    pub(crate) image_tokens_openai: u64,
    pub(crate) cache_counts: bool,
}

impl EstimateConfig {
    /// The defaults: 3.5 bytes of text a token for models without a public tokenizer,
    /// a 3 % margin over the corrected estimate, 1,600 tokens an Anthropic image (the
    /// most a ~1.15-megapixel image costs) and 765 an OpenAI image (a 1024×1024 image at
    /// high detail; 85 at `"detail": "low"`).
    pub const fn new() -> Self {
        EstimateConfig {
            bytes_per_token: 3.5,
            margin: 0.03,
            image_tokens_anthropic: 1600,
            image_tokens_openai: 765,
            cache_counts: true,
        }
    }

    /// Bytes of text per token of the first estimate, before any usage corrects it.
    pub const fn bytes_per_token(mut self, bytes: f64) -> Self {
        self.bytes_per_token = bytes;
        self
    }

    /// The share added to the corrected estimate of a model without a public
    /// tokenizer, so that an estimate a little short does not cause a 429.
    pub const fn margin(mut self, share: f64) -> Self {
        self.margin = share;
        self
    }

    /// Whether the exact counts of long texts (512 bytes or more) are remembered, so
    /// that a conversation sent again on its next turn is not counted again (on by
    /// default; a process-wide table of 4,096 counts, 32 KiB).
    pub const fn cache_counts(mut self, on: bool) -> Self {
        self.cache_counts = on;
        self
    }

    /// Tokens counted for each image in an Anthropic request.
    pub const fn anthropic_image_tokens(mut self, tokens: u64) -> Self {
        self.image_tokens_anthropic = tokens;
        self
    }

    /// Tokens counted for each image in an OpenAI request (at high or auto detail).
    pub const fn openai_image_tokens(mut self, tokens: u64) -> Self {
        self.image_tokens_openai = tokens;
        self
    }
}

impl Default for EstimateConfig {
    fn default() -> Self {
        EstimateConfig::new()
    }
}

/// The default of [`RateLimitConfig::max_wait`]: 30 seconds.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// The default of [`RateLimitConfig::default_max_tokens`]: 4,096.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

impl RateLimitConfig {
    /// No configured limit (the provider's headers are learned), keyed by model and
    /// credential, waiting up to [`DEFAULT_MAX_WAIT`], answering 429 past it.
    pub fn new() -> Self {
        RateLimitConfig {
            default: Limits::new(),
            models: Vec::new(),
            key_by: None,
            max_wait: DEFAULT_MAX_WAIT,
            on_limit: OnLimit::Respond,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            estimate: EstimateConfig::new(),
            max_keys: 10_000,
            events: Events::new(),
            store: Arc::new(LocalLimitStore),
        }
    }

    /// Where the keys' buckets live: this process's memory by default
    /// ([`LocalLimitStore`]), or a store shared by a fleet (brownout-redis's
    /// `RedisLimitStore`). See [`LimitStore`] for the round trips a store may make.
    pub fn store(mut self, store: impl LimitStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// The limits of every key whose model has none of its own.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.default = limits;
        self
    }

    /// The limits of `model`'s keys; a name ending in `*` is a prefix
    /// (`"claude-sonnet-4*"`). The first match wins.
    pub fn model(mut self, model: impl Into<String>, limits: Limits) -> Self {
        self.models.push((model.into(), limits));
        self
    }

    /// Keys requests by this closure instead of by model and credential fingerprint.
    /// The key should still name the model when models have limits of their own:
    /// the limits are those of the request's model.
    pub fn key_by(
        mut self,
        key: impl Fn(&Parts, &RequestFacts) -> String + Send + Sync + 'static,
    ) -> Self {
        self.key_by = Some(Arc::new(key));
        self
    }

    /// How long a request may wait for room before it is refused; the caller's own
    /// deadline (see [`Deadline`](crate::Deadline)) shortens it.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// What a refused request gets: see [`OnLimit`].
    pub fn on_limit(mut self, on_limit: OnLimit) -> Self {
        self.on_limit = on_limit;
        self
    }

    /// The output tokens reserved for a request that names no `max_tokens`.
    pub fn default_max_tokens(mut self, tokens: u64) -> Self {
        self.default_max_tokens = tokens;
        self
    }

    /// How input tokens are estimated.
    pub fn estimate(mut self, estimate: EstimateConfig) -> Self {
        self.estimate = estimate;
        self
    }

    /// How many keys are tracked at most; past it, idle keys (full buckets, no
    /// pause) are forgotten.
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// Sends the layer's events to `listener` as well as to `tracing`.
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }

    /// The limits of `model`.
    pub(crate) fn limits_of(&self, model: Option<&str>) -> Limits {
        let Some(model) = model else {
            return self.default;
        };
        self.models
            .iter()
            .find(|(name, _)| match name.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => name == model,
            })
            .map_or(self.default, |(_, limits)| *limits)
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        let all = std::iter::once(("default", &self.default))
            .chain(self.models.iter().map(|(m, l)| (m.as_str(), l)));
        for (name, limits) in all {
            for r in crate::Resource::ALL {
                if limits.get(r) == Some(0) {
                    return Err(InvalidConfig::new(
                        "rate limit",
                        "limits",
                        format!("the {r} per minute of `{name}` must be at least 1"),
                    ));
                }
            }
        }
        let e = &self.estimate;
        if !(e.bytes_per_token.is_finite() && e.bytes_per_token >= 0.5) {
            return Err(InvalidConfig::new(
                "rate limit",
                "estimate.bytes_per_token",
                format!("must be at least 0.5, not {}", e.bytes_per_token),
            ));
        }
        if !(e.margin.is_finite() && (0.0..=1.0).contains(&e.margin)) {
            return Err(InvalidConfig::new(
                "rate limit",
                "estimate.margin",
                format!("must be in [0, 1], not {}", e.margin),
            ));
        }
        if self.max_wait > Duration::from_secs(3600) {
            return Err(InvalidConfig::new(
                "rate limit",
                "max_wait",
                format!("must be at most an hour, not {:?}", self.max_wait),
            ));
        }
        if self.max_keys == 0 {
            return Err(InvalidConfig::new(
                "rate limit",
                "max_keys",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig::new()
    }
}

impl fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("default", &self.default)
            .field("models", &self.models)
            .field("key_by", &self.key_by.is_some())
            .field("max_wait", &self.max_wait)
            .field("on_limit", &self.on_limit)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("estimate", &self.estimate)
            .field("max_keys", &self.max_keys)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The caller's deadline for a request, in its extensions (brownout-core's, shared by
/// every layer that holds requests): the limiter never waits past it. Without one, the
/// official SDKs' `x-stainless-timeout` header (seconds) is taken as the deadline, and
/// else only [`RateLimitConfig::max_wait`] bounds the wait.
pub use brownout_core::request::Deadline;
