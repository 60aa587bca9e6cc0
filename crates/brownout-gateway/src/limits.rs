//! The rate limits of `[limits]`: one brownout-limit layer per provider, chosen by
//! where the request goes.
//!
//! It sits innermost, under the provider's key ([`Credentials`](crate::Credentials))
//! and right over the HTTP client: every attempt of the retry layer and every model
//! of the cascade is counted against the provider and model it is really sent to, and
//! the limiter keys its budgets by the credential the request carries there, the
//! gateway's key for a keyed provider (one budget for all callers, as the provider
//! counts it) or each caller's own for a pass-through one.
//!
//! # What the caller gets
//!
//! A request that finds no room waits for it, up to `max_wait` and the gateway's own
//! deadline (the shorter of `retry.deadline` and `fallback.deadline`, set on the
//! request as a [`Deadline`]; else the SDKs' `x-stainless-timeout`). Past that, with
//! `on_limit = "respond"` (the default), the limiter answers `429` `rate_limit_error`
//! in the provider's shape with `retry-after` and `x-should-retry: true`, as the
//! provider would: the gateway has not retried it, and an SDK coming back after
//! `retry-after` finds room. When the gateway did retry or fall back on it, the
//! router's rule makes it `x-should-retry: false`, as for any answer it handled. A
//! request larger than a whole minute's limit is answered at once `429` with
//! `x-should-retry: false`: sending it again cannot help. With `on_limit = "error"`
//! the refusal is the gateway's own final answer, [`refusal`]: the same `429` shape
//! with `retry-after`, but `x-should-retry: false` (unless `[headers] should_retry =
//! false`), like the gateway's other own answers.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use brownout::{
    error::find,
    limit::{
        Deadline, LimitHandle, RateLimit, RateLimitLayer, RateLimited, Resource, TooManyTokens,
    },
    provider::Api,
    Body, BoxError,
};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::config::{Provider, RateLimits};

/// A provider's endpoint: its authority and path prefix.
#[derive(Debug)]
struct Endpoint {
    authority: String,
    prefix: String,
    /// The index of its limiter in [`ProviderLimits::layers`].
    slot: usize,
}

impl Endpoint {
    fn matches(&self, uri: &Uri) -> bool {
        let (Some(authority), path) = (uri.authority(), uri.path()) else {
            return false;
        };
        self.authority.eq_ignore_ascii_case(authority.as_str())
            && path.starts_with(&self.prefix)
            && matches!(path.as_bytes().get(self.prefix.len()), None | Some(b'/'))
    }
}

/// The limiters of `[limits]`, one per provider with an entry, shared by every route.
#[derive(Debug, Clone)]
pub(crate) struct ProviderLimits {
    endpoints: Arc<[Endpoint]>,
    layers: Arc<[(String, RateLimitLayer)]>,
    deadline: Option<Duration>,
}

impl ProviderLimits {
    /// The limiters `limits` configures for `providers`. A provider's settings were
    /// checked when the file was read; should a layer still refuse them, that
    /// provider is left unlimited and the reason logged.
    ///
    /// With `[state]`, each provider's buckets are in Redis (a `RedisLimitStore`, one
    /// admission round trip per request), so that the replicas together stay under the
    /// provider's limits; while Redis is away they fail open (local buckets) or closed
    /// (429 `rate_limit_error`, `retry-after: 1`) as `[state] limits` says. Keys are the
    /// model and the caller's credential fingerprint, as in the local store.
    pub(crate) fn new(
        providers: &[Provider],
        limits: &RateLimits,
        state: Option<&crate::config::SharedState>,
    ) -> (ProviderLimits, Vec<brownout::redis::RedisLimitStore>) {
        let mut layers = Vec::new();
        let mut stores = Vec::new();
        let mut endpoints = Vec::new();
        for (index, config) in &limits.providers {
            let Some(provider) = providers.get(*index) else {
                continue;
            };
            let mut config = config.clone();
            if let Some(state) = state {
                let mode = match state.limits() {
                    crate::config::OnRedisError::FailOpen => brownout::redis::FailMode::Open,
                    crate::config::OnRedisError::FailClosed => brownout::redis::FailMode::Closed {
                        retry_after: Duration::from_secs(1),
                    },
                };
                match brownout::redis::RedisLimitStore::new(state.redis().clone(), mode) {
                    Ok(store) => {
                        stores.push(store.clone());
                        config = config.store(store);
                    }
                    Err(e) => {
                        tracing::error!(provider = provider.name(), error = %e, "[state]: the rate limits stay local");
                    }
                }
            }
            let layer = match RateLimitLayer::new(config) {
                Ok(layer) => layer,
                Err(e) => {
                    tracing::error!(provider = provider.name(), error = %e, "brownout-gateway: rate limits left out");
                    continue;
                }
            };
            endpoints.push(Endpoint {
                authority: provider
                    .base_url()
                    .authority()
                    .map(|a| a.as_str().to_ascii_lowercase())
                    .unwrap_or_default(),
                prefix: provider.base_url().path().trim_end_matches('/').to_owned(),
                slot: layers.len(),
            });
            layers.push((provider.name().to_owned(), layer));
        }
        // The longest prefix first, so that the first match is the most specific.
        endpoints.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        let limits = ProviderLimits {
            endpoints: endpoints.into(),
            layers: layers.into(),
            deadline: limits.deadline,
        };
        (limits, stores)
    }

    /// Each limited provider's name and its limiter's handle.
    pub(crate) fn handles(&self) -> Vec<(String, LimitHandle)> {
        self.layers
            .iter()
            .map(|(name, layer)| (name.clone(), layer.handle()))
            .collect()
    }

    /// The deadline a request has in the gateway, which also bounds its wait.
    pub(crate) fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

/// Sets the gateway's deadline on a request entering a pipeline, for the limiter.
pub(crate) fn set_deadline<B>(deadline: Duration) -> impl Fn(Request<B>) -> Request<B> + Clone {
    move |mut request: Request<B>| {
        request
            .extensions_mut()
            .insert(Deadline(tokio::time::Instant::now() + deadline));
        request
    }
}

/// The HTTP client with the limiter of the provider each request goes to, and its
/// responses' bodies as [`Body`]. Without limits every request goes straight on.
#[derive(Debug, Clone)]
pub(crate) struct Limited<S> {
    inner: S,
    limits: Option<ProviderLimits>,
}

impl<S> Limited<S> {
    /// `inner` with `limits`, when there are any.
    pub(crate) fn new(inner: S, limits: Option<ProviderLimits>) -> Self {
        Limited { inner, limits }
    }
}

impl<S, X> Service<Request<Body>> for Limited<S>
where
    S: Service<Request<Body>, Response = Response<X>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    X: http_body::Body + Send + 'static,
    X::Data: Send,
    X::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = LimitedFuture<<RateLimit<S> as Service<Request<Body>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let layer = self.limits.as_ref().and_then(|limits| {
            let slot = limits
                .endpoints
                .iter()
                .find(|e| e.matches(request.uri()))?
                .slot;
            Some(&limits.layers[slot].1)
        });
        match layer {
            Some(layer) => {
                // The service polled ready goes into the limiter; a clone stays.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                let mut limited = layer.layer(ready);
                LimitedFuture::Limited {
                    future: limited.call(request),
                }
            }
            None => LimitedFuture::Plain {
                future: self.inner.call(request),
            },
        }
    }
}

pin_project! {
    /// The future of [`Limited`].
    #[project = Projection]
    pub(crate) enum LimitedFuture<L, F> {
        /// Through the provider's limiter.
        Limited { #[pin] future: L },
        /// To a provider without limits.
        Plain { #[pin] future: F },
    }
}

impl<L, F, X, E> Future for LimitedFuture<L, F>
where
    L: Future<Output = Result<Response<Body>, BoxError>>,
    F: Future<Output = Result<Response<X>, E>>,
    E: Into<BoxError>,
    X: http_body::Body + Send + 'static,
    X::Data: Send,
    X::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Limited { future } => future.poll(cx),
            Projection::Plain { future } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(result.map(|r| r.map(Body::new)).map_err(Into::into))
            }
        }
    }
}

/// The gateway's own answer to a limiter's refusal under `on_limit = "error"`: `429`
/// `rate_limit_error` in `api`'s shape, with `retry-after` when room is known to
/// come, and `x-should-retry: false` when `should_retry` (the gateway's final
/// answer). `None` when `error` is no limiter refusal.
pub(crate) fn refusal(
    api: Api,
    error: &(dyn std::error::Error + 'static),
    should_retry: bool,
) -> Option<Response<Body>> {
    let (message, resource, retry_after) = if let Some(limited) = find::<RateLimited>(error) {
        (
            limited.to_string(),
            limited.resource(),
            Some(limited.retry_after()),
        )
    } else if let Some(refused) = find::<TooManyTokens>(error) {
        (refused.to_string(), Some(refused.resource()), None)
    } else {
        return None;
    };
    let message = format!("brownout-gateway: {message}");
    let body = if api.is_openai() {
        let kind = match resource {
            Some(Resource::Requests) => "requests",
            _ => "tokens",
        };
        brownout::shape::openai_error(&message, kind, None, Some("rate_limit_exceeded"))
    } else {
        brownout::shape::anthropic_error("rate_limit_error", &message)
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(delay) = retry_after {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if should_retry {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    Some(response)
}
