//! The in-process simulator's own cost per request, so that layers measured against it
//! can subtract it: a non-streaming success on each endpoint (the number to quote), a
//! 529, and a streamed answer, each read to its end, next to a bare service that
//! answers `{}`.
//!
//! ```sh
//! cargo bench -p brownout-sim --bench sim
//! ```

use std::{convert::Infallible, hint::black_box};

use brownout_sim::{Fault, ModelScript, Script, Sim};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceExt};

fn anthropic(model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":1024,"stream":{stream},"messages":[{{"role":"user","content":"Summarise the incident report in one line, please."}}]}}"#
    );
    Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-bench")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn openai(model: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","max_completion_tokens":1024,"messages":[{{"role":"user","content":"Summarise the incident report in one line, please."}}]}}"#
    );
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

type MakeRequest = fn() -> Request<Full<Bytes>>;

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let sim = Sim::new(
        Script::new()
            .seed(1)
            .model("healthy", ModelScript::new().output_tokens(16))
            .model("overloaded", ModelScript::new().fault(Fault::overloaded())),
    );
    let mut group = c.benchmark_group("sim");

    let bare = service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    group.bench_function("bare service", |b| {
        b.iter(|| {
            rt.block_on(async {
                let response = bare
                    .oneshot(black_box(anthropic("healthy", false)))
                    .await
                    .unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            })
        })
    });

    let cases: [(&str, MakeRequest); 4] = [
        ("anthropic json 200", || anthropic("healthy", false)),
        ("openai json 200", || openai("healthy")),
        ("anthropic 529", || anthropic("overloaded", false)),
        ("anthropic stream 200", || anthropic("healthy", true)),
    ];
    for (name, request) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let response = sim.clone().oneshot(black_box(request())).await.unwrap();
                    response.into_body().collect().await.unwrap().to_bytes()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
