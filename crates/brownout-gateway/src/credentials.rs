//! The provider's API key on each request, chosen by where the request goes.
//!
//! It sits innermost, right above the HTTP client, because only there is the endpoint
//! final: the fallback layer may have moved the request to another provider. Above it,
//! the caller's own credential stays on the request, so that the cache still
//! partitions its entries per caller.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use brownout::provider::CREDENTIAL_HEADERS;
use http::{HeaderName, HeaderValue, Request, Uri};
use tower::Service;

use crate::config::{KeySource, Provider};

struct Endpoint {
    authority: String,
    prefix: String,
    header: Option<(HeaderName, HeaderValue)>,
}

/// Sets each provider's key on the requests sent to its base URL.
///
/// For a provider whose key the gateway holds, the caller's `x-api-key`,
/// `authorization` and `api-key` are removed and the provider's header is set; a
/// pass-through provider's requests keep the caller's. It sits innermost, right above
/// the HTTP client, because only there is the endpoint final: the fallback layer may
/// have moved the request to another provider. Above it, the caller's own credential
/// stays on the request, so that the cache still partitions its entries per caller.
#[derive(Clone)]
pub struct Credentials<S> {
    inner: S,
    endpoints: Arc<[Endpoint]>,
    /// Whether any provider holds a key: when none does, requests pass untouched.
    any_key: bool,
}

impl<S> fmt::Debug for Credentials<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names the endpoints that get a key; never the key.
        let keyed: Vec<String> = self
            .endpoints
            .iter()
            .filter(|e| e.header.is_some())
            .map(|e| format!("{}{}", e.authority, e.prefix))
            .collect();
        f.debug_struct("Credentials")
            .field("keyed_endpoints", &keyed)
            .finish_non_exhaustive()
    }
}

impl<S> Credentials<S> {
    /// Wraps `inner`, the HTTP client, with the keys of `providers`.
    pub fn new(inner: S, providers: &[Provider]) -> Self {
        let mut endpoints: Vec<Endpoint> = providers
            .iter()
            .map(|p| Endpoint {
                authority: p
                    .base_url()
                    .authority()
                    .map(|a| a.as_str().to_ascii_lowercase())
                    .unwrap_or_default(),
                prefix: p.base_url().path().trim_end_matches('/').to_owned(),
                header: match p.key() {
                    KeySource::Env { header, .. } => Some(header.clone()),
                    KeySource::PassThrough => None,
                },
            })
            .collect();
        // The longest prefix first, so that the first match is the most specific.
        endpoints.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        Credentials {
            inner,
            any_key: endpoints.iter().any(|e| e.header.is_some()),
            endpoints: endpoints.into(),
        }
    }

    fn endpoint(&self, uri: &Uri) -> Option<&Endpoint> {
        let authority = uri.authority()?.as_str();
        let path = uri.path();
        self.endpoints.iter().find(|e| {
            e.authority.eq_ignore_ascii_case(authority)
                && path.starts_with(&e.prefix)
                && matches!(path.as_bytes().get(e.prefix.len()), None | Some(b'/'))
        })
    }
}

impl<S, B> Service<Request<B>> for Credentials<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        if !self.any_key {
            return self.inner.call(request);
        }
        if let Some((name, value)) = self.endpoint(request.uri()).and_then(|e| e.header.as_ref()) {
            let headers = request.headers_mut();
            // The caller's credential headers go when the gateway sends its own key.
            for caller in &CREDENTIAL_HEADERS {
                headers.remove(caller);
            }
            headers.insert(name.clone(), value.clone());
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use tower::{service_fn, ServiceExt};

    fn config() -> Config {
        Config::from_toml_str_with_env(
            r#"
            [[provider]]
            name = "held"
            api = "anthropic"
            base_url = "http://127.0.0.1:9000/anthropic/"
            api_key_env = "HELD_KEY"

            [[provider]]
            name = "open"
            api = "openai"
            base_url = "http://127.0.0.1:9000"
            api_key_env = "OPEN_KEY"

            [[provider]]
            name = "theirs"
            api = "anthropic"
            base_url = "http://127.0.0.2:9000"
            pass_through_key = true

            [routes."/v1/messages"]
            provider = "held"
            "#,
            |name| match name {
                "HELD_KEY" => Some("sk-held".into()),
                "OPEN_KEY" => Some("sk-open".into()),
                _ => None,
            },
        )
        .unwrap()
    }

    /// What the client receives: the credential headers, as `name=value`.
    async fn sent(uri: &str) -> Vec<String> {
        let client = service_fn(|request: Request<()>| async move {
            let mut seen: Vec<String> = CREDENTIAL_HEADERS
                .iter()
                .filter_map(|name| {
                    let value = request.headers().get(name)?;
                    Some(format!("{name}={}", value.to_str().unwrap()))
                })
                .collect();
            seen.sort();
            Ok::<_, std::convert::Infallible>(seen)
        });
        let service = Credentials::new(client, config().providers());
        let request = Request::post(uri)
            .header("x-api-key", "sk-caller")
            .header("authorization", "Bearer sk-caller")
            .body(())
            .unwrap();
        service.oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_held_key_replaces_the_callers_credentials() {
        assert_eq!(
            sent("http://127.0.0.1:9000/anthropic/v1/messages").await,
            ["x-api-key=sk-held"]
        );
        // The other provider on the same host, outside the prefix: a bearer token.
        assert_eq!(
            sent("http://127.0.0.1:9000/v1/chat/completions").await,
            ["authorization=Bearer sk-open"]
        );
        // A path that only starts like the prefix is not under it.
        assert_eq!(
            sent("http://127.0.0.1:9000/anthropicx/v1/messages").await,
            ["authorization=Bearer sk-open"]
        );
    }

    #[tokio::test]
    async fn pass_through_and_unknown_endpoints_keep_the_callers_credentials() {
        let callers = ["authorization=Bearer sk-caller", "x-api-key=sk-caller"];
        assert_eq!(sent("http://127.0.0.2:9000/v1/messages").await, callers);
        assert_eq!(sent("http://10.9.9.9/v1/messages").await, callers);
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let service = Credentials::new((), config().providers());
        let text = format!("{service:?} {:?}", config());
        assert!(
            !text.contains("sk-held") && !text.contains("sk-open"),
            "{text}"
        );
        assert!(text.contains("HELD_KEY"), "{text}");
    }
}
