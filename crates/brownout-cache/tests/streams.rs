//! A stored answer served across streamed and whole requests, against the simulator,
//! in paused time.

use std::time::Duration;

use brownout_cache::{Cache, CacheConfig, CacheStatus};
use brownout_core::{sse, Body};
use brownout_sim::{Fault, ModelScript, Script, Sim};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::{Layer, ServiceExt};

/// Healthy for ten seconds, then overloaded; `before` hits the healthy part.
fn sim(before: Option<Fault>) -> Sim {
    let mut model = ModelScript::new().output_tokens(6);
    if let Some(fault) = before {
        model = model.fault(fault.until(Duration::from_secs(10)));
    }
    model = model.fault(Fault::overloaded().from(Duration::from_secs(10)));
    Sim::new(Script::new().seed(9).model("m", model))
}

fn request(path: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = if path.contains("chat") {
        format!(
            r#"{{"model":"m","stream":{stream},"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"Hi"}}]}}"#
        )
    } else {
        format!(
            r#"{{"model":"m","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"Hi"}}]}}"#
        )
    };
    Request::post(format!("http://sim.test{path}"))
        .header("x-api-key", "k")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn read(response: http::Response<Body>) -> (u16, Option<CacheStatus>, Option<String>, Bytes) {
    let status = response.status().as_u16();
    let cached = response.extensions().get::<CacheStatus>().copied();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cached, content_type, body)
}

/// The text of a whole answer of either API.
fn text_of(json: &[u8]) -> String {
    let v: Value = serde_json::from_slice(json).unwrap();
    match v["content"][0]["text"].as_str() {
        Some(t) => t.to_owned(),
        None => v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

/// The text of a stream, checking it ends the provider's way.
fn stream_text(stream: &[u8], openai: bool) -> String {
    let mut text = String::new();
    let mut ended = false;
    let api = if openai {
        brownout_core::provider::Api::OpenAiChat
    } else {
        brownout_core::provider::Api::AnthropicMessages
    };
    for event in sse::events(stream) {
        assert!(!ended, "nothing after the end");
        match sse::meaning(api, &event) {
            sse::Meaning::Error => panic!("an error event"),
            sse::Meaning::End => ended = true,
            _ => {}
        }
        if &*event.data == b"[DONE]" {
            continue;
        }
        let data: Value = serde_json::from_slice(&event.data).unwrap();
        if let Some(t) = data["delta"]["text"].as_str() {
            text.push_str(t);
        }
        if let Some(t) = data["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert!(ended, "the stream ends the provider's way");
    text
}

#[tokio::test(start_paused = true)]
async fn a_whole_answer_is_served_stale_to_a_streamed_request_as_a_valid_stream() {
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let cache = CacheConfig::new().ttl(Duration::from_secs(1));
        let client = brownout_cache::CacheLayer::new(cache).layer(sim(None));
        let (status, _, _, whole) =
            read(client.clone().oneshot(request(path, false)).await.unwrap()).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (status, cached, content_type, stream) =
            read(client.clone().oneshot(request(path, true)).await.unwrap()).await;
        assert_eq!((status, cached), (200, Some(CacheStatus::Stale)), "{path}");
        assert!(content_type.unwrap().starts_with("text/event-stream"));
        assert_eq!(stream_text(&stream, path.contains("chat")), text_of(&whole));
        if path.contains("chat") {
            let message =
                sse::message_of(brownout_core::provider::Api::OpenAiChat, &stream).unwrap();
            let v: Value = serde_json::from_slice(&message).unwrap();
            assert_eq!(
                v["usage"]["completion_tokens"], 6,
                "the usage chunk it asked for"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_is_stored_and_served_stale_as_a_whole_answer() {
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let client = Cache::new(sim(None), CacheConfig::new().ttl(Duration::from_secs(1)));
        let (_, cached, _, stream) =
            read(client.clone().oneshot(request(path, true)).await.unwrap()).await;
        assert_eq!(cached, None);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (status, cached, content_type, whole) =
            read(client.clone().oneshot(request(path, false)).await.unwrap()).await;
        assert_eq!((status, cached), (200, Some(CacheStatus::Stale)), "{path}");
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(text_of(&whole), stream_text(&stream, path.contains("chat")));
        // And to a streamed request, as a stream again.
        let (status, cached, _, again) =
            read(client.clone().oneshot(request(path, true)).await.unwrap()).await;
        assert_eq!((status, cached), (200, Some(CacheStatus::Stale)));
        assert_eq!(stream_text(&again, path.contains("chat")), text_of(&whole));
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_failed_is_not_stored() {
    let client = Cache::new(
        sim(Some(Fault::stream_error(2))),
        CacheConfig::new().ttl(Duration::from_secs(1)),
    );
    let (status, _, _, _) = read(
        client
            .clone()
            .oneshot(request("/v1/messages", true))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (status, cached, _, _) = read(
        client
            .clone()
            .oneshot(request("/v1/messages", false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, cached), (529, None), "nothing to stand in");
}
