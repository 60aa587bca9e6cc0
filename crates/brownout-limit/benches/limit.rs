//! The rate limiter's success path and its token estimate.
//!
//! Criterion (wall clock): `cargo bench -p brownout-limit --bench limit`.
//!
//! Instruction counts (callgrind), as in `tests/benches/stack_instructions.rs`: the
//! binary takes `VARIANT SIZE N` and makes N calls.
//!
//! ```sh
//! cargo bench -p brownout-limit --bench limit --no-run
//! bin=$(ls -t $CARGO_TARGET_DIR/release/deps/limit-* | grep -v '\.d$' | head -1)
//! for v in bare limit estimate-claude limit-openai estimate-openai estimate-openai-cold; do
//!   for n in 200 2200; do
//!     echo "$v 2k $n $(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       $bin $v 2k $n 2>&1 | grep Collected)"
//!   done
//! done
//! ```
//!
//! The cost of one call is the difference of the two counts divided by 2,000.
//! `bare` is the upstream alone; `limit` the layer over it (Anthropic, a Claude
//! model: estimate, admission, call, header learning, usage settlement), and
//! `estimate-claude` its estimate alone, so that `limit − estimate-claude` is what
//! the layer costs beyond the estimate. `limit-openai` and `estimate-openai` are the
//! same for `gpt-4o` (exact BPE counting; the text was seen before, so its count is
//! remembered), and `estimate-openai-cold` counts it afresh every time.

use std::{convert::Infallible, future::Ready, hint::black_box, time::Duration};

use brownout_core::provider::Api;
use brownout_limit::{
    estimate_input_tokens, EstimateConfig, Limits, RateLimitConfig, RateLimitLayer,
};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn body(model: &str, size: usize) -> Bytes {
    let start =
        format!(r#"{{"model":"{model}","max_tokens":1024,"messages":[{{"role":"user","content":""#);
    let end = r#""}]}"#;
    let mut text = String::with_capacity(size);
    text.push_str(&start);
    while text.len() + end.len() < size {
        text.push_str("Tell me more about brownouts. ");
    }
    text.truncate(size - end.len());
    text.push_str(end);
    Bytes::from(text)
}

fn request(path: &str, body: &Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-bench")
        .body(Full::new(body.clone()))
        .unwrap()
}

const ANSWER: &[u8] = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-1","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}"#;

fn ok<B>(_: Request<B>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(ANSWER)))))
}

fn layer() -> RateLimitLayer {
    // Limits no benchmark reaches: the success path, never a wait.
    let huge = Limits::new()
        .requests_per_minute(u32::MAX as u64)
        .input_tokens_per_minute(u64::MAX >> 12)
        .output_tokens_per_minute(u64::MAX >> 12)
        .tokens_per_minute(u64::MAX >> 12);
    RateLimitLayer::new(RateLimitConfig::new().limits(huge).max_wait(Duration::ZERO)).unwrap()
}

const ANTHROPIC: &str = "https://api.anthropic.com/v1/messages";
const OPENAI: &str = "https://api.openai.com/v1/chat/completions";

fn size_of(arg: &str) -> usize {
    match arg {
        "2k" => 2 * 1024,
        "20k" => 20 * 1024,
        "200k" => 200 * 1024,
        other => panic!("unknown size {other}"),
    }
}

/// Runs `n` calls of `variant` on a `size` body, for callgrind.
fn counted(variant: &str, size: usize, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let claude = body("claude-opus-4-1", size);
    let gpt = body("gpt-4o", size);
    let cfg = EstimateConfig::new();
    let cold = EstimateConfig::new().cache_counts(false);
    let bare = service_fn(ok);
    let limited = ServiceBuilder::new().layer(layer()).service(service_fn(ok));
    rt.block_on(async {
        for _ in 0..n {
            match variant {
                "bare" => {
                    let r = bare.oneshot(request(ANTHROPIC, &claude)).await.unwrap();
                    black_box(r.into_body().collect().await.unwrap());
                }
                "limit" => {
                    let r = limited
                        .clone()
                        .oneshot(request(ANTHROPIC, &claude))
                        .await
                        .unwrap();
                    black_box(r.into_body().collect().await.unwrap());
                }
                "limit-openai" => {
                    let r = limited
                        .clone()
                        .oneshot(request(OPENAI, &gpt))
                        .await
                        .unwrap();
                    black_box(r.into_body().collect().await.unwrap());
                }
                "estimate-claude" => {
                    black_box(estimate_input_tokens(
                        Api::AnthropicMessages,
                        Some("claude-opus-4-1"),
                        &claude,
                        &cfg,
                    ));
                }
                "estimate-openai" => {
                    black_box(estimate_input_tokens(
                        Api::OpenAiChat,
                        Some("gpt-4o"),
                        &gpt,
                        &cfg,
                    ));
                }
                "estimate-openai-cold" => {
                    black_box(estimate_input_tokens(
                        Api::OpenAiChat,
                        Some("gpt-4o"),
                        &gpt,
                        &cold,
                    ));
                }
                other => panic!("unknown variant {other}"),
            }
        }
    });
}

fn criterion_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let claude = body("claude-opus-4-1", 2 * 1024);
    let bare = service_fn(ok);
    let limited = ServiceBuilder::new().layer(layer()).service(service_fn(ok));
    let mut g = c.benchmark_group("call_2k");
    g.bench_function("bare", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = bare.oneshot(request(ANTHROPIC, &claude)).await.unwrap();
                r.into_body().collect().await.unwrap()
            })
        })
    });
    g.bench_function("limit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = limited
                    .clone()
                    .oneshot(request(ANTHROPIC, &claude))
                    .await
                    .unwrap();
                r.into_body().collect().await.unwrap()
            })
        })
    });
    g.finish();

    let cfg = EstimateConfig::new();
    let cold = EstimateConfig::new().cache_counts(false);
    let mut g = c.benchmark_group("estimate");
    for size in ["2k", "20k", "200k"] {
        let bytes = size_of(size);
        for (api, model, name, cfg) in [
            (Api::AnthropicMessages, "claude-opus-4-1", "claude", &cfg),
            (Api::OpenAiChat, "gpt-4o", "openai-cold", &cold),
            (Api::OpenAiChat, "gpt-4o", "openai-seen", &cfg),
        ] {
            let b = body(model, bytes);
            let tokens = estimate_input_tokens(api, Some(model), &b, cfg).tokens;
            g.throughput(Throughput::Elements(tokens));
            g.bench_with_input(BenchmarkId::new(name, size), &b, |bench, b| {
                bench.iter(|| estimate_input_tokens(api, Some(model), black_box(b), cfg))
            });
        }
    }
    g.finish();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 3 && !args[0].starts_with('-') {
        counted(&args[0], size_of(&args[1]), args[2].parse().unwrap());
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
}
