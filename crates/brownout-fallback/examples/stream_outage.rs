//! The streaming outage script through three pipelines — today's (fallback, breaker,
//! retry), with the stream guard (`end`), and with resume — and the time to first
//! byte the guard adds by holding the opening events back.
//!
//! ```sh
//! cargo run --release -p brownout-fallback --example stream_outage
//! ```
//!
//! The scenarios run on tokio's paused clock (ten minutes of outage in well under a
//! second, the same numbers on every run); the holding-back cost is measured on the
//! real clock, over an in-memory upstream whose events are all ready, so that what is
//! measured is the guard's own work and nothing of the upstream's.

use std::time::{Duration, Instant};

use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, Window};
use brownout_core::{provider::Api, Body};
use brownout_fallback::{
    stream::{AfterFirstByte, StreamConfig, StreamGuardLayer},
    FallbackConfig, FallbackLayer, Target,
};
use brownout_retry::{RetryConfig, RetryLayer};
use brownout_sim::{runner::Stack, Runner, Script, Sim};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Today,
    End,
    Resume,
}

fn stack(name: &'static str, mode: Mode, models: [&'static str; 2]) -> Stack {
    Stack::new(name, move |sim: Sim| {
        let seed = sim.script().seed_value();
        let breakers = CircuitBreakerLayer::new(
            BreakerConfig::new()
                .policy(FailurePolicy::failure_rate(0.5, Window::Count(20), 10).expect("valid")),
        );
        let mut cascade = FallbackConfig::new(models.map(Target::new))
            .expect("valid")
            .health(breakers.handle())
            .served_header_default();
        if mode == Mode::Resume {
            cascade = cascade.after_first_byte(AfterFirstByte::Resume);
        }
        let retry = RetryLayer::new(RetryConfig::new().max_attempts(3).no_budget().seed(seed));
        let guard = (mode != Mode::Today).then(|| {
            StreamGuardLayer::new(
                StreamConfig::new()
                    .first_event_timeout(Duration::from_secs(5))
                    .expect("valid")
                    .idle_timeout(Some(Duration::from_secs(5))),
            )
        });
        let sim =
            ServiceExt::<Request<Body>>::map_response(sim, |r: Response<brownout_sim::SimBody>| {
                r.map(Body::new)
            });
        let sim = ServiceExt::<Request<Body>>::map_err(sim, |e: std::io::Error| {
            brownout_core::BoxError::from(e)
        });
        let client = tower::util::option_layer(guard).layer(sim);
        FallbackLayer::new(cascade).layer(breakers.layer(retry.layer(client)))
    })
}

async fn scenarios() {
    for (api, models) in [
        (
            Api::AnthropicMessages,
            ["claude-sonnet-4-5", "claude-haiku-4-5"],
        ),
        (Api::OpenAiChat, ["gpt-4.1", "gpt-4.1-mini"]),
    ] {
        let runner = Runner::new(Script::streaming_outage())
            .api(api)
            .model(models[0]);
        let reports = runner
            .compare(&[
                stack("today", Mode::Today, models),
                stack("end", Mode::End, models),
                stack("resume", Mode::Resume, models),
            ])
            .await;
        println!(
            "streaming outage script, {} at {} (every request streams)",
            api.as_str(),
            runner.request(0).uri().path()
        );
        println!("{}", brownout_sim::runner::table(&reports));
        for report in &reports {
            println!(
                "  {:<7} complete {:>5.1}%  first byte p50 {:.1} ms  p99 {:.1} ms",
                report.stack,
                100.0 * report.complete.share,
                report.complete.first_byte.p50_ms,
                report.complete.first_byte.p99_ms
            );
        }
        println!();
    }
}

/// One in-memory streamed answer, every event ready at once.
fn answer() -> Response<Full<Bytes>> {
    let reply = brownout_core::shape::Reply {
        id: "msg_1",
        model: "claude-sonnet-4-5",
        created: 0,
        pieces: &["The", " service", " kept", " answering."],
        input_tokens: 12,
        output_tokens: 4,
        stop: brownout_core::shape::Stop::EndTurn,
    };
    let sse = brownout_core::shape::anthropic_sse(
        &reply,
        &brownout_core::shape::Style::default(),
        brownout_core::shape::Ending::Complete,
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Full::new(Bytes::from(sse)))
        .expect("valid")
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn first_byte_cost() {
    let upstream =
        tower::service_fn(|_: Request<Body>| async { Ok::<_, std::io::Error>(answer()) });
    let guarded = StreamGuardLayer::new(StreamConfig::new()).layer(upstream);
    let body = Bytes::from_static(
        br#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[]}"#,
    );
    let request = || {
        Request::post("http://sim.test/v1/messages")
            .body(Body::from_bytes(body.clone()))
            .expect("valid")
    };
    const N: usize = 20_000;
    let mut direct = Vec::with_capacity(N);
    let mut held = Vec::with_capacity(N);
    for i in 0..2 * N {
        let start = Instant::now();
        if i % 2 == 0 {
            let response = upstream.oneshot(request()).await.expect("answer");
            let mut body = Body::new(response.into_body());
            let first = body.frame().await.expect("a frame").expect("data");
            std::hint::black_box(first);
            direct.push(start.elapsed());
        } else {
            let response = guarded.clone().oneshot(request()).await.expect("answer");
            let mut body = response.into_body();
            let first = body.frame().await.expect("a frame").expect("data");
            std::hint::black_box(first);
            held.push(start.elapsed());
        }
    }
    direct.sort();
    held.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("time to first byte, in-memory upstream (no upstream delay), {N} requests each:");
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let (a, b) = (percentile(&direct, q), percentile(&held, q));
        println!(
            "  {label}: direct {:.2} µs, guarded {:.2} µs, added {:.2} µs",
            us(a),
            us(b),
            us(b) - us(a)
        );
    }
}

fn main() {
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    paused.block_on(scenarios());
    let real = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    real.block_on(first_byte_cost());
}
