//! The degraded reply: the canned answer for a failed request as a response, with
//! its headers, marks and event, and what it needs of the request.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use brownout_core::{classify::Outcome, event::Event, provider::Api, Body, RequestFacts};
use http::{header, HeaderValue, Method, Request, Response, Uri};

use crate::{
    answer::{id_prefix, Answer},
    request::{self, Said},
    DegradeConfig, DegradeEvent, Degraded,
};

/// The header that marks a degraded answer: `x-brownout-degraded: true`.
pub const DEGRADED_HEADER: &str = "x-brownout-degraded";

/// The header that names the rule of a degraded answer; absent for the generic answer.
pub const DEGRADED_RULE_HEADER: &str = "x-brownout-degraded-rule";

/// The `model` of a degraded answer when the request's model cannot be read.
pub const UNKNOWN_MODEL: &str = "unknown";

/// What a canned answer needs of the request, which the inner service takes.
pub(crate) struct Kept {
    pub(crate) api: Api,
    pub(crate) model: Option<Arc<str>>,
    pub(crate) stream: bool,
    /// The body, for the rules, when it is all in memory.
    pub(crate) body: Option<bytes::Bytes>,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
}

impl Kept {
    pub(crate) fn of(request: &Request<Body>) -> Kept {
        let body = request
            .body()
            .is_replayable()
            .then(|| request.body().bytes().cloned())
            .flatten();
        let (api, model, stream) = match RequestFacts::of(request.extensions()) {
            Some(facts) => (facts.api(), facts.model_arc().cloned(), facts.is_stream()),
            None => (Api::from_path(request.uri().path()), None, false),
        };
        Kept {
            api,
            model,
            stream,
            body,
            method: request.method().clone(),
            uri: request.uri().clone(),
        }
    }
}

/// The canned answer for a failed request.
pub(crate) fn degraded(config: &DegradeConfig, kept: Kept, outcome: Outcome) -> Response<Body> {
    let said = kept
        .body
        .as_deref()
        .map_or_else(Said::default, request::read);
    let rule = said.text.as_deref().and_then(|text| config.rule_for(text));
    let id = config.ids.next(id_prefix(kept.api));
    let answer = Answer {
        api: kept.api,
        stream: kept.stream,
        include_usage: said.include_usage,
        id: &id,
        model: kept.model.as_deref().unwrap_or(UNKNOWN_MODEL),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        text: rule.map_or(&*config.generic, |r| &*r.answer),
    };

    let mut response = Response::new(Body::from_bytes(answer.render()));
    *response.status_mut() = config.status;
    let headers = response.headers_mut();
    if kept.stream {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.insert(DEGRADED_HEADER, HeaderValue::from_static("true"));
    if let Some(rule) = rule {
        headers.insert(DEGRADED_RULE_HEADER, rule.header.clone());
    }
    if let Some(retry_after) = &config.retry_after_header {
        headers.insert(header::RETRY_AFTER, retry_after.clone());
    }
    let rule_name = rule.map(|r| r.name.clone());
    response
        .extensions_mut()
        .insert(Degraded::new(rule_name.clone()));
    config.events.emit(Event::new(
        "degrade",
        &kept.method,
        &kept.uri,
        DegradeEvent::Degraded {
            rule: rule_name,
            outcome: Some(outcome),
        },
    ));
    response
}
