//! The client's settings.

use std::{path::PathBuf, sync::Arc, time::Duration};

use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    RootCertStore,
};

use super::{
    connect::{Connector, Tcp},
    HttpsClient,
};
use crate::error::InvalidConfig;

/// Which certificate authorities the client trusts, besides those added with
/// [`HttpsConfig::ca_file`] and [`HttpsConfig::ca_pem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Roots {
    /// The platform's (`rustls-native-certs`: the system store on Linux and macOS,
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR` when set); Mozilla's bundle (`webpki-roots`)
    /// when the platform has none, as in a scratch container.
    #[default]
    Platform,
    /// Mozilla's bundle (`webpki-roots`), compiled in: the same on every machine.
    Webpki,
    /// None: only the authorities added with `ca_file` / `ca_pem`.
    None,
}

/// The settings of an [`HttpsClient`]; `build` makes the client.
///
/// ```
/// use std::time::Duration;
/// use brownout::client::{HttpsConfig, Roots};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brownout::BoxError> {
/// let client = HttpsConfig::new()
///     .connect_timeout(Duration::from_secs(5))
///     .roots(Roots::Webpki)
///     .http2(false)
///     .build()?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HttpsConfig {
    connect_timeout: Duration,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    tcp_keepalive: Option<Duration>,
    http2: bool,
    roots: Roots,
    ca_files: Vec<PathBuf>,
    ca_pems: Vec<Arc<[u8]>>,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        HttpsConfig::new()
    }
}

impl HttpsConfig {
    /// The defaults: connect timeout 10 s (TCP and TLS handshake together), idle
    /// pooled connections closed after 90 s, TCP keepalive every 60 s, HTTP/2 offered
    /// by ALPN with HTTP/1.1 as the fallback, the platform's roots.
    pub fn new() -> Self {
        HttpsConfig {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: usize::MAX,
            tcp_keepalive: Some(Duration::from_secs(60)),
            http2: true,
            roots: Roots::Platform,
            ca_files: Vec::new(),
            ca_pems: Vec::new(),
        }
    }

    /// How long making a connection (DNS, TCP connect and TLS handshake) may take
    /// before it fails with "connect to HOST:PORT timed out after D".
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an idle pooled connection is kept; `None` keeps it until the server
    /// closes it.
    pub fn pool_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle connections are kept per host (HTTP/1.1; one HTTP/2 connection
    /// carries every request to its host).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// TCP keepalive probes on idle connections, so that a NAT or load balancer that
    /// drops silent flows does not leave a dead connection in the pool; `None` turns
    /// them off.
    pub fn tcp_keepalive(mut self, interval: Option<Duration>) -> Self {
        self.tcp_keepalive = interval;
        self
    }

    /// Whether HTTP/2 is offered by ALPN (it is by default; the server chooses, and
    /// HTTP/1.1 is used when it does not take it). Plain `http://` is always HTTP/1.1.
    pub fn http2(mut self, offered: bool) -> Self {
        self.http2 = offered;
        self
    }

    /// Which authorities are trusted besides the added ones.
    pub fn roots(mut self, roots: Roots) -> Self {
        self.roots = roots;
        self
    }

    /// Also trusts the certificates in this PEM file, read by `build`: a corporate
    /// TLS-inspecting proxy's authority, or a test CA.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Also trusts the certificates in this PEM text.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_pems.push(Arc::from(pem.as_ref()));
        self
    }

    /// The client. Fails when a CA file cannot be read or holds no certificate, when
    /// no authority at all is trusted, or on a zero connect timeout.
    pub fn build(self) -> Result<HttpsClient, InvalidConfig> {
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be above zero".into()));
        }
        let roots = self.root_store()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("roots", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = if self.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let https = hyper_rustls::HttpsConnector::from((Tcp::new(self.tcp_keepalive), tls));
        let connector = Connector::new(https, self.connect_timeout);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host);
        Ok(HttpsClient::from_client(builder.build(connector)))
    }

    fn root_store(&self) -> Result<RootCertStore, InvalidConfig> {
        let mut store = RootCertStore::empty();
        match self.roots {
            Roots::Platform => {
                // Certificates the platform has but rustls cannot parse are skipped,
                // as browsers do; a store with none left falls back to the bundle.
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
            Roots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::None => {}
        }
        for path in &self.ca_files {
            let pem = std::fs::read(path)
                .map_err(|e| invalid("ca_file", format!("{}: {e}", path.display())))?;
            add_pem(&mut store, &pem)
                .map_err(|reason| invalid("ca_file", format!("{}: {reason}", path.display())))?;
        }
        for pem in &self.ca_pems {
            add_pem(&mut store, pem).map_err(|reason| invalid("ca_pem", reason))?;
        }
        if store.is_empty() {
            return Err(invalid(
                "roots",
                "no certificate authority is trusted: add a ca_file or use the platform's roots"
                    .into(),
            ));
        }
        Ok(store)
    }
}

fn add_pem(store: &mut RootCertStore, pem: &[u8]) -> Result<(), String> {
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        added += 1;
    }
    if added == 0 {
        return Err("no CERTIFICATE in the PEM".into());
    }
    Ok(())
}

fn invalid(key: &'static str, reason: String) -> InvalidConfig {
    InvalidConfig::new("client", key, reason)
}
