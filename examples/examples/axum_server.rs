//! An axum server that calls a simulated provider through brownout and answers `503`
//! with `retry-after` (not a `500`) when the provider's circuit is open.
//!
//! ```sh
//! cargo run -p examples --example axum_server
//! ```
//!
//! It serves on a loopback port, sends itself four questions, prints what came back,
//! and exits.

use brownout_sim::Sim;
use examples::{axum_app, outage_script};

#[tokio::main]
async fn main() -> Result<(), brownout::BoxError> {
    let state = axum_app::AppState::new(Sim::new(outage_script()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/ask", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, axum_app::app(state)).await });
    println!("axum app on {url}; its provider's preferred model answers 529 to everything");

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
    println!("After two failed calls the breaker is open: the app answers 503 at once.");
    Ok(())
}
