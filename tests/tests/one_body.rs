//! One body, one reading, one verdict: the five layers together read the request body
//! once, classify each attempt once, take `option_layer`, and leave a caller's broken
//! or invalid request to that caller.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use brownout::{
    breaker::{BreakerConfig, BreakerHandle, CircuitBreakerLayer, FailurePolicy, OpenDuration},
    cache::CacheConfig,
    classify::{Classify, ClassifyLayer, DefaultClassifier, Observed, Outcome},
    degrade::DegradeConfig,
    error::{find, BrokenBody, InvalidRequest},
    fallback::{FallbackConfig, ServedBy, Target},
    retry::{Backoff, RetryConfig},
    Body, BoxError, RequestFacts, ServiceBuilderExt,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

const PRIMARY: &str = "claude-opus-4-1";
const LIGHTER: &str = "claude-haiku-4-5";

/// A body of the given chunks that counts how often it is polled, then ends or
/// fails.
struct Counted {
    chunks: VecDeque<Bytes>,
    polls: Arc<AtomicUsize>,
    fail: bool,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        match self.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None if self.fail => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the client hung up",
            )))),
            None => Poll::Ready(None),
        }
    }
}

/// A 2 KB LLM-shaped request body, in three chunks.
fn llm_body(model: &str) -> Vec<Bytes> {
    let mut body =
        format!(r#"{{"model":"{model}","max_tokens":1024,"messages":[{{"role":"user","content":""#);
    body.push_str(&"Tell me about brownouts. ".repeat(80));
    body.push_str(r#""}]}"#);
    let bytes = Bytes::from(body);
    let third = bytes.len() / 3;
    vec![
        bytes.slice(..third),
        bytes.slice(third..2 * third),
        bytes.slice(2 * third..),
    ]
}

fn request(chunks: Vec<Bytes>, polls: &Arc<AtomicUsize>, fail: bool) -> Request<Counted> {
    Request::post("http://upstream/v1/messages")
        .header("x-api-key", "sk-ant-caller")
        .body(Counted {
            chunks: chunks.into(),
            polls: polls.clone(),
            fail,
        })
        .unwrap()
}

fn breakers() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        BreakerConfig::new()
            .policy(FailurePolicy::consecutive(3).unwrap())
            .open_duration(OpenDuration::Fixed(Duration::from_secs(60))),
    )
}

fn cascade(handle: BreakerHandle) -> FallbackConfig {
    FallbackConfig::new([Target::new(PRIMARY), Target::new(LIGHTER)])
        .unwrap()
        .health(handle)
}

fn retry() -> RetryConfig {
    RetryConfig::new()
        .max_attempts(2)
        .no_budget()
        .seed(5)
        .backoff(
            Backoff::exponential(Duration::from_millis(10), Duration::from_millis(10)).unwrap(),
        )
}

type Log = Arc<Mutex<Vec<String>>>;

/// The upstream: reads the whole request, logs its model (from the facts the layers
/// carried, and from the bytes), answers `status(model)`.
fn upstream(
    log: Log,
    status: fn(&str) -> u16,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + Sync
       + 'static {
    service_fn(move |request: Request<Body>| {
        let log = log.clone();
        async move {
            let facts = RequestFacts::of(request.extensions()).cloned();
            let body = request.into_body().collect().await?.to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body)?;
            let model = json["model"].as_str().unwrap_or_default().to_owned();
            if let Some(facts) = facts {
                assert_eq!(facts.model(), Some(&*model), "the facts follow the rewrite");
            }
            log.lock().unwrap().push(model.clone());
            let status = status(&model);
            let body = if status == 200 {
                format!(r#"{{"type":"message","model":"{model}","content":[]}}"#)
            } else {
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                    .to_owned()
            };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(body))?,
            )
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_request_body_is_read_once_across_all_five_layers() {
    let log = Log::default();
    let breakers = breakers();
    let client = ServiceBuilder::new()
        .degrade(DegradeConfig::new([]).unwrap())
        .response_cache(CacheConfig::new())
        .model_fallback(cascade(breakers.handle()))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry())
        .service(upstream(log.clone(), |_| 200));
    let polls = Arc::new(AtomicUsize::new(0));
    let response = client
        .oneshot(request(llm_body(PRIMARY), &polls, false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Three chunks and the end: four polls in all, whatever five layers did.
    assert_eq!(polls.load(Ordering::Relaxed), 4);
    assert_eq!(*log.lock().unwrap(), [PRIMARY]);
}

/// A classifier that counts what it is asked.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl Classify for Counting {
    fn classify(&self, observed: Observed<'_>) -> Outcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        DefaultClassifier::new().classify(observed)
    }
}

#[tokio::test(start_paused = true)]
async fn a_529_is_classified_once_per_attempt_and_its_body_read_once() {
    // Four layers, and the five: with the degrade layer outermost, the 529 is
    // answered with its canned answer, still classified once and read at most once.
    for with_degrade in [false, true] {
        let classified = Counting::default();
        let body_polls = Arc::new(AtomicUsize::new(0));
        let polls = body_polls.clone();
        let inner = service_fn(move |request: Request<Body>| {
            let polls = polls.clone();
            async move {
                drop(request);
                let error = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
                Ok::<_, BoxError>(Response::builder().status(529).body(Counted {
                    chunks: vec![Bytes::from_static(error.as_bytes())].into(),
                    polls,
                    fail: false,
                })?)
            }
        });
        let breakers = breakers();
        let client = ServiceBuilder::new()
            .option_layer(
                with_degrade
                    .then(|| brownout::degrade::DegradeLayer::new(DegradeConfig::new([]).unwrap())),
            )
            .response_cache(CacheConfig::new())
            .model_fallback(
                FallbackConfig::new([Target::new(PRIMARY)])
                    .unwrap()
                    .health(breakers.handle()),
            )
            .circuit_breaker(breakers)
            .retry_with_jitter(RetryConfig::new().max_attempts(1).no_budget())
            .service(ClassifyLayer::new(classified.clone()).layer(inner));
        let polls = Arc::new(AtomicUsize::new(0));
        let response = client
            .oneshot(request(llm_body(PRIMARY), &polls, false))
            .await
            .unwrap();
        assert_eq!(
            classified.0.load(Ordering::Relaxed),
            1,
            "one attempt, one classification (degrade: {with_degrade})"
        );
        let status = response.status();
        let degraded = response.headers().contains_key("x-brownout-degraded");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if with_degrade {
            assert_eq!(status, 200);
            assert!(degraded, "the canned answer");
            // Read once (to classify it) by the layer innermost, and by no one
            // after: one chunk and the end.
            assert_eq!(body_polls.load(Ordering::Relaxed), 2);
        } else {
            assert_eq!(status, 529);
            assert!(
                body.starts_with(br#"{"type":"error""#),
                "the caller gets every byte"
            );
            // One chunk and the end, read once.
            assert_eq!(body_polls.load(Ordering::Relaxed), 2);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_layer_takes_option_layer_and_one_client_type() {
    for on in 0..32u32 {
        let log = Log::default();
        let breakers = breakers();
        let handle = breakers.handle();
        let layer = |bit: u32| on & (1 << bit) != 0;
        let client = ServiceBuilder::new()
            // The caller's body becomes the one body type, so that each slot, on or
            // off, takes and gives the same types.
            .map_request(|request: Request<Counted>| request.map(Body::new))
            .option_layer(
                layer(0)
                    .then(|| brownout::degrade::DegradeLayer::new(DegradeConfig::new([]).unwrap())),
            )
            .option_layer(layer(1).then(|| brownout::cache::CacheLayer::new(CacheConfig::new())))
            .option_layer(
                layer(2).then(|| brownout::fallback::FallbackLayer::new(cascade(handle.clone()))),
            )
            .option_layer(layer(3).then(|| breakers.clone()))
            .option_layer(layer(4).then(|| brownout::retry::RetryLayer::new(retry())))
            .service(upstream(log.clone(), |_| 200));
        let polls = Arc::new(AtomicUsize::new(0));
        let response = client
            .oneshot(request(llm_body(PRIMARY), &polls, false))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "layers {on:05b}");
        assert_eq!(*log.lock().unwrap(), [PRIMARY], "layers {on:05b}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_callers_broken_upload_opens_no_breaker_and_moves_no_one_to_the_lighter_model() {
    let log = Log::default();
    let breakers = breakers();
    let handle = breakers.handle();
    let client = ServiceBuilder::new()
        .degrade(DegradeConfig::new([]).unwrap())
        .response_cache(CacheConfig::new())
        .model_fallback(cascade(handle.clone()))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry())
        .service(upstream(log.clone(), |_| 200));
    for _ in 0..12 {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut chunks = llm_body(PRIMARY);
        chunks.pop();
        let error = client
            .clone()
            .oneshot(request(chunks, &polls, true))
            .await
            .unwrap_err();
        assert!(find::<BrokenBody>(&*error).is_some(), "{error}");
    }
    assert!(
        log.lock().unwrap().is_empty(),
        "a truncated body is never sent"
    );
    let counted = handle.state(PRIMARY).map_or(0, |s| s.total_calls);
    assert_eq!(counted, 0);
    // Every other caller still gets the preferred model.
    let polls = Arc::new(AtomicUsize::new(0));
    let response = client
        .oneshot(request(llm_body(PRIMARY), &polls, false))
        .await
        .unwrap();
    assert_eq!(
        response.extensions().get::<ServedBy>().unwrap().model(),
        PRIMARY
    );
}

#[tokio::test(start_paused = true)]
async fn status_641_is_an_upstream_failure_and_falls_back() {
    let log = Log::default();
    let breakers = breakers();
    let client = ServiceBuilder::new()
        .model_fallback(cascade(breakers.handle()))
        .circuit_breaker(breakers)
        .service(upstream(log.clone(), |model| {
            if model == PRIMARY {
                641
            } else {
                200
            }
        }));
    let polls = Arc::new(AtomicUsize::new(0));
    let response = client
        .oneshot(request(llm_body(PRIMARY), &polls, false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.extensions().get::<ServedBy>().unwrap().model(),
        LIGHTER
    );
    assert_eq!(*log.lock().unwrap(), [PRIMARY, LIGHTER]);
}

#[tokio::test(start_paused = true)]
async fn a_body_naming_model_twice_is_refused_before_anything_is_sent() {
    let log = Log::default();
    let breakers = breakers();
    let client = ServiceBuilder::new()
        .degrade(DegradeConfig::new([]).unwrap())
        .model_fallback(cascade(breakers.handle()))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry())
        .service(upstream(log.clone(), |_| 200));
    let body = Bytes::from(format!(
        r#"{{"model":"{LIGHTER}","max_tokens":8,"messages":[],"model":"{PRIMARY}"}}"#
    ));
    let polls = Arc::new(AtomicUsize::new(0));
    let error = client
        .oneshot(request(vec![body], &polls, false))
        .await
        .unwrap_err();
    assert!(find::<InvalidRequest>(&*error).is_some(), "{error}");
    assert!(log.lock().unwrap().is_empty());
}

/// The whole stack over hyper-util's own client, named once as
/// `Client<HttpConnector, brownout::Body>`, against the simulator on loopback: the
/// caller's body type goes in, one body type comes out of every layer.
#[tokio::test]
async fn the_five_layers_run_over_a_hyper_util_client_of_brownout_body() {
    use hyper_util::{
        client::legacy::{connect::HttpConnector, Client},
        rt::TokioExecutor,
    };
    let server = brownout_sim::SimServer::bind(
        "127.0.0.1:0",
        brownout_sim::Sim::new(brownout_sim::Script::new().seed(1)),
    )
    .await
    .unwrap();
    let sim = server.sim().clone();
    let server = server.spawn().unwrap();
    let http: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let breakers = breakers();
    let client = ServiceBuilder::new()
        .degrade(DegradeConfig::new([]).unwrap())
        .response_cache(CacheConfig::new())
        .model_fallback(cascade(breakers.handle()))
        .circuit_breaker(breakers)
        .retry_with_jitter(retry())
        .service(http);
    for question in 0..3 {
        let polls = Arc::new(AtomicUsize::new(0));
        // A different question each time, in a fourth chunk of the message's text.
        let mut chunks = llm_body(PRIMARY);
        let last = chunks.pop().unwrap();
        chunks.push(Bytes::from(format!("Question {question}. ")));
        chunks.push(last);
        let mut request = request(chunks, &polls, false);
        *request.uri_mut() = format!("{}/v1/messages", server.url()).parse().unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "question {question}");
        assert_eq!(
            response
                .extensions()
                .get::<ServedBy>()
                .map(|s| s.model().to_owned()),
            Some(PRIMARY.to_owned())
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "message", "{json}");
        // Four chunks and the end: read once over a real connection too.
        assert_eq!(polls.load(Ordering::Relaxed), 5);
    }
    assert_eq!(sim.stats().received, 3, "each question sent once");
}
