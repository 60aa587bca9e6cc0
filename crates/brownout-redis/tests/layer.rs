//! The breaker layer itself over two replicas' Redis stores: what a caller sees.
//!
//! Real time, for the reason given in `tests/shared.rs`: Redis answers on its own
//! clock. Skips, saying why, when no Redis answers on 127.0.0.1:6379 (fails under `CI`).

use std::time::Duration;

use brownout_breaker::{BreakerConfig, CircuitBreaker, CircuitOpen, FailurePolicy, OpenDuration};
use brownout_core::{
    testing::{Step, Upstream},
    BoxError,
};
use brownout_redis::{RedisBreakerStore, RedisConfig};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::time::{sleep, timeout, Instant};
use tower::ServiceExt;

const M: &str = "claude-sonnet-4-5";

fn request(model: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"model":"{model}","max_tokens":16,"messages":[]}}"#);
    Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "sk-ant-secret-never-in-redis")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn send(client: &CircuitBreaker<Upstream>) -> Result<u16, BoxError> {
    let response = client.clone().oneshot(request(M)).await?;
    Ok(response.status().as_u16())
}

async fn replica(dep: &str) -> (CircuitBreaker<Upstream>, Upstream, RedisBreakerStore) {
    let config = BreakerConfig::new()
        .policy(FailurePolicy::consecutive(3).unwrap())
        .open_duration(OpenDuration::Fixed(Duration::from_secs(5)));
    let redis = RedisConfig::new("redis://127.0.0.1:6379", dep).unwrap();
    let store = RedisBreakerStore::new(redis, &config).unwrap();
    let upstream = Upstream::new().body_with(|_, _| "{}".into());
    let service = CircuitBreaker::new(upstream.clone(), config.store(store.clone()));
    let start = Instant::now();
    while !store.is_shared() && start.elapsed() < Duration::from_secs(2) {
        sleep(Duration::from_millis(5)).await;
    }
    assert!(store.is_shared(), "the store never reached Redis");
    (service, upstream, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_opened_by_replica_a_is_refused_by_replica_b() {
    let up = timeout(
        Duration::from_millis(200),
        tokio::net::TcpStream::connect("127.0.0.1:6379"),
    )
    .await;
    if !matches!(up, Ok(Ok(_))) {
        assert!(
            std::env::var_os("CI").is_none(),
            "no Redis on 127.0.0.1:6379 (CI must start one)"
        );
        println!("skipping: no Redis answers on 127.0.0.1:6379");
        return;
    }
    let dep = format!("layer-{:016x}", fastrand::u64(..));
    let (a, a_upstream, _a_store) = replica(&dep).await;
    let (b, b_upstream, _b_store) = replica(&dep).await;

    assert_eq!(send(&b).await.unwrap(), 200);
    a_upstream.script(M, vec![Step::Status(529); 3]);
    for _ in 0..3 {
        assert_eq!(send(&a).await.unwrap(), 529);
    }
    let start = Instant::now();
    let refused = loop {
        match send(&b).await {
            Err(error) => break error,
            Ok(_) if start.elapsed() < Duration::from_secs(1) => {
                sleep(Duration::from_millis(5)).await;
            }
            Ok(_) => panic!("replica B still sends {M} 1 s after A opened it"),
        }
    };
    let open = refused
        .downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen refusal");
    assert!(open
        .retry_after()
        .is_some_and(|d| d > Duration::from_secs(3)));
    // B's upstream saw no call once the refusal came.
    let sent = b_upstream.calls();
    assert!(send(&b).await.is_err());
    assert_eq!(b_upstream.calls(), sent);

    // In Redis: the namespaced key, and no credential anywhere.
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("brownout:{dep}:*"))
        .query(&mut conn)
        .unwrap();
    assert!(
        keys.contains(&format!("brownout:{dep}:breaker:{M}")),
        "{keys:?}"
    );
    for key in &keys {
        assert!(!key.contains("secret"), "{key}");
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
        if kind == "string" {
            let value: String = redis::cmd("GET").arg(key).query(&mut conn).unwrap();
            assert!(!value.contains("secret"), "{key} = {value}");
        }
    }
}
