//! The `[observe]` sinks the configuration turns on: the SQLite availability log and
//! the alert rules, as one [`Sinks`] value for the layers that produce records.
//!
//! ```
//! use brownout::observe::Sink;
//! use brownout_gateway::{observe_log::Observers, Config};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("brownout-gw-observe-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let db = dir.join("brownout.db");
//! let config = Config::from_toml_str(&format!(r#"
//!     [[provider]]
//!     name = "anthropic"
//!     api = "anthropic"
//!     base_url = "http://127.0.0.1:8787"
//!     pass_through_key = true
//!
//!     [routes."/v1/messages"]
//!     provider = "anthropic"
//!
//!     [observe]
//!     sqlite = {db:?}
//!
//!     [[observe.alert]]
//!     name = "breaker"
//!     when = "breaker_open"
//! "#))?;
//! let observers = Observers::new(&config)?;
//! assert!(observers.sqlite().is_some() && observers.alert_feed().is_some());
//! let sinks = observers.sinks(); // for the layers that record exchanges and attempts
//! # let _ = sinks;
//! observers.close().await; // on shutdown: the log's last rows are written
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! Webhooks go through brownout's HTTPS client (`https://` and `http://`), built with
//! the platform's roots. A log file that cannot be opened, or an HTTPS client that
//! cannot be built, is an [`ObserveError`] before the gateway listens; once running,
//! neither the log nor the alerts ever fail a request (see brownout-observe).

use std::{fmt, sync::Arc};

use brownout::{
    client::HttpsClient,
    observe::{
        alert::{Alerts, ServiceWebhook},
        AlertFeed, Sinks, SqliteLog,
    },
};

use crate::Config;

/// The sinks of `[observe]`, started.
#[derive(Debug, Clone)]
pub struct Observers {
    sinks: Sinks,
    sqlite: Option<SqliteLog>,
    alerts: Option<Alerts>,
}

/// `[observe]` could not be started: the log file, the alerts' client.
#[derive(Debug)]
pub struct ObserveError(String);

impl fmt::Display for ObserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ObserveError {}

impl Observers {
    /// Opens the log and starts the alert rules that `config` turns on. Call it inside
    /// the tokio runtime that serves: the alerts' delivery task runs there.
    pub fn new(config: &Config) -> Result<Observers, ObserveError> {
        let observe = config.observe_log();
        let mut sinks = Sinks::new();
        let sqlite = match observe.sqlite() {
            Some(settings) => {
                let log = SqliteLog::open(settings.clone()).map_err(|e| {
                    ObserveError(format!("observe.sqlite: cannot open the log: {e}"))
                })?;
                sinks = sinks.with(Arc::new(log.clone()));
                Some(log)
            }
            None => None,
        };
        let alerts = match observe.alerts() {
            Some(settings) => {
                let client = HttpsClient::new().map_err(|e| {
                    ObserveError(format!(
                        "observe.alert: cannot build the webhook client: {e}"
                    ))
                })?;
                let alerts =
                    Alerts::with_client(settings.clone(), Arc::new(ServiceWebhook::new(client)))
                        .map_err(|e| ObserveError(format!("observe.alert: {e}")))?;
                sinks = sinks.with(Arc::new(alerts.clone()));
                Some(alerts)
            }
            None => None,
        };
        Ok(Observers {
            sinks,
            sqlite,
            alerts,
        })
    }

    /// Every sink of `[observe]` as one (empty when the section turns none on).
    pub fn sinks(&self) -> Sinks {
        self.sinks.clone()
    }

    /// The availability log, when `observe.sqlite` is set: its counters, `flush`.
    pub fn sqlite(&self) -> Option<&SqliteLog> {
        self.sqlite.as_ref()
    }

    /// The alert rules' recent notices, for the status page, when there is a rule.
    pub fn alert_feed(&self) -> Option<Arc<dyn AlertFeed>> {
        self.alerts
            .as_ref()
            .map(|alerts| Arc::new(alerts.clone()) as Arc<dyn AlertFeed>)
    }

    /// Writes the log's buffered rows and stops its writer (off the runtime's
    /// threads), logging what it wrote and dropped.
    pub async fn close(&self) {
        let Some(log) = self.sqlite.clone() else {
            return;
        };
        let closing = log.clone();
        let _ = tokio::task::spawn_blocking(move || closing.close()).await;
        closed(&log);
    }

    /// A guard that closes the log when it is dropped, however the serving code
    /// returns: for the binary's `serve`, whose last step it is. The close blocks the
    /// dropping thread until the last rows are written.
    pub fn close_on_drop(self) -> CloseOnDrop {
        CloseOnDrop(self)
    }
}

/// Closes the availability log when dropped; see [`Observers::close_on_drop`].
#[derive(Debug)]
pub struct CloseOnDrop(Observers);

impl CloseOnDrop {
    /// The observers it will close.
    pub fn observers(&self) -> &Observers {
        &self.0
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(log) = &self.0.sqlite {
            log.close();
            closed(log);
        }
    }
}

fn closed(log: &SqliteLog) {
    tracing::info!(
        path = %log.path().display(),
        written = log.written(),
        dropped = log.dropped(),
        "brownout-gateway: availability log closed"
    );
}
