use std::{
    fmt,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use brownout_core::{
    body::{prepare_now, BodyLimits, Need},
    event::{Event, NotReplayable},
    future::{take_ready, Output},
    Body, BoxError, RequestFacts,
};
use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    cascade::{
        attempt, grow_content_length, retarget_prefix, served, target_parts, Cascade, Spare,
    },
    config::UnknownModels,
    future::ResponseFuture,
    FallbackConfig, FallbackEvent, FallbackLayer, InvalidConfig, NoCascadeReason,
};

/// Sends a request to the next model of a cascade when the current one is overloaded
/// or down. See the [crate docs](crate).
#[derive(Clone)]
pub struct Fallback<S> {
    inner: S,
    /// A clone of `inner`, shared by this service's clones, for the targets after
    /// the first: a request's cascade clones it only when its first target fails,
    /// instead of every request cloning the whole stack inside. Made at the first
    /// call that needs it, and again after [`get_mut`](Self::get_mut). A clone of
    /// it serves as well as a clone of `inner` would: tower services keep what
    /// changes per call (a readiness permit) out of their clones.
    spare: Arc<OnceLock<S>>,
    routes: Arc<[Option<S>]>,
    config: Arc<FallbackConfig>,
}

impl<S> Fallback<S> {
    /// Wraps `inner`, which serves every target.
    pub fn new(inner: S, config: FallbackConfig) -> Self {
        Fallback::from_shared(inner, Arc::new(config))
    }

    pub(crate) fn from_shared(inner: S, config: Arc<FallbackConfig>) -> Self {
        let routes = config.targets.iter().map(|_| None).collect();
        Fallback {
            inner,
            spare: Arc::default(),
            routes,
            config,
        }
    }

    /// A [`FallbackLayer`] with the given settings.
    pub fn layer(config: FallbackConfig) -> FallbackLayer {
        FallbackLayer::new(config)
    }

    /// Serves `model`'s target with `service` instead of the inner service: another
    /// client, pool or endpoint of the same type (box services of different types into
    /// `tower::util::BoxCloneSyncService` to mix them). Fails when `model` is not a
    /// target.
    pub fn target_service(mut self, model: &str, service: S) -> Result<Self, InvalidConfig>
    where
        S: Clone,
    {
        let Some(i) = self.config.targets.iter().position(|t| &*t.model == model) else {
            return Err(FallbackConfig::unknown_target(model));
        };
        let mut routes: Vec<Option<S>> = self.routes.iter().cloned().collect();
        routes[i] = Some(service);
        self.routes = routes.into();
        Ok(self)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. What is changed through it serves the targets
    /// after the first too, from the next call on.
    pub fn get_mut(&mut self) -> &mut S {
        self.spare = Arc::default();
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for Fallback<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routed: Vec<&str> = self
            .config
            .targets
            .iter()
            .zip(self.routes.iter())
            .filter(|(_, r)| r.is_some())
            .map(|(t, _)| &*t.model)
            .collect();
        f.debug_struct("Fallback")
            .field("config", &self.config)
            .field("own_services", &routed)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Fallback<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Buffered once for the whole stack, and the facts read once: a caller's
        // broken or ambiguous body is its own error, answered at once.
        let request = match prepare_now(request, Need::Facts) {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => return ResponseFuture::slow(async move { Err(error) }),
            Err(prepare) => {
                let inner = take_ready(&mut self.inner);
                let routes = self.routes.clone();
                let config = self.config.clone();
                return ResponseFuture::slow(async move {
                    let request = prepare.await?;
                    run(inner, routes, config, request).await
                });
            }
        };
        match self.first(request) {
            Ok(future) => future,
            Err(request) => {
                let inner = take_ready(&mut self.inner);
                ResponseFuture::slow(run(
                    inner,
                    self.routes.clone(),
                    self.config.clone(),
                    request,
                ))
            }
        }
    }
}

impl<S, ResBody> Fallback<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    /// The common case without a box: a request whose body is in memory, for a model
    /// of the cascade that is available and served by the inner service. Its target's
    /// request is sent at once with the service the caller readied; the future keeps
    /// the layer's shared spare for the rest of the cascade, cloned only if a later
    /// target is tried. Anything else is handed back, for [`run`].
    // The `Err` is the request itself, handed back unboxed on purpose: boxing it
    // would add an allocation to the path this function exists to keep lean.
    #[allow(clippy::result_large_err)]
    fn first(&mut self, request: Request<Body>) -> Result<ResponseFuture<S>, Request<Body>> {
        let config = &self.config;
        let Some(start) = RequestFacts::of(request.extensions())
            .and_then(RequestFacts::model)
            .and_then(|model| config.targets.iter().position(|t| *t.model == *model))
        else {
            return Err(request);
        };
        let target = &config.targets[start];
        if self.routes[start].is_some()
            || config
                .health
                .as_ref()
                .is_some_and(|health| !health.is_available(&target.model))
        {
            return Err(request);
        }
        let Some(data) = request
            .body()
            .is_replayable()
            .then(|| request.body().bytes().cloned())
            .flatten()
        else {
            return Err(request);
        };
        let deadline = config.deadline.map(|d| Instant::now() + d);
        let (parts, body) = request.into_parts();
        let inner = &self.inner;
        self.spare.get_or_init(|| inner.clone());
        let cascade = Cascade {
            // For the targets after the first: cloned from the spare, and driven to
            // readiness, only if one is tried.
            inner: Spare::Shared(self.spare.clone()),
            routes: self.routes.clone(),
            config: config.clone(),
            parts,
            data,
            trailers: body.trailers().cloned(),
            start,
            deadline,
        };
        drop(body);
        let future = self.inner.call(cascade.request(target));
        Ok(ResponseFuture::first(future, cascade))
    }
}

async fn run<S, ResBody>(
    inner: S,
    routes: Arc<[Option<S>]>,
    config: Arc<FallbackConfig>,
    request: Request<Body>,
) -> Output
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let deadline = config.deadline.map(|d| Instant::now() + d);
    let (parts, body) = request.into_parts();
    let event = |data: FallbackEvent| Event::new("fallback", &parts.method, &parts.uri, data);
    // Borrowed, not cloned: every target's head is a clone of `parts`, and carries
    // these facts with it when its model is the requested one.
    let head_facts;
    let facts = match RequestFacts::of(&parts.extensions) {
        Some(facts) => facts,
        None => {
            head_facts = RequestFacts::of_head(&parts);
            &head_facts
        }
    };
    // A request for one of the targets starts the cascade there: never an upgrade.
    let requested = facts
        .model()
        .and_then(|model| config.targets.iter().position(|t| *t.model == *model));
    let pass_through = requested.is_none() && config.unknown_models == UnknownModels::PassThrough;
    let start = requested.unwrap_or(0);
    // The service of the one target a request goes to without a cascade. The caller
    // readied the inner service, not a target's own one.
    let once = |at: usize, inner: S| match &routes[at] {
        Some(own) => (own.clone(), false),
        None => (inner, true),
    };

    let replayable = body
        .is_replayable()
        .then(|| body.bytes().cloned())
        .flatten();
    let Some(data) = replayable else {
        // Too long to buffer: sent once, to the cascade's first target, its model
        // (read from the bytes read ahead) written into those bytes.
        let limit = body
            .over_limit()
            .unwrap_or_else(|| BodyLimits::of(&parts.extensions).replay_limit_bytes());
        let reason = NoCascadeReason::NotReplayable(NotReplayable::BodyTooLarge { limit });
        config
            .events
            .emit(event(FallbackEvent::NoCascade { reason }));
        let at = if pass_through { 0 } else { start };
        let (mut service, ready) = once(at, inner);
        let target = &config.targets[at];
        let request = if pass_through {
            Request::from_parts(parts, body)
        } else {
            let mut parts = target_parts(&parts, target, None);
            let (body, change) = retarget_prefix(facts, body, target);
            if let Some((grown, new_facts)) = change {
                grow_content_length(&mut parts, grown);
                parts.extensions.insert(new_facts);
            }
            Request::from_parts(parts, body)
        };
        let (result, _) = attempt(&mut service, ready, &config, request, deadline).await;
        return if pass_through {
            result
        } else {
            served(result, &config, target, 0)
        };
    };
    let trailers = body.trailers().cloned();

    if facts.model().is_none() {
        config.events.emit(event(FallbackEvent::NoCascade {
            reason: NoCascadeReason::NoModel,
        }));
        let (mut service, ready) = once(0, inner);
        let first = &config.targets[0];
        let request = Request::from_parts(target_parts(&parts, first, None), body);
        let (result, _) = attempt(&mut service, ready, &config, request, deadline).await;
        return served(result, &config, first, 0);
    }
    if pass_through {
        config.events.emit(event(FallbackEvent::NoCascade {
            reason: NoCascadeReason::NotATarget,
        }));
        let (mut service, ready) = once(0, inner);
        let request = Request::from_parts(parts, body);
        let (result, _) = attempt(&mut service, ready, &config, request, deadline).await;
        return result;
    }
    drop(body);
    let cascade = Cascade {
        // The inner service was driven to readiness by the caller: its first use
        // skips `ready`, later uses wait for it.
        inner: Spare::Own {
            service: inner,
            ready: true,
        },
        routes,
        config,
        parts,
        data,
        trailers,
        start,
        deadline,
    };
    cascade.run(0, Vec::new(), Vec::new(), None).await
}
