//! The full pipeline over reqwest, through brownout's bridge.

use brownout::{
    cache::CacheConfig, reqwest_bridge::ReqwestService, Body, BoxError, ServiceBuilderExt,
};
use tower::{ServiceBuilder, ServiceExt};

use crate::{breakers, cascade, chat_body, retry, Answer, PRIMARY};

/// Sends `n` questions for the preferred model to the simulator at `base_url`
/// through cache → fallback → breaker → retry → reqwest, and says who answered.
pub async fn ask(base_url: &str, n: usize) -> Result<Vec<Answer>, BoxError> {
    let breakers = breakers();
    let client = ServiceBuilder::new()
        .response_cache(CacheConfig::new())
        .model_fallback(cascade(&breakers))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry())
        .service(ReqwestService::new(reqwest::Client::new()));
    let mut answers = Vec::with_capacity(n);
    for i in 0..n {
        let request = http::Request::post(format!("{base_url}/v1/messages"))
            .header("content-type", "application/json")
            .header("x-api-key", "sk-ant-example")
            .body(Body::from(chat_body(PRIMARY, &format!("Question {i}?"))))?;
        let response: http::Response<Body> = client.clone().oneshot(request).await?;
        answers.push(Answer {
            status: response.status().as_u16(),
            model: response
                .headers()
                .get("x-brownout-model")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
    }
    Ok(answers)
}
