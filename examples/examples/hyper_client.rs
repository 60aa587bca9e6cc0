//! The full brownout pipeline over brownout's HTTPS client (hyper-util over rustls),
//! against a simulated provider served over TLS on loopback whose preferred model is
//! overloaded.
//!
//! ```sh
//! cargo run -p examples --example hyper_client
//! # the real API, by changing only the URL:
//! ANTHROPIC_BASE_URL=https://api.anthropic.com ANTHROPIC_API_KEY=sk-ant-... cargo run -p examples --example hyper_client
//! ```

use examples::{hyper_client, target};

#[tokio::main]
async fn main() -> Result<(), brownout::BoxError> {
    let (url, ca, _sim) = target().await?;
    println!("provider at {url} (the simulator's claude-sonnet-4-5 answers 529 to everything)");
    for (i, answer) in hyper_client::ask(&url, ca.as_deref(), 5)
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
    println!("The first requests try sonnet (retried), then fall back to haiku; once sonnet's breaker is open, the cascade skips it without a request.");
    Ok(())
}
