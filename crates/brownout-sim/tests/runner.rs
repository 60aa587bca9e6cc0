//! The scenario runner, on scripts small enough to work out by hand, in paused time.

use std::{collections::BTreeMap, time::Duration};

use brownout_retry::{RetryConfig, RetryLayer};
use brownout_sim::{runner::table, Fault, Latency, ModelScript, Runner, Script, Sim, Stack};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

/// What most guides recommend: up to 6 attempts with exponential backoff and full
/// jitter (brownout-retry's default, 500 ms doubling to 8 s), server-given delays
/// honoured, no retry budget, no fallback; jitter seeded with the script's seed.
fn retry_only() -> Stack {
    Stack::new("retry-only", |sim: Sim| {
        let seed = sim.script().seed_value();
        RetryLayer::new(RetryConfig::new().max_attempts(6).no_budget().seed(seed)).layer(sim)
    })
}

fn map(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// "primary" answers in 100 ms, but rate-limits everything before 3 s (retry after
/// 2 s). Ten requests, one a second.
fn rate_limited_start() -> Runner {
    let script = Script::new().seed(3).model(
        "primary",
        ModelScript::new()
            .latency(Latency::fixed(Duration::from_millis(100)))
            .fault(Fault::rate_limited(Duration::from_secs(2)).until(Duration::from_secs(3))),
    );
    Runner::new(script)
        .model("primary")
        .requests(10)
        .concurrency(4)
        .spread_over(Duration::from_secs(10))
}

#[tokio::test(start_paused = true)]
async fn naive_numbers_by_hand() {
    let report = rate_limited_start().run_stack(&Stack::naive()).await;
    // Requests 0, 1 and 2 (at 0 s, 1 s, 2 s) are rate-limited; the rest answer.
    assert_eq!(report.answered.total, 7);
    assert_eq!(report.answered.first_choice, 7);
    assert_eq!(report.errors, map(&[("429 rate_limit_error", 3)]));
    assert_eq!(report.upstream.requests, 10);
    assert_eq!(report.upstream.amplification, 1.0);
    assert_eq!(
        report.upstream.by_answer,
        map(&[("ok", 7), ("rate_limited", 3)])
    );
    assert_eq!(report.latency.p50_ms, 100.0);
    assert_eq!(report.latency.max_ms, 100.0);
    assert_eq!(report.latency.mean_ms, 70.0);
    // One attempt each, straight to the simulator: the client added nothing.
    assert_eq!(report.added_latency.max_ms, 0.0);
    // The last request starts at 9 s and takes 100 ms.
    assert_eq!(report.elapsed_ms, 9100.0);
}

#[tokio::test(start_paused = true)]
async fn retry_only_numbers_by_hand() {
    let report = rate_limited_start().run_stack(&retry_only()).await;
    // Each retry waits the 2 s the server asks for (more than the first backoffs):
    // request 0 is sent at 0 s, 2 s (429 again) and 4 s: 3 attempts, 4.1 s;
    // requests 1 and 2 are sent again at 3 s and 4 s, after the window: 2 attempts,
    // 2.1 s each; the 7 others once, 100 ms.
    assert_eq!(report.answered.first_choice, 10);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.upstream.requests, 14);
    assert_eq!(report.upstream.amplification, 1.4);
    assert_eq!(
        report.upstream.by_answer,
        map(&[("ok", 10), ("rate_limited", 4)])
    );
    assert_eq!(report.latency.p50_ms, 100.0);
    assert_eq!(report.latency.p95_ms, 4100.0);
    assert_eq!(report.latency.max_ms, 4100.0);
    assert_eq!(report.latency.mean_ms, 900.0);
    // Added by the retries: everything but the last answer's 100 ms (the 429s take
    // none): 4 s for request 0, 2 s for requests 1 and 2.
    assert_eq!(report.added_latency.p50_ms, 0.0);
    assert_eq!(report.added_latency.p95_ms, 4000.0);
    assert_eq!(report.added_latency.max_ms, 4000.0);
    assert_eq!(report.added_latency.mean_ms, 800.0);
}

/// The index the runner put in a request's prompt.
async fn index_of(request: Request<Full<Bytes>>) -> (u64, http::request::Parts, Bytes) {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let prompt = json["messages"][0]["content"].as_str().unwrap();
    let index = prompt["Request ".len()..prompt.find(':').unwrap()]
        .parse()
        .unwrap();
    (index, parts, body)
}

#[tokio::test(start_paused = true)]
async fn fallbacks_are_told_from_first_choices() {
    let script = Script::new()
        .model(
            "primary",
            ModelScript::new().fault(Fault::overloaded().until(Duration::from_secs(5))),
        )
        .model("backup", ModelScript::new());
    let runner = Runner::new(script)
        .model("primary")
        .requests(10)
        .concurrency(2)
        .spread_over(Duration::from_secs(10));
    // A hand-made fallback: on 529, ask "backup" instead.
    let report = runner
        .run("fallback", |sim: Sim| {
            service_fn(move |request: Request<Full<Bytes>>| {
                let sim = sim.clone();
                async move {
                    let (_, parts, body) = index_of(request).await;
                    let first = Request::from_parts(parts.clone(), Full::new(body.clone()));
                    let response = sim.clone().oneshot(first).await?;
                    if response.status() != 529 {
                        return Ok(response);
                    }
                    let body = String::from_utf8(body.to_vec())
                        .unwrap()
                        .replace("\"primary\"", "\"backup\"");
                    sim.oneshot(Request::from_parts(parts, Full::new(Bytes::from(body))))
                        .await
                }
            })
        })
        .await;
    assert_eq!(report.answered.first_choice, 5);
    assert_eq!(report.answered.fallback, 5);
    assert_eq!(report.fallback_models, map(&[("backup", 5)]));
    assert!(report.errors.is_empty());
    assert_eq!(report.upstream.requests, 15);
    assert_eq!(report.upstream.amplification, 1.5);
    assert_eq!(
        report.upstream.by_model,
        map(&[("backup", 5), ("primary", 10)])
    );
}

#[tokio::test(start_paused = true)]
async fn cached_degraded_and_served_by_are_read_from_the_layers_headers() {
    let runner = Runner::new(Script::new())
        .model("m")
        .requests(8)
        .concurrency(3);
    let report = runner
        .run("layers", |sim: Sim| {
            service_fn(move |request: Request<Full<Bytes>>| {
                let sim = sim.clone();
                async move {
                    let (index, parts, body) = index_of(request).await;
                    let canned =
                        || http::Response::new(brownout_sim::SimBody::full(r#"{"model":"m"}"#));
                    match index % 4 {
                        0 => {
                            let mut response = canned();
                            response
                                .headers_mut()
                                .insert("x-brownout-cache", "stale".parse().unwrap());
                            Ok(response)
                        }
                        1 => {
                            let mut response = canned();
                            response
                                .headers_mut()
                                .insert("x-brownout-degraded", "static".parse().unwrap());
                            Ok(response)
                        }
                        2 => {
                            sim.oneshot(Request::from_parts(parts, Full::new(body)))
                                .await
                        }
                        _ => {
                            // The body names "m", but the fallback layer says otherwise.
                            let mut response = sim
                                .oneshot(Request::from_parts(parts, Full::new(body)))
                                .await?;
                            response
                                .headers_mut()
                                .insert("x-brownout-model", "m-lite".parse().unwrap());
                            Ok(response)
                        }
                    }
                }
            })
        })
        .await;
    assert_eq!(report.answered.cached, 2);
    assert_eq!(report.answered.degraded, 2);
    assert_eq!(report.answered.first_choice, 2);
    assert_eq!(report.answered.fallback, 2);
    assert_eq!(report.fallback_models, map(&[("m-lite", 2)]));
    assert_eq!(report.upstream.requests, 4);
    assert_eq!(report.upstream.amplification, 0.5);
}

#[tokio::test(start_paused = true)]
async fn hangs_end_at_the_callers_timeout_and_stream_errors_are_errors() {
    let script = Script::new()
        .model("hangs", ModelScript::new().fault(Fault::hang()))
        .model("breaks", ModelScript::new().fault(Fault::stream_error(1)));
    let runner = Runner::new(script)
        .model("hangs")
        .requests(3)
        .concurrency(3)
        .timeout(Duration::from_secs(5));
    let report = runner.run_stack(&Stack::naive()).await;
    assert_eq!(report.errors, map(&[("timeout: no answer within 5s", 3)]));
    assert_eq!(report.latency.max_ms, 5000.0);
    assert_eq!(report.elapsed_ms, 5000.0);

    let report = runner
        .model("breaks")
        .stream(true)
        .run_stack(&Stack::naive())
        .await;
    assert_eq!(report.errors, map(&[("200 stream overloaded_error", 3)]));
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_report() {
    let runner = Runner::new(Script::outage()).requests(200);
    let first = runner.run_stack(&retry_only()).await;
    let second = runner.run_stack(&retry_only()).await;
    assert_eq!(first, second);
    let other = Runner::new(Script::outage().seed(1))
        .requests(200)
        .run_stack(&retry_only())
        .await;
    assert_ne!(first.upstream, other.upstream);
}

#[tokio::test(start_paused = true)]
async fn the_outage_script_overloads_about_forty_percent_of_first_choice_requests() {
    let report = Runner::new(Script::outage())
        .run_stack(&Stack::naive())
        .await;
    assert_eq!(report.requests, 600);
    let overloaded = report.errors["529 overloaded_error"] as f64 / 600.0;
    assert!((0.35..0.47).contains(&overloaded), "{overloaded}");
    assert!(report.errors.contains_key("429 rate_limit_error"));
    // Spread over ten minutes.
    assert!(report.elapsed_ms >= 599_000.0, "{}", report.elapsed_ms);
    // The lighter model is healthy all along.
    let light = Runner::new(Script::outage())
        .model("claude-haiku-4-5")
        .requests(100)
        .run_stack(&Stack::naive())
        .await;
    assert_eq!(light.answered.first_choice, 100);

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        json["answered"]["first_choice"],
        report.answered.first_choice
    );
    assert_eq!(json["upstream"]["amplification"], 1.0);
    let text = table(&[report, light]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("  529 overloaded_error")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("amplification")),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn compare_runs_each_stack_over_its_own_simulator_in_order() {
    let runner = rate_limited_start();
    let reports = runner.compare(&[Stack::naive(), retry_only()]).await;
    let names: Vec<&str> = reports.iter().map(|r| r.stack.as_str()).collect();
    assert_eq!(names, ["naive", "retry-only"]);
    // Each stack met the same outage from its start: the same as run alone.
    assert_eq!(reports[0], runner.run_stack(&Stack::naive()).await);
    assert_eq!(reports[1], runner.run_stack(&retry_only()).await);
    assert_eq!(reports[0].upstream.requests, 10);
    assert_eq!(reports[1].upstream.requests, 14);
    assert!(runner.compare(&[]).await.is_empty());
    assert_eq!(
        format!("{:?}", Stack::naive()),
        r#"Stack { name: "naive", .. }"#
    );
}

/// A client that waits 50 ms before sending, then marks the answer with `cache`.
fn delayed(name: &str, cache: Option<&'static str>) -> Stack {
    Stack::new(name, move |sim: Sim| {
        service_fn(move |request: Request<Full<Bytes>>| {
            let sim = sim.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut response = sim.oneshot(request).await?;
                if let Some(cache) = cache {
                    response
                        .headers_mut()
                        .insert("x-brownout-cache", http::HeaderValue::from_static(cache));
                }
                Ok::<_, std::io::Error>(response)
            }
        })
    })
}

#[tokio::test(start_paused = true)]
async fn added_latency_is_what_the_client_spent_besides_the_answer() {
    let script = Script::new().seed(1).model(
        "primary",
        ModelScript::new().latency(Latency::fixed(Duration::from_millis(100))),
    );
    let runner = Runner::new(script)
        .model("primary")
        .requests(4)
        .concurrency(1);
    let reports = runner
        .compare(&[
            delayed("delayed", None),
            delayed("miss", Some("miss")),
            delayed("hit", Some("hit")),
        ])
        .await;
    let [delayed, miss, hit] = &reports[..] else {
        unreachable!()
    };
    for report in &reports {
        assert_eq!(report.latency.max_ms, 150.0, "{}", report.stack);
    }
    assert_eq!(delayed.added_latency.p50_ms, 50.0);
    assert_eq!(delayed.added_latency.max_ms, 50.0);
    assert_eq!(miss.added_latency.max_ms, 50.0);
    // A cached answer took none of the stored answer's time: all of it counts.
    assert_eq!(hit.answered.cached, 4);
    assert_eq!(hit.added_latency.p50_ms, 150.0);
    let json: serde_json::Value = serde_json::from_str(&delayed.to_json()).unwrap();
    assert_eq!(json["added_latency"]["p99_ms"], 50.0);
    assert!(table(&reports).contains("added by the layers p99"));
}

#[tokio::test(start_paused = true)]
async fn the_simulator_says_its_own_service_time() {
    let script = Script::new().model(
        "primary",
        ModelScript::new()
            .latency(Latency::fixed(Duration::from_micros(12_345)))
            .stream_interval(Duration::from_millis(10))
            .output_tokens(3),
    );
    let sim = Sim::new(script);
    let request = |stream: bool| {
        Request::post("/v1/messages")
            .body(Full::new(Bytes::from(format!(
                r#"{{"model":"primary","max_tokens":64,"stream":{stream},"messages":[]}}"#
            ))))
            .unwrap()
    };
    let json = sim.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(json.headers()[brownout_sim::LATENCY_HEADER], "12.345");
    let started = tokio::time::Instant::now();
    let stream = sim.clone().oneshot(request(true)).await.unwrap();
    let said: f64 = stream.headers()[brownout_sim::LATENCY_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    stream.into_body().collect().await.unwrap();
    let took = started.elapsed().as_secs_f64() * 1000.0;
    assert!(said > 12.345, "the stream's pacing counts: {said}");
    // tokio's timer wakes on whole milliseconds: the 12.345 ms latency takes 13.
    assert!((took - said).abs() < 1.0, "took {took} ms, said {said} ms");
}
