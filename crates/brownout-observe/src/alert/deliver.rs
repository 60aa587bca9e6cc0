//! Delivering notices: the webhook (with a timeout and retries) and the command, on a
//! background task.

use std::{future::Future, pin::Pin, process::Stdio, sync::Arc, time::Duration};

use brownout_core::BoxError;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{io::AsyncWriteExt, sync::mpsc};

/// Sends a webhook request and yields the status the receiver answered.
///
/// [`HttpWebhook`] is the plain-HTTP default; [`ServiceWebhook`] sends through any
/// tower service, such as brownout's HTTPS client.
pub trait WebhookClient: Send + Sync + 'static {
    /// POSTs `request` (its URI is absolute) and yields the response's status.
    fn post(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;
}

/// hyper-util's pooled client over plain HTTP/1.1: for a receiver on the local network.
/// An `https://` webhook fails with it; use [`ServiceWebhook`] over an HTTPS client.
#[derive(Debug, Clone)]
pub struct HttpWebhook {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpWebhook {
    /// A client with hyper-util's defaults. Use it inside a tokio runtime.
    pub fn new() -> Self {
        HttpWebhook {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Default for HttpWebhook {
    fn default() -> Self {
        HttpWebhook::new()
    }
}

impl WebhookClient for HttpWebhook {
    fn post(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>> {
        let future = self.client.request(request);
        Box::pin(async move { Ok(future.await?.status()) })
    }
}

/// Any tower service taking `Request<Full<Bytes>>` as the webhook client: brownout's
/// HTTPS client (`brownout::client::HttpsClient`), a hyper-util client with another
/// connector, a test double.
#[derive(Debug, Clone)]
pub struct ServiceWebhook<S> {
    service: S,
}

impl<S> ServiceWebhook<S> {
    /// Sends through `service` (a clone of it per request).
    pub fn new(service: S) -> Self {
        ServiceWebhook { service }
    }
}

impl<S, B> WebhookClient for ServiceWebhook<S>
where
    S: tower_service::Service<Request<Full<Bytes>>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    fn post(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>> {
        let mut service = self.service.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = service.call(request).await.map_err(Into::into)?;
            Ok(response.status())
        })
    }
}

pub(super) struct Settings {
    pub(super) webhook_timeout: Duration,
    pub(super) retries: u32,
    pub(super) backoff: Duration,
    pub(super) command_timeout: Duration,
}

/// One notice to deliver.
pub(super) struct Delivery {
    pub(super) rule: Arc<str>,
    pub(super) key: Arc<str>,
    pub(super) resolved: bool,
    pub(super) message: String,
    pub(super) json: Bytes,
    pub(super) webhook: Option<Uri>,
    pub(super) command: Option<Arc<[String]>>,
}

/// The delivery task: each notice on its own task, so that a slow receiver does not
/// hold the others back.
pub(super) async fn run(
    mut rx: mpsc::Receiver<Delivery>,
    client: Arc<dyn WebhookClient>,
    settings: Settings,
) {
    let settings = Arc::new(settings);
    while let Some(delivery) = rx.recv().await {
        let delivery = Arc::new(delivery);
        if let Some(url) = delivery.webhook.clone() {
            tokio::spawn(webhook(
                Arc::clone(&client),
                Arc::clone(&settings),
                Arc::clone(&delivery),
                url,
            ));
        }
        if let Some(argv) = delivery.command.clone() {
            tokio::spawn(command(Arc::clone(&settings), Arc::clone(&delivery), argv));
        }
    }
}

/// Whether a failed try is worth another.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

async fn webhook(
    client: Arc<dyn WebhookClient>,
    settings: Arc<Settings>,
    delivery: Arc<Delivery>,
    url: Uri,
) {
    let mut delay = settings.backoff;
    for attempt in 0..=settings.retries {
        let request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "brownout-alert")
            .body(Full::new(delivery.json.clone()));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(rule = %delivery.rule, %error, "brownout-observe: alert webhook: bad request");
                return;
            }
        };
        let why = match tokio::time::timeout(settings.webhook_timeout, client.post(request)).await {
            Ok(Ok(status)) if status.is_success() => {
                tracing::debug!(rule = %delivery.rule, key = %delivery.key, attempt = attempt + 1, "brownout-observe: alert webhook delivered");
                return;
            }
            Ok(Ok(status)) if !retryable(status) => {
                tracing::warn!(rule = %delivery.rule, key = %delivery.key, status = status.as_u16(), "brownout-observe: alert webhook refused: {}", delivery.message);
                return;
            }
            Ok(Ok(status)) => format!("status {}", status.as_u16()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", settings.webhook_timeout),
        };
        if attempt == settings.retries {
            tracing::warn!(
                rule = %delivery.rule,
                key = %delivery.key,
                resolved = delivery.resolved,
                tries = attempt + 1,
                reason = %why,
                "brownout-observe: alert webhook failed: {}", delivery.message
            );
            return;
        }
        tracing::debug!(rule = %delivery.rule, reason = %why, retry_in_ms = delay.as_millis() as u64, "brownout-observe: alert webhook retrying");
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
    }
}

async fn command(settings: Arc<Settings>, delivery: Arc<Delivery>, argv: Arc<[String]>) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env("BROWNOUT_ALERT_RULE", &*delivery.rule)
        .env("BROWNOUT_ALERT_KEY", &*delivery.key)
        .env(
            "BROWNOUT_ALERT_STATE",
            if delivery.resolved {
                "resolved"
            } else {
                "firing"
            },
        )
        .env("BROWNOUT_ALERT_MESSAGE", &delivery.message)
        .env(
            "BROWNOUT_ALERT_JSON",
            String::from_utf8_lossy(&delivery.json).as_ref(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            tracing::warn!(rule = %delivery.rule, program = %program, %error, "brownout-observe: alert command could not start");
            return;
        }
    };
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input is fine: a broken pipe is ignored.
            let _ = stdin.write_all(&delivery.json).await;
            let _ = stdin.shutdown().await;
        }
        child.wait().await
    };
    match tokio::time::timeout(settings.command_timeout, run).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => {
            tracing::warn!(rule = %delivery.rule, program = %program, %status, "brownout-observe: alert command failed");
        }
        Ok(Err(error)) => {
            tracing::warn!(rule = %delivery.rule, program = %program, %error, "brownout-observe: alert command failed");
        }
        Err(_) => {
            tracing::warn!(rule = %delivery.rule, program = %program, timeout = ?settings.command_timeout, "brownout-observe: alert command killed after its timeout");
            // kill_on_drop ends it when `child` goes.
        }
    }
}
