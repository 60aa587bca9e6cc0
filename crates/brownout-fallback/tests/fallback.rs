//! Behaviour of the fallback layer against a scripted upstream, in paused time.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use brownout_breaker::{BreakerConfig, CircuitBreakerLayer, FailurePolicy};
use brownout_core::{
    body::BodyLimits,
    error::{BrokenBody, InvalidRequest},
    event::{Event, NotReplayable},
    testing::{Step, Upload, UploadEnd, Upstream},
    Body, BoxError, OutcomeKind,
};
use brownout_fallback::{
    AllTargetsFailed, Exhausted, Fallback, FallbackConfig, FallbackEvent, FallbackReason,
    NoCascadeReason, ServedBy, Target,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// The scripted upstream of these tests: it answers (then 200s) with the model it
/// answered as and its own name.
fn named(name: &'static str) -> Upstream {
    Upstream::new()
        .named(name)
        .body_with(move |_, model| format!(r#"{{"model":"{model}","served_by":"{name}"}}"#))
}

const OPUS: &str = "claude-opus-4-1";
const SONNET: &str = "claude-sonnet-4-5";
const HAIKU: &str = "claude-haiku-4-5";

fn targets() -> Vec<Target> {
    vec![
        Target::new(OPUS),
        Target::new(SONNET),
        Target::new(HAIKU).max_tokens(8192),
    ]
}

fn request(body: &str) -> Request<Full<Bytes>> {
    Request::post("https://api.anthropic.com/v1/messages?beta=1")
        .header("content-length", body.len())
        .header("x-api-key", "sk-ant-secret")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn chat(model: &str) -> String {
    format!(
        r#"{{"model": "{model}", "max_tokens": 32000, "messages": [{{"role":"user","content":"Hi"}}]}}"#
    )
}

fn recorder() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(&Event) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |e: &Event| {
        sink.lock().unwrap().push(e.clone())
    })
}

type Reply = Result<Response<Body>, BoxError>;

async fn call(service: &Fallback<Upstream>, body: &str) -> Reply {
    service.clone().oneshot(request(body)).await
}

fn served(reply: &Reply) -> (String, usize) {
    let served = reply
        .as_ref()
        .unwrap()
        .extensions()
        .get::<ServedBy>()
        .unwrap();
    (served.model().to_owned(), served.position())
}

/// The whole body of a successful reply.
async fn body_of(reply: Reply) -> Bytes {
    reply
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
}

fn models_sent(upstream: &Upstream) -> Vec<String> {
    upstream
        .seen()
        .iter()
        .map(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.body).unwrap()["model"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_primary_falls_back_and_the_response_says_so() {
    let upstream = named("main");
    upstream.script(OPUS, [Step::Status(529)]);
    let (events, listener) = recorder();
    let config = FallbackConfig::new(targets())
        .unwrap()
        .served_header_default()
        .listener(listener);
    let service = Fallback::new(upstream.clone(), config);
    let reply = call(&service, &chat(OPUS)).await;
    assert_eq!(served(&reply), (SONNET.to_owned(), 1));
    let response = reply.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-brownout-model"], SONNET);
    assert_eq!(models_sent(&upstream), [OPUS, SONNET]);

    let events = events.lock().unwrap();
    let Some(FallbackEvent::FallingBack { from, to, reason }) = events[0].data::<FallbackEvent>()
    else {
        panic!("{:?}", events[0]);
    };
    assert_eq!((&**from, &**to), (OPUS, SONNET));
    let FallbackReason::Failed(outcome) = reason else {
        panic!()
    };
    assert_eq!(outcome.kind(), OutcomeKind::Overloaded);
    assert!(!format!("{events:?}").contains("sk-ant-secret"));
}

#[tokio::test(start_paused = true)]
async fn a_client_error_returns_at_once() {
    for status in [400, 401, 403, 404, 413] {
        let upstream = named("");
        upstream.script(OPUS, [Step::Status(status)]);
        let service = Fallback::new(upstream.clone(), FallbackConfig::new(targets()).unwrap());
        let reply = call(&service, &chat(OPUS)).await;
        assert_eq!(reply.as_ref().unwrap().status(), status);
        assert_eq!(served(&reply), (OPUS.to_owned(), 0));
        assert_eq!(upstream.seen().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_target_whose_breaker_is_open_is_skipped_without_a_request() {
    let breakers = CircuitBreakerLayer::new(BreakerConfig::new());
    let handle = breakers.handle();
    handle.force_open(OPUS);
    let upstream = named("");
    let (events, listener) = recorder();
    let config = FallbackConfig::new(targets())
        .unwrap()
        .health(handle)
        .listener(listener);
    let service = Fallback::new(upstream.clone(), config);
    let reply = call(&service, &chat(OPUS)).await;
    assert_eq!(served(&reply), (SONNET.to_owned(), 1));
    assert_eq!(models_sent(&upstream), [SONNET], "nothing was sent to opus");
    assert!(matches!(
        events.lock().unwrap()[0].data::<FallbackEvent>(),
        Some(FallbackEvent::FallingBack {
            reason: FallbackReason::Unavailable,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn one_deadline_covers_the_cascade() {
    let upstream = named("");
    // Opus takes 3 s to fail; sonnet hangs; with 5 s in all, haiku is never started.
    upstream.script(OPUS, [Step::Slow(Duration::from_secs(3), 529)]);
    upstream.script(SONNET, [Step::Hang]);
    let config = FallbackConfig::new(targets())
        .unwrap()
        .deadline(Duration::from_secs(5))
        .min_time_left(Duration::from_secs(1))
        .on_exhausted(Exhausted::Error);
    let service = Fallback::new(upstream.clone(), config);
    let start = Instant::now();
    let error = call(&service, &chat(OPUS)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(models_sent(&upstream), [OPUS, SONNET]);
    let report = error.downcast_ref::<AllTargetsFailed>().unwrap();
    let timeouts: Vec<_> = report
        .failures()
        .iter()
        .map(|(m, r)| {
            (
                m.to_string(),
                matches!(r, FallbackReason::Failed(o) if o.kind() == OutcomeKind::Timeout),
            )
        })
        .collect();
    assert_eq!(timeouts, [(OPUS.into(), false), (SONNET.into(), true)]);

    // Not enough time left for a target: it is not started.
    let upstream = named("");
    upstream.script(OPUS, [Step::Slow(Duration::from_millis(4500), 529)]);
    let config = FallbackConfig::new(targets())
        .unwrap()
        .deadline(Duration::from_secs(5))
        .min_time_left(Duration::from_secs(1));
    let service = Fallback::new(upstream.clone(), config);
    let reply = call(&service, &chat(OPUS)).await;
    assert_eq!(
        reply.unwrap().status(),
        529,
        "the last response, as configured"
    );
    assert_eq!(models_sent(&upstream), [OPUS]);
}

#[tokio::test(start_paused = true)]
async fn when_every_target_fails_the_report_lists_each() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Status(529)]);
    upstream.script(SONNET, [Step::Status(503)]);
    upstream.script(HAIKU, [Step::Status(500)]);
    let config = FallbackConfig::new(targets())
        .unwrap()
        .on_exhausted(Exhausted::Error);
    let service = Fallback::new(upstream.clone(), config);
    let error = call(&service, &chat(OPUS)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "every fallback target failed: claude-opus-4-1 (overloaded (529)); \
         claude-sonnet-4-5 (overloaded (503)); claude-haiku-4-5 (server_error (500))"
    );

    // By default the last response comes back, with the report attached.
    upstream.script(OPUS, [Step::Status(529)]);
    upstream.script(SONNET, [Step::Status(503)]);
    upstream.script(HAIKU, [Step::Status(500)]);
    let service = Fallback::new(upstream.clone(), FallbackConfig::new(targets()).unwrap());
    let response = call(&service, &chat(OPUS)).await.unwrap();
    assert_eq!(response.status(), 500);
    let report = response.extensions().get::<AllTargetsFailed>().unwrap();
    assert_eq!(report.failures().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn only_the_model_and_the_clamped_max_tokens_change() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Status(529)]);
    upstream.script(SONNET, [Step::Status(529)]);
    let body = chat(OPUS);
    let service = Fallback::new(upstream.clone(), FallbackConfig::new(targets()).unwrap());
    let reply = call(&service, &body).await;
    assert_eq!(served(&reply), (HAIKU.to_owned(), 2));
    let seen = upstream.seen();
    assert_eq!(
        seen[0].body,
        body.as_bytes(),
        "the first target gets the very bytes"
    );
    assert_eq!(seen[1].body, body.replace(OPUS, SONNET).as_bytes());
    let clamped = body.replace(OPUS, HAIKU).replace("32000", "8192");
    assert_eq!(seen[2].body, clamped.as_bytes());
    // content-length follows the body; other headers and the URI are kept.
    for s in &seen {
        assert_eq!(
            s.headers["content-length"],
            s.body.len().to_string().as_str()
        );
        assert_eq!(s.headers["x-api-key"], "sk-ant-secret");
        assert_eq!(s.uri, "https://api.anthropic.com/v1/messages?beta=1");
    }
}

#[tokio::test(start_paused = true)]
async fn bodies_without_a_model_go_unchanged_to_the_first_target_only() {
    for body in ["not json at all", r#"{"messages":[]}"#, r#"{"model":42}"#] {
        let upstream = named("");
        upstream.script("none", [Step::Status(529)]);
        let (events, listener) = recorder();
        let config = FallbackConfig::new(targets()).unwrap().listener(listener);
        let service = Fallback::new(upstream.clone(), config);
        let reply = call(&service, body).await;
        assert_eq!(reply.unwrap().status(), 529, "no cascade");
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body, body.as_bytes());
        assert!(matches!(
            events.lock().unwrap()[0].data::<FallbackEvent>(),
            Some(FallbackEvent::NoCascade {
                reason: NoCascadeReason::NoModel
            })
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_goes_once_to_the_first_target() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Status(529)]);
    let body = chat(OPUS);
    let (events, listener) = recorder();
    let config = FallbackConfig::new(targets()).unwrap().listener(listener);
    let service = Fallback::new(upstream.clone(), config);
    let mut request = request(&body);
    // The replay limit is the stack's: one setting in the request's extensions.
    request
        .extensions_mut()
        .insert(BodyLimits::new().replay_limit(16));
    assert_eq!(service.oneshot(request).await.unwrap().status(), 529);
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream.seen()[0].body, body.as_bytes());
    assert!(matches!(
        &events.lock().unwrap()[..],
        [event] if matches!(
            event.data::<FallbackEvent>(),
            Some(FallbackEvent::NoCascade {
                reason: NoCascadeReason::NotReplayable(NotReplayable::BodyTooLarge { limit: 16 })
            })
        )
    ));
}

#[tokio::test(start_paused = true)]
async fn a_requested_lighter_model_is_never_upgraded() {
    let upstream = named("");
    upstream.script(SONNET, [Step::Status(529)]);
    let service = Fallback::new(upstream.clone(), FallbackConfig::new(targets()).unwrap());
    let reply = call(&service, &chat(SONNET)).await;
    assert_eq!(served(&reply), (HAIKU.to_owned(), 1));
    assert_eq!(models_sent(&upstream), [SONNET, HAIKU]);
}

#[tokio::test(start_paused = true)]
async fn a_target_can_have_its_own_service_endpoint_and_credentials() {
    let primary = named("anthropic");
    primary.script(OPUS, [Step::Status(529)]);
    let other = named("other");
    let targets = vec![
        Target::new(OPUS),
        Target::new("gpt-4o")
            .base_url("http://127.0.0.1:9000/openai")
            .unwrap()
            .header("x-api-key", "sk-other")
            .unwrap(),
    ];
    let service = Fallback::new(primary.clone(), FallbackConfig::new(targets).unwrap())
        .target_service("gpt-4o", other.clone())
        .unwrap();
    let reply = call(&service, &chat(OPUS)).await;
    assert_eq!(served(&reply), ("gpt-4o".to_owned(), 1));
    let body = body_of(reply).await;
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains(r#""served_by":"other""#));
    assert_eq!(primary.seen().len(), 1);
    let seen = other.seen();
    assert_eq!(
        seen[0].uri,
        "http://127.0.0.1:9000/openai/v1/messages?beta=1"
    );
    assert_eq!(seen[0].headers["x-api-key"], "sk-other");
    assert!(format!("{service:?}").contains("gpt-4o"));
    assert!(
        !format!("{service:?}").contains("sk-other"),
        "credentials never printed"
    );
}

#[test]
fn nonsense_settings_are_refused_with_the_key() {
    assert_eq!(FallbackConfig::new([]).unwrap_err().key(), "targets");
    let twice = FallbackConfig::new([Target::new("a"), Target::new("a")]).unwrap_err();
    assert_eq!(
        twice.to_string(),
        "invalid fallback setting `targets`: `a` appears twice"
    );
    assert_eq!(
        Target::new("a").base_url("not a url").unwrap_err().key(),
        "target.base_url"
    );
    assert!(Target::new("a").base_url("/relative").is_err());
    assert!(Target::new("a").header("bad header", "v").is_err());
    let service = Fallback::new(named(""), FallbackConfig::new(targets()).unwrap());
    assert_eq!(
        service
            .target_service("gpt-9", named(""))
            .unwrap_err()
            .key(),
        "target_service"
    );
}

#[tokio::test(start_paused = true)]
async fn a_target_with_its_own_endpoint_never_gets_the_callers_credentials() {
    let primary = named("");
    primary.script(OPUS, [Step::Status(529)]);
    let targets = vec![
        Target::new(OPUS),
        Target::new("gpt-4o")
            .base_url("http://127.0.0.1:9000")
            .unwrap(),
    ];
    let service = Fallback::new(primary.clone(), FallbackConfig::new(targets).unwrap());
    let mut request = request(&chat(OPUS));
    request
        .headers_mut()
        .insert("authorization", "Bearer sk-caller".parse().unwrap());
    let reply = service.clone().oneshot(request).await;
    assert_eq!(served(&reply), ("gpt-4o".to_owned(), 1));
    let seen = primary.seen();
    assert_eq!(
        seen[0].headers["x-api-key"], "sk-ant-secret",
        "the caller's own provider"
    );
    assert!(!seen[1].headers.contains_key("x-api-key"));
    assert!(!seen[1].headers.contains_key("authorization"));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_minimum_still_sends_the_first_target() {
    let upstream = named("");
    let config = FallbackConfig::new(targets())
        .unwrap()
        .deadline(Duration::from_millis(800))
        .min_time_left(Duration::from_secs(1));
    let service = Fallback::new(upstream.clone(), config);
    let reply = call(&service, &chat(OPUS)).await;
    assert_eq!(served(&reply), (OPUS.to_owned(), 0));
}

/// A service that panics, as tower's `Buffer` and `ConcurrencyLimit` do, when called
/// without being made ready first.
#[derive(Clone, Default)]
struct Strict {
    inner: Upstream,
    ready: bool,
}

impl Service<Request<Body>> for Strict {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = <Upstream as Service<Request<Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.ready = true;
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        assert!(std::mem::take(&mut self.ready), "called without poll_ready");
        self.inner.call(request)
    }
}

#[tokio::test(start_paused = true)]
async fn a_targets_own_service_is_made_ready_before_it_is_called() {
    let own = Strict::default();
    let service = Fallback::new(Strict::default(), FallbackConfig::new(targets()).unwrap())
        .target_service(OPUS, own.clone())
        .unwrap();
    for body in ["not json", &chat(OPUS)] {
        let reply = service.clone().oneshot(request(body)).await;
        assert_eq!(reply.unwrap().status(), 200);
    }
    assert_eq!(own.inner.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn models_outside_the_cascade_can_pass_through_unchanged() {
    let upstream = named("");
    upstream.script("claude-3-haiku", [Step::Status(529)]);
    let config = FallbackConfig::new(targets())
        .unwrap()
        .unknown_models(brownout_fallback::UnknownModels::PassThrough);
    let service = Fallback::new(upstream.clone(), config);
    let body = chat("claude-3-haiku");
    let reply = call(&service, &body).await;
    assert_eq!(reply.unwrap().status(), 529, "no cascade");
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream.seen()[0].body, body.as_bytes());

    // By default the cascade runs from its first target.
    let upstream = named("");
    let service = Fallback::new(upstream.clone(), FallbackConfig::new(targets()).unwrap());
    let reply = call(&service, &chat("claude-3-haiku")).await;
    assert_eq!(served(&reply), (OPUS.to_owned(), 0));
}

#[tokio::test(start_paused = true)]
async fn a_target_can_be_told_to_keep_the_callers_credentials() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Status(529)]);
    let targets = vec![
        Target::new(OPUS),
        Target::new(SONNET)
            .base_url("http://127.0.0.1:9000")
            .unwrap()
            .keep_caller_credentials(),
    ];
    let service = Fallback::new(upstream.clone(), FallbackConfig::new(targets).unwrap());
    let reply = call(&service, &chat(OPUS)).await;
    assert_eq!(served(&reply), (SONNET.to_owned(), 1));
    assert_eq!(upstream.seen()[1].headers["x-api-key"], "sk-ant-secret");
}

fn request_with<B>(body: B, len: usize) -> Request<B> {
    Request::post("https://api.anthropic.com/v1/messages?beta=1")
        .header("content-length", len)
        .header("x-api-key", "sk-ant-secret")
        .body(body)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_broken_body_is_the_callers_error_and_nothing_is_sent() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Status(529)]);
    let (events, listener) = recorder();
    let config = FallbackConfig::new(targets()).unwrap().listener(listener);
    let service = Fallback::new(upstream.clone(), config);
    let body = chat(OPUS);
    let request = request_with(
        Upload::chunked(body.as_bytes(), 16, UploadEnd::Break),
        body.len(),
    );
    let error = service.oneshot(request).await.unwrap_err();
    assert!(error.downcast_ref::<BrokenBody>().is_some(), "{error}");
    assert_eq!(upstream.calls(), 0, "no target is called");
    assert!(events.lock().unwrap().is_empty(), "no fallback, no event");
}

#[tokio::test(start_paused = true)]
async fn a_body_naming_two_models_is_refused_and_nothing_is_sent() {
    let upstream = named("");
    let (events, listener) = recorder();
    let config = FallbackConfig::new(targets()).unwrap().listener(listener);
    let service = Fallback::new(upstream.clone(), config);
    let body = format!(r#"{{"model":"{OPUS}","max_tokens":10,"messages":[],"model":"{HAIKU}"}}"#);
    let error = call(&service, &body).await.unwrap_err();
    assert!(error.downcast_ref::<InvalidRequest>().is_some(), "{error}");
    assert_eq!(upstream.calls(), 0);
    assert!(events.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn each_target_sees_the_facts_of_its_own_body() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Status(529)]);
    upstream.script(SONNET, [Step::Status(529)]);
    let service = Fallback::new(upstream.clone(), FallbackConfig::new(targets()).unwrap());
    let reply = call(&service, &chat(OPUS)).await;
    assert_eq!(served(&reply), (HAIKU.to_owned(), 2));
    let facts: Vec<(Option<String>, Option<u64>)> = upstream
        .seen()
        .iter()
        .map(|s| {
            let facts = s.facts.as_ref().expect("facts in every target's request");
            (facts.model().map(str::to_owned), facts.max_tokens())
        })
        .collect();
    assert_eq!(
        facts,
        [
            (Some(OPUS.to_owned()), Some(32000)),
            (Some(SONNET.to_owned()), Some(32000)),
            (Some(HAIKU.to_owned()), Some(8192)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_has_its_model_written_into_the_bytes_read_ahead() {
    for (asked, target, clamped) in [("claude-3-haiku", OPUS, false), (HAIKU, HAIKU, true)] {
        let upstream = named("");
        upstream.script(target, [Step::Status(529)]);
        let (events, listener) = recorder();
        let config = FallbackConfig::new(targets()).unwrap().listener(listener);
        let service = Fallback::new(upstream.clone(), config);
        let body = chat(asked);
        let mut request = request_with(
            Upload::chunked(body.as_bytes(), 10, UploadEnd::End),
            body.len(),
        );
        request
            .extensions_mut()
            .insert(BodyLimits::new().replay_limit(60));
        let reply = service.oneshot(request).await;
        assert_eq!(served(&reply), (target.to_owned(), 0));
        assert_eq!(reply.unwrap().status(), 529, "sent once: no cascade");
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1);
        let mut expected = body.replace(asked, target);
        if clamped {
            expected = expected.replace("32000", "8192");
        }
        assert_eq!(seen[0].body, expected.as_bytes());
        assert_eq!(
            seen[0].headers["content-length"],
            expected.len().to_string().as_str()
        );
        let facts = seen[0].facts.as_ref().unwrap();
        assert_eq!(facts.model(), Some(target));
        assert!(!facts.is_whole());
        assert!(matches!(
            &events.lock().unwrap()[..],
            [event] if matches!(
                event.data::<FallbackEvent>(),
                Some(FallbackEvent::NoCascade {
                    reason: NoCascadeReason::NotReplayable(NotReplayable::BodyTooLarge {
                        limit: 60
                    })
                })
            )
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn a_breaker_inside_keys_each_target_by_the_model_it_is_sent() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Status(529)]);
    let breakers = CircuitBreakerLayer::new(
        BreakerConfig::new().policy(FailurePolicy::consecutive(1).unwrap()),
    );
    let config = FallbackConfig::new(targets())
        .unwrap()
        .health(breakers.handle());
    let service = Fallback::new(breakers.layer(upstream.clone()), config);
    // Opus's 529 opens its breaker. Sonnet's request passes: the breaker keys it by the
    // model in the facts of the body it is sent, not by the caller's opus.
    let reply = service.clone().oneshot(request(&chat(OPUS))).await;
    assert_eq!(served(&reply), (SONNET.to_owned(), 1));
    // Next time opus is skipped without a request.
    let reply = service.clone().oneshot(request(&chat(OPUS))).await;
    assert_eq!(served(&reply), (SONNET.to_owned(), 1));
    assert_eq!(models_sent(&upstream), [OPUS, SONNET, SONNET]);
}

#[tokio::test(start_paused = true)]
async fn the_report_keeps_each_targets_error_message() {
    let upstream = named("");
    upstream.script(OPUS, [Step::Fail(std::io::ErrorKind::ConnectionRefused)]);
    upstream.script(SONNET, [Step::Status(529)]);
    upstream.script(HAIKU, [Step::Fail(std::io::ErrorKind::ConnectionReset)]);
    let config = FallbackConfig::new(targets())
        .unwrap()
        .on_exhausted(Exhausted::Error);
    let service = Fallback::new(upstream.clone(), config);
    let error = call(&service, &chat(OPUS)).await.unwrap_err();
    let report = error.downcast_ref::<AllTargetsFailed>().unwrap();
    assert_eq!(report.failures().len(), 3);
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).to_string();
    assert_eq!(report.detail(0), Some(refused.as_str()));
    assert_eq!(report.detail(1), None, "an answer, not an error");
    assert!(report.detail(2).is_some());
    let text = report.to_string();
    assert!(text.contains(&refused), "{text}");
}

/// The targets after the first are served by the inner service as it is now: one
/// replaced through `get_mut` serves them from the next call on, not the spare the
/// layer kept from before (the spare is shared by the service's clones, and `call`
/// here clones the service for each request).
#[tokio::test(start_paused = true)]
async fn later_targets_are_served_by_the_inner_service_as_changed_through_get_mut() {
    async fn served_by(service: &Fallback<Upstream>) -> String {
        let reply = call(service, &chat(OPUS)).await;
        assert_eq!(served(&reply), (SONNET.to_owned(), 1));
        let body = body_of(reply).await;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["served_by"].as_str().unwrap().to_owned()
    }
    let one = named("one");
    one.script(OPUS, [Step::Status(529), Step::Status(529)]);
    let mut service = Fallback::new(one.clone(), FallbackConfig::new(targets()).unwrap());
    assert_eq!(served_by(&service).await, "one");
    assert_eq!(served_by(&service).await, "one");
    let two = named("two");
    two.script(OPUS, [Step::Status(529)]);
    *service.get_mut() = two.clone();
    assert_eq!(served_by(&service).await, "two");
    assert_eq!((one.calls(), two.calls()), (4, 2));
}
