//! What the gateway's tests share: a simulated upstream on loopback, a gateway in
//! front of it, and a client.

#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, time::Duration};

use brownout_gateway::{Config, Gateway, Stopped};
use brownout_sim::{Script, Sim, SimServer, SimServerHandle};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// A gateway configuration over the simulator at `url`: both routes with a cascade,
/// quick retries, and `extra` appended.
pub fn config_text(url: &str, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
shutdown_grace = "10s"
seed = 11

[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "{url}"
pass_through_key = true

[[provider]]
name = "openai"
api = "openai"
base_url = "{url}"
pass_through_key = true

[routes."/v1/messages"]
provider = "anthropic"
cascade = [{{ model = "claude-sonnet-4-5" }}, {{ model = "claude-haiku-4-5" }}]

[routes."/v1/chat/completions"]
provider = "openai"
cascade = [{{ model = "gpt-4.1" }}, {{ model = "gpt-4.1-mini" }}]

[retry]
max_attempts = 2
backoff = {{ base = "10ms", cap = "50ms" }}
attempt_timeout = "5s"
{extra}
"#
    )
}

/// A simulated upstream on loopback and a gateway in front of it.
pub struct Setup {
    pub sim: Sim,
    pub upstream: Option<SimServerHandle>,
    pub gateway: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<Stopped>>,
}

impl Setup {
    pub async fn start(script: Script) -> Setup {
        Setup::start_with(script, "").await
    }

    pub async fn start_with(script: Script, extra: &str) -> Setup {
        Setup::start_config(script, |url| {
            Config::from_toml_str(&config_text(url, extra)).unwrap()
        })
        .await
    }

    /// With the configuration `config` makes for the simulator's URL.
    pub async fn start_config(script: Script, config: impl FnOnce(&str) -> Config) -> Setup {
        let server = SimServer::bind("127.0.0.1:0", Sim::new(script))
            .await
            .unwrap();
        let sim = server.sim().clone();
        let upstream = server.spawn().unwrap();
        let config = config(&upstream.url());
        let listener = TcpListener::bind(config.listen()).await.unwrap();
        let gateway = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(Gateway::new(&config).serve(listener, async {
            let _ = stopped.await;
        }));
        Setup {
            sim,
            upstream: Some(upstream),
            gateway,
            stop: Some(stop),
            serving,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(mut self) -> Stopped {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.serving).await.unwrap().unwrap()
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn anthropic(url: &str, model: &str, prompt: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": model,
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    });
    Request::post(url)
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-test-caller")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub fn openai(url: &str, model: &str, prompt: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
    });
    Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-caller")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub async fn json(response: Response<Incoming>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

pub fn header<'a>(response: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

/// Waits until `check` holds, for at most `limit`.
pub async fn until(limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
