//! What the stream guard adds to the time to first byte: a streamed answer from an
//! in-memory upstream whose events are all ready, its head and first frame read
//! straight and through the guard (which holds `message_start`, `content_block_start`
//! and `ping` back until the first delta, then hands them on). The upstream's own
//! delay to its first content is not in it: that is the price of looking first.
//!
//! ```sh
//! cargo bench -p brownout-fallback --bench stream
//! ```

use brownout_core::{shape, Body};
use brownout_fallback::stream::{StreamConfig, StreamGuardLayer};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};

fn answer() -> Response<Full<Bytes>> {
    let reply = shape::Reply {
        id: "msg_1",
        model: "claude-sonnet-4-5",
        created: 0,
        pieces: &["The", " service", " kept", " answering."],
        input_tokens: 12,
        output_tokens: 4,
        stop: shape::Stop::EndTurn,
    };
    let sse = shape::anthropic_events(&reply, &shape::Style::default(), shape::Ending::Complete);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Full::new(Bytes::from(sse.concat())))
        .unwrap()
}

fn first_byte(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let upstream =
        tower::service_fn(|_: Request<Body>| async { Ok::<_, std::io::Error>(answer()) });
    let guarded = StreamGuardLayer::new(StreamConfig::new()).layer(upstream);
    let body = Bytes::from_static(
        br#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[]}"#,
    );
    let request = || {
        Request::post("http://sim.test/v1/messages")
            .body(Body::from_bytes(body.clone()))
            .unwrap()
    };
    let mut group = c.benchmark_group("first_byte");
    group.bench_function("direct", |b| {
        b.iter(|| {
            rt.block_on(async {
                let response = upstream.oneshot(request()).await.unwrap();
                let mut body = Body::new(response.into_body());
                std::hint::black_box(body.frame().await)
            })
        })
    });
    group.bench_function("guarded", |b| {
        b.iter(|| {
            rt.block_on(async {
                let response = guarded.clone().oneshot(request()).await.unwrap();
                let mut body = response.into_body();
                std::hint::black_box(body.frame().await)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, first_byte);
criterion_main!(benches);
