//! An axum server that calls a provider over reqwest through brownout and answers
//! `503` with `retry-after` (not a `500`) when the provider's circuit is open. The
//! provider is a simulator served over TLS on loopback, whose preferred model is
//! overloaded.
//!
//! ```sh
//! cargo run -p examples --example axum_server
//! ANTHROPIC_BASE_URL=https://api.anthropic.com ANTHROPIC_API_KEY=sk-ant-... cargo run -p examples --example axum_server
//! ```
//!
//! It serves on a loopback port, sends itself four questions, prints what came back,
//! and exits.

use examples::{axum_app, target};

#[tokio::main]
async fn main() -> Result<(), brownout::BoxError> {
    let (provider, ca, _sim) = target().await?;
    let state = axum_app::AppState::new(&provider, ca.as_deref())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/ask", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, axum_app::app(state)).await });
    println!("axum app on {url}, provider at {provider}");

    let client = reqwest::Client::new();
    for i in 0..4 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::json!({"question": format!("Question {i}?")}).to_string())
            .send()
            .await?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|s| format!(" (retry-after: {s}s)"))
            .unwrap_or_default();
        println!("request {i}: {}{retry_after}", response.status());
    }
    println!("Against the simulator, after two failed calls the breaker is open: the app answers 503 at once.");
    Ok(())
}
