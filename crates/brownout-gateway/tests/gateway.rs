//! The gateway end to end over loopback, with brownout-sim as the upstream.

mod common;

use std::time::{Duration, Instant};

use brownout_sim::{Fault, Latency, ModelScript, Script};
use common::{anthropic, client, header, json, openai, Setup};
use http_body_util::BodyExt;

fn healthy() -> Script {
    let quick = || ModelScript::new().latency(Latency::fixed(Duration::from_millis(5)));
    Script::new()
        .seed(3)
        .model("claude-sonnet-4-5", quick())
        .model("claude-haiku-4-5", quick())
        .model("gpt-4.1", quick())
        .model("gpt-4.1-mini", quick())
}

#[tokio::test]
async fn an_anthropic_request_is_answered_by_its_first_choice() {
    let setup = Setup::start(healthy()).await;
    let request = anthropic(
        &setup.url("/v1/messages"),
        "claude-sonnet-4-5",
        "Hello",
        false,
    );
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-brownout-model"),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(header(&response, "x-brownout-attempts"), None);
    assert!(header(&response, "anthropic-ratelimit-requests-remaining").is_some());
    // The simulator's own service time passes through, for the runner's added latency.
    assert_eq!(
        header(&response, brownout_sim::LATENCY_HEADER),
        Some("5.000")
    );
    let message = json(response).await;
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert!(message["content"][0]["text"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(setup.sim.stats().received, 1);
    assert!(setup.stop().await.drained);
}

#[tokio::test]
async fn an_openai_request_is_answered_in_the_openai_shape() {
    let setup = Setup::start(healthy()).await;
    let request = openai(&setup.url("/v1/chat/completions"), "gpt-4.1", "Hello");
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-brownout-model"), Some("gpt-4.1"));
    let completion = json(response).await;
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gpt-4.1");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(setup.sim.stats().by_model["gpt-4.1"], 1);
}

#[tokio::test]
async fn a_streamed_answer_arrives_event_by_event_as_a_valid_stream() {
    let script = Script::new().seed(3).model(
        "claude-sonnet-4-5",
        ModelScript::new()
            .latency(Latency::fixed(Duration::from_millis(5)))
            .stream_interval(Duration::from_millis(60))
            .output_tokens(8),
    );
    let setup = Setup::start(script).await;
    let request = anthropic(
        &setup.url("/v1/messages"),
        "claude-sonnet-4-5",
        "Hello",
        true,
    );
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));

    // Read frame by frame, noting when each arrives.
    let mut body = response.into_body();
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(Instant::now());
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    // The simulator sends an event every 60 ms: had the gateway buffered the answer,
    // it would have arrived at once.
    assert!(arrivals.len() >= 5, "{} frames", arrivals.len());
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(200),
        "the stream arrived within {spread:?}"
    );

    // A valid Anthropic event stream: every event named, every data line JSON whose
    // type is the event's name, from message_start to message_stop.
    let events: Vec<(String, serde_json::Value)> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<serde_json::Value>(d).unwrap());
                }
            }
            (name.expect("an event name"), data.expect("a data line"))
        })
        .collect();
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta"));
    assert_eq!(events[0].1["message"]["model"], "claude-sonnet-4-5");
}

#[tokio::test]
async fn an_overloaded_first_choice_is_answered_by_the_fallback() {
    let script = healthy().model(
        "claude-sonnet-4-5",
        ModelScript::new()
            .fault(Fault::overloaded().latency(Latency::fixed(Duration::from_millis(2)))),
    );
    let setup = Setup::start(script).await;
    let request = anthropic(
        &setup.url("/v1/messages"),
        "claude-sonnet-4-5",
        "Hello",
        false,
    );
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-brownout-model"),
        Some("claude-haiku-4-5")
    );
    let message = json(response).await;
    assert_eq!(message["model"], "claude-haiku-4-5");
    let stats = setup.sim.stats();
    // Sonnet was tried twice (max_attempts = 2) before the cascade moved on.
    assert_eq!(stats.by_model["claude-sonnet-4-5"], 2);
    assert_eq!(stats.by_model["claude-haiku-4-5"], 1);
}

#[tokio::test]
async fn a_client_error_goes_back_unchanged() {
    let script = healthy().model(
        "claude-sonnet-4-5",
        ModelScript::new().fault(Fault::bad_request()),
    );
    let setup = Setup::start(script).await;
    let request = anthropic(
        &setup.url("/v1/messages"),
        "claude-sonnet-4-5",
        "Hello",
        false,
    );
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(header(&response, "x-brownout-degraded"), None);
    let error = json(response).await;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(
        setup.sim.stats().received,
        1,
        "neither retried nor sent to another model"
    );
}

#[tokio::test]
async fn with_every_model_down_the_last_answer_stands_in_then_a_canned_one() {
    let mut setup = Setup::start(healthy()).await;
    let client = client();
    let url = setup.url("/v1/messages");
    let ask = |prompt: &str| anthropic(&url, "claude-sonnet-4-5", prompt, false);
    let live = client
        .request(ask("What is our refund policy?"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let live = json(live).await;

    // The provider goes away: every model of the cascade is unreachable.
    setup.upstream.take().unwrap().shutdown();

    let stale = client
        .request(ask("What is our refund policy?"))
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(header(&stale, "x-brownout-cache"), Some("stale"));
    assert_eq!(json(stale).await, live, "the stored answer, byte for byte");

    let canned = client
        .request(ask("Something never asked before"))
        .await
        .unwrap();
    assert_eq!(canned.status(), 200);
    assert_eq!(header(&canned, "x-brownout-degraded"), Some("true"));
    let message = json(canned).await;
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert_eq!(
        message["content"][0]["text"],
        brownout::degrade::DEFAULT_GENERIC_ANSWER
    );
}

#[tokio::test]
async fn without_degrade_an_unreachable_provider_is_a_502_in_the_providers_shape() {
    let mut setup = Setup::start_with(
        healthy(),
        "[degrade]\nenabled = false\n[cache]\nenabled = false\n",
    )
    .await;
    setup.upstream.take().unwrap().shutdown();
    let request = openai(&setup.url("/v1/chat/completions"), "gpt-4.1", "Hello");
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 502);
    let error = json(response).await;
    assert_eq!(error["error"]["code"], "bad_gateway");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("brownout-gateway: "), "{message}");
}

#[tokio::test]
async fn other_paths_are_forwarded_unchanged() {
    let setup = Setup::start(healthy()).await;
    let upstream = setup.upstream.as_ref().unwrap().url();
    let get = |base: &str| {
        // The credential style says whose shared path this is: Anthropic's.
        http::Request::get(format!("{base}/v1/models?limit=2"))
            .header("x-api-key", "sk-ant-test-caller")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let direct = client().request(get(&upstream)).await.unwrap();
    let proxied = client()
        .request(get(&format!("http://{}", setup.gateway)))
        .await
        .unwrap();
    assert_eq!(proxied.status(), direct.status());
    let direct = direct.into_body().collect().await.unwrap().to_bytes();
    let proxied = proxied.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(proxied, direct);
}

#[tokio::test]
async fn metadata_headers_follow_the_configuration() {
    let script = healthy().model(
        "claude-sonnet-4-5",
        ModelScript::new().fault(Fault::overloaded()),
    );
    let setup = Setup::start_with(script, "[headers]\nmodel = false\nattempts = false\n").await;
    let request = anthropic(
        &setup.url("/v1/messages"),
        "claude-sonnet-4-5",
        "Hello",
        false,
    );
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-brownout-model"), None);
    assert_eq!(header(&response, "x-brownout-attempts"), None);
    assert_eq!(json(response).await["model"], "claude-haiku-4-5");
}
