//! The reqwest bridge's cost per call on loopback against calling reqwest directly,
//! in one run.
//!
//! ```sh
//! cargo bench -p examples --bench reqwest_bridge
//! ```

use std::hint::black_box;

use brownout::{reqwest_bridge::ReqwestService, Body};
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::BodyExt;
use tower::ServiceExt;

const BODY: &str =
    r#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#;

fn bridge(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/messages", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(|| async { r#"{"type":"message"}"# });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    });
    let client = reqwest::Client::new();
    let service = ReqwestService::new(client.clone());

    let mut group = c.benchmark_group("loopback_call");
    group.bench_function("reqwest directly", |b| {
        b.iter(|| {
            rt.block_on(async {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(BODY)
                    .send()
                    .await
                    .unwrap();
                black_box(response.bytes().await.unwrap())
            })
        })
    });
    group.bench_function("through ReqwestService", |b| {
        b.iter(|| {
            rt.block_on(async {
                let request = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Body::from(BODY))
                    .unwrap();
                let response = service.clone().oneshot(request).await.unwrap();
                black_box(response.into_body().collect().await.unwrap().to_bytes())
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bridge);
criterion_main!(benches);
