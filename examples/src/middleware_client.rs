//! brownout inside a reqwest-middleware `ClientWithMiddleware`: one `.with(...)`, and
//! every call site stays a reqwest call.

use brownout::{reqwest_middleware::Brownout, BoxError, ServiceBuilderExt};
use tower::ServiceBuilder;

use crate::{breakers, cascade, chat_body, retry, Answer, PRIMARY};

/// Sends `n` questions for the preferred model to `base_url` through a
/// `ClientWithMiddleware` whose brownout middleware runs fallback → breaker → retry.
/// `ca_pem` is a CA to trust besides the platform's (the simulator's).
pub async fn ask(base_url: &str, ca_pem: Option<&str>, n: usize) -> Result<Vec<Answer>, BoxError> {
    let mut reqwest = reqwest::Client::builder();
    if let Some(ca) = ca_pem {
        reqwest = reqwest.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
    }
    let breakers = breakers();
    let layers = ServiceBuilder::new()
        .model_fallback(cascade(&breakers))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry());
    let client = reqwest_middleware::ClientBuilder::new(reqwest.build()?)
        .with(Brownout::new(layers.into_inner()))
        .build();
    let key = std::env::var("ANTHROPIC_API_KEY").unwrap_or_else(|_| "sk-ant-example".into());
    let mut answers = Vec::with_capacity(n);
    for i in 0..n {
        let response = client
            .post(format!("{base_url}/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-api-key", &key)
            .body(chat_body(PRIMARY, &format!("Question {i}?")))
            .send()
            .await?;
        answers.push(Answer::of(&http::Response::from(response)));
    }
    Ok(answers)
}
