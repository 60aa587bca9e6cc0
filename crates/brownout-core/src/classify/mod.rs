//! One classification of what happened to a request, shared by every brownout layer.
//!
//! Retry, circuit breaker, fallback, cache and degrade must agree on what a response
//! means: a 529 is an overload to all of them, a 400 is the caller's mistake to all of
//! them. This module is that single place. From a request's `Result<Response, Error>` it
//! yields an [`Outcome`]: an [`OutcomeKind`], the server-given delay when there is one,
//! whether the request may be sent again, and the provider's error type when the body
//! named one.
//!
//! # What the default classifier knows
//!
//! [`DefaultClassifier`] reads the status first, then the headers, and for statuses
//! whose meaning depends on it (429 and 5xx) a bounded prefix of the error body:
//!
//! | status | kind | retryable |
//! |---|---|---|
//! | 1xx, 2xx, 3xx | [`Success`](OutcomeKind::Success) | – |
//! | 408, 504 | [`Timeout`](OutcomeKind::Timeout) | yes |
//! | 429 | [`RateLimited`](OutcomeKind::RateLimited), or [`ClientError`](OutcomeKind::ClientError) when the body says `insufficient_quota` | yes / no |
//! | other 4xx (400, 401, 403, 404, 409, 413, …) | [`ClientError`](OutcomeKind::ClientError) | no |
//! | 503, 529 | [`Overloaded`](OutcomeKind::Overloaded) | yes |
//! | other 5xx | [`ServerError`](OutcomeKind::ServerError), or [`Overloaded`](OutcomeKind::Overloaded) when the body says `overloaded_error` | yes |
//!
//! - Error bodies in the Anthropic shape (`{"type":"error","error":{"type":"overloaded_error",…}}`)
//!   and the OpenAI shape (`{"error":{"type":…,"code":"rate_limit_exceeded",…}}`) refine
//!   the status as the table says. A body that is not JSON, is cut at the read limit, or
//!   names an unknown type is ignored: the status alone decides.
//! - `x-should-retry: true|false` overrides whether the outcome is retryable, as the
//!   official Anthropic and OpenAI SDKs do. It never changes the kind, so a breaker still
//!   counts a 529 that the server asked not to retry.
//! - The server-given delay is taken, in this order, from `retry-after-ms` (float
//!   milliseconds, OpenAI), `retry-after` (delta-seconds or an HTTP-date, RFC 9110), and
//!   for rate-limited outcomes only, the provider reset headers:
//!   `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset` (RFC 3339
//!   instants) and `x-ratelimit-reset-{requests,tokens}` (Go-style durations such as
//!   `6m0s` or `12ms`). Among reset headers, those whose `…-remaining` header is `0` are
//!   the limits that were hit, and the latest of them is used; when no remaining count
//!   says which limit was hit, the earliest reset is used, since waiting longer than
//!   needed is what the backoff is there to avoid. Malformed values are ignored.
//! - A status outside 100–599 (an upstream answering 641) is no valid HTTP answer: a
//!   [`ServerError`](OutcomeKind::ServerError), like a 502.
//! - A layer's refusal (an error whose source chain holds a
//!   [`Rejected`](crate::error::Rejected), such as the breaker's `CircuitOpen`) is
//!   [`Rejected`](OutcomeKind::Rejected), with the layer's reopening time as the
//!   server-given delay.
//! - The caller's own failures, [`BrokenBody`](crate::error::BrokenBody) (a request
//!   body cut short or stalled) and [`InvalidRequest`](crate::error::InvalidRequest),
//!   anywhere in the source chain, are [`ClientError`](OutcomeKind::ClientError).
//! - Transport errors: an [`io::Error`](std::io::Error) of kind `TimedOut`, tokio's and
//!   tower's `Elapsed`, and brownout's own [`AttemptTimedOut`](crate::error::AttemptTimedOut)
//!   and [`DeadlineExceeded`](crate::error::DeadlineExceeded) anywhere in the error's
//!   source chain are timeouts; every other error is a
//!   [`ConnectionFailed`](OutcomeKind::ConnectionFailed), which is what the official SDKs
//!   call a connection error and retry.
//!
//! # Reading error bodies
//!
//! A success body is never read. An error body is read only when
//! [`Classify::wants_body`] says so (by default for 429 and 5xx), only up to
//! [`DEFAULT_ERROR_BODY_LIMIT`] bytes or the limit given to [`classify_response`], and
//! what was read is handed back in front of the rest of the body, so the caller
//! receives every byte (see [`Body`](crate::body::Body)).
//!
//! # Once per attempt
//!
//! [`classify_response`] records the outcome in the response's extensions, so every
//! layer further out reads it with [`classify_head`] instead of reading the body
//! again. One classifier serves the whole stack: the default one, or yours through a
//! [`ClassifyLayer`] right over the HTTP client.
//!
//! # Your own classifier
//!
//! Anything that implements [`Classify`] can replace the default, and so can a closure
//! `Fn(Observed<'_>) -> Outcome`; it may delegate to [`DefaultClassifier`] for the cases
//! it does not care about. Give it to a [`ClassifyLayer`] over the client:
//!
//! ```
//! use brownout_core::classify::{Classifier, Classify, DefaultClassifier, Observed, Outcome, OutcomeKind};
//! use http::StatusCode;
//!
//! let default = DefaultClassifier::new();
//! // This API answers 409 when a lock is busy: retry it like an overload.
//! let classifier = Classifier::new(move |observed: Observed<'_>| match observed {
//!     Observed::Response { status, .. } if status == StatusCode::CONFLICT => {
//!         Outcome::new(OutcomeKind::Overloaded)
//!     }
//!     other => default.classify(other),
//! });
//! # let _ = classifier;
//! ```

mod body;
mod headers;
mod read;

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration, time::SystemTime};

use http::{HeaderMap, StatusCode};

pub use self::headers::{parse_go_duration, parse_retry_after};
pub use self::read::{
    classify_error, classify_head, classify_now, classify_response, classify_result, record,
    recorded, Classification, Classified, ClassifiedError, ClassifyLayer, Classifying,
    DEFAULT_ERROR_BODY_LIMIT,
};

/// What happened to one request, in the terms every brownout layer uses.
///
/// See the [module docs](self) for how the default classifier decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// The upstream answered and the answer is usable (1xx, 2xx, 3xx).
    Success,
    /// The request itself is at fault (400, 401, 403, 404, 413, an exhausted quota…):
    /// sending it again cannot help, and it says nothing about the upstream's health.
    ClientError,
    /// The caller is sending more than its rate limit allows (429).
    RateLimited,
    /// The upstream is overloaded (Anthropic 529 `overloaded_error`, 503).
    Overloaded,
    /// Another server-side failure (500, 502, …).
    ServerError,
    /// No answer in time: a client-side timeout, 408 or 504.
    Timeout,
    /// The request did not get an HTTP answer: refused, reset, or another transport
    /// error.
    ConnectionFailed,
    /// A brownout layer refused to send the request (a circuit breaker is open). The
    /// upstream was not asked, so this says nothing new about its health; the request
    /// may pass later, or at another target.
    Rejected,
}

impl OutcomeKind {
    /// Whether this kind is, by default, worth sending again.
    pub fn is_transient(self) -> bool {
        !matches!(self, OutcomeKind::Success | OutcomeKind::ClientError)
    }

    /// Whether this kind says something bad about the upstream's health, so that a
    /// circuit breaker counts it. Successes and client errors do not.
    /// Rejections by a brownout layer are not counted either: the upstream was not
    /// asked.
    pub fn is_upstream_failure(self) -> bool {
        !matches!(
            self,
            OutcomeKind::Success | OutcomeKind::ClientError | OutcomeKind::Rejected
        )
    }

    /// Whether this kind says the upstream cannot answer now, so that another path
    /// (the next model, a stored answer, a canned one) should: rate limited,
    /// overloaded, server error, timeout, connection failed, or refused by a layer.
    ///
    /// The named default of fallback's, the cache's and degrade's "when" predicates.
    /// Successes and client errors (the caller's own bad or broken request) are not.
    pub fn is_unavailable(self) -> bool {
        matches!(
            self,
            OutcomeKind::RateLimited
                | OutcomeKind::Overloaded
                | OutcomeKind::ServerError
                | OutcomeKind::Timeout
                | OutcomeKind::ConnectionFailed
                | OutcomeKind::Rejected
        )
    }

    /// A short lowercase name, as used in events and logs (`"overloaded"`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::ClientError => "client_error",
            OutcomeKind::RateLimited => "rate_limited",
            OutcomeKind::Overloaded => "overloaded",
            OutcomeKind::ServerError => "server_error",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::ConnectionFailed => "connection_failed",
            OutcomeKind::Rejected => "rejected",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The classification of one request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    kind: OutcomeKind,
    retryable: bool,
    server_delay: Option<Duration>,
    status: Option<StatusCode>,
    error_type: Option<Box<str>>,
}

impl Outcome {
    /// An outcome of the given kind; retryable when the kind is transient, with no
    /// server-given delay.
    pub fn new(kind: OutcomeKind) -> Self {
        Outcome {
            kind,
            retryable: kind.is_transient(),
            server_delay: None,
            status: None,
            error_type: None,
        }
    }

    /// A successful outcome.
    pub fn success() -> Self {
        Outcome::new(OutcomeKind::Success)
    }

    /// Sets whether the request may be sent again.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Sets the delay the server asked for before another attempt.
    pub fn with_server_delay(mut self, delay: Option<Duration>) -> Self {
        self.server_delay = delay;
        self
    }

    /// Records the response status this outcome was read from.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Records the provider's error type (`overloaded_error`, `insufficient_quota`…).
    pub fn with_error_type(mut self, error_type: impl Into<Box<str>>) -> Self {
        self.error_type = Some(error_type.into());
        self
    }

    /// What happened.
    pub fn kind(&self) -> OutcomeKind {
        self.kind
    }

    /// Whether the request may be sent again. Transient kinds are retryable unless the
    /// server said otherwise (`x-should-retry: false`).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether the request succeeded.
    pub fn is_success(&self) -> bool {
        self.kind == OutcomeKind::Success
    }

    /// The delay the server asked for, if it gave one.
    pub fn server_delay(&self) -> Option<Duration> {
        self.server_delay
    }

    /// The response status, when the outcome comes from a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The provider's error type or code from the error body, when one was read.
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(status) = self.status {
            write!(f, " ({}", status.as_u16())?;
            if let Some(t) = &self.error_type {
                write!(f, " {t}")?;
            }
            f.write_str(")")?;
        } else if let Some(t) = &self.error_type {
            write!(f, " ({t})")?;
        }
        Ok(())
    }
}

/// What a classifier looks at: a response head (with the error body's prefix when it
/// asked for it), or the error the service returned.
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    /// The service answered.
    Response {
        /// The response status.
        status: StatusCode,
        /// The response headers.
        headers: &'a HeaderMap,
        /// The first bytes of the body when [`Classify::wants_body`] returned `true`
        /// (possibly cut at the read limit), else `None`.
        body: Option<&'a [u8]>,
    },
    /// The service failed without a response.
    Error(&'a (dyn StdError + 'static)),
}

/// Decides the [`Outcome`] of a request.
///
/// Implemented by [`DefaultClassifier`] and by every closure
/// `Fn(Observed<'_>) -> Outcome + Send + Sync + 'static`.
pub trait Classify: Send + Sync + 'static {
    /// Whether to read a bounded prefix of this error response's body before
    /// classifying it. The default asks for the bodies of 429 and 5xx responses, whose
    /// meaning depends on the provider's error type. Never called for successes.
    fn wants_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let _ = headers;
        status == StatusCode::TOO_MANY_REQUESTS || (500..600).contains(&status.as_u16())
    }

    /// Classifies what was observed.
    fn classify(&self, observed: Observed<'_>) -> Outcome;
}

impl<F> Classify for F
where
    F: Fn(Observed<'_>) -> Outcome + Send + Sync + 'static,
{
    fn classify(&self, observed: Observed<'_>) -> Outcome {
        self(observed)
    }
}

/// A cheaply clonable, type-erased [`Classify`], as the layers store it.
#[derive(Clone)]
pub struct Classifier(Arc<dyn Classify>);

impl Classifier {
    /// Wraps a classifier.
    pub fn new(classify: impl Classify) -> Self {
        Classifier(Arc::new(classify))
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(DefaultClassifier::new())
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier").finish_non_exhaustive()
    }
}

impl Classify for Classifier {
    fn wants_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        self.0.wants_body(status, headers)
    }

    fn classify(&self, observed: Observed<'_>) -> Outcome {
        self.0.classify(observed)
    }
}

/// The classifier that knows generic HTTP, Anthropic and OpenAI semantics.
///
/// See the [module docs](self) for the rules.
#[derive(Clone, Copy)]
pub struct DefaultClassifier {
    wall_clock: fn() -> SystemTime,
}

impl DefaultClassifier {
    /// The default classifier, reading the wall clock from [`SystemTime::now`].
    pub fn new() -> Self {
        DefaultClassifier {
            wall_clock: SystemTime::now,
        }
    }

    /// Replaces the wall clock used to turn absolute times (`retry-after` HTTP-dates,
    /// `anthropic-ratelimit-*-reset` instants) into delays. For tests.
    pub fn wall_clock(mut self, now: fn() -> SystemTime) -> Self {
        self.wall_clock = now;
        self
    }

    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Outcome {
        if (100..400).contains(&status.as_u16()) {
            return Outcome::success().with_status(status);
        }
        let error_type = body.and_then(body::error_type);
        let mut kind = match status.as_u16() {
            408 | 504 => OutcomeKind::Timeout,
            429 => OutcomeKind::RateLimited,
            503 | 529 => OutcomeKind::Overloaded,
            400..=499 => OutcomeKind::ClientError,
            // 5xx, and statuses outside 100–599: no valid HTTP answer, a protocol
            // failure of the upstream like a 502.
            _ => OutcomeKind::ServerError,
        };
        if let Some(t) = &error_type {
            kind = body::refine(kind, t.as_ref());
        }
        let now = (self.wall_clock)();
        let mut delay = headers::server_delay(headers, now);
        if delay.is_none() && kind == OutcomeKind::RateLimited {
            delay = headers::reset_delay(headers, now);
        }
        let mut outcome = Outcome::new(kind)
            .with_status(status)
            .with_server_delay(delay);
        if let Some(should) = headers::should_retry(headers) {
            outcome = outcome.with_retryable(should);
        }
        if let Some(t) = error_type {
            outcome = outcome.with_error_type(t);
        }
        outcome
    }
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        DefaultClassifier::new()
    }
}

impl fmt::Debug for DefaultClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultClassifier").finish_non_exhaustive()
    }
}

impl Classify for DefaultClassifier {
    fn classify(&self, observed: Observed<'_>) -> Outcome {
        match observed {
            Observed::Response {
                status,
                headers,
                body,
            } => self.classify_response(status, headers, body),
            Observed::Error(error) => classify_error_chain(error),
        }
    }
}

/// Classifies a transport error by walking its source chain.
fn classify_error_chain(error: &(dyn StdError + 'static)) -> Outcome {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(classified) = e.downcast_ref::<ClassifiedError>() {
            return classified.outcome().clone();
        }
        if let Some(rejected) = e.downcast_ref::<crate::error::Rejected>() {
            return Outcome::new(OutcomeKind::Rejected).with_server_delay(rejected.retry_after());
        }
        if e.is::<crate::error::BrokenBody>() || e.is::<crate::error::InvalidRequest>() {
            return Outcome::new(OutcomeKind::ClientError);
        }
        if is_timeout(e) {
            return Outcome::new(OutcomeKind::Timeout);
        }
        current = crate::error::next_in_chain(e);
    }
    Outcome::new(OutcomeKind::ConnectionFailed)
}

fn is_timeout(e: &(dyn StdError + 'static)) -> bool {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.kind() == std::io::ErrorKind::TimedOut;
    }
    e.is::<tokio::time::error::Elapsed>()
        || e.is::<crate::error::AttemptTimedOut>()
        || e.is::<crate::error::DeadlineExceeded>()
        || e.is::<tower::timeout::error::Elapsed>()
}

#[cfg(test)]
mod tests;
