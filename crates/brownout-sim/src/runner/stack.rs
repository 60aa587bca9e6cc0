//! The client stacks a runner compares, given from outside.

use std::{fmt, sync::Arc};

use brownout_core::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{util::BoxCloneService, Service, ServiceExt};

use crate::Sim;

/// A client stack built over a simulator, type-erased: what a [`Stack`] makes. Its
/// responses carry a [`brownout_core::Body`], the one body of every brownout layer
/// (any other body is wrapped with [`brownout_core::Body::new`]).
pub type Client = BoxCloneService<Request<Full<Bytes>>, Response<brownout_core::Body>, BoxError>;

type Make = dyn Fn(Sim) -> Client + Send + Sync;

/// A client stack for the [`Runner`](super::Runner) to measure: its name in reports,
/// and how to build it over a fresh [`Sim`].
///
/// The simulator ships one, [`Stack::naive`]; any other is given by the caller, such
/// as a retry layer over the simulator:
///
/// ```
/// use brownout_retry::{RetryConfig, RetryLayer};
/// use brownout_sim::{runner::Stack, Script, Sim};
/// use tower::Layer;
///
/// // Up to 6 attempts, exponential backoff with full jitter, no budget; the jitter
/// // seeded with the script's seed, so that runs repeat.
/// let retry_only = Stack::new("retry-only", |sim: Sim| {
///     let seed = sim.script().seed_value();
///     RetryLayer::new(RetryConfig::new().max_attempts(6).no_budget().seed(seed)).layer(sim)
/// });
/// assert_eq!(retry_only.name(), "retry-only");
/// # let _client = retry_only.build(Sim::new(Script::new()));
/// ```
///
/// A factory is called once per run, with the run's own simulator: the stack is built
/// fresh each time, so no state (a breaker's, a cache's) carries over from one run to
/// the next.
#[derive(Clone)]
pub struct Stack {
    name: Arc<str>,
    make: Arc<Make>,
}

impl Stack {
    /// A stack named `name` (its column in [`table`](super::table), its
    /// [`Report::stack`](super::Report::stack)), built over each run's simulator by
    /// `make`.
    pub fn new<F, S, B>(name: impl Into<Arc<str>>, make: F) -> Stack
    where
        F: Fn(Sim) -> S + Send + Sync + 'static,
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Stack {
            name: name.into(),
            make: Arc::new(move |sim: Sim| {
                BoxCloneService::new(
                    make(sim)
                        .map_response(|response: Response<B>| {
                            response.map(brownout_core::Body::new)
                        })
                        .map_err(Into::into),
                )
            }),
        }
    }

    /// The naive client, `"naive"`: each request sent once, straight to the upstream.
    pub fn naive() -> Stack {
        Stack::new("naive", |sim: Sim| sim)
    }

    /// The stack's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Builds the stack over `sim`.
    pub fn build(&self, sim: Sim) -> Client {
        (self.make)(sim)
    }
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
