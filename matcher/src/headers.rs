//! Which HTTP headers an asset may carry and which Understudy drops when it replays one.

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
}
