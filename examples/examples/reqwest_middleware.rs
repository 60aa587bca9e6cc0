//! brownout as one middleware of a reqwest-middleware client, against a simulated
//! provider served over TLS on loopback whose preferred model is overloaded.
//!
//! ```sh
//! cargo run -p examples --example reqwest_middleware
//! # the real API, by changing only the URL:
//! ANTHROPIC_BASE_URL=https://api.anthropic.com ANTHROPIC_API_KEY=sk-ant-... cargo run -p examples --example reqwest_middleware
//! ```

use examples::{middleware_client, target};

#[tokio::main]
async fn main() -> Result<(), brownout::BoxError> {
    let (url, ca, _sim) = target().await?;
    println!("provider at {url} (the simulator's claude-sonnet-4-5 answers 529 to everything)");
    for (i, answer) in middleware_client::ask(&url, ca.as_deref(), 5)
        .await?
        .iter()
        .enumerate()
    {
        println!(
            "request {i}: {} from {}",
            answer.status,
            answer.model.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
