//! Classifying a service's result once, and carrying the outcome outward.
//!
//! The first brownout layer to see a response classifies it: from its head alone
//! when that decides (every success), else after reading a bounded prefix of its
//! error body into the [`Body`], where the caller still finds every byte. The outcome
//! is recorded in the response's extensions, so the layers further out read it there
//! and never read the body again. A response that is a success by its head carries
//! nothing (inserting the first extension of a response costs three allocations):
//! finding no outcome on a 1xx–3xx response means the layer below found it a success.

use std::{error::Error as StdError, fmt, future::Future, pin::Pin, task::Context, task::Poll};

use http::Response;

use super::{Classifier, Classify, Observed, Outcome};
use crate::{body::Body, future::Output, BoxError};

/// How many bytes of an error body the layers read by default to find the provider's
/// error type. Provider error bodies are a few hundred bytes; a longer body is not one
/// of theirs and is classified by its status alone.
pub const DEFAULT_ERROR_BODY_LIMIT: usize = 4 * 1024;

fn is_success_status(status: http::StatusCode) -> bool {
    (100..400).contains(&status.as_u16())
}

/// The outcome a layer further in recorded on `response`, if any.
pub fn recorded<B>(response: &Response<B>) -> Option<&Outcome> {
    response.extensions().get::<Outcome>()
}

/// Records `outcome` on `response` for the layers further out, unless it is the
/// success its status already says.
pub fn record<B>(response: &mut Response<B>, outcome: &Outcome) {
    if outcome.is_success() && is_success_status(response.status()) {
        return;
    }
    response.extensions_mut().insert(outcome.clone());
}

/// Classifies a response from what a layer further in recorded, or from its head
/// alone; `None` when the classifier wants to read the start of its body first (then
/// use [`classify_response`]).
///
/// Lets a layer decide without awaiting anything on the success path.
pub fn classify_head<C, B>(classifier: &C, response: &Response<B>) -> Option<Outcome>
where
    C: Classify + ?Sized,
{
    if let Some(outcome) = recorded(response) {
        return Some(outcome.clone());
    }
    let status = response.status();
    if !is_success_status(status) && classifier.wants_body(status, response.headers()) {
        return None;
    }
    Some(classifier.classify(Observed::Response {
        status,
        headers: response.headers(),
        body: None,
    }))
}

/// Classifies a response, reading at most `limit` bytes of its body when the
/// classifier asks for them, and records the outcome on it (see the
/// [module docs](crate::classify)).
///
/// The returned response carries every byte of the original body: what was read comes
/// first, then the rest. A body whose `content-length` (size hint) is over `limit` is
/// not read at all. A success body is never read. A body that fails while it is read
/// is classified by its head alone, and the failure is handed on in the returned body
/// after the bytes read before it.
pub async fn classify_response<C>(
    classifier: &C,
    mut response: Response<Body>,
    limit: usize,
) -> (Response<Body>, Outcome)
where
    C: Classify + ?Sized,
{
    if let Some(outcome) = classify_head(classifier, &response) {
        if recorded(&response).is_none() {
            record(&mut response, &outcome);
        }
        return (response, outcome);
    }
    let status = response.status();
    let (parts, body) = response.into_parts();
    // Boxed: only error responses get here, and the success path's futures stay small.
    let body = Box::pin(body.buffer(limit)).await;
    let prefix = body.prefix();
    let outcome = classifier.classify(Observed::Response {
        status,
        headers: &parts.headers,
        body: Some(&prefix[..prefix.len().min(limit)]),
    });
    let mut response = Response::from_parts(parts, body);
    record(&mut response, &outcome);
    (response, outcome)
}

/// A classification that reads the start of an error body before it decides: boxed,
/// since only error responses whose head does not decide take it.
pub type Classifying = Pin<Box<dyn Future<Output = (Response<Body>, Outcome)> + Send>>;

/// A service's result classified by the [default classifier](super::DefaultClassifier)
/// without awaiting: what [`classify_now`] gives.
// The large variant is the success path: boxing it would allocate on every response,
// where the small one is already a box.
#[allow(clippy::large_enum_variant)]
pub enum Classification {
    /// Decided from what a layer further in recorded, from the response's head, or
    /// from the error; the response carries the outcome for the layers further out.
    Now(Output, Outcome),
    /// The classifier wants the start of the body: the future reads it and records
    /// the outcome.
    Reading(Classifying),
}

impl fmt::Debug for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classification::Now(_, outcome) => f.debug_tuple("Now").field(outcome).finish(),
            Classification::Reading(_) => f.debug_tuple("Reading").finish_non_exhaustive(),
        }
    }
}

/// Classifies a service's result the way every layer's hand-written response future
/// does on its first look: a response by [`classify_head`] (recording the outcome
/// when no layer further in did), an error by [`classify_error`]; a response whose
/// head does not decide is handed to a boxed [`classify_response`] reading at most
/// [`DEFAULT_ERROR_BODY_LIMIT`] bytes.
///
/// The success path allocates nothing and awaits nothing.
#[inline]
pub fn classify_now(result: Output) -> Classification {
    let classifier = super::DefaultClassifier::new();
    match result {
        Ok(mut response) => match classify_head(&classifier, &response) {
            Some(outcome) => {
                if recorded(&response).is_none() {
                    record(&mut response, &outcome);
                }
                Classification::Now(Ok(response), outcome)
            }
            None => Classification::Reading(Box::pin(async move {
                classify_response(
                    &super::DefaultClassifier::new(),
                    response,
                    DEFAULT_ERROR_BODY_LIMIT,
                )
                .await
            })),
        },
        Err(error) => {
            let outcome = classify_error(&classifier, error.as_ref());
            Classification::Now(Err(error), outcome)
        }
    }
}

/// Classifies an error: the outcome a [`ClassifyLayer`] recorded in it, else the
/// classifier's verdict on its source chain.
pub fn classify_error<C>(classifier: &C, error: &(dyn StdError + Send + Sync + 'static)) -> Outcome
where
    C: Classify + ?Sized,
{
    if let Some(classified) = error.downcast_ref::<ClassifiedError>() {
        return classified.outcome.clone();
    }
    classifier.classify(Observed::Error(error))
}

/// Classifies a service's result: [`classify_response`] for a response,
/// [`classify_error`] for an error, which is handed back untouched.
pub async fn classify_result<C>(
    classifier: &C,
    result: Result<Response<Body>, BoxError>,
    limit: usize,
) -> (Result<Response<Body>, BoxError>, Outcome)
where
    C: Classify + ?Sized,
{
    match result {
        Ok(response) => {
            let (response, outcome) = classify_response(classifier, response, limit).await;
            (Ok(response), outcome)
        }
        Err(error) => {
            let outcome = classify_error(classifier, error.as_ref());
            (Err(error), outcome)
        }
    }
}

/// An error of the service under a [`ClassifyLayer`], with the outcome that layer's
/// classifier gave it. Its [`source`](StdError::source) is the original error, and
/// its Display is the original's.
#[derive(Debug)]
pub struct ClassifiedError {
    outcome: Outcome,
    source: BoxError,
}

impl ClassifiedError {
    /// The outcome the classifier gave.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The original error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for ClassifiedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl StdError for ClassifiedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// Sets the classifier of a whole stack: put it right over your HTTP client,
/// innermost, and every brownout layer above reads the outcome it recorded instead
/// of classifying with [`DefaultClassifier`](super::DefaultClassifier).
///
/// Without it, the innermost brownout layer classifies with the default classifier,
/// and the layers further out read what it recorded: the stack classifies each
/// attempt once either way.
///
/// ```
/// use brownout_core::classify::{ClassifyLayer, DefaultClassifier, Classify, Observed, Outcome, OutcomeKind};
/// use tower::ServiceBuilder;
///
/// let default = DefaultClassifier::new();
/// // This API answers 409 when a lock is busy: treat it as an overload.
/// let classify = ClassifyLayer::new(move |o: Observed<'_>| match o {
///     Observed::Response { status, .. } if status == 409 => Outcome::new(OutcomeKind::Overloaded),
///     other => default.classify(other),
/// });
/// let client = ServiceBuilder::new().layer(classify).service(tower::service_fn(
///     |_: http::Request<brownout_core::body::Body>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(brownout_core::body::Body::empty()))
///     },
/// ));
/// # let _ = client;
/// ```
#[derive(Debug, Clone)]
pub struct ClassifyLayer {
    classifier: Classifier,
    error_body_limit: usize,
}

impl ClassifyLayer {
    /// A layer classifying with `classifier`.
    pub fn new(classifier: impl Classify) -> Self {
        ClassifyLayer {
            classifier: Classifier::new(classifier),
            error_body_limit: DEFAULT_ERROR_BODY_LIMIT,
        }
    }

    /// How many bytes of an error body the classifier may read (default
    /// [`DEFAULT_ERROR_BODY_LIMIT`]).
    pub fn error_body_limit(mut self, bytes: usize) -> Self {
        self.error_body_limit = bytes;
        self
    }
}

impl<S> tower_layer::Layer<S> for ClassifyLayer {
    type Service = Classified<S>;

    fn layer(&self, inner: S) -> Classified<S> {
        Classified {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ClassifyLayer`].
#[derive(Debug, Clone)]
pub struct Classified<S> {
    inner: S,
    layer: ClassifyLayer,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Classified<S>
where
    S: tower_service::Service<http::Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(request.map(Body::new));
        let layer = self.layer.clone();
        Box::pin(async move {
            match future.await.map_err(Into::into) {
                Ok(response) => {
                    let response = response.map(Body::new);
                    let (response, _) =
                        classify_response(&layer.classifier, response, layer.error_body_limit)
                            .await;
                    Ok(response)
                }
                Err(source) => {
                    let outcome = layer.classifier.classify(Observed::Error(source.as_ref()));
                    Err(Box::new(ClassifiedError { outcome, source }) as BoxError)
                }
            }
        })
    }
}
