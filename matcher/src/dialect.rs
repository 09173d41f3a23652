//! Which LLM operation an HTTP request is, from its method and path alone.

use std::fmt;

/// The wire dialect: decides the shape of error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI and Azure OpenAI (same JSON shapes).
    OpenAi,
    /// Anthropic Messages API.
    Anthropic,
}

/// An LLM operation Understudy virtualizes. The key depends on this, never on a gateway prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `POST .../chat/completions`
    ChatCompletions,
    /// `POST .../completions` (legacy)
    Completions,
    /// `POST .../embeddings`
    Embeddings,
    /// `POST .../responses`
    Responses,
    /// `POST .../v1/messages` (Anthropic)
    Messages,
}

impl Operation {
    /// Stable name, part of the key's preimage: never change an existing one.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "openai.chat_completions",
            Operation::Completions => "openai.completions",
            Operation::Embeddings => "openai.embeddings",
            Operation::Responses => "openai.responses",
            Operation::Messages => "anthropic.messages",
        }
    }

    /// The dialect whose error shape this operation's clients expect.
    pub fn dialect(self) -> Dialect {
        match self {
            Operation::Messages => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// All operations, for docs and diagnostics.
    pub const ALL: [Operation; 5] = [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
        Operation::Messages,
    ];
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A classified LLM request: the operation and, for Azure OpenAI, the deployment (which counts as the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The operation.
    pub operation: Operation,
    /// `Some(deployment)` for `/openai/deployments/{deployment}/...` paths.
    pub deployment: Option<String>,
}

/// Classifies `method` + `path` (query string allowed, ignored). `None` means "not an LLM call": pass it through.
///
/// ```
/// use understudy_matcher::{classify, Operation};
/// let r = classify("POST", "/gateway/openai/v1/chat/completions?x=1").unwrap();
/// assert_eq!(r.operation, Operation::ChatCompletions);
/// let az = classify("POST", "/openai/deployments/gpt4o/embeddings?api-version=2024-10-21").unwrap();
/// assert_eq!((az.operation, az.deployment.as_deref()), (Operation::Embeddings, Some("gpt4o")));
/// assert!(classify("GET", "/v1/chat/completions").is_none());
/// assert!(classify("POST", "/v1/files").is_none());
/// ```
pub fn classify(method: &str, path: &str) -> Option<Route> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    // Match what a lenient upstream would route, so no spelling of an LLM path slips past strict mode:
    // percent-decoding (also of `%2F`), `;params`, dot segments, empty segments, case and stray control
    // characters are all normalized away. Deployment names keep their case.
    let decoded = percent_decode(path);
    let mut raw: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        let seg = seg.trim_matches(|c: char| c.is_control() || c.is_whitespace());
        match seg {
            "" | "." => {}
            ".." => {
                raw.pop();
            }
            s => raw.push(s),
        }
    }
    let lower: Vec<String> = raw.iter().map(|s| s.to_ascii_lowercase()).collect();
    let segs: Vec<&str> = lower.iter().map(String::as_str).collect();
    // Azure OpenAI first: .../openai/deployments/{deployment}/<operation>, so a deployment named like an
    // operation segment ("chat") can't be mistaken for one.
    let azure = segs.windows(2).position(|w| w == ["openai", "deployments"]);
    let (deployment, op_segs) = match azure.and_then(|i| segs.get(i + 2..).map(|rest| (i, rest))) {
        Some((i, [_, rest @ ..])) if !rest.is_empty() => (raw.get(i + 2).map(|d| d.to_string()), rest),
        _ => (None, segs.as_slice()),
    };
    let operation = match op_segs {
        [.., "chat", "completions"] => Operation::ChatCompletions,
        [.., "v1", "messages"] if deployment.is_none() => Operation::Messages,
        [.., "completions"] => Operation::Completions,
        [.., "embeddings"] => Operation::Embeddings,
        [.., "responses"] => Operation::Responses,
        _ => return None,
    };
    Some(Route { operation, deployment })
}

/// Minimal %XX decoding for deployment names; invalid sequences are kept verbatim.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_dialect_and_ignores_prefixes() {
        let cases = [
            ("/v1/chat/completions", Operation::ChatCompletions),
            ("/chat/completions", Operation::ChatCompletions),
            ("/api/proxy/openai/v1/chat/completions", Operation::ChatCompletions),
            ("/v1/completions", Operation::Completions),
            ("/v1/embeddings", Operation::Embeddings),
            ("/v1/responses", Operation::Responses),
            ("/v1/messages", Operation::Messages),
            ("/anthropic/v1/messages?beta=true", Operation::Messages),
        ];
        for (p, op) in cases {
            let r = classify("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!(r.operation, op, "{p}");
            assert_eq!(r.deployment, None, "{p}");
        }
    }

    #[test]
    fn azure_deployment_is_extracted() {
        let r = classify("post", "/openai/deployments/my%2Dgpt/chat/completions?api-version=2024-06-01").unwrap();
        assert_eq!(r.operation, Operation::ChatCompletions);
        assert_eq!(r.deployment.as_deref(), Some("my-gpt"));
    }

    #[test]
    fn azure_deployment_named_like_an_operation() {
        let r = classify("POST", "/openai/deployments/chat/completions?api-version=2024-06-01").unwrap();
        assert_eq!((r.operation, r.deployment.as_deref()), (Operation::Completions, Some("chat")));
        let r = classify("POST", "/openai/deployments/embeddings/embeddings").unwrap();
        assert_eq!((r.operation, r.deployment.as_deref()), (Operation::Embeddings, Some("embeddings")));
    }

    #[test]
    fn every_spelling_of_an_llm_path_is_classified() {
        for p in [
            "/v1/chat/%63ompletions",
            "/V1/Chat/Completions",
            "/v1/chat/completions;x=1",
            "/v1%2Fchat%2Fcompletions",
            "/v1/chat/completions%00",
            "//v1//chat/./completions",
            "/v1/embeddings/../chat/completions",
            "/v1/chat/completions/",
        ] {
            let r = classify("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!(r.operation, Operation::ChatCompletions, "{p}");
        }
        let az = classify("POST", "/OpenAI/Deployments/My-GPT/Chat/Completions").unwrap();
        assert_eq!(az.deployment.as_deref(), Some("My-GPT"));
    }

    #[test]
    fn non_llm_requests_are_not_classified() {
        for (m, p) in [
            ("GET", "/v1/models"),
            ("POST", "/v1/files"),
            ("POST", "/v1/messages/count_tokens"),
            ("PUT", "/v1/embeddings"),
            ("POST", "/"),
        ] {
            assert!(classify(m, p).is_none(), "{m} {p}");
        }
    }
}
