//! An axum server whose handler calls a (simulated) provider through brownout, and
//! turns the errors brownout creates into proper HTTP answers.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use brownout::{
    breaker::BreakerHandle, breaker::CircuitOpen, fallback::AllTargetsFailed, Body, BoxError,
    ServiceBuilderExt,
};
use brownout_sim::Sim;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};

use crate::{breakers, chat_body, retry, PRIMARY};

type Client = BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Body>, BoxError>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    client: Client,
    breakers: BreakerHandle,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// The provider behind `sim`, through breaker → retry.
    pub fn new(sim: Sim) -> Self {
        let breakers = breakers();
        let handle = breakers.handle();
        let client = ServiceBuilder::new()
            .circuit_breaker(breakers)
            .retry_with_jitter(retry())
            .service(sim);
        AppState {
            client: BoxCloneSyncService::new(client),
            breakers: handle,
        }
    }

    /// The breakers, to look at or steer.
    pub fn breakers(&self) -> &BreakerHandle {
        &self.breakers
    }
}

/// The app: `POST /ask` with `{"question": "..."}` answers with the provider's JSON.
pub fn app(state: AppState) -> Router {
    Router::new().route("/ask", post(ask)).with_state(state)
}

async fn ask(State(state): State<AppState>, Json(question): Json<serde_json::Value>) -> Response {
    let text = question["question"].as_str().unwrap_or("Hello");
    let request = match http::Request::post("/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(chat_body(PRIMARY, text)))
    {
        Ok(request) => request,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match state.client.oneshot(request).await {
        Ok(response) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match response.into_body().collect().await {
                Ok(body) => (
                    status,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body.to_bytes(),
                )
                    .into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        Err(error) => brownout_error(&*error),
    }
}

/// Errors brownout makes, as the answers a client can act on: an open circuit is a
/// 503 with `retry-after`, not a 500; the caller's own broken or invalid request a 400.
pub fn brownout_error(error: &(dyn std::error::Error + 'static)) -> Response {
    if brownout::error::is_caller_error(error) {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": error.to_string()})),
        )
            .into_response();
    }
    if let Some(open) = error.downcast_ref::<CircuitOpen>() {
        let retry_after = open.retry_after().unwrap_or(Duration::from_secs(1));
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))],
            Json(serde_json::json!({"error": open.to_string()})),
        )
            .into_response();
    }
    if let Some(all) = error.downcast_ref::<AllTargetsFailed>() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": all.to_string()})),
        )
            .into_response();
    }
    (
        StatusCode::BAD_GATEWAY,
        Json(serde_json::json!({"error": "the provider could not be reached"})),
    )
        .into_response()
}
