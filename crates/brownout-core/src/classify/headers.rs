//! Server-given delays and retry hints read from response headers.
//!
//! Every parser here is total: a malformed value yields `None` and is ignored.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The longest delay a header may express; anything above is clamped to it. Keeps
/// `Duration` arithmetic far away from overflow whatever the server sends.
const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The delay asked for by `retry-after-ms`, else by `retry-after`.
pub(super) fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| duration_from_secs_f64(ms / 1000.0))
    {
        return Some(ms);
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
///
/// Fractional seconds (`1.5`) are accepted, as the official SDKs accept them. A date in
/// the past is a zero delay. Anything else, negative numbers included, is `None`.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use brownout_core::classify::parse_retry_after;
///
/// assert_eq!(parse_retry_after("7", SystemTime::now()), Some(Duration::from_secs(7)));
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470);
/// assert_eq!(
///     parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
///     Some(Duration::from_secs(10)),
/// );
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return value.parse::<f64>().ok().and_then(duration_from_secs_f64);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(until(at, now))
}

/// Parses a Go `time.Duration` string as OpenAI sends in `x-ratelimit-reset-*`:
/// `6m0s`, `12ms`, `1.5s`, `1h2m3.25s`, `20us`.
///
/// We parse these by hand: the format is a short grammar, and the crates that parse
/// human durations reject fractional units such as `1.5s`, which OpenAI sends.
///
/// ```
/// use std::time::Duration;
/// use brownout_core::classify::parse_go_duration;
///
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("12ms"), Some(Duration::from_millis(12)));
/// assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_go_duration("6 minutes"), None);
/// ```
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    duration_from_secs_f64(total)
}

/// `x-should-retry: true|false`, as the official SDKs read it.
pub(super) fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()?.trim() {
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

const ANTHROPIC_LIMITS: [&str; 4] = ["requests", "tokens", "input-tokens", "output-tokens"];
const OPENAI_LIMITS: [&str; 2] = ["requests", "tokens"];

/// The delay until the hit rate limit resets, from the provider reset headers.
///
/// Limits whose remaining count is `0` were hit: wait for the latest of them. When no
/// remaining count tells, the earliest reset is the best guess.
pub(super) fn reset_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut exhausted: Option<Duration> = None;
    let mut any: Option<Duration> = None;
    let mut note = |delay: Duration, remaining: Option<&str>| {
        any = Some(any.map_or(delay, |d| d.min(delay)));
        if remaining.map(str::trim) == Some("0") {
            exhausted = Some(exhausted.map_or(delay, |d| d.max(delay)));
        }
    };
    for limit in ANTHROPIC_LIMITS {
        let reset = header_str(headers, &format!("anthropic-ratelimit-{limit}-reset"));
        let Some(at) = reset.and_then(parse_rfc3339) else {
            continue;
        };
        let remaining = header_str(headers, &format!("anthropic-ratelimit-{limit}-remaining"));
        note(until(at, now), remaining);
    }
    for limit in OPENAI_LIMITS {
        let reset = header_str(headers, &format!("x-ratelimit-reset-{limit}"));
        let Some(delay) = reset.and_then(parse_go_duration) else {
            continue;
        };
        let remaining = header_str(headers, &format!("x-ratelimit-remaining-{limit}"));
        note(delay, remaining);
    }
    exhausted.or(any)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let at =
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
            .ok()?;
    let nanos = at.unix_timestamp_nanos();
    if nanos >= 0 {
        let nanos = u64::try_from(nanos).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
    } else {
        let nanos = u64::try_from(-nanos).ok()?;
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_nanos(nanos))
    }
}

/// The time from `now` until `at`; zero when `at` has passed.
fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(MAX_DELAY)
}

fn duration_from_secs_f64(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(MAX_DELAY, |d| d.min(MAX_DELAY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_seconds_fraction_and_dates() {
        let now = at(1_445_412_470); // 2015-10-21T07:27:50Z
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "-1",
            "abc",
            "1e3",
            "1..2",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            ".",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        // Absurd values are clamped, never overflow.
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_DELAY)
        );
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("6m0s", Some(Duration::from_secs(360))),
            ("1s", Some(Duration::from_secs(1))),
            ("12ms", Some(Duration::from_millis(12))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("1h2m3s", Some(Duration::from_secs(3723))),
            ("20us", Some(Duration::from_micros(20))),
            ("0", Some(Duration::ZERO)),
            ("", None),
            ("s", None),
            ("5", None),
            ("5x", None),
            ("-1s", None),
            ("1.2.3s", None),
            ("1m 2s", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go_duration(input), want, "{input:?}");
        }
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "250.5"), ("retry-after", "10")]);
        assert_eq!(
            server_delay(&h, at(0)),
            Some(Duration::from_micros(250_500))
        );
        let h = headers(&[("retry-after-ms", "nope"), ("retry-after", "10")]);
        assert_eq!(server_delay(&h, at(0)), Some(Duration::from_secs(10)));
        let h = headers(&[("retry-after-ms", "-5")]);
        assert_eq!(server_delay(&h, at(0)), None);
        let h = headers(&[("retry-after-ms", "NaN")]);
        assert_eq!(server_delay(&h, at(0)), None);
        let h = headers(&[("retry-after-ms", "inf")]);
        assert_eq!(server_delay(&h, at(0)), None);
    }

    #[test]
    fn non_utf8_header_values_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        h.insert(
            "x-should-retry",
            http::HeaderValue::from_bytes(b"\xfftrue").unwrap(),
        );
        assert_eq!(server_delay(&h, at(0)), None);
        assert_eq!(should_retry(&h), None);
    }

    #[test]
    fn should_retry_values() {
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "FALSE")])),
            Some(false)
        );
        assert_eq!(should_retry(&headers(&[("x-should-retry", "maybe")])), None);
        assert_eq!(should_retry(&headers(&[])), None);
    }

    #[test]
    fn anthropic_reset_prefers_the_exhausted_limit() {
        let now = at(1_700_000_000); // 2023-11-14T22:13:20Z
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "12"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:25Z"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:14:20Z"),
        ]);
        assert_eq!(reset_delay(&h, now), Some(Duration::from_secs(60)));
        // Without remaining counts: the earliest reset.
        let h = headers(&[
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:25Z"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2023-11-14T23:14:20+01:00",
            ),
        ]);
        assert_eq!(reset_delay(&h, now), Some(Duration::from_secs(5)));
        // Offsets and fractions are understood.
        let h = headers(&[(
            "anthropic-ratelimit-input-tokens-reset",
            "2023-11-14T23:13:21.5+01:00",
        )]);
        assert_eq!(reset_delay(&h, now), Some(Duration::from_millis(1500)));
        // Garbage is ignored.
        let h = headers(&[("anthropic-ratelimit-tokens-reset", "tomorrow")]);
        assert_eq!(reset_delay(&h, now), None);
    }

    #[test]
    fn openai_reset_durations() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "1000"),
            ("x-ratelimit-reset-tokens", "12ms"),
        ]);
        assert_eq!(reset_delay(&h, at(0)), Some(Duration::from_secs(360)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "12ms"),
        ]);
        assert_eq!(reset_delay(&h, at(0)), Some(Duration::from_millis(12)));
    }
}
