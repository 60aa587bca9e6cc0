//! `POST /v1/responses` is a pipeline route: model rewrite and fallback, JSON and SSE,
//! and a total outage answered by the degrade layer in the Responses shape (never an
//! Anthropic-shaped canned message), or with degrade off in OpenAI's error shape.

use std::{
    future::Future,
    sync::{Arc, Mutex},
};

use brownout_gateway::{Config, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

const CONFIG: &str = r#"
[[provider]]
name = "openai"
api = "openai"
base_url = "http://openai.upstream.test:8002"
pass_through_key = true

[routes."/v1/responses"]
provider = "openai"
cascade = [{ model = "gpt-4.1" }, { model = "gpt-4.1-mini" }]

[retry]
max_attempts = 2
backoff = { base = "10ms", cap = "50ms" }
"#;

/// An upstream speaking the Responses API: `down` models answer 503, others a
/// response (streamed when asked). Records each (path, model) it received.
fn upstream(
    down: &'static [&'static str],
    seen: Arc<Mutex<Vec<(String, String)>>>,
) -> impl tower::Service<
    Request<brownout::Body>,
    Response = Response<Full<Bytes>>,
    Error = brownout::BoxError,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, brownout::BoxError>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |request: Request<brownout::Body>| {
        let seen = seen.clone();
        async move {
            let path = request.uri().path().to_owned();
            let bytes = request.into_body().collect().await?.to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes)?;
            let model = json["model"].as_str().unwrap_or_default().to_owned();
            seen.lock().unwrap().push((path, model.clone()));
            let mut response = if down.contains(&model.as_str()) {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    br#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":"service_unavailable"}}"#,
                )));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r
            } else if json["stream"] == true {
                let events = format!(
                    "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"{model}\",\"status\":\"in_progress\"}}}}\n\n\
                     event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}}\n\n\
                     event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"{model}\",\"status\":\"completed\"}}}}\n\n"
                );
                let mut r = Response::new(Full::new(Bytes::from(events)));
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                return Ok(r);
            } else {
                Response::new(Full::new(Bytes::from(format!(
                    r#"{{"id":"resp_1","object":"response","model":"{model}","status":"completed","output":[{{"type":"message","role":"assistant","content":[{{"type":"output_text","text":"Hi"}}]}}]}}"#
                ))))
            };
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok(response)
        }
    })
}

fn request(stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({ "model": "gpt-4.1", "input": "Hello", "stream": stream });
    Request::post("/v1/responses")
        .header("authorization", "Bearer sk-openai-caller")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_responses_call_falls_back_to_the_next_model_in_json_and_sse() {
    let seen = Arc::default();
    let client = upstream(&["gpt-4.1"], Arc::clone(&seen));
    let config = Config::from_toml_str(CONFIG).unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, client.clone(), client);

    let response = gateway.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-brownout-model"], "gpt-4.1-mini");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["object"], "response");
    assert_eq!(json["model"], "gpt-4.1-mini");
    {
        let seen = seen.lock().unwrap();
        let models: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
        // Retried once on the first model, then the body rewritten for the second.
        assert_eq!(models, ["gpt-4.1", "gpt-4.1", "gpt-4.1-mini"]);
        assert!(seen.iter().all(|(path, _)| path == "/v1/responses"));
    }

    let response = gateway.clone().oneshot(request(true)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-brownout-model"], "gpt-4.1-mini");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert!(text.contains("event: response.completed"), "{text}");
    assert!(text.contains("\"model\":\"gpt-4.1-mini\""), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_responses_outage_without_degrade_is_answered_in_openais_shape() {
    let seen = Arc::default();
    let client = upstream(&["gpt-4.1", "gpt-4.1-mini"], seen);
    let config = Config::from_toml_str(&format!("{CONFIG}\n[degrade]\nenabled = false\n")).unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, client.clone(), client);
    let response = gateway.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert!(response.headers().get("x-brownout-degraded").is_none());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "service_unavailable", "{json}");
}

const DEGRADE: &str = r#"
[degrade]
generic = "Busy right now."
[[degrade.rule]]
name = "refunds"
pattern = "(?i)refund"
answer = "Refunds are in Settings."
"#;

#[tokio::test(start_paused = true)]
async fn a_responses_outage_is_degraded_in_the_responses_shape_json_and_sse() {
    let seen = Arc::default();
    let client = upstream(&["gpt-4.1", "gpt-4.1-mini"], seen);
    let config = Config::from_toml_str(&format!("{CONFIG}{DEGRADE}")).unwrap();
    let gateway: Router<Full<Bytes>> = Router::new(&config, client.clone(), client);

    // JSON: a completed `response` object, the rule matched on the `input` string.
    let body = serde_json::json!({ "model": "gpt-4.1", "input": "Where is my refund?" });
    let json_request = Request::post("/v1/responses")
        .header("authorization", "Bearer sk-openai-caller")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = gateway.clone().oneshot(json_request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-brownout-degraded"], "true");
    assert_eq!(response.headers()["x-brownout-degraded-rule"], "refunds");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["object"], "response", "{json}");
    assert_eq!(json["status"], "completed");
    assert!(json["id"].as_str().unwrap().starts_with("resp_"), "{json}");
    assert_eq!(json["model"], "gpt-4.1");
    assert_eq!(json["output"][0]["type"], "message");
    assert_eq!(json["output"][0]["role"], "assistant");
    assert_eq!(json["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(
        json["output"][0]["content"][0]["text"],
        "Refunds are in Settings."
    );

    // SSE: the Responses events, each named by its type, from created to completed.
    let response = gateway.clone().oneshot(request(true)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-brownout-degraded"], "true");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut names = Vec::new();
    let mut deltas = String::new();
    for event in text.split_terminator("\n\n") {
        let (name, data) = event.split_once('\n').expect("an event and a data line");
        let name = name.strip_prefix("event: ").expect("a named event");
        let data: serde_json::Value =
            serde_json::from_str(data.strip_prefix("data: ").expect("a data line")).unwrap();
        assert_eq!(data["type"], name, "{text}");
        if name == "response.output_text.delta" {
            deltas.push_str(data["delta"].as_str().unwrap());
        }
        if name == "response.completed" {
            assert_eq!(data["response"]["status"], "completed");
            assert_eq!(
                data["response"]["output"][0]["content"][0]["text"],
                "Busy right now."
            );
        }
        names.push(name.to_owned());
    }
    assert_eq!(
        names.first().map(String::as_str),
        Some("response.created"),
        "{text}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("response.completed"),
        "{text}"
    );
    assert_eq!(deltas, "Busy right now.");
    assert!(!text.contains("[DONE]"));
}
