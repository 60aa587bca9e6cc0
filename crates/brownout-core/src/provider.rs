//! What brownout knows of the providers, in one place: API kinds, credential headers,
//! and the shape of their error answers.
//!
//! Classification (error bodies and reset headers, in [`classify`](crate::classify)),
//! the degraded answers, the breaker's 503, the gateway's own errors and the
//! simulator all take their provider knowledge from here and from [`shape`](crate::shape),
//! which renders the providers' bodies and streams byte for byte.

use http::HeaderName;

/// The API a request speaks, told by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Api {
    /// Anthropic Messages: `POST /v1/messages`.
    AnthropicMessages,
    /// OpenAI Chat Completions (and compatibles): `POST /v1/chat/completions`.
    OpenAiChat,
    /// OpenAI Responses: `POST /v1/responses`.
    OpenAiResponses,
    /// Any other HTTP API.
    #[default]
    Other,
}

impl Api {
    /// The API of a request path. A prefix before the provider's path (a gateway's
    /// `/anthropic/v1/messages`) is allowed; the query is not part of a path.
    ///
    /// ```
    /// use brownout_core::provider::Api;
    /// assert_eq!(Api::from_path("/v1/messages"), Api::AnthropicMessages);
    /// assert_eq!(Api::from_path("/openai/v1/chat/completions"), Api::OpenAiChat);
    /// assert_eq!(Api::from_path("/v1/responses"), Api::OpenAiResponses);
    /// assert_eq!(Api::from_path("/v1/models"), Api::Other);
    /// ```
    pub fn from_path(path: &str) -> Api {
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.ends_with("/messages") {
            Api::AnthropicMessages
        } else if path.ends_with("/chat/completions") {
            Api::OpenAiChat
        } else if path.ends_with("/responses") {
            Api::OpenAiResponses
        } else {
            Api::Other
        }
    }

    /// Whether the API is one of OpenAI's (its error shape is OpenAI's).
    pub fn is_openai(self) -> bool {
        matches!(self, Api::OpenAiChat | Api::OpenAiResponses)
    }

    /// A short lowercase name, as in events (`"anthropic_messages"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Api::AnthropicMessages => "anthropic_messages",
            Api::OpenAiChat => "openai_chat",
            Api::OpenAiResponses => "openai_responses",
            Api::Other => "other",
        }
    }

    /// An error body in this API's shape: Anthropic's
    /// `{"type":"error","error":{"type":…,"message":…}}` for Anthropic and other APIs,
    /// OpenAI's `{"error":{"message":…,"type":…,"param":null,"code":…}}` for OpenAI's.
    pub fn error_body(self, error: ErrorKind, message: &str) -> Vec<u8> {
        if self.is_openai() {
            crate::shape::openai_error(message, error.openai_type(), None, error.openai_code())
        } else {
            crate::shape::anthropic_error(error.anthropic_type(), message)
        }
    }
}

/// Whose API a request speaks, for a proxy that must send it to the right host:
/// told by its path where the path is one provider's, else by its credential style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    /// Anthropic's API (`/v1/messages`, `x-api-key`, `anthropic-version`).
    Anthropic,
    /// OpenAI's API and compatibles (`/v1/chat/completions`, `Authorization: Bearer`).
    OpenAi,
}

impl Family {
    /// The provider whose API has `path` (without a query), or `None` for a path both
    /// have (`/v1/models`) or neither.
    ///
    /// ```
    /// use brownout_core::provider::Family;
    /// assert_eq!(Family::from_path("/v1/messages/count_tokens"), Some(Family::Anthropic));
    /// assert_eq!(Family::from_path("/v1/responses/resp_1"), Some(Family::OpenAi));
    /// assert_eq!(Family::from_path("/v1/models"), None);
    /// ```
    pub fn from_path(path: &str) -> Option<Family> {
        let rest = path.strip_prefix("/v1/")?;
        let (first, after) = rest.split_once('/').unwrap_or((rest, ""));
        match first {
            "messages" | "complete" => Some(Family::Anthropic),
            // `/v1/chat/completions`; `chat` alone is no API.
            "chat" => (after == "completions" || after.starts_with("completions/"))
                .then_some(Family::OpenAi),
            "responses" | "embeddings" | "completions" | "moderations" | "images" | "audio"
            | "files" | "uploads" | "batches" | "fine_tuning" | "assistants" => {
                Some(Family::OpenAi)
            }
            _ => None,
        }
    }

    /// The provider whose credential style `headers` show: `x-api-key` or
    /// `anthropic-version` are Anthropic's; `authorization: Bearer` (or Azure's
    /// `api-key`) without them is OpenAI's.
    pub fn from_credentials(headers: &http::HeaderMap) -> Option<Family> {
        // By `HeaderName`, not by text: a `&str` key is parsed into a name on each look.
        static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
        static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
        static API_KEY: HeaderName = HeaderName::from_static("api-key");
        if headers.contains_key(&X_API_KEY) || headers.contains_key(&ANTHROPIC_VERSION) {
            return Some(Family::Anthropic);
        }
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().get(..7))
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "));
        (bearer || headers.contains_key(&API_KEY)).then_some(Family::OpenAi)
    }

    /// `"Anthropic"` or `"OpenAI"`, as in messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Anthropic => "Anthropic",
            Family::OpenAi => "OpenAI",
        }
    }

    /// `"anthropic"` or `"openai"`: its name in configuration files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Anthropic => "anthropic",
            Family::OpenAi => "openai",
        }
    }

    /// The header that carries an API `key` for this provider, and its value:
    /// Anthropic's `x-api-key: <key>`, OpenAI's `authorization: Bearer <key>`.
    ///
    /// ```
    /// use brownout_core::provider::Family;
    /// let (name, value) = Family::OpenAi.key_header("sk-1");
    /// assert_eq!((name.as_str(), value.as_str()), ("authorization", "Bearer sk-1"));
    /// assert_eq!(Family::Anthropic.key_header("sk-ant-1").0, "x-api-key");
    /// ```
    pub fn key_header(self, key: &str) -> (HeaderName, String) {
        match self {
            Family::Anthropic => (HeaderName::from_static("x-api-key"), key.to_owned()),
            Family::OpenAi => (http::header::AUTHORIZATION, format!("Bearer {key}")),
        }
    }
}

/// The kinds of error answer brownout gives in a provider's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed (400).
    InvalidRequest,
    /// The caller's body did not arrive in time (408).
    RequestTimeout,
    /// The upstream is overloaded or a breaker is open (503/529).
    Overloaded,
    /// The upstream failed (502/500).
    Upstream,
    /// No answer in time (504).
    Timeout,
}

impl ErrorKind {
    /// Anthropic's `error.type` for this kind.
    pub fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::RequestTimeout => "timeout_error",
            ErrorKind::Overloaded => "overloaded_error",
            ErrorKind::Upstream => "api_error",
            ErrorKind::Timeout => "timeout_error",
        }
    }

    /// OpenAI's `error.type` for this kind.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::RequestTimeout => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// OpenAI's `error.code` for this kind, where it has one.
    pub fn openai_code(self) -> Option<&'static str> {
        match self {
            ErrorKind::InvalidRequest => None,
            ErrorKind::RequestTimeout => Some("request_timeout"),
            ErrorKind::Overloaded => Some("service_unavailable"),
            ErrorKind::Upstream => Some("bad_gateway"),
            ErrorKind::Timeout => Some("timeout"),
        }
    }
}

/// The request headers that carry a caller's credential: Anthropic's `x-api-key`,
/// OpenAI's `authorization: Bearer`, Azure OpenAI's `api-key`. They never reach
/// events, logs or metrics; caches are partitioned by them.
pub const CREDENTIAL_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-api-key"),
    http::header::AUTHORIZATION,
    HeaderName::from_static("api-key"),
];

/// Whether `name` is one of the [`CREDENTIAL_HEADERS`].
pub fn is_credential(name: &HeaderName) -> bool {
    CREDENTIAL_HEADERS.contains(name)
}

/// The request headers that change what an Anthropic or OpenAI answer means, and so
/// belong to a cache key: API versions, betas, the OpenAI organization and project.
pub const VARYING_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
];
