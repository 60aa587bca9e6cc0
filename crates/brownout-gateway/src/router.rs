//! Which request goes through which pipeline, and what the caller gets back.
//!
//! `POST /v1/messages` and `POST /v1/chat/completions` go through their route's
//! pipeline when the configuration has the route; every other request (and those
//! two, when their route is not configured) is forwarded unchanged, without the
//! layers, to the `forward_to` provider. Responses stream back as they arrive.
//!
//! The router adds nothing of resilience. It cleans hop-by-hop headers, points
//! the request at its provider, turns the rare error that comes out of a pipeline
//! into an error response in the provider's shape (`502`, `503` or `504`), puts
//! `x-brownout-attempts` on when configured, and logs one line per request at `DEBUG`
//! (method, path without its query, status, latency, which model, cache or rule
//! answered), never a header value or a body.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use brownout::{
    body::BodyLimits,
    cache::CacheStatus,
    classify::{Classify, DefaultClassifier, Observed, OutcomeKind},
    degrade::Degraded,
    error::{find, BrokenBody, InvalidRequest},
    fallback::ServedBy,
    provider::{self, ErrorKind},
    retry::Attempts,
    Body, BoxError,
};
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::{
    config::{Api, Headers, CHAT_COMPLETIONS_PATH, MESSAGES_PATH},
    pipeline::{Layers, Pipeline},
    Config,
};

/// The header that says how many times the model that answered was tried.
pub const ATTEMPTS_HEADER: &str = "x-brownout-attempts";

struct RouteService<B> {
    api: Api,
    /// The provider's base URL, or `None` when the route's cascade sets each target's.
    base: Option<Uri>,
    pipeline: Pipeline<B>,
}

struct Shared<B> {
    messages: Option<RouteService<B>>,
    chat_completions: Option<RouteService<B>>,
    forward_base: Uri,
    forward: Pipeline<B>,
    headers: Headers,
    limits: BodyLimits,
    layers: Layers,
}

/// The gateway as a `tower::Service`: routes each request into its pipeline or
/// forwards it, and always answers (its error type is [`Infallible`]). See the
/// [module docs](self).
///
/// `B` is the callers' request body (hyper's `Incoming` in the proxy). Cheap to clone.
pub struct Router<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Router<B> {
    fn clone(&self) -> Self {
        Router {
            shared: self.shared.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Router<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("messages", &self.shared.messages.is_some())
            .field("chat_completions", &self.shared.chat_completions.is_some())
            .field("forward", &self.shared.forward_base)
            .field("headers", &self.shared.headers)
            .finish_non_exhaustive()
    }
}

impl<B> Router<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Builds the layers of `config` and the routes over two clients: `upstream`
    /// serves the pipelines, `forward` the other paths. Each gets the providers' keys.
    ///
    /// Call it inside the runtime that will serve: the layers take their start time
    /// from tokio's clock.
    pub fn new<C, F, X>(config: &Config, upstream: C, forward: F) -> Self
    where
        X: http_body::Body + Send + 'static,
        X::Data: Send,
        X::Error: Into<BoxError>,
        C: Service<Request<Body>, Response = Response<X>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
        F: Service<Request<Body>, Response = Response<X>> + Clone + Send + Sync + 'static,
        F::Error: Into<BoxError>,
        F::Future: Send + 'static,
    {
        let layers = Layers::new(config);
        let route = |route: Option<&crate::config::Route>, api: Api| {
            route.map(|r| RouteService {
                api,
                base: match r.cascade() {
                    Some(_) => None,
                    None => Some(config.providers()[r.provider()].base_url().clone()),
                },
                pipeline: layers.pipeline(r.cascade(), upstream.clone()),
            })
        };
        let messages = route(config.messages(), Api::Anthropic);
        let chat_completions = route(config.chat_completions(), Api::Openai);
        let forward = layers.plain(forward);
        Router {
            shared: Arc::new(Shared {
                messages,
                chat_completions,
                forward_base: config.forward_to().base_url().clone(),
                forward,
                headers: config.headers(),
                limits: config.limits(),
                layers,
            }),
        }
    }

    /// The layers behind the routes (their breakers and cache).
    pub fn layers(&self) -> &Layers {
        &self.shared.layers
    }
}

type RouterFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> Service<Request<B>> for Router<B>
where
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouterFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every pipeline's layers and clients are always ready: readiness is driven
        // per request, in `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> RouterFuture {
        let started = Instant::now();
        let shared = &*self.shared;
        let method = request.method().clone();
        let path: Box<str> = request.uri().path().into();
        remove_hop_by_hop(request.headers_mut());
        // The caller addressed the gateway; the client names the upstream's host.
        request.headers_mut().remove(header::HOST);
        // The one replay limit of the whole stack, from the config.
        request.extensions_mut().insert(shared.limits);

        let route = match (&method, &*path) {
            (&Method::POST, MESSAGES_PATH) => shared.messages.as_ref(),
            (&Method::POST, CHAT_COMPLETIONS_PATH) => shared.chat_completions.as_ref(),
            _ => None,
        };
        let headers = shared.headers;
        match route {
            Some(route) => {
                let uri = match &route.base {
                    Some(base) => rebase(request.uri(), base),
                    None => origin_form(request.uri()),
                };
                *request.uri_mut() = uri;
                let api = route.api;
                let pipeline = route.pipeline.clone();
                Box::pin(async move {
                    let response = match pipeline.oneshot(request).await {
                        Ok(response) => finish(response, headers),
                        Err(error) => failure(api, &*error, &method, &path),
                    };
                    log(&method, &path, &response, started);
                    Ok(response)
                })
            }
            None => {
                *request.uri_mut() = rebase(request.uri(), &shared.forward_base);
                let forward = shared.forward.clone();
                let api = if path.ends_with("/chat/completions") {
                    Api::Openai
                } else {
                    Api::Anthropic
                };
                Box::pin(async move {
                    let response = match forward.oneshot(request).await {
                        Ok(mut response) => {
                            remove_hop_by_hop(response.headers_mut());
                            response
                        }
                        Err(error) => failure(api, &*error, &method, &path),
                    };
                    log(&method, &path, &response, started);
                    Ok(response)
                })
            }
        }
    }
}

/// The response of a pipeline, cleaned and marked as configured.
fn finish<T>(mut response: Response<T>, headers: Headers) -> Response<T> {
    remove_hop_by_hop(response.headers_mut());
    if headers.attempts {
        let attempts = Attempts::of(response.extensions());
        if attempts > 1 {
            response.headers_mut().insert(
                HeaderName::from_static(ATTEMPTS_HEADER),
                HeaderValue::from(attempts),
            );
        }
    }
    if !headers.degraded {
        response
            .headers_mut()
            .remove(brownout::degrade::DEGRADED_HEADER);
        response
            .headers_mut()
            .remove(brownout::degrade::DEGRADED_RULE_HEADER);
    }
    response
}

/// The answer when a pipeline or the forwarding client ends in an error: the status
/// that says what happened, with an error body in the provider's shape. The message
/// is the error's own (brownout's errors name models and outcomes, never headers).
///
/// The caller's own failures come first: a body that broke off is `400`, one that
/// stalled `408`, a body naming `model` twice `400`.
fn failure(
    api: Api,
    error: &(dyn std::error::Error + 'static),
    method: &Method,
    path: &str,
) -> Response<Body> {
    let outcome = DefaultClassifier::new().classify(Observed::Error(error));
    let (status, kind) = if let Some(broken) = find::<BrokenBody>(error) {
        if broken.is_stalled() {
            (StatusCode::REQUEST_TIMEOUT, ErrorKind::RequestTimeout)
        } else {
            (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest)
        }
    } else if find::<InvalidRequest>(error).is_some() {
        (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest)
    } else {
        match outcome.kind() {
            OutcomeKind::Rejected => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Overloaded),
            OutcomeKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, ErrorKind::Timeout),
            _ => (StatusCode::BAD_GATEWAY, ErrorKind::Upstream),
        }
    };
    if status.is_client_error() {
        tracing::debug!(%method, path, status = status.as_u16(), error = %error, "brownout-gateway: the caller's request failed");
    } else {
        tracing::warn!(%method, path, status = status.as_u16(), error = %error, "brownout-gateway: no answer from upstream");
    }
    let message = format!("brownout-gateway: {error}");
    let api = match api {
        Api::Anthropic => provider::Api::AnthropicMessages,
        Api::Openai => provider::Api::OpenAiChat,
    };
    let mut response = Response::new(Body::from(api.error_body(kind, &message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status.is_client_error() {
        // The caller's own request: sending it again as it is cannot help.
        response
            .headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
    } else if let Some(delay) = outcome.server_delay() {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

fn log<X>(method: &Method, path: &str, response: &Response<X>, started: Instant) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let extensions = response.extensions();
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        model = extensions.get::<ServedBy>().map(ServedBy::model),
        cache = extensions.get::<CacheStatus>().map(|c| c.as_str()),
        degraded = extensions.get::<Degraded>().map(|d| d.rule().unwrap_or("generic")),
        attempts = Attempts::of(extensions),
        "brownout-gateway: answered",
    );
}

/// The headers that describe one connection, not the message (RFC 9110 §7.6.1), and
/// the proxy-only ones.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the hop-by-hop headers, including those the `connection` header names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these, and a scan
    // costs less than a lookup per name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Usually `keep-alive` or `close`, both removed below: parse only what else it
        // names.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| {
                !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close")
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `uri`'s path and query under `base` (scheme, host and path prefix).
fn rebase(uri: &Uri, base: &Uri) -> Uri {
    let prefix = base.path().trim_end_matches('/');
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = if prefix.is_empty() {
        // No prefix: the request's own path and query, without reparsing them.
        uri.path_and_query().cloned()
    } else {
        let rest = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{prefix}{rest}").parse().ok()
    };
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Only `uri`'s path and query: the fallback layer puts each target's endpoint in
/// front.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-api-key", HeaderValue::from_static("sk-caller"));
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["anthropic-version", "x-api-key"]);
    }

    #[test]
    fn paths_move_under_the_provider_and_keep_their_query() {
        let uri: Uri = "/v1/messages?beta=true".parse().unwrap();
        let base: Uri = "http://127.0.0.1:8787/proxy".parse().unwrap();
        assert_eq!(
            rebase(&uri, &base),
            "http://127.0.0.1:8787/proxy/v1/messages?beta=true"
        );
        let absolute: Uri = "http://gateway:8080/v1/models".parse().unwrap();
        assert_eq!(origin_form(&absolute), "/v1/models");
    }

    #[test]
    fn errors_become_answers_in_the_providers_shape() {
        let open = brownout::breaker::CircuitOpen::new(
            "claude-sonnet-4-5".into(),
            Some(std::time::Duration::from_millis(2500)),
        );
        let response = failure(Api::Anthropic, &open, &Method::POST, "/v1/messages");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let bytes = body_bytes(response.into_body());
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "overloaded_error");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit open for claude-sonnet-4-5"));

        let timeout = brownout::error::DeadlineExceeded::new(std::time::Duration::from_secs(60), 3);
        let response = failure(Api::Openai, &timeout, &Method::POST, "/v1/chat/completions");
        assert_eq!(response.status(), 504);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let response = failure(Api::Openai, &refused, &Method::POST, "/v1/chat/completions");
        assert_eq!(response.status(), 502);
        let json: serde_json::Value =
            serde_json::from_slice(&body_bytes(response.into_body())).unwrap();
        assert_eq!(json["error"]["code"], "bad_gateway");
    }

    #[test]
    fn the_callers_broken_or_invalid_request_is_a_400_or_408() {
        let cut = BrokenBody::cut("connection reset".into());
        let response = failure(Api::Anthropic, &cut, &Method::POST, "/v1/messages");
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["x-should-retry"], "false");
        let json: serde_json::Value =
            serde_json::from_slice(&body_bytes(response.into_body())).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error");
        let stalled = BrokenBody::stalled(std::time::Duration::from_secs(30));
        let response = failure(Api::Openai, &stalled, &Method::POST, "/v1/chat/completions");
        assert_eq!(response.status(), 408);
        let twice = InvalidRequest::new("the body names its `model` twice");
        let response = failure(Api::Anthropic, &twice, &Method::POST, "/v1/messages");
        assert_eq!(response.status(), 400);
    }

    fn body_bytes(body: Body) -> bytes::Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(body.collect()).unwrap().to_bytes()
    }
}
