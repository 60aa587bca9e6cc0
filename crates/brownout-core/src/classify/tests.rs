//! The classification table: every status, body and header case the layers rely on.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::*;
use crate::error::{AttemptTimedOut, DeadlineExceeded};

const ANTHROPIC_OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
const ANTHROPIC_RATE_LIMIT: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
const ANTHROPIC_API_ERROR: &str =
    r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;
const ANTHROPIC_INVALID: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
const OPENAI_RATE_LIMIT: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500, Used 500, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const OPENAI_OVERLOADED: &str = r#"{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}"#;

fn fixed_now() -> SystemTime {
    // 2023-11-14T22:13:20Z
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn classifier() -> DefaultClassifier {
    DefaultClassifier::new().wall_clock(fixed_now)
}

fn classify(status: u16, headers: &[(&str, &str)], body: &str) -> Outcome {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let status = StatusCode::from_u16(status).unwrap();
    let c = classifier();
    let body = c.wants_body(status, &map).then_some(body.as_bytes());
    c.classify(Observed::Response {
        status,
        headers: &map,
        body,
    })
}

#[test]
fn status_table() {
    use OutcomeKind::*;
    let cases: &[(u16, OutcomeKind, bool)] = &[
        (200, Success, false),
        (201, Success, false),
        (204, Success, false),
        (304, Success, false),
        (400, ClientError, false),
        (401, ClientError, false),
        (403, ClientError, false),
        (404, ClientError, false),
        (409, ClientError, false),
        (413, ClientError, false),
        (422, ClientError, false),
        (408, Timeout, true),
        (429, RateLimited, true),
        (500, ServerError, true),
        (501, ServerError, true),
        (502, ServerError, true),
        (503, Overloaded, true),
        (504, Timeout, true),
        (529, Overloaded, true),
        (599, ServerError, true),
    ];
    for &(status, kind, retryable) in cases {
        let outcome = classify(status, &[], "");
        assert_eq!(outcome.kind(), kind, "status {status}");
        assert_eq!(outcome.is_retryable(), retryable, "status {status}");
        assert_eq!(
            outcome.status(),
            Some(StatusCode::from_u16(status).unwrap())
        );
        assert_eq!(outcome.server_delay(), None);
    }
}

#[test]
fn anthropic_bodies() {
    let o = classify(529, &[], ANTHROPIC_OVERLOADED);
    assert_eq!(
        (o.kind(), o.error_type()),
        (OutcomeKind::Overloaded, Some("overloaded_error"))
    );
    // Overloaded reported under a 500 is still an overload.
    let o = classify(500, &[], ANTHROPIC_OVERLOADED);
    assert_eq!(o.kind(), OutcomeKind::Overloaded);
    let o = classify(500, &[], ANTHROPIC_API_ERROR);
    assert_eq!(
        (o.kind(), o.error_type()),
        (OutcomeKind::ServerError, Some("api_error"))
    );
    let o = classify(429, &[("retry-after", "17")], ANTHROPIC_RATE_LIMIT);
    assert_eq!(o.kind(), OutcomeKind::RateLimited);
    assert!(o.is_retryable());
    assert_eq!(o.server_delay(), Some(Duration::from_secs(17)));
    // 4xx bodies are not read: the status alone decides.
    let o = classify(400, &[], ANTHROPIC_INVALID);
    assert_eq!((o.kind(), o.error_type()), (OutcomeKind::ClientError, None));
    assert!(!o.is_retryable());
}

#[test]
fn openai_quota_is_never_retried_but_rate_limits_are() {
    let o = classify(429, &[], OPENAI_QUOTA);
    assert_eq!(o.kind(), OutcomeKind::ClientError);
    assert_eq!(o.error_type(), Some("insufficient_quota"));
    assert!(!o.is_retryable());
    assert!(!o.kind().is_upstream_failure());

    let o = classify(429, &[("retry-after-ms", "1500")], OPENAI_RATE_LIMIT);
    assert_eq!(o.kind(), OutcomeKind::RateLimited);
    assert_eq!(o.error_type(), Some("rate_limit_exceeded"));
    assert_eq!(o.server_delay(), Some(Duration::from_millis(1500)));

    let o = classify(503, &[], OPENAI_OVERLOADED);
    assert_eq!(o.kind(), OutcomeKind::Overloaded);
    assert!(o.is_retryable());
}

#[test]
fn x_should_retry_overrides_both_ways() {
    let o = classify(529, &[("x-should-retry", "false")], ANTHROPIC_OVERLOADED);
    assert_eq!(o.kind(), OutcomeKind::Overloaded, "the kind is kept");
    assert!(!o.is_retryable());
    let o = classify(409, &[("x-should-retry", "true")], "");
    assert_eq!(o.kind(), OutcomeKind::ClientError);
    assert!(o.is_retryable());
    let o = classify(529, &[("x-should-retry", "perhaps")], "");
    assert!(o.is_retryable(), "a malformed override is ignored");
    // A success stays a success whatever the header says.
    let o = classify(200, &[("x-should-retry", "true")], "");
    assert!(o.is_success());
}

#[test]
fn delays_from_headers() {
    let o = classify(503, &[("retry-after", "Tue, 14 Nov 2023 22:13:50 GMT")], "");
    assert_eq!(o.server_delay(), Some(Duration::from_secs(30)));
    let o = classify(529, &[("retry-after-ms", "250"), ("retry-after", "9")], "");
    assert_eq!(o.server_delay(), Some(Duration::from_millis(250)));
    // Reset headers apply to rate limits only: Anthropic sends them on every response.
    let reset = [
        ("anthropic-ratelimit-tokens-remaining", "0"),
        ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:45Z"),
    ];
    assert_eq!(
        classify(429, &reset, ANTHROPIC_RATE_LIMIT).server_delay(),
        Some(Duration::from_secs(25))
    );
    assert_eq!(
        classify(529, &reset, ANTHROPIC_OVERLOADED).server_delay(),
        None
    );
    let openai = [
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ];
    assert_eq!(
        classify(429, &openai, OPENAI_RATE_LIMIT).server_delay(),
        Some(Duration::from_secs(360))
    );
    // retry-after wins over reset headers.
    let mut both = openai.to_vec();
    both.push(("retry-after", "2"));
    assert_eq!(
        classify(429, &both, OPENAI_RATE_LIMIT).server_delay(),
        Some(Duration::from_secs(2))
    );
}

#[test]
fn malformed_headers_and_bodies_are_ignored() {
    for body in [
        "",
        "<html>Bad Gateway</html>",
        "{",
        "null",
        "{\"error\":[1,2]}",
        "\u{0}",
    ] {
        let o = classify(
            502,
            &[("retry-after", "later"), ("retry-after-ms", "-3")],
            body,
        );
        assert_eq!(o.kind(), OutcomeKind::ServerError, "{body:?}");
        assert_eq!(o.server_delay(), None);
        assert_eq!(o.error_type(), None);
    }
    let o = classify(
        429,
        &[
            ("anthropic-ratelimit-requests-reset", "not a time"),
            ("x-ratelimit-reset-requests", "6 minutes"),
        ],
        "{\"error\":{\"code\":17}}",
    );
    assert_eq!(o.kind(), OutcomeKind::RateLimited);
    assert_eq!(o.server_delay(), None);
}

#[derive(Debug)]
struct Wrapped(Box<dyn std::error::Error + Send + Sync>);
impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client error")
    }
}
impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[test]
fn transport_errors() {
    use std::io::{Error, ErrorKind};
    let c = classifier();
    let kind = |e: &(dyn std::error::Error + 'static)| c.classify(Observed::Error(e)).kind();

    assert_eq!(
        kind(&Error::from(ErrorKind::TimedOut)),
        OutcomeKind::Timeout
    );
    assert_eq!(
        kind(&AttemptTimedOut::new(Duration::from_secs(1))),
        OutcomeKind::Timeout
    );
    assert_eq!(
        kind(&DeadlineExceeded::new(Duration::from_secs(1), 2)),
        OutcomeKind::Timeout
    );
    assert_eq!(
        kind(&tower::timeout::error::Elapsed::new()),
        OutcomeKind::Timeout
    );
    // A timeout deep in the source chain, as hyper and reqwest wrap them.
    let deep = Wrapped(Box::new(Wrapped(Box::new(Error::from(
        ErrorKind::TimedOut,
    )))));
    assert_eq!(kind(&deep), OutcomeKind::Timeout);

    for k in [
        ErrorKind::ConnectionRefused,
        ErrorKind::ConnectionReset,
        ErrorKind::BrokenPipe,
    ] {
        let o = c.classify(Observed::Error(&Error::from(k)));
        assert_eq!(o.kind(), OutcomeKind::ConnectionFailed);
        assert!(o.is_retryable());
        assert_eq!(o.status(), None);
    }
    let other = Wrapped(Box::new(Error::other("dns")));
    assert_eq!(kind(&other), OutcomeKind::ConnectionFailed);
}

#[tokio::test]
async fn tokio_elapsed_is_a_timeout() {
    let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
        .await
        .unwrap_err();
    let o = classifier().classify(Observed::Error(&elapsed));
    assert_eq!(o.kind(), OutcomeKind::Timeout);
}

#[test]
fn closures_classify() {
    let c = Classifier::new(|o: Observed<'_>| match o {
        Observed::Response { status, .. } if status == StatusCode::CONFLICT => {
            Outcome::new(OutcomeKind::Overloaded)
        }
        other => DefaultClassifier::new().classify(other),
    });
    let headers = HeaderMap::new();
    let observed = |status| Observed::Response {
        status,
        headers: &headers,
        body: None,
    };
    assert_eq!(
        c.classify(observed(StatusCode::CONFLICT)).kind(),
        OutcomeKind::Overloaded
    );
    assert_eq!(
        c.classify(observed(StatusCode::BAD_REQUEST)).kind(),
        OutcomeKind::ClientError
    );
}

fn response(status: u16, body: impl Into<Bytes>) -> Response<crate::body::Body> {
    Response::builder()
        .status(status)
        .body(crate::body::Body::new(
            // A body that streams (a `Full` would be taken as bytes at once).
            Full::new(body.into()).map_err(|never| -> std::convert::Infallible { match never {} }),
        ))
        .unwrap()
}

#[tokio::test]
async fn success_bodies_are_never_read() {
    // A classifier that would notice a body.
    let c = |o: Observed<'_>| match o {
        Observed::Response { body: Some(_), .. } => panic!("success body read"),
        other => DefaultClassifier::new().classify(other),
    };
    let (res, outcome) = classify_response(&c, response(200, "hello"), 4096).await;
    assert!(outcome.is_success());
    assert_eq!(res.body().prefix(), b"", "nothing was read ahead");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
}

#[tokio::test]
async fn error_bodies_are_read_bounded_and_kept_intact() {
    let (res, outcome) =
        classify_response(&classifier(), response(529, ANTHROPIC_OVERLOADED), 4096).await;
    assert_eq!(outcome.error_type(), Some("overloaded_error"));
    assert!(res.body().is_replayable());
    assert_eq!(
        recorded(&res).map(Outcome::kind),
        Some(OutcomeKind::Overloaded),
        "the outcome travels outward with the response"
    );
    // A layer further out reads the recorded outcome and not the body.
    let never = |_: Observed<'_>| -> Outcome { panic!("classified twice") };
    assert_eq!(
        classify_head(&never, &res).map(|o| o.kind()),
        Some(OutcomeKind::Overloaded)
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        ANTHROPIC_OVERLOADED
    );

    // Over the limit: not parsed (the status decides), and every byte still arrives.
    let mut big = String::from(r#"{"type":"error","error":{"type":"overloaded_error","message":""#);
    big.push_str(&"x".repeat(10_000));
    big.push_str("\"}}");
    let (res, outcome) = classify_response(&classifier(), response(500, big.clone()), 4096).await;
    assert_eq!(outcome.kind(), OutcomeKind::ServerError);
    assert_eq!(outcome.error_type(), None);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), big);
}

#[tokio::test]
async fn classify_result_keeps_the_error() {
    let result: Result<Response<crate::body::Body>, crate::BoxError> = Err(Box::new(
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    ));
    let (result, outcome) = classify_result(&classifier(), result, 4096).await;
    assert_eq!(outcome.kind(), OutcomeKind::ConnectionFailed);
    let error = result.unwrap_err();
    assert_eq!(
        error.downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[test]
fn outcome_display() {
    let o = classify(529, &[], ANTHROPIC_OVERLOADED);
    assert_eq!(o.to_string(), "overloaded (529 overloaded_error)");
    assert_eq!(Outcome::new(OutcomeKind::Timeout).to_string(), "timeout");
}

#[test]
fn a_layers_refusal_is_a_rejection_with_its_delay() {
    /// A layer's own error, holding the core marker as its source.
    #[derive(Debug)]
    struct Refused(crate::error::Rejected);
    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("refused")
        }
    }
    impl std::error::Error for Refused {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let boxed: crate::BoxError = Box::new(Refused(crate::error::Rejected::new(Some(
        Duration::from_secs(12),
    ))));
    let o = classifier().classify(Observed::Error(boxed.as_ref()));
    assert_eq!(o.kind(), OutcomeKind::Rejected);
    assert!(o.is_retryable());
    assert!(
        !o.kind().is_upstream_failure(),
        "a breaker does not count another's refusal"
    );
    assert_eq!(o.server_delay(), Some(Duration::from_secs(12)));
}

#[test]
fn statuses_outside_100_to_599_are_failures() {
    let o = classify(641, &[], "");
    assert_eq!(o.kind(), OutcomeKind::ServerError);
    assert!(o.kind().is_upstream_failure());
    assert!(o.is_retryable());
    let c = classifier();
    let res = http::Response::builder().status(641).body(()).unwrap();
    assert_eq!(
        classify_head(&c, &res).map(|o| o.kind()),
        Some(OutcomeKind::ServerError)
    );
}

#[test]
fn the_callers_broken_body_is_a_client_error() {
    let cut: crate::BoxError = Box::new(crate::error::BrokenBody::cut("reset".into()));
    // Wrapped, as an HTTP client returns it.
    #[derive(Debug)]
    struct ClientError(crate::BoxError);
    impl std::fmt::Display for ClientError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl std::error::Error for ClientError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }
    let wrapped: crate::BoxError = Box::new(ClientError(cut));
    // In an io::Error, whose own `source` skips the error it wraps (an upstream that
    // reads the body with io, such as brownout-sim).
    let in_io: crate::BoxError = Box::new(std::io::Error::other(crate::error::BrokenBody::cut(
        "reset".into(),
    )));
    assert!(crate::error::find::<crate::error::BrokenBody>(in_io.as_ref()).is_some());
    for e in [
        wrapped,
        in_io,
        Box::new(crate::error::BrokenBody::stalled(Duration::from_secs(30))) as crate::BoxError,
    ] {
        let o = classifier().classify(Observed::Error(e.as_ref()));
        assert_eq!(o.kind(), OutcomeKind::ClientError, "{e}");
        assert!(!o.is_retryable());
    }
}
