//! The host key of a request, the fallback of every keying.

use http::{header, HeaderMap, Uri};

/// The request's host: from the URI's authority, else the `host` header, else
/// `"default"`.
pub(crate) fn host_key<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    let authority = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    let host = strip_authority(authority);
    if host.is_empty() {
        "default"
    } else {
        host
    }
}

/// The host of an authority: without `user@` and `:port`, IPv6 brackets kept. By
/// bytes, as it runs on every request.
fn strip_authority(authority: &str) -> &str {
    let bytes = authority.as_bytes();
    let start = bytes.iter().rposition(|&b| b == b'@').map_or(0, |i| i + 1);
    let rest = &authority[start..];
    if rest.starts_with('[') {
        return rest.find(']').map_or(rest, |end| &rest[..=end]);
    }
    rest.find(':').map_or(rest, |colon| &rest[..colon])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_authorities() {
        for (authority, host) in [
            ("api.anthropic.com", "api.anthropic.com"),
            ("api.openai.com:443", "api.openai.com"),
            ("user:pw@example.com:8080", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("", ""),
        ] {
            assert_eq!(strip_authority(authority), host);
        }
    }

    #[test]
    fn the_host_header_and_the_default() {
        let mut headers = HeaderMap::new();
        let uri: Uri = "/v1/messages".parse().unwrap();
        assert_eq!(host_key(&uri, &headers), "default");
        headers.insert(header::HOST, "api.anthropic.com:443".parse().unwrap());
        assert_eq!(host_key(&uri, &headers), "api.anthropic.com");
    }
}
