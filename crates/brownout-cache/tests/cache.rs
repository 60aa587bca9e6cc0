//! Behaviour of the cache layer, in paused tokio time.

use std::{sync::Arc, time::Duration};

use brownout_cache::{Cache, CacheConfig, CacheEvent, CacheStatus, Mode};
use brownout_core::{
    error::{BrokenBody, InvalidRequest},
    event::Event,
    testing::{Step, Upload, UploadEnd, Upstream},
    Body, BoxError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

const QUOTA: &str = r#"{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

/// The scripted upstream of these tests: it answers `answer-N` for its N-th call.
fn answering() -> Upstream {
    Upstream::new().body_with(|n, _| format!("answer-{n}"))
}

/// Sets the status `upstream` answers from now on: `0` is a timeout error, `429` a
/// quota error.
fn set(upstream: &Upstream, status: u16) {
    upstream.otherwise(match status {
        0 => Step::Fail(std::io::ErrorKind::TimedOut),
        429 => Step::Answer(429, vec![], QUOTA),
        _ => Step::Status(status),
    });
}

fn ask(key: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

const Q: &str = r#"{"model":"claude-haiku-4-5","max_tokens":64,"temperature":0.2,"messages":[{"role":"user","content":"Capital of France?"}]}"#;

type Reply = Result<Response<Body>, BoxError>;

async fn send(cache: &Cache<Upstream>, key: &str, body: &str) -> Reply {
    cache.clone().oneshot(ask(key, body)).await
}

async fn text(reply: Reply) -> (u16, Option<CacheStatus>, String) {
    let response = reply.unwrap();
    let status = response.status().as_u16();
    let cached = response.extensions().get::<CacheStatus>().copied();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cached, String::from_utf8(body.to_vec()).unwrap())
}

fn fresh_hit(ttl: u64) -> CacheConfig {
    CacheConfig::new()
        .mode(Mode::FreshHit)
        .ttl(Duration::from_secs(ttl))
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_stands_in_for_overloads_and_outages_only() {
    let upstream = answering();
    let cache = Cache::new(upstream.clone(), CacheConfig::new());
    assert_eq!(
        text(send(&cache, "k", Q).await).await,
        (200, None, "answer-0".into())
    );
    // Always live while the upstream answers.
    assert_eq!(
        text(send(&cache, "k", Q).await).await,
        (200, None, "answer-1".into())
    );

    for status in [529, 503, 500, 502, 0 /* timeout error */] {
        set(&upstream, status);
        let (code, cached, body) = text(send(&cache, "k", Q).await).await;
        assert_eq!(
            (code, cached, body.as_str()),
            (200, Some(CacheStatus::Stale), "answer-1"),
            "{status}"
        );
    }
    for status in [400, 401, 403, 404, 413, 429] {
        set(&upstream, status);
        let (code, cached, _) = text(send(&cache, "k", Q).await).await;
        assert_eq!(
            (code, cached),
            (status, None),
            "a client error goes back as it is"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn stale_answers_are_marked() {
    let upstream = answering();
    let (events, listener) = recorder();
    let cache = Cache::new(upstream.clone(), CacheConfig::new().listener(listener));
    send(&cache, "k", Q).await.unwrap();
    tokio::time::advance(Duration::from_secs(42)).await;
    set(&upstream, 529);
    let response = send(&cache, "k", Q).await.unwrap();
    assert_eq!(response.headers()["x-brownout-cache"], "stale");
    assert_eq!(response.headers()["age"], "42");
    let events = events.lock().unwrap();
    assert!(matches!(
        events[0].data::<CacheEvent>(),
        Some(CacheEvent::ServedFromCache { stale: true, age, outcome: Some(o) })
            if *age == Duration::from_secs(42) && o.status().map(|s| s.as_u16()) == Some(529)
    ));
    assert!(
        !format!("{events:?}").contains("sk-"),
        "no credential in events"
    );
}

fn recorder() -> (
    Arc<std::sync::Mutex<Vec<Event>>>,
    impl Fn(&Event) + Send + Sync + 'static,
) {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |e: &Event| {
        sink.lock().unwrap().push(e.clone())
    })
}

#[tokio::test(start_paused = true)]
async fn one_caller_never_receives_another_callers_answer() {
    let upstream = answering();
    let cache = Cache::new(upstream.clone(), fresh_hit(60));
    assert_eq!(text(send(&cache, "sk-a", Q).await).await.2, "answer-0");
    assert_eq!(
        text(send(&cache, "sk-b", Q).await).await.2,
        "answer-1",
        "no cross hit"
    );
    assert_eq!(
        text(send(&cache, "sk-a", Q).await).await,
        (200, Some(CacheStatus::Hit), "answer-0".into())
    );

    // Nor a stale one.
    set(&upstream, 529);
    let (status, cached, _) = text(send(&cache, "sk-c", Q).await).await;
    assert_eq!((status, cached), (529, None));

    // Unless partitioning is turned off, explicitly.
    let upstream = answering();
    let shared = Cache::new(upstream.clone(), fresh_hit(60).no_credential_partitioning());
    send(&shared, "sk-a", Q).await.unwrap();
    assert_eq!(
        text(send(&shared, "sk-b", Q).await).await.1,
        Some(CacheStatus::Hit)
    );
}

#[tokio::test(start_paused = true)]
async fn keys_ignore_member_order_and_whitespace_but_not_values() {
    let upstream = answering();
    let cache = Cache::new(upstream.clone(), fresh_hit(60));
    send(&cache, "k", Q).await.unwrap();
    let reordered = r#"{ "messages": [ {"content": "Capital of France?", "role": "user"} ],
        "temperature": 0.2, "max_tokens": 64, "model": "claude-haiku-4-5" }"#;
    assert_eq!(
        text(send(&cache, "k", reordered).await).await.1,
        Some(CacheStatus::Hit)
    );
    let warmer = Q.replace("0.2", "0.9");
    assert_eq!(text(send(&cache, "k", &warmer).await).await.1, None);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn ttl_and_stale_window_expire() {
    let upstream = answering();
    let config = fresh_hit(60).stale_window(Duration::from_secs(600));
    let cache = Cache::new(upstream.clone(), config);
    send(&cache, "k", Q).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        text(send(&cache, "k", Q).await).await.1,
        Some(CacheStatus::Hit)
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    set(&upstream, 503);
    // Past the TTL: live, and the live failure is covered by the stale entry.
    let (status, cached, body) = text(send(&cache, "k", Q).await).await;
    assert_eq!(
        (status, cached, body.as_str()),
        (200, Some(CacheStatus::Stale), "answer-0")
    );
    assert_eq!(upstream.calls(), 2);
    // Past TTL + stale window: nothing left to serve.
    tokio::time::advance(Duration::from_secs(600)).await;
    let (status, cached, _) = text(send(&cache, "k", Q).await).await;
    assert_eq!((status, cached), (503, None));
}

#[tokio::test(start_paused = true)]
async fn identical_concurrent_misses_make_one_upstream_call() {
    let upstream = answering();
    upstream.otherwise(Step::Gate(200));
    let cache = Cache::new(upstream.clone(), fresh_hit(60));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { text(send(&cache, "k", Q).await).await })
        })
        .collect();
    while upstream.calls() < 1 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(upstream.calls(), 1, "the others wait for the leader");
    upstream.release(100);
    let mut hits = 0;
    for task in tasks {
        let (status, cached, body) = task.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "answer-0"));
        hits += usize::from(cached == Some(CacheStatus::Hit));
    }
    assert_eq!(upstream.calls(), 1);
    assert_eq!(hits, 7);
}

#[tokio::test(start_paused = true)]
async fn entries_are_bounded_by_count_and_bytes() {
    let upstream = answering();
    let cache = Cache::new(
        upstream.clone(),
        fresh_hit(60).max_entries(4).max_bytes(1 << 20),
    );
    for i in 0..20 {
        send(&cache, "k", &Q.replace("France", &format!("country {i}")))
            .await
            .unwrap();
    }
    let (entries, _) = cache.usage().await;
    assert!(entries <= 4, "{entries}");

    let big = Upstream::new().body_with(|_, _| "x".repeat(10_000));
    let cache = Cache::new(
        big.clone(),
        fresh_hit(60).max_bytes(50_000).max_entries(1000),
    );
    for i in 0..20 {
        send(&cache, "k", &Q.replace("France", &format!("country {i}")))
            .await
            .unwrap();
    }
    let (entries, bytes) = cache.usage().await;
    assert!(bytes <= 50_000, "{bytes}");
    assert!(entries <= 5, "{entries}");
}

#[tokio::test(start_paused = true)]
async fn answers_over_the_entry_limit_pass_whole_and_are_not_stored() {
    let upstream = Upstream::new().body_with(|_, _| "x".repeat(5000));
    let cache = Cache::new(upstream.clone(), fresh_hit(60).max_entry_bytes(4096));
    let (_, _, body) = text(send(&cache, "k", Q).await).await;
    assert_eq!(body.len(), 5000);
    let (_, cached, _) = text(send(&cache, "k", Q).await).await;
    assert_eq!(cached, None);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn streams_pass_through_and_are_never_stored() {
    let upstream = answering().header("content-type", "text/event-stream");
    let cache = Cache::new(upstream.clone(), fresh_hit(60));
    let streamed = Q.replace(r#""max_tokens":64"#, r#""max_tokens":64,"stream":true"#);
    send(&cache, "k", &streamed).await.unwrap();
    send(&cache, "k", &streamed).await.unwrap();
    assert_eq!(upstream.calls(), 2);
    // An event-stream answer to a plain request is not stored either.
    send(&cache, "k", Q).await.unwrap();
    assert_eq!(text(send(&cache, "k", Q).await).await.1, None);
    assert_eq!(upstream.calls(), 4);
}

/// `Q`, cut after most of it.
fn cut(key: &str) -> Request<Upload> {
    let (head, tail) = Q.as_bytes().split_at(Q.len() - 10);
    let _ = tail;
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-length", Q.len())
        .body(Upload::new(
            [
                Bytes::copy_from_slice(&head[..20]),
                Bytes::copy_from_slice(&head[20..]),
            ],
            UploadEnd::Break,
        ))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_broken_body_gets_its_error_even_with_an_entry_to_serve() {
    for mode in [Mode::StaleIfError, Mode::FreshHit] {
        let upstream = answering();
        let (events, listener) = recorder();
        let cache = Cache::new(
            upstream.clone(),
            CacheConfig::new()
                .mode(mode)
                .ttl(Duration::from_secs(60))
                .listener(listener),
        );
        send(&cache, "k", Q).await.unwrap();
        assert_eq!(cache.usage().await.0, 1);
        // The upstream is down, and an entry for the same key is there (fresh, even).
        set(&upstream, 529);
        let error = cache.clone().oneshot(cut("k")).await.unwrap_err();
        assert!(
            error.downcast_ref::<BrokenBody>().is_some(),
            "{mode:?}: {error}"
        );
        assert_eq!(upstream.calls(), 1, "{mode:?}: the upstream is not called");
        assert!(events.lock().unwrap().is_empty(), "{mode:?}: not served");
        assert_eq!(cache.usage().await.0, 1, "{mode:?}: nothing stored");
    }
    // Nor is anything stored for a broken body when the upstream is up.
    let upstream = answering();
    let cache = Cache::new(upstream.clone(), fresh_hit(60));
    assert!(cache.clone().oneshot(cut("k")).await.is_err());
    assert_eq!(cache.usage().await.0, 0);
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_naming_two_models_is_refused_and_never_served() {
    let upstream = answering();
    let cache = Cache::new(upstream.clone(), fresh_hit(60));
    let twice = r#"{"model":"claude-haiku-4-5","messages":[],"model":"claude-opus-4-1"}"#;
    let error = send(&cache, "k", twice).await.unwrap_err();
    assert!(error.downcast_ref::<InvalidRequest>().is_some(), "{error}");
    assert_eq!(upstream.calls(), 0);
    assert_eq!(cache.usage().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn max_entries_is_an_exact_bound() {
    // Small entries, many distinct keys: the count, not the bytes, is what binds.
    for (max_entries, max_bytes) in [
        (10, None),
        // The shape of the default (10,000 entries in 64 MiB), where a per-entry
        // weight rounded down let one entry more in.
        (100, Some(8_090)),
    ] {
        let upstream = answering();
        let mut config = fresh_hit(60).max_entries(max_entries);
        if let Some(bytes) = max_bytes {
            config = config.max_bytes(bytes);
        }
        let cache = Cache::new(upstream.clone(), config);
        for i in 0..1000 {
            send(&cache, "k", &Q.replace("France", &format!("country {i}")))
                .await
                .unwrap();
        }
        let (entries, bytes) = cache.usage().await;
        assert!(entries <= max_entries, "{entries} > {max_entries}");
        assert!(entries > 0);
        if let Some(max) = max_bytes {
            assert!(bytes <= max, "{bytes} > {max}");
        }
    }
}

/// A store of the user's: the layer's own store, counting what the layer asks of it.
#[derive(Debug)]
struct Counting {
    inner: brownout_cache::LocalCacheStore,
    gets: Arc<std::sync::atomic::AtomicUsize>,
    inserts: Arc<std::sync::atomic::AtomicUsize>,
}

impl brownout_cache::CacheStore for Counting {
    fn get<'a>(
        &'a self,
        key: &'a brownout_cache::CacheKey,
    ) -> brownout_cache::StoreFuture<'a, Option<Arc<brownout_cache::CachedResponse>>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(self.inner.get(key))
    }

    fn insert(
        &self,
        key: brownout_cache::CacheKey,
        entry: brownout_cache::CachedResponse,
    ) -> brownout_cache::StoreFuture<'_, ()> {
        self.inserts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(self.inner.insert(key, entry))
    }

    fn usage(&self) -> brownout_cache::StoreFuture<'_, (u64, u64)> {
        Box::pin(self.inner.usage())
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_of_ones_own_holds_the_entries() {
    let config = CacheConfig::new().ttl(Duration::from_secs(60));
    let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inserts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = Counting {
        inner: brownout_cache::LocalCacheStore::new(&config),
        gets: gets.clone(),
        inserts: inserts.clone(),
    };
    let upstream = answering();
    let cache = Cache::new(upstream.clone(), config.store(store));
    assert_eq!(
        text(send(&cache, "sk-a", Q).await).await,
        (200, None, "answer-0".into())
    );
    assert_eq!(inserts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A success asks nothing of the store in stale-if-error mode.
    assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 0);
    set(&upstream, 529);
    let (status, cached, body) = text(send(&cache, "sk-a", Q).await).await;
    assert_eq!(
        (status, cached, body.as_str()),
        (200, Some(CacheStatus::Stale), "answer-0")
    );
    assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The partition is in the key the store is given: another caller finds nothing.
    assert_eq!(text(send(&cache, "sk-b", Q).await).await.0, 529);
    assert_eq!(cache.usage().await.0, 1, "usage is the store's");
}
