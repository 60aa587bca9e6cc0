//! Against a simulator that enforces the provider's limits: a stack with the matching
//! limits sees no 429 and still runs at the limit.

use std::time::Duration;

use brownout_core::{Body, BoxError};
use brownout_limit::{Limits, RateLimitConfig, RateLimitLayer};
use brownout_sim::{Script, Sim, SimBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

const MODEL: &str = "claude-sonnet-4-5";
const SCRIPT: &str = include_str!("../../brownout-sim/scripts/limits.toml");

/// Who is called, and how.
#[derive(Clone, Copy)]
struct Target {
    path: &'static str,
    model: &'static str,
    stream: bool,
}

const ANTHROPIC: Target = Target {
    path: "/v1/messages",
    model: MODEL,
    stream: false,
};

fn body(target: Target, text_bytes: usize) -> Bytes {
    let text = "Tell me more about brownouts and rate limits. ".repeat(text_bytes / 46 + 1);
    let mut body = serde_json::json!({
        "model": target.model, "max_tokens": 48, "stream": target.stream,
        "messages": [{"role": "user", "content": &text[..text_bytes]}],
    });
    if target.path == "/v1/messages" {
        body["system"] = "You answer briefly.".into();
    } else {
        body["messages"].as_array_mut().unwrap().insert(
            0,
            serde_json::json!({"role": "system", "content": "You answer briefly."}),
        );
    }
    Bytes::from(body.to_string())
}

/// Sixteen callers sending back to back for six minutes; returns the simulator and
/// the arrival times and sizes of the requests it answered 200.
async fn run(
    sim: Sim,
    target: Target,
    limits: Option<Limits>,
    minutes: u64,
) -> (Sim, Vec<(Duration, u64)>, u64) {
    let mut handle = None;
    let stack = match limits {
        Some(limits) => {
            let layer = RateLimitLayer::new(
                RateLimitConfig::new()
                    .model(target.model, limits)
                    .max_wait(Duration::from_secs(120)),
            )
            .unwrap();
            handle = Some(layer.handle());
            ServiceBuilder::new()
                .layer(layer)
                .service(sim.clone())
                .boxed_clone()
        }
        None => ServiceBuilder::new()
            .map_response(|r: http::Response<SimBody>| r.map(Body::new))
            .map_err(BoxError::from)
            .service(sim.clone())
            .boxed_clone(),
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(60 * minutes);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let stack = stack.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut limited = 0u64;
            while Instant::now() < end {
                let request = http::Request::post(target.path)
                    .header("x-api-key", "sk-ant-sim")
                    .body(Full::new(body(target, 2000)))
                    .unwrap();
                let len = request.body().size_hint_len();
                let sent = Instant::now();
                let response = stack.clone().oneshot(request).await.unwrap();
                let status = response.status();
                response.into_body().collect().await.unwrap();
                if status == 200 {
                    ok.push((sent - start, len));
                } else {
                    assert_eq!(status, 429);
                    limited += 1;
                    // A naive caller: it tries again a little later.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            (ok, limited)
        }));
    }
    let mut ok = Vec::new();
    let mut limited = 0;
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok.extend(o);
        limited += l;
    }
    if let Some(error) = handle.and_then(|h| h.estimate_error(target.model)) {
        // How far the first estimates were from the usage the simulator reported.
        eprintln!(
            "{}: estimate error {:.1}% first, {:.1}% corrected, ratio {:.3} over {} answers",
            target.model,
            error.raw * 100.0,
            error.corrected * 100.0,
            error.ratio,
            error.samples
        );
        assert!(error.samples > 100);
        assert!(error.corrected < 0.05, "{error:?}");
    }
    (sim, ok, limited)
}

trait Len {
    fn size_hint_len(&self) -> u64;
}

impl Len for Full<Bytes> {
    fn size_hint_len(&self) -> u64 {
        http_body::Body::size_hint(self).exact().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn matching_limits_see_no_429_at_the_limits_throughput() {
    let script = Script::from_toml_str(SCRIPT).unwrap();
    let enforced_itpm = 20_000.0;

    // Without the limiter the same callers collect 429s.
    let (sim, _, limited) = run(Sim::new(script.clone()), ANTHROPIC, None, 2).await;
    assert!(limited > 100, "{limited} 429s without the limiter");
    assert_eq!(sim.stats().by_answer["over_limit"], limited);

    let limits = Limits::new()
        .requests_per_minute(120)
        .input_tokens_per_minute(20_000)
        .output_tokens_per_minute(8_000);
    let (sim, ok, limited) = run(Sim::new(script), ANTHROPIC, Some(limits), 6).await;
    assert_eq!(limited, 0, "no 429 with the limiter");
    assert!(!sim.stats().by_answer.contains_key("over_limit"));
    // Input tokens as the simulator counts them (a token per four bytes), sent in the
    // last five minutes: the first minute spends the bucket's initial minute's worth.
    let steady: u64 = ok
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(60))
        .map(|(_, len)| len / 4)
        .sum();
    let per_minute = steady as f64 / 5.0;
    let share = per_minute / enforced_itpm;
    assert!(
        share > 0.95 && share < 1.02,
        "{per_minute} input tokens a minute, {share:.3} of the limit"
    );
    eprintln!(
        "steady throughput: {per_minute:.0} input tokens/min = {:.1}% of the limit",
        share * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn openai_streams_under_a_shared_tpm_see_no_429() {
    let script = Script::from_toml_str(SCRIPT).unwrap();
    let target = Target {
        path: "/v1/chat/completions",
        model: "gpt-4.1",
        stream: true,
    };
    let limits = Limits::new()
        .requests_per_minute(500)
        .tokens_per_minute(30_000);
    let (sim, ok, limited) = run(Sim::new(script), target, Some(limits), 6).await;
    assert_eq!(limited, 0, "no 429 with the limiter");
    assert!(!sim.stats().by_answer.contains_key("over_limit"));
    // Input and output as the simulator counts them; the layer added
    // stream_options to each body, which the simulator counts as input too.
    let asked = r#""stream_options":{"include_usage":true},"#.len() as u64;
    let steady: u64 = ok
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(60))
        .map(|(_, len)| (len + asked) / 4 + 48)
        .sum();
    let share = steady as f64 / 5.0 / 30_000.0;
    // Within 5 % of the limit; a little over it only by what the bucket held when the
    // window began.
    assert!(share > 0.95 && share < 1.02, "{share:.4} of the TPM");
    eprintln!("openai steady throughput: {:.1}% of the TPM", share * 100.0);
}
