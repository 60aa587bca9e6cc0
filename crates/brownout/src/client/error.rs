//! The errors of the HTTPS client: a connection that could not be made, a request
//! that failed on a connection, and settings that make no sense.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// A connection to the upstream could not be made: the TCP connect failed or timed
/// out, or the TLS handshake failed (a certificate that does not verify included).
///
/// Its Display says which host and why, in one line a log can carry:
/// `tls handshake with api.anthropic.com failed: invalid peer certificate: UnknownIssuer`,
/// `connect to 10.0.0.1:443 timed out after 10s`. brownout's classification reads it
/// as a [`ConnectionFailed`](crate::OutcomeKind::ConnectionFailed): retried, and a
/// reason to fall back. Nothing of the request (headers, credentials) is in it.
#[derive(Debug, Clone)]
pub struct ConnectError {
    kind: ConnectKind,
    /// `host:port` for TCP, `host` for TLS.
    target: Arc<str>,
    detail: Arc<str>,
    source: Option<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectKind {
    Tcp,
    TimedOut(Duration),
    Tls { certificate: bool },
    Uri,
}

impl ConnectError {
    pub(crate) fn tcp(target: Arc<str>, source: Source) -> Self {
        let detail = chain_text(&*source).into();
        ConnectError {
            kind: ConnectKind::Tcp,
            target,
            detail,
            source: Some(source),
        }
    }

    pub(crate) fn timed_out(target: Arc<str>, after: Duration) -> Self {
        ConnectError {
            kind: ConnectKind::TimedOut(after),
            target,
            detail: "".into(),
            // No source: a connect that timed out is a connection failure, not a
            // request that timed out (brownout's classification would read an
            // `io::ErrorKind::TimedOut` below it as a timeout).
            source: None,
        }
    }

    pub(crate) fn tls(host: Arc<str>, port: u16, source: Source) -> Self {
        let (detail, certificate) = match crate::error::find::<rustls::Error>(&*source) {
            Some(rustls) => {
                let certificate = matches!(
                    rustls,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                );
                let mut detail = rustls.to_string();
                if matches!(rustls, rustls::Error::InvalidMessage(_)) {
                    detail.push_str(&format!(
                        " (is {host}:{port} serving plain http? use an http:// URL for it)"
                    ));
                }
                (detail, certificate)
            }
            None => {
                let io = crate::error::find::<std::io::Error>(&*source);
                let detail = match io.map(std::io::Error::kind) {
                    Some(std::io::ErrorKind::UnexpectedEof) => {
                        format!("the server closed the connection (is {host}:{port} serving tls?)")
                    }
                    _ => chain_text(&*source),
                };
                (detail, false)
            }
        };
        ConnectError {
            kind: ConnectKind::Tls { certificate },
            target: host,
            detail: detail.into(),
            source: Some(source),
        }
    }

    pub(crate) fn uri(detail: String) -> Self {
        ConnectError {
            kind: ConnectKind::Uri,
            target: "".into(),
            detail: detail.into(),
            source: None,
        }
    }

    /// The host (TLS) or `host:port` (TCP) it tried to reach.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the TLS handshake failed.
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, ConnectKind::Tls { .. })
    }

    /// Whether the server's certificate was refused: not signed by a trusted
    /// authority, expired, for another name, or missing.
    pub fn is_certificate(&self) -> bool {
        matches!(self.kind, ConnectKind::Tls { certificate: true })
    }

    /// Whether the connect (TCP and TLS handshake) took longer than the connect
    /// timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ConnectKind::TimedOut(_))
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ConnectKind::Tcp => write!(f, "connect to {} failed: {}", self.target, self.detail),
            ConnectKind::TimedOut(after) => {
                write!(f, "connect to {} timed out after {after:?}", self.target)
            }
            ConnectKind::Tls { .. } => {
                write!(
                    f,
                    "tls handshake with {} failed: {}",
                    self.target, self.detail
                )
            }
            ConnectKind::Uri => write!(f, "cannot connect: {}", self.detail),
        }
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// A request failed on a connection that was made: the connection closed before the
/// answer came, or broke while the request was sent.
///
/// Its Display names the upstream and the cause (`request to api.openai.com failed:
/// connection closed before message completed`); its source is hyper-util's error, so
/// that a timeout below it still classifies as one.
#[derive(Debug)]
pub struct RequestError {
    authority: Arc<str>,
    detail: String,
    source: Box<dyn StdError + Send + Sync + 'static>,
}

impl RequestError {
    pub(crate) fn new(authority: Arc<str>, source: Box<dyn StdError + Send + Sync>) -> Self {
        // hyper-util's own Display ("client error (SendRequest)") says little; the
        // cause is further down.
        let detail = match source.source() {
            Some(cause) => chain_text(cause),
            None => source.to_string(),
        };
        RequestError {
            authority,
            detail,
            source,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request to {} failed: {}", self.authority, self.detail)
    }
}

impl StdError for RequestError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// An error and its causes in one line, `a: b: c`, leaving out a cause whose text
/// the one before it already says.
fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = next(error);
    while let Some(e) = current {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = next(e);
    }
    text
}

fn next<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            return Some(inner);
        }
    }
    error.source()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_reads_as_one_line_without_repeats() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(chain_text(&outer), "refused");
        let e = ConnectError::tcp("127.0.0.1:9".into(), Arc::new(outer));
        assert_eq!(e.to_string(), "connect to 127.0.0.1:9 failed: refused");
        assert!(!e.is_tls() && !e.is_certificate() && !e.is_timeout());
    }

    #[test]
    fn a_refused_certificate_says_so() {
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, rustls));
        let e = ConnectError::tls("api.anthropic.com".into(), 443, Arc::new(io));
        assert_eq!(
            e.to_string(),
            "tls handshake with api.anthropic.com failed: invalid peer certificate: UnknownIssuer"
        );
        assert!(e.is_certificate());
    }

    #[test]
    fn a_connect_timeout_is_a_connection_failure() {
        let e = ConnectError::timed_out("10.0.0.1:443".into(), Duration::from_secs(10));
        assert_eq!(e.to_string(), "connect to 10.0.0.1:443 timed out after 10s");
        let outcome =
            crate::classify::classify_error(&crate::classify::DefaultClassifier::new(), &e);
        assert_eq!(outcome.kind(), crate::OutcomeKind::ConnectionFailed);
    }
}
