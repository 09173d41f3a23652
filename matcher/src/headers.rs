//! Which HTTP headers an asset may carry and which Understudy drops when it replays one, and which query
//! parameters carry credentials.

/// Headers that carry credentials or AWS request-signing material (SigV4's `x-amz-date` and
/// `x-amz-content-sha256` sign a request together with `authorization`): never stored in an asset, logged or
/// hashed.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "x-amz-security-token",
    "x-amz-date",
    "x-amz-content-sha256",
    "cookie",
    "set-cookie",
];

/// Query parameters that carry credentials (the Gemini API's `?key=`, OAuth's `access_token`): never stored
/// in an asset.
pub const SECRET_QUERY_PARAMS: &[&str] = &["key", "api-key", "api_key", "access_token"];

/// The first credential-bearing query parameter of `path`, if any.
pub fn secret_query_param(path: &str) -> Option<&'static str> {
    let query = path.split_once('?')?.1.split('#').next().unwrap_or_default();
    query.split('&').find_map(|pair| {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        SECRET_QUERY_PARAMS.iter().find(|s| s.eq_ignore_ascii_case(name.trim())).copied()
    })
}

/// Headers Envoy computes itself; copying them from an asset would corrupt the reply.
const HOP_BY_HOP: &[&str] =
    &["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"];

/// Is `name` a credential-bearing header?
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Should `name` be dropped when replaying an asset's headers?
pub fn is_dropped_header(name: &str) -> bool {
    is_secret_header(name)
        || HOP_BY_HOP.iter().any(|s| s.eq_ignore_ascii_case(name))
        || name.starts_with(':')
        || is_understudy_header(name)
}

/// `x-understudy*` headers are Understudy's own; an asset can't set them.
pub fn is_understudy_header(name: &str) -> bool {
    name.get(..12).is_some_and(|p| p.eq_ignore_ascii_case("x-understudy"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn own_and_secret_headers_are_dropped_from_assets() {
        assert!(is_dropped_header("X-Understudy"));
        assert!(is_dropped_header("x-understudy-key"));
        assert!(is_dropped_header("X-Goog-Api-Key"));
        for sigv4 in ["Authorization", "X-Amz-Security-Token", "X-Amz-Date", "x-amz-content-sha256"] {
            assert!(is_secret_header(sigv4), "{sigv4}");
        }
        assert!(!is_secret_header("x-amzn-requestid"));
        assert!(is_dropped_header("Content-Length"));
        assert!(!is_dropped_header("x-request-id"));
    }

    #[test]
    fn credentials_in_query_strings_are_found() {
        assert_eq!(secret_query_param("/v1beta/models/m:generateContent?key=AIzaSy"), Some("key"));
        assert_eq!(secret_query_param("/v1/models/m:streamGenerateContent?alt=sse&%6Bey=x"), Some("key"));
        assert_eq!(secret_query_param("/x?ACCESS_TOKEN=ya29"), Some("access_token"));
        assert_eq!(secret_query_param("/openai/deployments/d/chat/completions?api-version=2024-10-21"), None);
        assert_eq!(secret_query_param("/v1/chat/completions#key=x"), None);
        assert_eq!(secret_query_param("/v1/keys?monkey=1"), None);
    }
}
