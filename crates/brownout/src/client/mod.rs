//! A ready HTTPS client to put under brownout's layers: hyper-util's pooled client
//! over rustls, HTTP/2 by ALPN with HTTP/1.1 as the fallback, the platform's roots.
//!
//! ```no_run
//! use brownout::{client::HttpsClient, retry::RetryConfig, ServiceBuilderExt};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brownout::BoxError> {
//! let api = ServiceBuilder::new()
//!     .retry_with_jitter(RetryConfig::new())
//!     .service(HttpsClient::new()?);
//! let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!     .header("x-api-key", std::env::var("ANTHROPIC_API_KEY")?)
//!     .header("anthropic-version", "2023-06-01")
//!     .header("content-type", "application/json")
//!     .body(brownout::Body::from(
//!         r#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#,
//!     ))?;
//! let response = api.oneshot(request).await?;
//! println!("{} over {:?}", response.status(), response.version());
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! When the application has no HTTP client of its own yet, or has hyper-util's: this
//! is that client, set up for an LLM provider. An application on reqwest keeps its
//! client and uses [`reqwest_bridge`](crate::reqwest_bridge) or
//! [`reqwest_middleware`](crate::reqwest_middleware) instead. It goes innermost, under
//! every layer; it takes any request body and hands the layers [`Body`](crate::Body).
//!
//! # On failure
//!
//! A connection that cannot be made is a [`ConnectError`] that says where and why, up
//! to the caller and into the logs: `tls handshake with api.anthropic.com failed:
//! invalid peer certificate: UnknownIssuer`, `connect to 10.0.0.1:443 timed out after
//! 10s`, `tls handshake with 127.0.0.1 failed: received corrupt message of type
//! InvalidContentType (is 127.0.0.1:8787 serving plain http? …)`. It classifies as a
//! [`ConnectionFailed`](crate::OutcomeKind::ConnectionFailed) (retried, a reason to
//! fall back), and [`ConnectError::is_certificate`] tells a certificate that did not
//! verify. A request that fails on a made connection is a [`RequestError`] naming the
//! upstream and the cause, whose source chain keeps hyper's error (a timeout under it
//! still classifies as a timeout). A request with a relative URI is the caller's
//! [`InvalidRequest`](crate::error::InvalidRequest), never sent.
//!
//! # The choices made
//!
//! - **rustls on aws-lc-rs.** rustls needs one crypto provider; aws-lc-rs is the one
//!   rustls and reqwest 0.13 enable by default, so an application that also has
//!   reqwest builds one provider, not two. It also brings the post-quantum hybrid key
//!   exchange rustls offers first, and a FIPS build for those who need one. Its C
//!   part builds with the `cc` crate alone on Linux and macOS (no cmake, no nasm):
//!   about 45 s of a cold build on two cores, once. `ring` would build faster and is
//!   smaller, but would be a second provider next to reqwest's.
//! - **Roots**: the platform's ([`Roots::Platform`], `rustls-native-certs`), so that a
//!   company's own authority installed on the machine is trusted, with Mozilla's
//!   bundle (`webpki-roots`) when the platform has none (a scratch container);
//!   [`Roots::Webpki`] takes the bundle alone. [`HttpsConfig::ca_file`] adds an
//!   authority, for a TLS-inspecting proxy or a test CA.
//! - **HTTP/2 by ALPN** (`h2`, then `http/1.1`): the providers speak both; one HTTP/2
//!   connection carries every concurrent request, which matters under a retry storm.
//!   [`HttpsConfig::http2`] turns the offer off.
//! - **Connect timeout 10 s** over DNS, TCP and the handshake together (the default
//!   connect timeout of the official SDKs is longer, but a connect that takes 10 s is
//!   better retried elsewhere); **idle pooled connections closed after 90 s**, before
//!   the providers' load balancers drop them silently; **TCP keepalive 60 s**; Nagle
//!   off.

mod config;
mod connect;
mod error;
mod service;

pub use config::{HttpsConfig, Roots};
pub use error::{ConnectError, RequestError};
pub use service::{HttpsClient, ResponseFuture};
