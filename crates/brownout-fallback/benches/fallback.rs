//! The model rewrite (core's `RequestFacts`, read once, then `retarget` per target)
//! against a full serde_json parse and re-serialize, on a 2 KB and a 200 KB chat body,
//! and the cascade on the success path against the bare service.
//!
//! ```sh
//! cargo bench -p brownout-fallback --bench fallback
//! ```

use std::{convert::Infallible, future::Ready, hint::black_box};

use brownout_core::{Body, RequestFacts};
use brownout_fallback::{Fallback, FallbackConfig, Target};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceExt};

/// A chat body of about `size` bytes: a conversation of `turns` messages, `model`
/// first (as the SDKs write it) or last.
fn chat(size: usize, model_last: bool) -> Vec<u8> {
    let turn = r#"{"role":"user","content":"Tell me about the history of the printing press in Europe, and why it mattered \"so much\" for science."},"#;
    let turns = (size / turn.len()).max(1);
    let mut messages = String::from("[");
    for _ in 0..turns {
        messages.push_str(turn);
    }
    messages.pop();
    messages.push(']');
    let body = if model_last {
        format!(r#"{{"max_tokens":4096,"messages":{messages},"model":"claude-opus-4-1"}}"#)
    } else {
        format!(r#"{{"model":"claude-opus-4-1","max_tokens":4096,"messages":{messages}}}"#)
    };
    body.into_bytes()
}

fn serde_rewrite(body: &[u8]) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(body).unwrap();
    value["model"] = serde_json::Value::String("claude-haiku-4-5".into());
    serde_json::to_vec(&value).unwrap()
}

fn rewrite(c: &mut Criterion) {
    let parts = Request::post("https://api.anthropic.com/v1/messages")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut group = c.benchmark_group("rewrite");
    for (label, size) in [("2KB", 2 * 1024), ("200KB", 200 * 1024)] {
        for model_last in [false, true] {
            let body = Bytes::from(chat(size, model_last));
            let position = if model_last {
                "model last"
            } else {
                "model first"
            };
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("brownout, {position}"), label),
                &body,
                |b, body| {
                    b.iter(|| {
                        let facts = RequestFacts::read(&parts, black_box(body), true).unwrap();
                        facts.retarget(body, "claude-haiku-4-5", None).unwrap()
                    })
                },
            );
            // What the cascade does per target once the facts are read.
            let facts = RequestFacts::read(&parts, &body, true).unwrap();
            group.bench_with_input(
                BenchmarkId::new(format!("brownout, per target, {position}"), label),
                &facts,
                |b, facts| {
                    b.iter(|| {
                        facts
                            .retarget(&body, black_box("claude-haiku-4-5"), None)
                            .unwrap()
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("serde_json Value, {position}"), label),
                &body,
                |b, body| b.iter(|| serde_rewrite(black_box(body))),
            );
        }
    }
    group.finish();
}

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
}

fn cascade(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let body = Bytes::from(chat(2 * 1024, false));
    let request = || {
        Request::post("https://api.anthropic.com/v1/messages")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap()
    };
    let bare = service_fn(ok::<Full<Bytes>>);
    let config = FallbackConfig::new([
        Target::new("claude-opus-4-1"),
        Target::new("claude-sonnet-4-5"),
        Target::new("claude-haiku-4-5"),
    ])
    .unwrap();
    let fallback = Fallback::new(service_fn(ok::<Body>), config);
    let mut group = c.benchmark_group("success_path_2KB");
    group.bench_function("bare service", |b| {
        b.iter(|| rt.block_on(bare.oneshot(black_box(request()))).unwrap())
    });
    group.bench_function("brownout fallback", |b| {
        b.iter(|| {
            rt.block_on(fallback.clone().oneshot(black_box(request())))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, rewrite, cascade);
criterion_main!(benches);
