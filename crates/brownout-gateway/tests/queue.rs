//! The queue layer in the gateway (`[queue]`), end to end over loopback with
//! brownout-sim as the upstream: fallback > breaker > queue > retry.
//!
//! Real time, as the other loopback tests: the overload windows are a few hundred
//! milliseconds, and the assertions leave room for a loaded machine.

mod common;

use std::time::{Duration, Instant};

use brownout_sim::{Fault, Latency, ModelScript, Script};
use common::{anthropic, client, header, json, Setup};

/// The preferred model answers `529 overloaded_error` with `retry-after: 1` for the
/// simulator's first `overloaded`, then normally; the lighter one is healthy.
fn burst(overloaded: Duration) -> Script {
    let quick = || ModelScript::new().latency(Latency::fixed(Duration::from_millis(5)));
    Script::new()
        .seed(7)
        .model("claude-haiku-4-5", quick())
        .model(
            "claude-sonnet-4-5",
            quick().fault(
                Fault::overloaded()
                    .between(Duration::ZERO, overloaded)
                    .retry_after(Duration::from_secs(1))
                    .latency(Latency::fixed(Duration::from_millis(2))),
            ),
        )
}

const QUEUE: &str =
    "[queue]\nprefer_wait = \"500ms\"\nmax_wait = \"1500ms\"\nprobe_after = \"100ms\"\n";

#[tokio::test]
async fn a_request_waits_out_a_short_overload_and_is_answered_by_the_preferred_model() {
    let setup = Setup::start_with(burst(Duration::from_millis(600)), QUEUE).await;
    let url = setup.url("/v1/messages");

    // The first request meets the burst: its retry-after (1 s) is longer than
    // prefer_wait, so the retry layer hands it back at once and the cascade moves it.
    let first = client()
        .request(anthropic(&url, "claude-sonnet-4-5", "Hello", false))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-brownout-model"), Some("claude-haiku-4-5"));

    // The next one is not moved: the queue expects the model back within probe_after
    // (shorter than prefer_wait), so the fallback sends it in and the queue holds it,
    // probing every 100 ms, until the burst is over.
    let start = Instant::now();
    let second = client()
        .request(anthropic(&url, "claude-sonnet-4-5", "Hello again", false))
        .await
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(second.status(), 200);
    assert_eq!(
        header(&second, "x-brownout-model"),
        Some("claude-sonnet-4-5")
    );
    let message = json(second).await;
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert!(
        waited >= Duration::from_millis(50),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "answered after {waited:?}"
    );
    // Held, not retried into the burst: one probe per 100 ms at most, no sleep of the
    // whole retry-after.
    let stats = setup.sim.stats();
    assert_eq!(stats.by_model["claude-haiku-4-5"], 1);
    let sonnet = stats.by_model["claude-sonnet-4-5"];
    assert!(
        (2..=12).contains(&sonnet),
        "{sonnet} calls to the preferred model"
    );
    assert!(setup.stop().await.drained);
}

#[tokio::test]
async fn without_the_queue_the_same_burst_moves_the_next_request_too() {
    // The baseline of the test above: the retry layer sleeps the 1 s retry-after (its
    // max_server_delay is 60 s without the queue) or the cascade moves the request;
    // either way the preferred model does not answer within the burst's 600 ms.
    let setup = Setup::start_with(
        burst(Duration::from_millis(600)),
        "max_server_delay = \"200ms\"\n",
    )
    .await;
    let url = setup.url("/v1/messages");
    for prompt in ["Hello", "Hello again"] {
        let response = client()
            .request(anthropic(&url, "claude-sonnet-4-5", prompt, false))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-brownout-model"),
            Some("claude-haiku-4-5")
        );
    }
    assert!(setup.stop().await.drained);
}

#[tokio::test]
async fn shutdown_answers_every_queued_request_at_once() {
    // A burst longer than max_wait: a request held for it would wait 5 s.
    let setup = Setup::start_with(
        burst(Duration::from_secs(30)),
        "[queue]\nmax_wait = \"5s\"\nprobe_after = \"100ms\"\n",
    )
    .await;
    let url = setup.url("/v1/messages");
    let first = client()
        .request(anthropic(&url, "claude-sonnet-4-5", "Hello", false))
        .await
        .unwrap();
    assert_eq!(header(&first, "x-brownout-model"), Some("claude-haiku-4-5"));

    let held = tokio::spawn(client().request(anthropic(&url, "claude-sonnet-4-5", "Wait", false)));
    // Wait until it is held: the preferred model has seen at least one probe.
    common::until(Duration::from_secs(3), || {
        setup.sim.stats().by_model["claude-sonnet-4-5"] >= 2
    })
    .await;
    let start = Instant::now();
    let stopped = setup.stop().await;
    let response = held.await.unwrap().unwrap();
    // Shed by the queue at shutdown, then moved by the cascade: answered now, not
    // after the 5 s max_wait, and the gateway drained.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-brownout-model"),
        Some("claude-haiku-4-5")
    );
    assert!(stopped.drained);
}
