//! `[observe]`: the gateway's metrics (`GET /metrics`) and status page
//! (`GET /brownout/status`, `GET /brownout/status.json`).
//!
//! With the section on, every pipeline gets an [`ObserveLayer`] outermost (one record
//! and one `tracing` span per request) and an [`AttemptLayer`] right over the HTTP
//! client (one record per upstream call), and the layers send their events to the
//! same sinks: a [`MetricsSink`] recording to a Prometheus recorder of this gateway's
//! own (so that two gateways in one process keep their counts apart), and a
//! [`StatusBoard`]. Label values are bounded by the models of the configured
//! cascades: any other model a caller names is `other`.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use brownout::{
    breaker::BreakerHandle,
    limit::LimitHandle,
    observe::{
        AttemptLayer, MetricsConfig, MetricsSink, ObserveLayer, Sink, SinkListener, Sinks,
        StatusBoard,
    },
    queue::QueueHandle,
    Body,
};
use http::{header, HeaderValue, Method, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::Config;

/// The buckets of `brownout_request_duration_seconds`, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// How many requests pass between two drains of the recorder's histogram samples.
const UPKEEP_EVERY: u64 = 4096;

/// Drains the Prometheus recorder's histogram samples into their buckets every
/// [`UPKEEP_EVERY`] requests (a scrape drains them too): without it a gateway nobody
/// scrapes would keep every sample. One atomic add per request; the drain itself is
/// proportional to the samples since the last one.
struct Upkeep {
    handle: PrometheusHandle,
    exchanges: AtomicU64,
}

impl Sink for Upkeep {
    fn exchange(&self, _: &brownout::observe::Exchange) {
        if self.exchanges.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.handle.run_upkeep();
        }
    }
}

/// The sinks of one gateway, and what serves its pages.
#[derive(Clone)]
pub struct Observability {
    sinks: Arc<Sinks>,
    metrics: Option<(Arc<MetricsSink>, PrometheusHandle)>,
    board: Option<Arc<StatusBoard>>,
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observability")
            .field("metrics", &self.metrics.is_some())
            .field("status", &self.board.is_some())
            .finish()
    }
}

impl Observability {
    /// The sinks `config`'s `[observe]` turns on, or `None` without the section.
    pub(crate) fn new(config: &Config) -> Option<Observability> {
        let observe = config.observe();
        let attached = config.observers.as_ref().filter(|a| !a.sinks.is_empty());
        if !observe.is_on() && attached.is_none() {
            return None;
        }
        let mut models: Vec<Arc<str>> = Vec::new();
        for route in [
            config.messages(),
            config.chat_completions(),
            config.responses(),
        ]
        .into_iter()
        .flatten()
        {
            for target in route.cascade().map_or(&[][..], |c| c.targets()) {
                let model: Arc<str> = Arc::from(target.model());
                if !models.contains(&model) {
                    models.push(model);
                }
            }
        }
        let rules: Vec<Arc<str>> = config
            .degrade
            .as_ref()
            .map(|d| d.rules().iter().map(|r| Arc::from(r.name())).collect())
            .unwrap_or_default();
        let providers: Vec<Arc<str>> = config
            .providers()
            .iter()
            .map(|p| Arc::from(p.name()))
            .collect();
        let mut sinks = Sinks::new();
        let metrics = observe.metrics.then(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&DURATION_BUCKETS)
                .expect("the buckets are not empty")
                .build_recorder();
            // The exporter stamps each histogram sample with quanta's clock, which
            // calibrates itself against the OS clock on first use (some 100,000 clock
            // reads): here, at start, rather than in the first request.
            let _ = quanta::Instant::now();
            let handle = recorder.handle();
            let sink = Arc::new(MetricsSink::with_recorder(
                MetricsConfig::new()
                    .models(models.iter().cloned())
                    .rules(rules)
                    .keys(providers),
                Arc::new(recorder),
            ));
            (sink, handle)
        });
        if let Some((sink, handle)) = &metrics {
            sinks = sinks.with(sink.clone()).with(Arc::new(Upkeep {
                handle: handle.clone(),
                exchanges: AtomicU64::new(0),
            }));
        }
        let board = observe.status.then(|| Arc::new(StatusBoard::new(models)));
        if let Some(board) = &board {
            sinks = sinks.with(board.clone());
        }
        // The availability log and the alert rules (`Observers`), and the alerts'
        // notices on the status page.
        if let Some(attached) = attached {
            sinks = sinks.with(Arc::new(attached.sinks.clone()));
            if let (Some(board), Some(feed)) = (&board, &attached.alerts) {
                board.watch_alerts(feed.clone());
            }
        }
        Some(Observability {
            sinks: Arc::new(sinks),
            metrics,
            board,
        })
    }

    /// Lets the pages read the layers' handles.
    pub(crate) fn watch(
        &self,
        breakers: Option<BreakerHandle>,
        queue: Option<QueueHandle>,
        limits: &[(String, LimitHandle)],
    ) {
        if let Some((metrics, _)) = &self.metrics {
            if let Some(b) = &breakers {
                metrics.watch_breakers(b.clone());
            }
            if let Some(q) = &queue {
                metrics.watch_queue(q.clone());
            }
            for (name, handle) in limits {
                metrics.watch_limits(name.as_str(), handle.clone());
            }
        }
        if let Some(board) = &self.board {
            if let Some(b) = breakers {
                board.watch_breakers(b);
            }
            if let Some(q) = queue {
                board.watch_queue(q);
            }
            for (name, handle) in limits {
                board.watch_limits(name.as_str(), handle.clone());
            }
        }
    }

    /// Every sink, as one.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.sinks.clone()
    }

    /// The listener the layers send their events to.
    pub(crate) fn listener(&self) -> SinkListener {
        SinkListener::new(self.sinks.clone())
    }

    /// The layer over a pipeline.
    pub(crate) fn outer(&self) -> ObserveLayer {
        ObserveLayer::new(self.sinks.clone())
    }

    /// The layer over the HTTP client.
    pub(crate) fn inner(&self) -> AttemptLayer {
        AttemptLayer::new(self.sinks.clone())
    }

    /// The status board, when `[observe] status` is on.
    pub fn status_board(&self) -> Option<&StatusBoard> {
        self.board.as_deref()
    }

    /// The metrics in Prometheus text, when `[observe] metrics` is on.
    pub fn metrics_text(&self) -> Option<String> {
        let (sink, handle) = self.metrics.as_ref()?;
        sink.refresh();
        Some(handle.render())
    }

    /// The gateway's own answer to `GET /metrics`, `GET /brownout/status` or
    /// `GET /brownout/status.json`; `None` for any other path, or when the page is off.
    pub(crate) fn page(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        let (body, content_type) = match path {
            "/metrics" => (
                self.metrics_text()?,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/brownout/status" => (self.board.as_ref()?.html(), "text/html; charset=utf-8"),
            "/brownout/status.json" => (self.board.as_ref()?.json(), "application/json"),
            _ => return None,
        };
        let mut response = if method == Method::GET || method == Method::HEAD {
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                Body::from(body)
            };
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        } else {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(response)
    }
}
