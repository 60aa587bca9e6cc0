//! The HTTPS client against the simulator served over TLS on loopback, with
//! certificates made when the test runs.

#![cfg(feature = "client")]

use std::time::Duration;

use brownout::{
    classify::{classify_error, DefaultClassifier},
    client::{ConnectError, HttpsClient, HttpsConfig, Roots},
    error::{find, InvalidRequest},
    OutcomeKind,
};
use brownout_sim::{ModelScript, Script, Sim, SimServer, SimServerHandle, SimTls};
use http::{Request, Version};
use http_body_util::BodyExt;
use tower::ServiceExt;

const MODEL: &str = "claude-haiku-4-5";

fn script() -> Script {
    Script::new().seed(3).model(MODEL, ModelScript::new())
}

async fn sim(tls: Option<SimTls>) -> SimServerHandle {
    let server = SimServer::bind("127.0.0.1:0", Sim::new(script()))
        .await
        .unwrap();
    match tls {
        Some(tls) => server.tls(tls),
        None => server,
    }
    .spawn()
    .unwrap()
}

fn ask(base: &str) -> Request<brownout::Body> {
    Request::post(format!("{base}/v1/messages"))
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-test")
        .body(brownout::Body::from(format!(
            r#"{{"model":"{MODEL}","max_tokens":16,"messages":[{{"role":"user","content":"Hi"}}]}}"#
        )))
        .unwrap()
}

fn trusting(tls: &SimTls) -> HttpsConfig {
    HttpsConfig::new()
        .roots(Roots::None)
        .ca_pem(tls.ca_pem().unwrap())
}

async fn refused(client: HttpsClient, base: &str) -> brownout::BoxError {
    client.oneshot(ask(base)).await.unwrap_err()
}

#[tokio::test]
async fn https_to_a_trusted_ca_answers_over_http2() {
    let tls = SimTls::self_signed().unwrap();
    let client = trusting(&tls).build().unwrap();
    let server = sim(Some(tls)).await;
    assert!(server.url().starts_with("https://127.0.0.1:"));
    for _ in 0..3 {
        let response = client.clone().oneshot(ask(&server.url())).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_2, "h2 negotiated by ALPN");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["model"], MODEL);
    }
}

#[tokio::test]
async fn http1_when_either_side_does_not_offer_http2() {
    let tls = SimTls::self_signed().unwrap();
    let client = trusting(&tls).http2(false).build().unwrap();
    let server = sim(Some(tls.clone())).await;
    let response = client.oneshot(ask(&server.url())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);

    let client = trusting(&tls).build().unwrap();
    let server = sim(Some(tls.http2(false))).await;
    let response = client.oneshot(ask(&server.url())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);
}

#[tokio::test]
async fn a_ca_file_is_trusted() {
    let tls = SimTls::self_signed().unwrap();
    let dir = std::env::temp_dir().join(format!("brownout-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    tls.write_ca(&ca_file).unwrap();
    // The platform's roots and the added CA together.
    let client = HttpsConfig::new().ca_file(&ca_file).build().unwrap();
    let server = sim(Some(tls)).await;
    let response = client.oneshot(ask(&server.url())).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_the_reason() {
    let trusted = SimTls::self_signed().unwrap();
    let other = SimTls::self_signed().unwrap();
    let server = sim(Some(other)).await;
    let error = refused(trusted_client(&trusted), &server.url()).await;
    assert_eq!(
        error.to_string(),
        "tls handshake with 127.0.0.1 failed: invalid peer certificate: UnknownIssuer"
    );
    let connect = error.downcast_ref::<ConnectError>().unwrap();
    assert!(connect.is_tls() && connect.is_certificate());
    let outcome = classify_error(&DefaultClassifier::new(), &*error);
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
}

fn trusted_client(tls: &SimTls) -> HttpsClient {
    trusting(tls).build().unwrap()
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let tls = SimTls::self_signed_for(&["api.example.com"]).unwrap();
    let client = trusted_client(&tls);
    let server = sim(Some(tls)).await;
    let error = refused(client, &server.url()).await;
    let connect = error.downcast_ref::<ConnectError>().unwrap();
    assert!(connect.is_certificate(), "{error}");
    assert!(
        error.to_string().contains("certificate not valid for name"),
        "{error}"
    );
}

#[tokio::test]
async fn a_plain_port_behind_https_fails_clearly() {
    let tls = SimTls::self_signed().unwrap();
    let server = sim(None).await;
    let base = server.url().replace("http://", "https://");
    let error = refused(trusted_client(&tls), &base).await;
    let text = error.to_string();
    assert!(
        text.starts_with("tls handshake with 127.0.0.1 failed: "),
        "{text}"
    );
    assert!(text.contains("serving plain http"), "{text}");
    let connect = error.downcast_ref::<ConnectError>().unwrap();
    assert!(connect.is_tls() && !connect.is_certificate());
    let outcome = classify_error(&DefaultClassifier::new(), &*error);
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
}

#[tokio::test]
async fn plain_http_still_works() {
    let server = sim(None).await;
    let client = HttpsConfig::new().roots(Roots::Webpki).build().unwrap();
    let response = client.oneshot(ask(&server.url())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);
}

#[tokio::test]
async fn a_refused_connection_names_the_address() {
    // A port bound and closed again: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = HttpsConfig::new().roots(Roots::Webpki).build().unwrap();
    let error = refused(client, &format!("https://{addr}")).await;
    assert!(
        error
            .to_string()
            .starts_with(&format!("connect to {addr} failed: ")),
        "{error}"
    );
    assert!(!error.downcast_ref::<ConnectError>().unwrap().is_tls());
    let outcome = classify_error(&DefaultClassifier::new(), &*error);
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_never_ends_times_out_as_a_connection_failure() {
    // A server that accepts and never answers the ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let client = HttpsConfig::new()
        .roots(Roots::Webpki)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let error = refused(client, &format!("https://{addr}")).await;
    assert_eq!(
        error.to_string(),
        format!("connect to {addr} timed out after 3s")
    );
    assert!(error.downcast_ref::<ConnectError>().unwrap().is_timeout());
    let outcome = classify_error(&DefaultClassifier::new(), &*error);
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
}

#[tokio::test]
async fn a_relative_uri_is_the_callers_error() {
    let client = HttpsConfig::new().roots(Roots::Webpki).build().unwrap();
    let request = Request::post("/v1/messages")
        .body(brownout::Body::empty())
        .unwrap();
    let error = client.oneshot(request).await.unwrap_err();
    assert!(find::<InvalidRequest>(&*error).is_some(), "{error}");
}

#[test]
fn nonsense_settings_are_refused() {
    let e = HttpsConfig::new()
        .ca_file("/nonexistent/ca.pem")
        .build()
        .unwrap_err();
    assert_eq!(e.key(), "ca_file");
    assert!(e.reason().contains("/nonexistent/ca.pem"), "{e}");
    let e = HttpsConfig::new()
        .roots(Roots::None)
        .ca_pem("not a pem")
        .build()
        .unwrap_err();
    assert_eq!(e.key(), "ca_pem");
    let e = HttpsConfig::new().roots(Roots::None).build().unwrap_err();
    assert_eq!(e.key(), "roots");
    let e = HttpsConfig::new()
        .connect_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.key(), "connect_timeout");
}

#[tokio::test]
async fn a_connection_closed_mid_request_names_the_host_and_no_secret() {
    use tokio::io::AsyncReadExt;
    // A server that reads the request head and hangs up without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        }
    });
    let client = HttpsConfig::new().roots(Roots::Webpki).build().unwrap();
    let error = refused(client, &format!("http://user:hunter2@{addr}")).await;
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("request to {addr} failed: ")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    let outcome = classify_error(&DefaultClassifier::new(), &*error);
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
}
