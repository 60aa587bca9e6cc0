//! The cascade's targets and when it moves along.

use std::{fmt, sync::Arc, time::Duration};

use brownout_core::{
    classify::Outcome,
    error::InvalidConfig,
    event::{Events, Listener},
    health::Health,
};
use http::{header::HeaderName, HeaderValue, Uri};

/// One step of the cascade: a model, and how the request changes for it.
#[derive(Clone)]
pub struct Target {
    pub(crate) model: Arc<str>,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) base_url: Option<Uri>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) keep_caller_credentials: bool,
    /// The model as a header value, made once: the served header names it on every
    /// answer. `None` when the name is no valid header value.
    pub(crate) model_value: Option<HeaderValue>,
}

impl Target {
    /// A target that writes `model` into the request's JSON `model`.
    pub fn new(model: impl Into<Arc<str>>) -> Self {
        let model: Arc<str> = model.into();
        Target {
            model_value: HeaderValue::from_str(&model).ok(),
            model,
            max_tokens: None,
            base_url: None,
            headers: Vec::new(),
            keep_caller_credentials: false,
        }
    }

    /// Sends the caller's credentials to this target even though it has its own
    /// endpoint: for an endpoint that expects the caller's own key (a proxy that passes
    /// keys through, or a layer further in that sets the right one per endpoint).
    pub fn keep_caller_credentials(mut self) -> Self {
        self.keep_caller_credentials = true;
        self
    }

    /// Lowers the request's `max_tokens` to `limit` when it asks for more (a lighter
    /// model often has a lower output limit). A request without `max_tokens` is left
    /// as it is.
    pub fn max_tokens(mut self, limit: u64) -> Self {
        self.max_tokens = Some(limit);
        self
    }

    /// Sends this target's requests to another endpoint: the scheme and authority of
    /// `url` replace the request's, and its path, if any, is put in front of the
    /// request's path. The endpoint must speak the same API (an OpenAI-compatible one
    /// for OpenAI-shaped requests): bodies are not translated between providers.
    ///
    /// A target with its own endpoint or headers never receives the caller's
    /// credentials (`authorization`, `x-api-key`, `api-key`): give it its own with
    /// [`header`](Self::header), or see
    /// [`keep_caller_credentials`](Self::keep_caller_credentials).
    pub fn base_url(mut self, url: &str) -> Result<Self, InvalidConfig> {
        let uri: Uri = url.parse().map_err(|e| {
            InvalidConfig::new("fallback", "target.base_url", format!("`{url}`: {e}"))
        })?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(InvalidConfig::new(
                "fallback",
                "target.base_url",
                format!("`{url}` needs a scheme and a host"),
            ));
        }
        self.base_url = Some(uri);
        Ok(self)
    }

    /// Sets a header on this target's requests (its own credentials: `x-api-key`,
    /// `authorization`). Values are marked sensitive and never printed.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, InvalidConfig> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            InvalidConfig::new(
                "fallback",
                "target.header",
                format!("`{name}` is not a header name"),
            )
        })?;
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            InvalidConfig::new(
                "fallback",
                "target.header",
                format!("the value of `{name}` is not a valid header value"),
            )
        })?;
        value.set_sensitive(true);
        self.headers.push((name, value));
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &str {
        &self.model
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be credentials: only their names are shown.
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Target")
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("base_url", &self.base_url)
            .field("headers", &headers)
            .field("keep_caller_credentials", &self.keep_caller_credentials)
            .finish()
    }
}

/// What the caller gets when every target failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exhausted {
    /// The last target's response, when it answered (its 529, say), with an
    /// [`AllTargetsFailed`](crate::AllTargetsFailed) report in its extensions; the
    /// error, when it did not. The default: callers and SDKs see the provider's own
    /// answer.
    #[default]
    LastResponse,
    /// Always the [`AllTargetsFailed`](crate::AllTargetsFailed) error.
    Error,
}

/// What the cascade does with a request for a model that is not one of its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownModels {
    /// Run the cascade from the first target: the request is rewritten to it. For a
    /// client whose every request should go through the cascade. The default.
    #[default]
    FromFirstTarget,
    /// Send the request unchanged, once, to the first target's service, with no
    /// cascade and no rewrite. For a proxy that serves models outside the cascade too.
    PassThrough,
}

/// The fallback layer's settings. Every setter takes and returns `self`.
///
/// | setting | default |
/// |---|---|
/// | targets | given to [`new`](Self::new), preferred first |
/// | [`fallback_when`](Self::fallback_when) | [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable): rate limited, overloaded, server error, timeout, connection failure, refused by a breaker |
/// | [`health`](Self::health) | none: every target is tried |
/// | [`deadline`](Self::deadline) | none |
/// | [`min_time_left`](Self::min_time_left) | 1 s |
/// | [`served_header`](Self::served_header) | off (`x-brownout-model` when on) |
/// | [`on_exhausted`](Self::on_exhausted) | [`Exhausted::LastResponse`] |
/// | [`unknown_models`](Self::unknown_models) | [`UnknownModels::FromFirstTarget`] |
/// | [`after_first_byte`](Self::after_first_byte) | [`AfterFirstByte::End`](crate::stream::AfterFirstByte::End): a stream that fails after content is not resumed |
///
/// Two settings are the stack's, not this layer's: how much of a request body is
/// buffered to be sent to several targets is the
/// [`BodyLimits`](brownout_core::body::BodyLimits) in the request's extensions (4 MiB
/// by default), and what each target's answer means is decided by the stack's one
/// classifier ([`DefaultClassifier`](brownout_core::classify::DefaultClassifier), or
/// yours through a [`ClassifyLayer`](brownout_core::classify::ClassifyLayer) over the
/// HTTP client).
#[derive(Clone)]
pub struct FallbackConfig {
    pub(crate) targets: Arc<[Target]>,
    pub(crate) fallback_when: Arc<dyn Fn(&Outcome) -> bool + Send + Sync>,
    pub(crate) health: Option<Arc<dyn Health>>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) min_time_left: Duration,
    pub(crate) served_header: Option<HeaderName>,
    pub(crate) on_exhausted: Exhausted,
    pub(crate) unknown_models: UnknownModels,
    pub(crate) after_first_byte: crate::stream::AfterFirstByte,
    pub(crate) events: Events,
}

impl FallbackConfig {
    /// A cascade over `targets`, preferred first. Fails when there are none or a model
    /// appears twice.
    pub fn new(targets: impl IntoIterator<Item = Target>) -> Result<Self, InvalidConfig> {
        let targets: Vec<Target> = targets.into_iter().collect();
        if targets.is_empty() {
            return Err(InvalidConfig::new(
                "fallback",
                "targets",
                "at least one target is needed",
            ));
        }
        for (i, t) in targets.iter().enumerate() {
            if t.model.is_empty() {
                return Err(InvalidConfig::new(
                    "fallback",
                    "targets",
                    format!("target {} has an empty model", i + 1),
                ));
            }
            if targets[..i].iter().any(|u| u.model == t.model) {
                return Err(InvalidConfig::new(
                    "fallback",
                    "targets",
                    format!("`{}` appears twice", t.model),
                ));
            }
        }
        Ok(FallbackConfig {
            targets: targets.into(),
            fallback_when: Arc::new(|outcome: &Outcome| outcome.kind().is_unavailable()),
            health: None,
            deadline: None,
            min_time_left: Duration::from_secs(1),
            served_header: None,
            on_exhausted: Exhausted::LastResponse,
            unknown_models: UnknownModels::FromFirstTarget,
            after_first_byte: crate::stream::AfterFirstByte::End,
            events: Events::new(),
        })
    }

    /// Which outcomes move the cascade to the next target. The default is
    /// [`OutcomeKind::is_unavailable`](brownout_core::OutcomeKind::is_unavailable).
    /// Client errors should not: a request the first model refuses as malformed,
    /// another will refuse too.
    pub fn fallback_when(
        mut self,
        when: impl Fn(&Outcome) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.fallback_when = Arc::new(when);
        self
    }

    /// Skips, without sending anything, a target whose model `health` says would be
    /// refused: pass a circuit breaker layer's handle, keyed by model.
    pub fn health(mut self, health: impl Health) -> Self {
        self.health = Some(Arc::new(health));
        self
    }

    /// One deadline for the whole cascade, from the call. Each attempt is cut off when
    /// it passes.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// With a deadline: a target is not started when less than this is left.
    pub fn min_time_left(mut self, min: Duration) -> Self {
        self.min_time_left = min;
        self
    }

    /// Names the model that answered in this response header (`x-brownout-model`
    /// with [`served_header_default`](Self::served_header_default)). The
    /// [`ServedBy`](crate::ServedBy) extension is always set.
    pub fn served_header(mut self, name: HeaderName) -> Self {
        self.served_header = Some(name);
        self
    }

    /// Names the model that answered in `x-brownout-model`.
    pub fn served_header_default(self) -> Self {
        self.served_header(HeaderName::from_static("x-brownout-model"))
    }

    /// What a request for a model outside the cascade gets.
    pub fn unknown_models(mut self, unknown: UnknownModels) -> Self {
        self.unknown_models = unknown;
        self
    }

    /// What happens to a streamed answer that fails after content reached the
    /// caller: [`End`](crate::stream::AfterFirstByte::End) (the default) leaves it to
    /// end as it does (well-formed, under a
    /// [`StreamGuardLayer`](crate::stream::StreamGuardLayer)), and
    /// [`Resume`](crate::stream::AfterFirstByte::Resume) continues the same answer on
    /// the next model of the cascade. See [`stream`](crate::stream#resume).
    pub fn after_first_byte(mut self, mode: crate::stream::AfterFirstByte) -> Self {
        self.after_first_byte = mode;
        self
    }

    /// What the caller gets when every target failed.
    pub fn on_exhausted(mut self, exhausted: Exhausted) -> Self {
        self.on_exhausted = exhausted;
        self
    }

    /// Where decisions go besides `tracing`: each is an
    /// [`Event`](brownout_core::event::Event) whose data is a [`FallbackEvent`](crate::FallbackEvent).
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.events = Events::with_listener(listener);
        self
    }

    /// The targets, preferred first.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub(crate) fn unknown_target(model: &str) -> InvalidConfig {
        InvalidConfig::new(
            "fallback",
            "target_service",
            format!("`{model}` is not a target"),
        )
    }
}

impl fmt::Debug for FallbackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackConfig")
            .field("targets", &self.targets)
            .field("deadline", &self.deadline)
            .field("min_time_left", &self.min_time_left)
            .field("served_header", &self.served_header)
            .field("on_exhausted", &self.on_exhausted)
            .field("unknown_models", &self.unknown_models)
            .field("after_first_byte", &self.after_first_byte)
            .finish_non_exhaustive()
    }
}
