//! The shipped streaming outage script through the pipeline without the stream guard,
//! with it (`end`), and resuming: the share of streamed requests that end with a
//! complete answer. In paused time; the numbers are in the `stream_outage` example.

use std::time::Duration;

use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy, Window};
use brownout_core::Body;
use brownout_fallback::{
    stream::{AfterFirstByte, StreamConfig, StreamGuardLayer},
    FallbackConfig, FallbackLayer, Target,
};
use brownout_retry::{RetryConfig, RetryLayer};
use brownout_sim::{runner::Stack, Runner, Script, Sim, SimBody};
use http::{Request, Response};
use tower::{Layer, ServiceExt};

fn stack(name: &'static str, guard: bool, resume: bool) -> Stack {
    Stack::new(name, move |sim: Sim| {
        let breakers = CircuitBreakerLayer::new(
            BreakerConfig::new()
                .policy(FailurePolicy::failure_rate(0.5, Window::Count(20), 10).unwrap()),
        );
        let mut cascade = FallbackConfig::new([
            Target::new("claude-sonnet-4-5"),
            Target::new("claude-haiku-4-5"),
        ])
        .unwrap()
        .health(breakers.handle())
        .served_header_default();
        if resume {
            cascade = cascade.after_first_byte(AfterFirstByte::Resume);
        }
        let retry = RetryLayer::new(RetryConfig::new().max_attempts(3).no_budget().seed(1));
        let sim =
            ServiceExt::<Request<Body>>::map_response(sim, |r: Response<SimBody>| r.map(Body::new));
        let sim = ServiceExt::<Request<Body>>::map_err(sim, |e: std::io::Error| {
            brownout_core::BoxError::from(e)
        });
        let guard = guard.then(|| {
            StreamGuardLayer::new(StreamConfig::new().idle_timeout(Some(Duration::from_secs(5))))
        });
        let client = tower::util::option_layer(guard).layer(sim);
        FallbackLayer::new(cascade).layer(breakers.layer(retry.layer(client)))
    })
}

#[tokio::test(start_paused = true)]
async fn the_guard_and_resume_raise_the_share_of_complete_streams() {
    let runner = Runner::new(Script::streaming_outage()).requests(200);
    let reports = runner
        .compare(&[
            stack("today", false, false),
            stack("end", true, false),
            stack("resume", true, true),
        ])
        .await;
    let [today, end, resume] = &reports[..] else {
        unreachable!()
    };
    assert!(today.stream && end.stream);
    // Today every stream the provider breaks after its 200 is lost.
    assert!(today.complete.share < 0.75, "{}", today.complete.share);
    assert!(today
        .errors
        .keys()
        .any(|e| e.contains("200 stream overloaded_error")));
    // The guard recovers the ones that broke before their first content…
    assert!(end.complete.share > today.complete.share + 0.1);
    assert!(!end
        .errors
        .keys()
        .any(|e| e.contains("body failed") || e.contains("timeout:")));
    // …and resume the ones that broke after it.
    assert!(resume.complete.share > 0.97, "{}", resume.complete.share);
}
