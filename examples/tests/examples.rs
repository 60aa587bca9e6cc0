//! The examples' code, run as tests so that CI keeps them working.

use std::time::Duration;

use brownout::{
    classify::{Classify, DefaultClassifier, Observed, OutcomeKind},
    reqwest_bridge::ReqwestService,
    Body,
};
use brownout_sim::{Sim, SimServer, SimServerHandle, SimTls};
use bytes::Bytes;
use examples::{
    axum_app, hyper_client, middleware_client, outage_script, reqwest_client, Answer, LIGHTER,
};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};

fn all_from_the_lighter_model(answers: &[Answer]) {
    assert!(!answers.is_empty());
    for answer in answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.model.as_deref(), Some(LIGHTER));
    }
}

/// The outage script served over TLS on loopback; the simulator (for its stats) and
/// the CA that signed its certificate.
async fn tls_outage() -> (SimServerHandle, Sim, String) {
    let tls = SimTls::self_signed().unwrap();
    let ca = tls.ca_pem().unwrap().to_owned();
    let server = SimServer::bind("127.0.0.1:0", Sim::new(outage_script()))
        .await
        .unwrap()
        .tls(tls);
    let sim = server.sim().clone();
    (server.spawn().unwrap(), sim, ca)
}

#[tokio::test]
async fn the_hyper_example_answers_through_the_outage_over_tls() {
    let (server, sim, ca) = tls_outage().await;
    assert!(server.url().starts_with("https://"));
    let answers = hyper_client::ask(&server.url(), Some(&ca), 4)
        .await
        .unwrap();
    all_from_the_lighter_model(&answers);
    // Two calls' worth of retried 529s open sonnet's breaker; then it is skipped.
    let stats = sim.stats();
    assert_eq!(
        stats.by_model.get("claude-sonnet-4-5"),
        Some(&6),
        "{stats:?}"
    );
}

#[tokio::test]
async fn the_hyper_example_refuses_a_simulator_it_does_not_trust() {
    let (server, sim, _ca) = tls_outage().await;
    let error = hyper_client::ask(&server.url(), None, 1).await.unwrap_err();
    // The cascade says how each target failed (its outcome; the TLS reason itself is
    // in the client's error, which the fallback layer does not keep).
    assert!(error.to_string().contains("connection_failed"), "{error}");
    let view = brownout::Error::of(&*error);
    assert!(
        matches!(view.kind(), brownout::ErrorKind::AllTargetsFailed(_)),
        "{view:?}"
    );
    assert_eq!(sim.stats().by_model.values().sum::<u64>(), 0);
}

#[tokio::test]
async fn the_reqwest_middleware_example_answers_through_the_outage_over_tls() {
    let (server, sim, ca) = tls_outage().await;
    let answers = middleware_client::ask(&server.url(), Some(&ca), 4)
        .await
        .unwrap();
    all_from_the_lighter_model(&answers);
    let stats = sim.stats();
    assert_eq!(
        stats.by_model.get("claude-sonnet-4-5"),
        Some(&6),
        "retries go down the middleware chain once per attempt: {stats:?}"
    );
}

#[tokio::test]
async fn the_reqwest_example_answers_through_the_outage() {
    let server = SimServer::bind("127.0.0.1:0", Sim::new(outage_script()))
        .await
        .unwrap()
        .spawn()
        .unwrap();
    let answers = reqwest_client::ask(&server.url(), 4).await.unwrap();
    all_from_the_lighter_model(&answers);
}

#[tokio::test]
async fn the_axum_example_answers_503_with_retry_after_when_the_circuit_is_open() {
    let (server, _sim, ca) = tls_outage().await;
    let state = axum_app::AppState::new(&server.url(), Some(&ca)).unwrap();
    let handle = state.breakers.clone();
    let mut app = axum_app::app(state);
    let ask = || {
        axum::http::Request::post("/ask")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"question":"Hi?"}"#))
            .unwrap()
    };
    for _ in 0..2 {
        let response = app.call(ask()).await.unwrap();
        assert_eq!(
            response.status(),
            529,
            "the provider's own answer, after retries"
        );
    }
    let response = app.call(ask()).await.unwrap();
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&retry_after), "{retry_after}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "overloaded_error");
    assert!(!handle.snapshots().is_empty());
}

/// A loopback server that records the one request it gets and answers 200.
async fn recorder() -> (
    String,
    tokio::sync::oneshot::Receiver<(http::request::Parts, Bytes)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let tx = tx.lock().unwrap().take();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                if let Some(tx) = tx {
                    let _ = tx.send((parts, body));
                }
                "ok"
            }
        });
        axum::serve(listener, app).await.unwrap();
    });
    (url, rx)
}

#[tokio::test]
async fn the_reqwest_bridge_sends_requests_byte_for_byte() {
    let (url, seen) = recorder().await;
    let body = Bytes::from_static(b"{\"model\":\"m\",  \"x\": [1,2,3]}\n");
    let request = http::Request::put(format!("{url}/v1/things?a=1&b=%20"))
        .header("x-api-key", "sk-test")
        .header("x-custom", "one")
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    let response = ReqwestService::new(reqwest::Client::new())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    let (parts, received) = seen.await.unwrap();
    assert_eq!(parts.method, http::Method::PUT);
    assert_eq!(
        parts.uri.path_and_query().unwrap().as_str(),
        "/v1/things?a=1&b=%20"
    );
    assert_eq!(parts.headers["x-api-key"], "sk-test");
    assert_eq!(parts.headers["x-custom"], "one");
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(received, body);
}

#[tokio::test]
async fn reqwest_timeouts_and_refused_connections_keep_their_kind() {
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut service = ReqwestService::new(client);
    let error = service
        .call(http::Request::get(hung).body(Body::empty()).unwrap())
        .await
        .unwrap_err();
    let outcome = DefaultClassifier::new().classify(Observed::Error(error.as_ref()));
    assert_eq!(outcome.kind(), OutcomeKind::Timeout, "{error}");

    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let error = service
        .call(http::Request::get(refused).body(Body::empty()).unwrap())
        .await
        .unwrap_err();
    let reqwest_error = error
        .downcast_ref::<reqwest::Error>()
        .expect("the reqwest error");
    assert!(reqwest_error.is_connect());
    let outcome = DefaultClassifier::new().classify(Observed::Error(error.as_ref()));
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
}

#[tokio::test]
async fn the_middleware_hands_back_brownouts_errors_readably() {
    use brownout::{reqwest_middleware::Brownout, ServiceBuilderExt};
    let (server, _sim, ca) = tls_outage().await;
    let reqwest = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let layers = tower::ServiceBuilder::new()
        .circuit_breaker(examples::breakers())
        .retry_with_jitter(examples::retry());
    let client = reqwest_middleware::ClientBuilder::new(reqwest)
        .with(Brownout::new(layers.into_inner()))
        .build();
    let send = || {
        client
            .post(format!("{}/v1/messages", server.url()))
            .header("content-type", "application/json")
            .body(examples::chat_body(examples::PRIMARY, "Hi?"))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(send().await.unwrap().status(), 529);
    }
    let error = send().await.unwrap_err();
    assert!(matches!(error, reqwest_middleware::Error::Middleware(_)));
    let view = brownout::Error::of(&error);
    assert!(
        matches!(view.kind(), brownout::ErrorKind::CircuitOpen { key } if key == examples::PRIMARY),
        "{view:?}"
    );
    assert!(view.retry_after().is_some());
    assert_eq!(view.to_response().status(), 503);
}
