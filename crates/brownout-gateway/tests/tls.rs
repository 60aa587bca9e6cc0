//! The gateway in front of a TLS upstream (brownout-sim serving TLS on loopback, with
//! a CA made when the test runs): `https://` base URLs, `ca_file`, `http2`, and
//! connection failures that say why.

mod common;

use std::path::PathBuf;

use brownout_gateway::{Config, Gateway};
use brownout_sim::{ModelScript, Script, Sim, SimServer, SimServerHandle, SimTls};
use common::{anthropic, client, json};
use tokio::net::TcpListener;

const MODEL: &str = "claude-haiku-4-5";

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brownout-gw-tls-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(url: &str, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
seed = 5

[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "{url}"
pass_through_key = true
{extra}

[routes."/v1/messages"]
provider = "anthropic"

[retry]
max_attempts = 2
backoff = {{ base = "10ms", cap = "20ms" }}

# No canned answer: the tests look at the failure itself.
[degrade]
enabled = false
"#
    )
}

async fn upstream(tls: Option<SimTls>) -> SimServerHandle {
    let server = SimServer::bind(
        "127.0.0.1:0",
        Sim::new(Script::new().seed(1).model(MODEL, ModelScript::new())),
    )
    .await
    .unwrap();
    match tls {
        Some(tls) => server.tls(tls),
        None => server,
    }
    .spawn()
    .unwrap()
}

/// A gateway for `config`; its URL for `/v1/messages`.
async fn gateway(config: &Config) -> String {
    let listener = TcpListener::bind(config.listen()).await.unwrap();
    let url = format!("http://{}/v1/messages", listener.local_addr().unwrap());
    tokio::spawn(Gateway::new(config).serve(listener, std::future::pending()));
    url
}

fn ca_file(dir: &std::path::Path, tls: &SimTls) -> String {
    let path = dir.join("ca.pem");
    tls.write_ca(&path).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn an_https_upstream_with_its_ca_file_answers() {
    let dir = scratch("trusted");
    let tls = SimTls::self_signed().unwrap();
    let ca = ca_file(&dir, &tls);
    let sim = upstream(Some(tls)).await;
    for extra in [
        format!("ca_file = {ca:?}"),
        format!("ca_file = {ca:?}\nhttp2 = false"),
    ] {
        let config = Config::from_toml_str(&config(&sim.url(), &extra)).unwrap();
        assert!(config.providers()[0].ca_file().is_some());
        let url = gateway(&config).await;
        let response = client()
            .request(anthropic(&url, MODEL, "Hello", false))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{extra}");
        assert_eq!(json(response).await["model"], MODEL);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_502_that_says_why() {
    let dir = scratch("untrusted");
    let trusted = SimTls::self_signed().unwrap();
    let ca = ca_file(&dir, &trusted);
    let sim = upstream(Some(SimTls::self_signed().unwrap())).await;
    let config = Config::from_toml_str(&config(&sim.url(), &format!("ca_file = {ca:?}"))).unwrap();
    let url = gateway(&config).await;
    let response = client()
        .request(anthropic(&url, MODEL, "Hello", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = json(response).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "tls handshake with 127.0.0.1 failed: invalid peer certificate: UnknownIssuer"
        ),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn behind_a_cascade_the_502_still_says_why_each_target_failed() {
    let dir = scratch("cascade");
    let trusted = SimTls::self_signed().unwrap();
    let ca = ca_file(&dir, &trusted);
    let sim = upstream(Some(SimTls::self_signed().unwrap())).await;
    let text = config(&sim.url(), &format!("ca_file = {ca:?}")).replace(
        "[routes.\"/v1/messages\"]\nprovider = \"anthropic\"\n",
        "[routes.\"/v1/messages\"]\nprovider = \"anthropic\"\ncascade = [{ model = \"claude-sonnet-4-5\" }, { model = \"claude-haiku-4-5\" }]\n",
    );
    assert!(text.contains("cascade"));
    let config = Config::from_toml_str(&text).unwrap();
    let url = gateway(&config).await;
    let response = client()
        .request(anthropic(&url, "claude-sonnet-4-5", "Hello", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = json(response).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("claude-sonnet-4-5"), "{message}");
    assert!(message.contains("claude-haiku-4-5"), "{message}");
    assert_eq!(
        message
            .matches("invalid peer certificate: UnknownIssuer")
            .count(),
        2,
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_plain_port_behind_https_is_a_502_that_says_why() {
    let sim = upstream(None).await;
    let url = sim.url().replace("http://", "https://");
    let config = Config::from_toml_str(&config(&url, "")).unwrap();
    let gateway = gateway(&config).await;
    let response = client()
        .request(anthropic(&gateway, MODEL, "Hello", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = json(response).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tls handshake with 127.0.0.1 failed"),
        "{message}"
    );
    assert!(message.contains("serving plain http"), "{message}");
}

#[test]
fn a_ca_file_that_is_missing_or_no_certificate_is_refused_with_its_key() {
    let dir = scratch("bad-ca");
    let missing = dir.join("missing.pem").display().to_string();
    let text = config(
        "https://api.anthropic.com",
        &format!("ca_file = {missing:?}"),
    );
    let e = Config::from_toml_str(&text).unwrap_err();
    assert_eq!(e.key(), Some("provider[0].ca_file"));
    assert!(e.message().contains("missing.pem"), "{e}");

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let text = config(
        "https://api.anthropic.com",
        &format!("ca_file = {:?}", garbage.display().to_string()),
    );
    let e = Config::from_toml_str(&text).unwrap_err();
    assert_eq!(e.key(), Some("provider[0].ca_file"));
    assert!(e.message().contains("no CERTIFICATE"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_shipped_configurations_parse_with_https_and_sim_upstreams() {
    let example =
        Config::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml")).unwrap();
    assert_eq!(
        example.providers()[0].base_url(),
        "https://api.anthropic.com/"
    );
    assert_eq!(example.providers()[1].base_url(), "https://api.openai.com/");
    let sim = Config::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.sim.toml")).unwrap();
    assert_eq!(sim.providers()[0].base_url(), "http://127.0.0.1:8787/");
}
