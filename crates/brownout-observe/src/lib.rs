//! Observability for brownout: what every request and every attempt came to, as data.
//!
//! Two records are the vocabulary of this crate: an [`Exchange`] is one request's final
//! answer as the caller saw it (route, requested and served model, how it was answered,
//! status, latency, attempts, tokens), an [`Attempt`] is one call the stack sent upstream.
//! Anything that turns them into something an operator reads — metrics, the SQLite
//! availability log, alert rules, the status page — is a [`Sink`].
//!
//! - [`ObserveLayer`], outermost: one [`Exchange`] per request, and a `tracing` span.
//! - [`AttemptLayer`], innermost over the HTTP client: one [`Attempt`] per upstream call.
//! - [`SinkListener`]: the layers' [`Event`](brownout_core::event::Event)s for a sink.
//! - [`MetricsSink`]: counters, gauges and histograms through the `metrics` facade.
//! - [`StatusBoard`]: the last hour per model, as an HTML page and as JSON.
//!
//! ```
//! use std::sync::Arc;
//! use brownout_observe::{AttemptLayer, MetricsConfig, MetricsSink, ObserveLayer, Sinks, StatusBoard};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # let http_client = tower::service_fn(|_: http::Request<brownout_core::Body>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(brownout_core::Body::empty()))
//! # });
//! let models = ["claude-sonnet-4-5", "claude-haiku-4-5"];
//! let board = Arc::new(StatusBoard::new(models));
//! let sinks: Arc<Sinks> = Arc::new(
//!     Sinks::new()
//!         .with(Arc::new(MetricsSink::new(MetricsConfig::new().models(models))))
//!         .with(board.clone()),
//! );
//! let client = ServiceBuilder::new()
//!     .layer(ObserveLayer::new(sinks.clone())) // outermost
//!     // … degrade, cache, fallback, breaker, retry: give each
//!     // `Events::with_listener(SinkListener::new(sinks.clone()))` …
//!     .layer(AttemptLayer::new(sinks))         // right over the client
//!     .service(http_client);
//! # let _ = client;
//! let page = board.html(); // GET /brownout/status
//! # let _ = page;
//! # }
//! ```
//!
//! # When to use it
//!
//! To know, live and after the fact, how available each model was, how often the
//! stack fell back, served from the cache or degraded, and when a model's breaker
//! opened: the layers above keep a service answering, this crate shows what that
//! cost. It adds a record per request and per attempt, and no behaviour.
//!
//! # Where it goes
//!
//! [`ObserveLayer`] outermost, above the degrade layer, so that it sees the answer the
//! caller got (live, cached, fallen back, degraded); [`AttemptLayer`] innermost, right
//! over the HTTP client, so that it sees each call sent upstream, retries included.
//! The other layers' events reach the same sinks through a [`SinkListener`].
//!
//! # On failure
//!
//! It changes no answer: a response or an error passes through both layers unchanged,
//! after it is recorded. A [`Sink`] is called on the request's path and never blocks:
//! the metrics update counters in memory, the SQLite log hands each row to its writer
//! thread with a `try_send` and drops and counts a row it has no room for, and alert
//! notices are delivered (with a timeout and retries) off the request's path. A sink
//! that fails loses records, never a request.

#[cfg(feature = "alert")]
pub mod alert;
mod layer;
mod listener;
mod metrics;
mod record;
#[cfg(feature = "sqlite")]
pub mod report;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod status;

#[cfg(feature = "alert")]
pub use alert::{AlertConfig, AlertRule, Alerts, Condition};
pub use brownout_core::error::InvalidConfig;
pub use layer::{
    answer_of_error, AttemptFuture, AttemptLayer, AttemptObserve, AttemptTally, Observe,
    ObserveFuture, ObserveLayer,
};
pub use listener::SinkListener;
pub use metrics::{MetricsConfig, MetricsSink, OTHER};
pub use record::{AlertFeed, AlertNotice, Answer, Attempt, Exchange, Sink, Sinks};
#[cfg(feature = "sqlite")]
pub use report::Report;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteError, SqliteLog};
pub use status::{
    escape_html, render_html, AlertStatus, Answers, BreakerStatus, LimitStatus, ModelStatus,
    StatusBoard, StatusSnapshot, WINDOW_MINUTES,
};
/// The route of Anthropic's Messages API in the records.
pub const ROUTE_MESSAGES: &str = "anthropic.messages";
/// The route of OpenAI's Chat Completions API in the records.
pub const ROUTE_CHAT: &str = "openai.chat";
/// The route of OpenAI's Responses API in the records.
pub const ROUTE_RESPONSES: &str = "openai.responses";
