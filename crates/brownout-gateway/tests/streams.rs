//! `[streams]` end to end over loopback: a stream that fails before its first content
//! falls back; one that fails after it ends well-formed, or is resumed.

mod common;

use std::time::Duration;

use brownout_gateway::Config;
use brownout_sim::{Fault, Latency, ModelScript, Script};
use common::{anthropic, client, config_text, header, Setup};
use http_body_util::BodyExt;

fn script(fault: Fault) -> Script {
    let quick = || {
        ModelScript::new()
            .latency(Latency::fixed(Duration::from_millis(5)))
            .stream_interval(Duration::from_millis(2))
            .output_tokens(8)
    };
    Script::new()
        .seed(3)
        .model("claude-sonnet-4-5", quick().fault(fault))
        .model("claude-haiku-4-5", quick())
}

/// The events of a stream: (name, data).
fn events(body: &[u8]) -> Vec<(String, serde_json::Value)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|frame| {
            let mut lines = frame.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn an_overloaded_error_before_the_first_content_falls_back() {
    let setup = Setup::start(script(Fault::stream_error(0))).await;
    let request = anthropic(&setup.url("/v1/messages"), "claude-sonnet-4-5", "Hi", true);
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-brownout-model"),
        Some("claude-haiku-4-5")
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let events = events(&body);
    assert_eq!(events.first().unwrap().0, "message_start");
    assert_eq!(events.last().unwrap().0, "message_stop");
    assert!(events.iter().all(|(name, _)| name != "error"));
    // Retried once at Sonnet ([retry] max_attempts = 2), then Haiku.
    assert_eq!(setup.sim.stats().by_model["claude-sonnet-4-5"], 2);
}

#[tokio::test]
async fn after_first_byte_ends_or_resumes() {
    for (mode, resumed) in [("end", false), ("resume", true)] {
        let extra = format!("[streams]\nafter_first_byte = \"{mode}\"\n");
        let setup = Setup::start_config(script(Fault::stream_cut(3)), |url| {
            Config::from_toml_str(&config_text(url, &extra)).unwrap()
        })
        .await;
        let request = anthropic(&setup.url("/v1/messages"), "claude-sonnet-4-5", "Hi", true);
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let events = events(&body);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.iter().filter(|n| **n == "message_start").count(), 1);
        if resumed {
            assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
            let record = &events.iter().find(|(n, _)| n == "brownout").unwrap().1;
            assert_eq!(
                record["models"],
                serde_json::json!(["claude-sonnet-4-5", "claude-haiku-4-5"])
            );
        } else {
            assert_eq!(names.last(), Some(&"error"), "{names:?}");
            assert_eq!(events.last().unwrap().1["error"]["type"], "api_error");
        }
    }
}

#[test]
fn a_bad_after_first_byte_is_refused_with_its_key() {
    let error = Config::from_toml_str(&config_text(
        "http://127.0.0.1:9",
        "[streams]\nafter_first_byte = \"retry\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(error.contains("streams.after_first_byte"), "{error}");
    assert!(error.contains("resume"), "{error}");
    let error = Config::from_toml_str(&config_text(
        "http://127.0.0.1:9",
        "[streams]\nfirst_event_timeout = \"0s\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(error.contains("streams.first_event_timeout"), "{error}");
}
