//! The full pipeline over hyper-util, as brownout's HTTPS client: against
//! `https://api.anthropic.com`, or the TLS simulator with its CA.

use brownout::{cache::CacheConfig, client::HttpsConfig, Body, BoxError, ServiceBuilderExt};
use tower::{ServiceBuilder, ServiceExt};

use crate::{breakers, cascade, chat_body, retry, Answer, PRIMARY};

/// Sends `n` questions for the preferred model to `base_url` through cache → fallback
/// → breaker → retry → HTTPS client, and says who answered. `ca_pem` is a CA to trust
/// besides the platform's (the simulator's); `None` for a real provider.
pub async fn ask(base_url: &str, ca_pem: Option<&str>, n: usize) -> Result<Vec<Answer>, BoxError> {
    let mut https = HttpsConfig::new();
    if let Some(ca) = ca_pem {
        https = https.ca_pem(ca);
    }
    let breakers = breakers();
    let client = ServiceBuilder::new()
        .response_cache(CacheConfig::new())
        .model_fallback(cascade(&breakers))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry())
        .service(https.build()?);
    let key = std::env::var("ANTHROPIC_API_KEY").unwrap_or_else(|_| "sk-ant-example".into());
    let mut answers = Vec::with_capacity(n);
    for i in 0..n {
        let request = http::Request::post(format!("{base_url}/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-api-key", &key)
            .body(Body::from(chat_body(PRIMARY, &format!("Question {i}?"))))?;
        let response = client.clone().oneshot(request).await?;
        answers.push(Answer::of(&response));
    }
    Ok(answers)
}
