//! The simulated upstream on a TCP socket: HTTP/1.1 with hyper, or TLS with HTTP/2 by
//! ALPN and HTTP/1.1 otherwise.

use std::{fmt, io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, ToSocketAddrs},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::Sim;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Sim`] served over HTTP/1.1 (or over [TLS](SimServer::tls)), with the same
/// answers as in process.
///
/// The one difference is a `reset` fault: the server drops the connection with a TCP
/// reset (`SO_LINGER` 0) instead of answering, which a client sees as "connection
/// reset by peer". Over HTTP/2 the same fault resets the request's stream only.
///
/// ```no_run
/// use brownout_sim::{Script, Sim, SimServer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let server = SimServer::bind("127.0.0.1:0", Sim::new(Script::outage())).await?;
/// println!("listening on http://{}", server.local_addr()?);
/// server.serve().await;
/// # Ok(()) }
/// ```
pub struct SimServer {
    listener: TcpListener,
    sim: Sim,
    tls: Option<TlsAcceptor>,
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("sim", &self.sim)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl SimServer {
    /// Binds `addr` (`"127.0.0.1:0"` picks a free port).
    pub async fn bind(addr: impl ToSocketAddrs, sim: Sim) -> io::Result<SimServer> {
        Ok(SimServer::from_listener(
            TcpListener::bind(addr).await?,
            sim,
        ))
    }

    /// Serves on a listener already bound.
    pub fn from_listener(listener: TcpListener, sim: Sim) -> SimServer {
        SimServer {
            listener,
            sim,
            tls: None,
        }
    }

    /// Serves TLS with `tls`'s certificate instead of plain HTTP: HTTP/2 when the
    /// client offers it by ALPN (unless [turned off](SimTls::http2)), HTTP/1.1
    /// otherwise.
    ///
    /// ```no_run
    /// use brownout_sim::{Script, Sim, SimServer, SimTls};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let tls = SimTls::self_signed()?;
    /// tls.write_ca("sim-ca.pem")?; // what clients trust (their `ca_file`)
    /// let server = SimServer::bind("127.0.0.1:0", Sim::new(Script::outage())).await?.tls(tls);
    /// let server = server.spawn()?;
    /// println!("listening on {}", server.url()); // https://127.0.0.1:PORT
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: SimTls) -> SimServer {
        self.tls = Some(TlsAcceptor::from(Arc::new(tls.config)));
        self
    }

    /// Whether it serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The simulator it serves.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// Accepts and serves connections until the future is dropped; dropping it closes
    /// every connection. Accept errors (such as running out of file descriptors) are
    /// logged and retried after a short pause.
    pub async fn serve(self) {
        let mut connections = JoinSet::new();
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match &self.tls {
                    None => {
                        connections.spawn(serve_connection(stream, self.sim.clone()));
                    }
                    Some(tls) => {
                        connections.spawn(serve_tls(stream, tls.clone(), self.sim.clone()));
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "brownout-sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            while connections.try_join_next().is_some() {}
        }
    }

    /// Serves on a new task of the current runtime; the server stops when the handle
    /// is dropped or [shut down](SimServerHandle::shutdown).
    pub fn spawn(self) -> io::Result<SimServerHandle> {
        let addr = self.local_addr()?;
        let tls = self.is_tls();
        Ok(SimServerHandle {
            addr,
            tls,
            task: tokio::spawn(self.serve()),
        })
    }
}

async fn serve_connection(mut stream: TcpStream, sim: Sim) {
    let _ = stream.set_nodelay(true);
    if let Err(error) = serve_http1(&mut stream, sim).await {
        if is_reset(&error) {
            // Dropping a socket with a zero linger sends RST, not FIN.
            let _ = stream.set_zero_linger();
        } else {
            tracing::debug!(%error, "brownout-sim: connection ended with an error");
        }
    }
}

async fn serve_tls(stream: TcpStream, tls: TlsAcceptor, sim: Sim) {
    let _ = stream.set_nodelay(true);
    let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%error, "brownout-sim: tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("brownout-sim: tls handshake timed out");
            return;
        }
    };
    let result = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let service = hyper::service::service_fn(move |request| sim.clone().oneshot(request));
        http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(&mut stream), service)
            .await
    } else {
        serve_http1(&mut stream, sim).await
    };
    if let Err(error) = result {
        if is_reset(&error) {
            let _ = stream.get_ref().0.set_zero_linger();
        } else {
            tracing::debug!(%error, "brownout-sim: connection ended with an error");
        }
    }
}

async fn serve_http1<S>(stream: &mut S, sim: Sim) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let service = hyper::service::service_fn(move |request| sim.clone().oneshot(request));
    http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// Whether the connection ended because the simulator chose to reset it.
fn is_reset(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::ConnectionReset;
        }
        source = error.source();
    }
    false
}

/// A running [`SimServer`]. Dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct SimServerHandle {
    addr: SocketAddr,
    tls: bool,
    task: JoinHandle<()>,
}

impl SimServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` when it
    /// serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops the server and closes its connections.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for SimServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The certificate a TLS [`SimServer`] presents: one read from PEM files, or one made
/// at run time ([`self_signed`](SimTls::self_signed)) with its own certificate
/// authority, whose certificate clients are given to trust.
///
/// The server side uses rustls on the aws-lc-rs provider, as brownout's client does.
#[derive(Clone)]
pub struct SimTls {
    config: rustls::ServerConfig,
    ca_pem: Option<String>,
}

impl fmt::Debug for SimTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTls")
            .field("alpn", &self.config.alpn_protocols)
            .field("self_signed", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl SimTls {
    /// A certificate authority made now, and a certificate it signed for `localhost`,
    /// `127.0.0.1` and `::1`, valid from yesterday for a year. The authority's key is
    /// dropped: nothing else can be signed with it.
    pub fn self_signed() -> io::Result<SimTls> {
        SimTls::self_signed_for(&["localhost", "127.0.0.1", "::1"])
    }

    /// [`self_signed`](SimTls::self_signed), for other names (DNS names or IP
    /// addresses).
    pub fn self_signed_for(names: &[&str]) -> io::Result<SimTls> {
        let (ca, chain, key) = make_certificates(names).map_err(io::Error::other)?;
        let mut tls = SimTls::from_der(chain, key)?;
        tls.ca_pem = Some(ca);
        Ok(tls)
    }

    /// The certificate chain (leaf first) and private key in PEM.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> io::Result<SimTls> {
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(invalid(
                "certificate chain: no CERTIFICATE in the PEM".into(),
            ));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid(format!("private key: {e}")))?;
        SimTls::from_der(chain, key)
    }

    /// The certificate chain (leaf first) and private key in PEM files.
    pub fn from_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<SimTls> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        SimTls::from_pem(&read(cert_chain.as_ref())?, &read(key.as_ref())?)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> io::Result<SimTls> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(SimTls {
            config,
            ca_pem: None,
        })
    }

    /// Whether HTTP/2 is offered by ALPN (it is by default). Without it, every client
    /// gets HTTP/1.1.
    pub fn http2(mut self, offered: bool) -> SimTls {
        self.config.alpn_protocols = if offered {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        self
    }

    /// The PEM of the certificate authority that signed a
    /// [`self_signed`](SimTls::self_signed) certificate; `None` for one read from files.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Writes [`ca_pem`](SimTls::ca_pem) to `path`, for clients to trust (a gateway's
    /// `ca_file`).
    pub fn write_ca(&self, path: impl AsRef<Path>) -> io::Result<()> {
        match &self.ca_pem {
            Some(pem) => std::fs::write(path, pem),
            None => Err(invalid(
                "the certificate was read from files: it has no CA of its own to write".into(),
            )),
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A CA's PEM, and a leaf for `names` signed by it (DER chain and key).
fn make_certificates(
    names: &[&str],
) -> Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let (not_before, not_after) = (
        now - time::Duration::days(1),
        now + time::Duration::days(365),
    );

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own, so that two CAs made in one test are told apart by name
    // (a client then says "UnknownIssuer", not "BadSignature").
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("brownout-sim test CA {:016x}", fastrand::u64(..)),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "brownout-sim");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    Ok((ca.pem(), vec![cert.der().clone()], key))
}
