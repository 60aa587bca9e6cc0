//! The full pipeline over a hyper-util legacy client, against a loopback simulator.

use brownout::{cache::CacheConfig, Body, BoxError, ServiceBuilderExt};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::{ServiceBuilder, ServiceExt};

use crate::{breakers, cascade, chat_body, retry, Answer, PRIMARY};

/// Sends `n` questions for the preferred model to the simulator at `base_url`
/// through cache → fallback → breaker → retry → hyper-util, and says who answered.
pub async fn ask(base_url: &str, n: usize) -> Result<Vec<Answer>, BoxError> {
    // Whichever layers are on, the client sends brownout's one body type.
    let http: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let breakers = breakers();
    let client = ServiceBuilder::new()
        .response_cache(CacheConfig::new())
        .model_fallback(cascade(&breakers))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry())
        .service(http);
    let mut answers = Vec::with_capacity(n);
    for i in 0..n {
        let request = http::Request::post(format!("{base_url}/v1/messages"))
            .header("content-type", "application/json")
            .header("x-api-key", "sk-ant-example")
            .body(Full::new(chat_body(PRIMARY, &format!("Question {i}?"))))?;
        let response = client.clone().oneshot(request).await?;
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
