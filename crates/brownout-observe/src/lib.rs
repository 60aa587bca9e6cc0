//! Observability for brownout: what every request and every attempt came to, as data.
//!
//! Two records are the vocabulary of this crate: an [`Exchange`] is one request's final
//! answer as the caller saw it (route, requested and served model, how it was answered,
//! status, latency, attempts, tokens), an [`Attempt`] is one call the stack sent upstream.
//! Anything that turns them into something an operator reads — metrics, the SQLite
//! availability log, alert rules, the status page — is a [`Sink`].

#[cfg(feature = "alert")]
pub mod alert;
mod record;
#[cfg(feature = "sqlite")]
pub mod report;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "alert")]
pub use alert::{AlertConfig, AlertRule, Alerts, Condition};
pub use record::{AlertFeed, AlertNotice, Answer, Attempt, Exchange, Sink, Sinks};
#[cfg(feature = "sqlite")]
pub use report::Report;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteError, SqliteLog};
