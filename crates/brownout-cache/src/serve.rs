//! How a request is keyed and a live answer stored, and how a stored answer is
//! served: the work the cache's service and its response future share.

use std::{fmt, sync::Arc};

use brownout_core::{
    classify::{classify_result, DefaultClassifier, Outcome, DEFAULT_ERROR_BODY_LIMIT},
    event::Event,
    future::Output,
    provider::Api,
    Body, BoxError, RequestFacts,
};
use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    config::Mode,
    key::CacheKey,
    store::{CachedResponse, Flight, Store},
    CacheConfig, CacheEvent, CacheStatus,
};

use http::{Method, Uri};

/// What every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) config: CacheConfig,
    pub(crate) store: Arc<Store>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish()
    }
}

/// What a live call of a keyed request needs once it answers.
pub(crate) struct Live {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: CacheKey,
    pub(crate) api: Api,
    pub(crate) serve: Serve,
    /// What a stale answer's event names of the request: kept rather than a clone of
    /// the whole head (its headers and extensions), which the call takes.
    pub(crate) method: Method,
    pub(crate) uri: Uri,
}

/// The key of a request the cache answers for, with its API and how a stored answer
/// is served to it; `None` for one passed through: a body over the stack's replay
/// limit (too long to key), a `no-store` request, a stream of an API no stored answer
/// is rendered as.
pub(crate) fn keyed(shared: &Shared, parts: &Parts, body: &Body) -> Option<(CacheKey, Api, Serve)> {
    let data = body.bytes()?;
    let facts = RequestFacts::of(&parts.extensions);
    let stream = facts.is_some_and(RequestFacts::is_stream);
    let api = facts.map_or_else(|| Api::from_path(parts.uri.path()), RequestFacts::api);
    if no_store(parts) || (stream && !matches!(api, Api::AnthropicMessages | Api::OpenAiChat)) {
        return None;
    }
    let serve = Serve {
        stream: stream.then(|| (api, crate::stream::include_usage(data))),
    };
    let store = &shared.store;
    let keying = &shared.config.keying;
    let selected = keying.select(parts);
    // The exact digest only where the store remembers keys by it (fresh-hit mode).
    let exact = if store.remembers() {
        keying.exact(&store.secret, parts, &selected, data)
    } else {
        None
    };
    let key = store.key_of(exact, || keying.key_with(parts, &selected, data));
    Some((key, api, serve))
}

/// The stored answer for a request whose live call failed, when one is servable;
/// else the live result.
pub(crate) async fn stale(live: Live, result: Output, outcome: Outcome) -> Output {
    let Live {
        shared,
        key,
        serve,
        method,
        uri,
        ..
    } = live;
    match servable(shared.store.get(&key).await, &shared.config) {
        Some(entry) => from_store(
            &shared,
            (&method, &uri),
            &entry,
            CacheStatus::Stale,
            Some(outcome),
            serve,
        )
        .map_or(result, Ok),
        None => result,
    }
}

pub(crate) async fn run<S, ResBody>(
    mut inner: S,
    shared: Arc<Shared>,
    request: Request<Body>,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let config = &shared.config;
    let (parts, body) = request.into_parts();
    let Some((key, api, serve)) = keyed(&shared, &parts, &body) else {
        return call(&mut inner, parts, body).await;
    };
    let store = &shared.store;

    let mut guard = None;
    if config.mode == Mode::FreshHit {
        // A fresh entry, served as this request asks.
        let hit = |entry| {
            fresh(entry, config).and_then(|hit| {
                from_store(
                    &shared,
                    (&parts.method, &parts.uri),
                    &hit,
                    CacheStatus::Hit,
                    None,
                    serve,
                )
            })
        };
        if let Some(response) = hit(store.get(&key).await) {
            return Ok(response);
        }
        match store.flight(key) {
            Flight::Lead(lead) => guard = Some(lead),
            Flight::Follow(mut done) => {
                // The leader stores the answer (or gives up); either way the channel
                // closes when it is done.
                let _ = done.changed().await;
                if let Some(response) = hit(store.get(&key).await) {
                    return Ok(response);
                }
            }
        }
    }

    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let live = inner
        .call(Request::from_parts(parts, body))
        .await
        .map_err(Into::into)
        .map(|response| response.map(Body::new));
    // The outcome a layer further in recorded, else the default classifier's.
    let (result, outcome) =
        classify_result(&DefaultClassifier::new(), live, DEFAULT_ERROR_BODY_LIMIT).await;
    let result = match result {
        Ok(response)
            if outcome.is_success()
                && response.status().is_success()
                && is_event_stream(&response) =>
        {
            Ok(record_stream(store, key, api, response))
        }
        Ok(response) if outcome.is_success() && response.status().is_success() => {
            Ok(store_response(store, key, response).await)
        }
        other => other,
    };
    drop(guard);
    if outcome.is_success() || !(config.serve_stale_when)(&outcome) {
        return result;
    }
    let live = Live {
        shared: shared.clone(),
        key,
        api,
        serve,
        method,
        uri,
    };
    stale(live, result, outcome).await
}

/// The request passed through without the cache.
async fn call<S, ResBody>(inner: &mut S, parts: Parts, body: Body) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let response = inner
        .call(Request::from_parts(parts, body))
        .await
        .map_err(Into::into)?;
    Ok(response.map(Body::new))
}

/// Reads a successful answer whole (up to the entry limit) before handing it on, and
/// stores it; an event stream, a `no-store` answer, or one whose `content-length` is
/// over the limit is handed on unread; one that turns out longer, fails while it is
/// read, or ends with trailers is handed on whole (the bytes read, then the rest or
/// the failure) and not stored.
async fn store_response(store: &Store, key: CacheKey, response: Response<Body>) -> Response<Body> {
    // (An event stream never comes here: `record_stream` takes it.)
    if no_store_response(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = Box::pin(body.buffer(store.max_entry_bytes)).await;
    if let Some(entry) = stored_entry(store, &parts, &body) {
        store.insert(key, entry).await;
    }
    Response::from_parts(parts, body)
}

/// The entry for an answer read whole: `None` when it is longer than the entry limit
/// or ends with trailers (such an answer is passed on, unstored).
pub(crate) fn stored_entry(
    store: &Store,
    parts: &http::response::Parts,
    body: &Body,
) -> Option<CachedResponse> {
    // (A body that was in memory already is complete whatever its length: it is
    // measured here.)
    let data = body
        .bytes()
        .filter(|data| data.len() <= store.max_entry_bytes && body.trailers().is_none())?;
    // Copied: a body or header value fresh from hyper shares its read buffer, which
    // the entry would otherwise keep alive (kilobytes for a short answer) outside the
    // byte bound. Into one buffer, body then header values, which the entry's body
    // and values are slices of: one allocation per entry, not one per value.
    let values: usize = parts.headers.values().map(HeaderValue::len).sum();
    let mut copy = Vec::with_capacity(data.len() + values);
    copy.extend_from_slice(data);
    for value in parts.headers.values() {
        copy.extend_from_slice(value.as_bytes());
    }
    let copy = Bytes::from(copy);
    // The map cloned, its values then pointed at the copy, in the same order: no
    // name hashed or inserted again (the names are the answer's own allocations, not
    // slices of the read buffer).
    let mut at = data.len();
    let mut headers = parts.headers.clone();
    for value in headers.values_mut() {
        let bytes = copy.slice(at..at + value.len());
        at += value.len();
        // The bytes of a valid value: checked again, never refused.
        if let Ok(mut stored) = HeaderValue::from_maybe_shared(bytes) {
            stored.set_sensitive(value.is_sensitive());
            *value = stored;
        }
    }
    Some(CachedResponse::new(
        parts.status,
        parts.version,
        headers,
        copy.slice(..data.len()),
        Instant::now(),
    ))
}

fn fresh(entry: Option<Arc<CachedResponse>>, config: &CacheConfig) -> Option<Arc<CachedResponse>> {
    entry.filter(|e| e.stored_at().elapsed() < config.ttl)
}

fn servable(
    entry: Option<Arc<CachedResponse>>,
    config: &CacheConfig,
) -> Option<Arc<CachedResponse>> {
    let limit = config.ttl.saturating_add(config.stale_window);
    entry.filter(|e| e.stored_at().elapsed() < limit)
}

/// How a stored answer is served: as it is, or, for a request that streams, as the
/// stream of this API (and whether with OpenAI's usage chunk).
#[derive(Clone, Copy)]
pub(crate) struct Serve {
    stream: Option<(Api, bool)>,
}

pub(crate) fn is_event_stream<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A streamed answer, handed on as it comes and stored once it has ended whole (see
/// the `stream` module); a `no-store` one is handed on untouched.
pub(crate) fn record_stream(
    store: &Arc<Store>,
    key: CacheKey,
    api: Api,
    response: Response<Body>,
) -> Response<Body> {
    if no_store_response(&response) || !matches!(api, Api::AnthropicMessages | Api::OpenAiChat) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let head = (parts.status, parts.version, parts.headers.clone());
    let body = crate::stream::Recording::new(body, api, store.clone(), key, head);
    Response::from_parts(parts, Body::new(body))
}

/// An answer from the store, marked as such; `None` when it cannot be served as the
/// request asks (a stream of an answer no stream renders).
fn from_store(
    shared: &Shared,
    (method, uri): (&http::Method, &http::Uri),
    entry: &CachedResponse,
    status: CacheStatus,
    live: Option<Outcome>,
    serve: Serve,
) -> Option<Response<Body>> {
    let streamed = match serve.stream {
        Some((api, include_usage)) => Some(crate::stream::as_stream(api, entry, include_usage)?),
        None => None,
    };
    let age = entry.stored_at.elapsed();
    shared.config.events.emit(Event::new(
        "cache",
        method,
        uri,
        CacheEvent::ServedFromCache {
            stale: status == CacheStatus::Stale,
            age,
            outcome: live,
        },
    ));
    let (headers, body) = streamed.unwrap_or_else(|| (entry.headers.clone(), entry.body.clone()));
    let mut response = Response::new(Body::from_bytes(body));
    *response.status_mut() = entry.status;
    *response.version_mut() = entry.version;
    *response.headers_mut() = headers;
    let headers = response.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    if let Some(name) = &shared.config.status_header {
        headers.insert(name.clone(), HeaderValue::from_static(status.as_str()));
    }
    response.extensions_mut().insert(status);
    Some(response)
}

fn no_store(parts: &Parts) -> bool {
    has_no_store(&parts.headers)
}

pub(crate) fn no_store_response<B>(response: &Response<B>) -> bool {
    has_no_store(response.headers())
}

fn has_no_store(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
        })
}
