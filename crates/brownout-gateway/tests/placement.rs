//! Every path with every credential style: where it went, and which key it carried.
//! The caller's key never reaches the other provider's host; a request that cannot be
//! placed gets 400 naming why. Methods no route accepts get 405, dot segments and
//! encoded slashes 400, and `/healthz` / `/readyz` are the gateway's own.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use brownout_gateway::{Config, Router};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

/// What an upstream host received: the host, the path and the credential headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    host: String,
    path: String,
    credentials: Vec<String>,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// An upstream for every host: records the request, answers 200 with a JSON body.
#[derive(Clone)]
struct Recorder(Log);

impl tower::Service<Request<brownout::Body>> for Recorder {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<brownout::Body>) -> Self::Future {
        let mut credentials: Vec<String> = ["x-api-key", "authorization", "api-key"]
            .iter()
            .filter_map(|name| {
                let value = request.headers().get(*name)?.to_str().ok()?;
                Some(format!("{name}={value}"))
            })
            .collect();
        credentials.sort();
        self.0.lock().unwrap().push(Received {
            host: request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            path: request.uri().path().to_owned(),
            credentials,
        });
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        std::future::ready(Ok(response))
    }
}

fn recorder(log: Log) -> Recorder {
    Recorder(log)
}

const ANTHROPIC_HOST: &str = "anthropic.upstream.test:8001";
const OPENAI_HOST: &str = "openai.upstream.test:8002";

fn config(held_keys: bool) -> Config {
    let key = |var: &str| {
        if held_keys {
            format!("api_key_env = \"{var}\"")
        } else {
            "pass_through_key = true".to_owned()
        }
    };
    let text = format!(
        r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://{ANTHROPIC_HOST}"
{}

[[provider]]
name = "openai"
api = "openai"
base_url = "http://{OPENAI_HOST}"
{}

[routes."/v1/messages"]
provider = "anthropic"

[routes."/v1/chat/completions"]
provider = "openai"

[routes."/v1/responses"]
provider = "openai"

[cache]
enabled = false
"#,
        key("OPERATOR_ANTHROPIC"),
        key("OPERATOR_OPENAI")
    );
    Config::from_toml_str_with_env(&text, |name| match name {
        "OPERATOR_ANTHROPIC" => Some("sk-ant-operator".into()),
        "OPERATOR_OPENAI" => Some("sk-openai-operator".into()),
        _ => None,
    })
    .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// The Anthropic SDK: `x-api-key` and `anthropic-version`.
    Anthropic,
    /// The OpenAI SDK: `Authorization: Bearer` alone.
    OpenAi,
    /// No credential at all.
    None,
}

fn request(method: &Method, path: &str, style: Style) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json");
    builder = match style {
        Style::Anthropic => builder
            .header("x-api-key", "sk-ant-caller")
            .header("anthropic-version", "2023-06-01"),
        Style::OpenAi => builder.header("authorization", "Bearer sk-openai-caller"),
        Style::None => builder,
    };
    let body = if method == Method::POST {
        r#"{"model":"some-model","max_tokens":16,"messages":[{"role":"user","content":"Hi"}],"input":"Hi"}"#
    } else {
        ""
    };
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_path_with_every_credential_style_goes_to_its_provider_with_its_callers_key() {
    // (method, path, whose it is by its path or prefix; None: shared)
    let paths: [(Method, &str, Option<Style>); 14] = [
        (Method::POST, "/v1/messages", Some(Style::Anthropic)),
        (
            Method::POST,
            "/v1/messages/count_tokens",
            Some(Style::Anthropic),
        ),
        (Method::GET, "/v1/messages/batches", Some(Style::Anthropic)),
        (Method::POST, "/v1/chat/completions", Some(Style::OpenAi)),
        (Method::POST, "/v1/responses", Some(Style::OpenAi)),
        (Method::POST, "/v1/embeddings", Some(Style::OpenAi)),
        (Method::POST, "/v1/completions", Some(Style::OpenAi)),
        (Method::GET, "/v1/models", None),
        (Method::GET, "/v1/models/some-model", None),
        (Method::GET, "/anthropic/v1/models", Some(Style::Anthropic)),
        (
            Method::POST,
            "/anthropic/v1/messages",
            Some(Style::Anthropic),
        ),
        (Method::GET, "/openai/v1/models", Some(Style::OpenAi)),
        (
            Method::POST,
            "/openai/v1/chat/completions",
            Some(Style::OpenAi),
        ),
        (Method::POST, "/openai/v1/responses", Some(Style::OpenAi)),
    ];
    for held_keys in [false, true] {
        let log: Log = Arc::default();
        let gateway: Router<Full<Bytes>> = Router::new(
            &config(held_keys),
            recorder(log.clone()),
            recorder(log.clone()),
        );
        for (method, path, by_path) in &paths {
            for style in [Style::Anthropic, Style::OpenAi, Style::None] {
                log.lock().unwrap().clear();
                let response = gateway
                    .clone()
                    .oneshot(request(method, path, style))
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                let received = log.lock().unwrap().clone();
                let case = format!("{method} {path} with {style:?} (held keys: {held_keys}): {status} {body} {received:?}");

                let credential = (style != Style::None).then_some(style);
                let placed = match (by_path, credential) {
                    (Some(owner), Some(c)) if *owner != c => None,
                    (Some(owner), _) => Some(*owner),
                    (None, c) => c,
                };
                let Some(provider) = placed else {
                    // Another provider's key on this path, or nothing to tell it by.
                    assert_eq!(status, 400, "{case}");
                    assert!(received.is_empty(), "{case}");
                    assert!(
                        body.contains("credentials") || body.contains("cannot tell"),
                        "{case}"
                    );
                    assert_eq!(status, 400, "{case}");
                    continue;
                };
                assert_eq!(status, 200, "{case}");
                assert_eq!(received.len(), 1, "{case}");
                let got = &received[0];
                let (host, operator) = match provider {
                    Style::Anthropic => (ANTHROPIC_HOST, "x-api-key=sk-ant-operator"),
                    _ => (OPENAI_HOST, "authorization=Bearer sk-openai-operator"),
                };
                assert_eq!(got.host, host, "{case}");
                // The prefix is the gateway's, not the provider's.
                let upstream_path = path
                    .strip_prefix("/anthropic")
                    .or_else(|| path.strip_prefix("/openai"))
                    .unwrap_or(path);
                assert_eq!(got.path, upstream_path, "{case}");
                let expected: Vec<String> = if held_keys {
                    vec![operator.to_owned()]
                } else {
                    match style {
                        Style::Anthropic => vec!["x-api-key=sk-ant-caller".to_owned()],
                        Style::OpenAi => vec!["authorization=Bearer sk-openai-caller".to_owned()],
                        Style::None => vec![],
                    }
                };
                assert_eq!(got.credentials, expected, "{case}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_path_whose_api_no_provider_speaks_is_refused_not_sent_elsewhere() {
    let text = r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://anthropic.upstream.test:8001"
pass_through_key = true

[routes."/v1/messages"]
provider = "anthropic"
"#;
    let config = Config::from_toml_str(text).unwrap();
    let log: Log = Arc::default();
    let gateway: Router<Full<Bytes>> =
        Router::new(&config, recorder(log.clone()), recorder(log.clone()));
    for (method, path, style) in [
        (Method::GET, "/v1/models", Style::OpenAi),
        (Method::POST, "/v1/responses", Style::OpenAi),
        (Method::POST, "/v1/chat/completions", Style::None),
    ] {
        let response = gateway
            .clone()
            .oneshot(request(&method, path, style))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // In OpenAI's error shape, naming why.
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains("no provider"), "{message}");
    }
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn methods_no_route_accepts_get_405_and_odd_paths_400() {
    let log: Log = Arc::default();
    let gateway: Router<Full<Bytes>> =
        Router::new(&config(false), recorder(log.clone()), recorder(log.clone()));
    for method in ["CONNECT", "TRACE", "PUT", "PATCH", "OPTIONS"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let response = gateway
            .clone()
            .oneshot(request(&method, "/v1/messages", Style::Anthropic))
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert!(response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("POST"));
        assert_eq!(response.headers()["x-should-retry"], "false");
    }
    for path in [
        "/v1/../v1/messages",
        "/v1/./models",
        "/v1/%2e%2e/admin",
        "/v1/models%2Fsecret",
        "/anthropic/v1/..%2Fmodels",
    ] {
        let response = gateway
            .clone()
            .oneshot(request(&Method::GET, path, Style::Anthropic))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error", "{path}");
    }
    assert!(log.lock().unwrap().is_empty(), "nothing was forwarded");
}

#[tokio::test(start_paused = true)]
async fn healthz_and_readyz_are_answered_by_the_gateway() {
    let text = r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://anthropic.upstream.test:8001"
pass_through_key = true

[routes."/v1/messages"]
provider = "anthropic"
cascade = [{ model = "claude-sonnet-4-5" }, { model = "claude-haiku-4-5" }]
"#;
    let config = Config::from_toml_str(text).unwrap();
    let log: Log = Arc::default();
    let gateway: Router<Full<Bytes>> =
        Router::new(&config, recorder(log.clone()), recorder(log.clone()));
    let get = |path: &str| Request::get(path).body(Full::new(Bytes::new())).unwrap();
    let answer = |response: Response<brownout::Body>| async move {
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    };
    let (status, json) = answer(gateway.clone().oneshot(get("/healthz")).await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), json["status"].as_str()),
        (200, Some("ok"))
    );
    let (status, json) = answer(gateway.clone().oneshot(get("/readyz")).await.unwrap()).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["routes"]["/v1/messages"], true);

    // One model's breaker open: still ready; both open: not ready.
    let breakers = gateway.layers().breakers().unwrap();
    breakers.force_open("claude-sonnet-4-5");
    let (status, _) = answer(gateway.clone().oneshot(get("/readyz")).await.unwrap()).await;
    assert_eq!(status, 200);
    breakers.force_open("claude-haiku-4-5");
    let (status, json) = answer(gateway.clone().oneshot(get("/readyz")).await.unwrap()).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["status"], "not_ready");
    assert_eq!(json["routes"]["/v1/messages"], false);
    // The gateway's own liveness does not depend on the upstream.
    let (status, _) = answer(gateway.clone().oneshot(get("/healthz")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(log.lock().unwrap().is_empty(), "never forwarded");
}
