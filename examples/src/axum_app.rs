//! An axum server whose handler calls the provider over reqwest through brownout, and
//! answers brownout's failures with `brownout::Error`: an open circuit is a `503`
//! with `retry-after` in the provider's error shape, not a `500`.

use axum::{extract::State, response::Response, routing::post, Json, Router};
use brownout::{
    breaker::BreakerHandle, reqwest_bridge::ReqwestService, Body, BoxError, ServiceBuilderExt,
};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};

use crate::{breakers, chat_body, retry, PRIMARY};

type Client = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// What the handlers share: the provider's base URL and the client to it.
#[derive(Clone)]
pub struct AppState {
    base_url: String,
    client: Client,
    breakers: BreakerHandle,
}

impl AppState {
    /// The provider at `base_url` through breaker → retry → reqwest; `ca_pem` is a CA
    /// to trust besides the platform's (the simulator's).
    pub fn new(base_url: &str, ca_pem: Option<&str>) -> Result<Self, BoxError> {
        let mut reqwest = reqwest::Client::builder();
        if let Some(ca) = ca_pem {
            reqwest = reqwest.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
        }
        let breakers = breakers();
        let handle = breakers.handle();
        let client = ServiceBuilder::new()
            .circuit_breaker(breakers)
            .retry_with_jitter(retry())
            .service(ReqwestService::new(reqwest.build()?));
        Ok(AppState {
            base_url: base_url.to_owned(),
            client: BoxCloneSyncService::new(client),
            breakers: handle,
        })
    }

    /// The breakers, to look at or steer.
    pub fn breakers(&self) -> &BreakerHandle {
        &self.breakers
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The app: `POST /ask` with `{"question": "..."}` answers with the provider's JSON.
pub fn app(state: AppState) -> Router {
    Router::new().route("/ask", post(ask)).with_state(state)
}

async fn ask(
    State(state): State<AppState>,
    Json(question): Json<serde_json::Value>,
) -> Result<Response, brownout::Error> {
    let text = question["question"].as_str().unwrap_or("Hello");
    let key = std::env::var("ANTHROPIC_API_KEY").unwrap_or_else(|_| "sk-ant-example".into());
    let request = http::Request::post(format!("{}/v1/messages", state.base_url))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", key)
        .body(Body::from(chat_body(PRIMARY, text)))
        .map_err(brownout::Error::new)?;
    let response = state.client.oneshot(request).await?;
    Ok(response.map(axum::body::Body::new))
}
