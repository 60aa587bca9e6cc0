//! A degraded answer (Anthropic and OpenAI, JSON and SSE) for a 2 KB chat request
//! whose upstream answered 529, and the success path against the bare service.
//!
//! ```sh
//! cargo bench -p brownout-degrade --bench degrade
//! ```

use std::{convert::Infallible, future::Ready, hint::black_box};

use brownout_core::Body;
use brownout_degrade::{Degrade, DegradeConfig, Rule};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceExt};

/// A chat body of about 2 KB: a conversation whose last user message asks about a
/// refund, in the shape of the API at `openai` or not.
fn chat(stream: bool) -> Bytes {
    let turn = r#"{"role":"user","content":"Tell me about the history of the printing press in Europe, and why it mattered \"so much\" for science."},{"role":"assistant","content":"It spread knowledge."},"#;
    let mut messages = String::from("[");
    for _ in 0..(2048 / turn.len()).max(1) {
        messages.push_str(turn);
    }
    messages
        .push_str(r#"{"role":"user","content":"And how do I get a refund for my subscription?"}]"#);
    Bytes::from(format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":{stream},"messages":{messages}}}"#
    ))
}

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
}

fn overloaded<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = http::StatusCode::from_u16(529).unwrap();
    std::future::ready(Ok(response))
}

fn config() -> DegradeConfig {
    let rules = [
        Rule::new(
            "outage",
            r"(?i)\b(down|outage|status)\b",
            "We are aware of the outage.",
        )
        .unwrap(),
        Rule::new(
            "billing",
            r"(?i)\b(invoice|billing|charge)",
            "See Settings › Billing.",
        )
        .unwrap(),
        Rule::new(
            "refunds",
            r"(?i)\brefund",
            "You can request a refund from Settings › Billing.",
        )
        .unwrap(),
    ];
    DegradeConfig::new(rules).unwrap().seed(1)
}

fn request(url: &str, body: &Bytes) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap()
}

fn degraded(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let service = Degrade::new(service_fn(overloaded::<Body>), config());
    let mut group = c.benchmark_group("degraded_answer_2KB");
    for (label, url) in [
        ("anthropic", "https://api.anthropic.com/v1/messages"),
        ("openai", "https://api.openai.com/v1/chat/completions"),
    ] {
        for stream in [false, true] {
            let body = chat(stream);
            let name = format!("{label} {}", if stream { "sse" } else { "json" });
            group.bench_function(name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let response = service
                            .clone()
                            .oneshot(black_box(request(url, &body)))
                            .await
                            .unwrap();
                        assert_eq!(response.headers()["x-brownout-degraded-rule"], "refunds");
                        response.into_body().collect().await.unwrap().to_bytes()
                    })
                })
            });
        }
    }
    group.finish();
}

fn success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let body = chat(false);
    let url = "https://api.anthropic.com/v1/messages";
    let bare = service_fn(ok::<Full<Bytes>>);
    let degrade = Degrade::new(service_fn(ok::<Body>), config());
    let mut group = c.benchmark_group("success_path_2KB");
    group.bench_function("bare service", |b| {
        b.iter(|| {
            rt.block_on(bare.oneshot(black_box(request(url, &body))))
                .unwrap()
        })
    });
    group.bench_function("brownout degrade", |b| {
        b.iter(|| {
            rt.block_on(degrade.clone().oneshot(black_box(request(url, &body))))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, degraded, success_path);
criterion_main!(benches);
