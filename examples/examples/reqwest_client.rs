//! The full brownout pipeline over reqwest (through brownout's bridge), against a
//! simulated provider on loopback whose preferred model is overloaded.
//!
//! ```sh
//! cargo run -p examples --example reqwest_client
//! ```

use brownout_sim::{Sim, SimServer};
use examples::{outage_script, reqwest_client};

#[tokio::main]
async fn main() -> Result<(), brownout::BoxError> {
    let server = SimServer::bind("127.0.0.1:0", Sim::new(outage_script()))
        .await?
        .spawn()?;
    println!(
        "simulated provider on {} (claude-sonnet-4-5 answers 529 to everything)",
        server.url()
    );
    for (i, answer) in reqwest_client::ask(&server.url(), 5)
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
