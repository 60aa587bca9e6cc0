//! The simulated upstream on a TCP socket: HTTP/1.1 with hyper.

use std::{fmt, io, net::SocketAddr, time::Duration};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream, ToSocketAddrs},
    task::{JoinHandle, JoinSet},
};
use tower::ServiceExt;

use crate::Sim;

/// A [`Sim`] served over HTTP/1.1, with the same answers as in process.
///
/// The one difference is a `reset` fault: the server drops the connection with a TCP
/// reset (`SO_LINGER` 0) instead of answering, which a client sees as "connection
/// reset by peer".
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
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("sim", &self.sim)
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
        SimServer { listener, sim }
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
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, self.sim.clone()));
                }
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
        Ok(SimServerHandle {
            addr,
            task: tokio::spawn(self.serve()),
        })
    }
}

async fn serve_connection(mut stream: TcpStream, sim: Sim) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| sim.clone().oneshot(request));
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(&mut stream), service)
        .await;
    if let Err(error) = result {
        if is_reset(&error) {
            // Dropping a socket with a zero linger sends RST, not FIN.
            let _ = stream.set_zero_linger();
        } else {
            tracing::debug!(%error, "brownout-sim: connection ended with an error");
        }
    }
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
    task: JoinHandle<()>,
}

impl SimServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
