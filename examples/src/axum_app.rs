//! An axum server whose handler calls the provider over reqwest through brownout, and
//! answers brownout's failures with `brownout::Error`: an open circuit is a `503`
//! with `retry-after` in the provider's error shape, not a `500`.

use axum::{extract::State, response::Response, routing::post, Json, Router};
use brownout::ServiceBuilderExt;
use brownout::{breaker::BreakerHandle, reqwest_bridge::ReqwestService, Body, BoxError};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};

use crate::{breakers, chat_body, retry, PRIMARY};

/// What the handlers share: the provider's base URL, the client to it, its breakers.
#[derive(Clone, Debug)]
pub struct AppState {
    base_url: String,
    client: BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>,
    /// The breakers, to look at or steer.
    pub breakers: BreakerHandle,
}

impl AppState {
    /// The provider at `base_url` through breaker → retry → reqwest; `ca_pem` is a CA
    /// to trust besides the platform's (the simulator's).
    pub fn new(base_url: &str, ca_pem: Option<&str>) -> Result<Self, BoxError> {
        let mut reqwest = reqwest::Client::builder();
        if let Some(ca) = ca_pem {
            reqwest = reqwest.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
        }
        let (breakers, base_url) = (breakers(), base_url.to_owned());
        let client = ServiceBuilder::new()
            .circuit_breaker(breakers.clone())
            .retry_with_jitter(retry())
            .service(ReqwestService::new(reqwest.build()?));
        let (client, breakers) = (BoxCloneSyncService::new(client), breakers.handle());
        Ok(AppState {
            base_url,
            client,
            breakers,
        })
    }
}

/// The app: `POST /ask` with `{"question": "..."}` answers with the provider's JSON.
pub fn app(state: AppState) -> Router {
    Router::new().route("/ask", post(ask)).with_state(state)
}

async fn ask(
    State(state): State<AppState>,
    Json(q): Json<serde_json::Value>,
) -> Result<Response, brownout::Error> {
    let key = std::env::var("ANTHROPIC_API_KEY").unwrap_or_else(|_| "sk-ant-example".into());
    let request = http::Request::post(format!("{}/v1/messages", state.base_url))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", key)
        .body(Body::from(chat_body(
            PRIMARY,
            q["question"].as_str().unwrap_or("Hello"),
        )))
        .map_err(brownout::Error::new)?;
    let response = state.client.oneshot(request).await?;
    Ok(response.map(axum::body::Body::new))
}
