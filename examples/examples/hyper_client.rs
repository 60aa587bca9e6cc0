//! The full brownout pipeline over a hyper-util client, against a simulated provider on
//! loopback whose preferred model is overloaded.
//!
//! ```sh
//! cargo run -p examples --example hyper_client
//! ```

use brownout_sim::{Sim, SimServer};
use examples::{hyper_client, outage_script};

#[tokio::main]
async fn main() -> Result<(), brownout::BoxError> {
    let server = SimServer::bind("127.0.0.1:0", Sim::new(outage_script()))
        .await?
        .spawn()?;
    println!(
        "simulated provider on {} (claude-sonnet-4-5 answers 529 to everything)",
        server.url()
    );
    for (i, answer) in hyper_client::ask(&server.url(), 5)
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
