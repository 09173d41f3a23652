//! The environment `understudy run` gives the command: which variables point which SDK at Envoy, and which
//! placeholder credentials let an SDK start without real ones. ONE table: a new API adds its rows here, and
//! docs/ci.md lists the same rows.

use std::ffi::OsString;

/// What a variable is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// `http://127.0.0.1:PORT` plus this suffix. Always set, replacing the user's value: the point of `run`
    /// is that every client talks to Envoy.
    Listener(&'static str),
    /// `http://` plus Envoy's admin address. Always set.
    Admin,
    /// A placeholder, set only when neither this variable nor any of `unless` is set, so a real setting
    /// (another credential source included) is never shadowed.
    Placeholder(&'static str),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct ClientVar {
    /// The API (or SDK family) the variable is for: documentation, checked against docs/ci.md's table.
    #[cfg_attr(not(test), allow(dead_code))]
    pub api: &'static str,
    pub name: &'static str,
    pub value: Value,
    /// Other variables whose presence means the user configured this already.
    pub unless: &'static [&'static str],
}

const fn url(api: &'static str, name: &'static str, suffix: &'static str) -> ClientVar {
    ClientVar { api, name, value: Value::Listener(suffix), unless: &[] }
}

const fn placeholder(
    api: &'static str,
    name: &'static str,
    value: &'static str,
    unless: &'static [&'static str],
) -> ClientVar {
    ClientVar { api, name, value: Value::Placeholder(value), unless }
}

/// A placeholder credential: obviously not a key, and never valid anywhere.
const KEY: &str = "understudy-placeholder-key";

/// AWS's other credential sources: with any of them set, placeholder keys would shadow the real ones.
const AWS_CREDENTIALS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
];

/// Every variable `understudy run` sets, for every API Understudy virtualizes.
pub const CLIENT_ENV: &[ClientVar] = &[
    ClientVar { api: "Understudy", name: "UNDERSTUDY_BASE_URL", value: Value::Listener(""), unless: &[] },
    ClientVar { api: "Understudy", name: "UNDERSTUDY_ADMIN_URL", value: Value::Admin, unless: &[] },
    url("OpenAI", "OPENAI_BASE_URL", "/v1"),
    placeholder("OpenAI", "OPENAI_API_KEY", KEY, &[]),
    url("Azure OpenAI", "AZURE_OPENAI_ENDPOINT", ""),
    placeholder("Azure OpenAI", "AZURE_OPENAI_API_KEY", KEY, &["AZURE_OPENAI_AD_TOKEN"]),
    // The Azure SDKs refuse to start without an API version; Understudy ignores it when matching.
    placeholder("Azure OpenAI", "OPENAI_API_VERSION", "2024-10-21", &[]),
    url("Anthropic", "ANTHROPIC_BASE_URL", ""),
    placeholder("Anthropic", "ANTHROPIC_API_KEY", KEY, &["ANTHROPIC_AUTH_TOKEN"]),
    url("Gemini", "GOOGLE_GEMINI_BASE_URL", ""),
    url("Vertex AI", "GOOGLE_VERTEX_BASE_URL", ""),
    // google-genai prefers GOOGLE_API_KEY when both are set (and warns): leave a real one alone.
    placeholder("Gemini", "GEMINI_API_KEY", KEY, &["GOOGLE_API_KEY"]),
    url("Ollama", "OLLAMA_HOST", ""),
    url("Bedrock", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME", ""),
    placeholder("Bedrock", "AWS_ACCESS_KEY_ID", "AKIAUNDERSTUDYPLACEHOLDER", AWS_CREDENTIALS),
    placeholder("Bedrock", "AWS_SECRET_ACCESS_KEY", KEY, AWS_CREDENTIALS),
    placeholder("Bedrock", "AWS_REGION", "us-east-1", &["AWS_DEFAULT_REGION"]),
    // boto3 reads AWS_DEFAULT_REGION, the other AWS SDKs AWS_REGION.
    placeholder("Bedrock", "AWS_DEFAULT_REGION", "us-east-1", &["AWS_REGION"]),
];

/// The variables to set for a command, given Envoy's listener port and admin address and a view of the
/// current environment.
pub fn environment(port: u16, admin: &str, current: impl Fn(&str) -> Option<OsString>) -> Vec<(&'static str, String)> {
    let is_set = |name: &str| current(name).is_some_and(|v| !v.is_empty());
    CLIENT_ENV
        .iter()
        .filter_map(|v| {
            let value = match v.value {
                Value::Listener(suffix) => format!("http://127.0.0.1:{port}{suffix}"),
                Value::Admin => format!("http://{admin}"),
                Value::Placeholder(p) => {
                    if is_set(v.name) || v.unless.iter().any(|u| is_set(u)) {
                        return None;
                    }
                    p.to_string()
                }
            };
            Some((v.name, value))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn env_with(set: &[(&str, &str)]) -> BTreeMap<&'static str, String> {
        let current: BTreeMap<String, OsString> = set.iter().map(|(k, v)| (k.to_string(), v.into())).collect();
        environment(4242, "127.0.0.1:4343", |n| current.get(n).cloned()).into_iter().collect()
    }

    #[test]
    fn every_base_url_points_at_envoy_even_when_the_user_set_one() {
        let e = env_with(&[("OPENAI_BASE_URL", "https://api.openai.com/v1"), ("OLLAMA_HOST", "0.0.0.0:11434")]);
        assert_eq!(e["OPENAI_BASE_URL"], "http://127.0.0.1:4242/v1");
        assert_eq!(e["ANTHROPIC_BASE_URL"], "http://127.0.0.1:4242");
        assert_eq!(e["AZURE_OPENAI_ENDPOINT"], "http://127.0.0.1:4242");
        assert_eq!(e["GOOGLE_GEMINI_BASE_URL"], "http://127.0.0.1:4242");
        assert_eq!(e["OLLAMA_HOST"], "http://127.0.0.1:4242");
        assert_eq!(e["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"], "http://127.0.0.1:4242");
        assert_eq!(e["UNDERSTUDY_ADMIN_URL"], "http://127.0.0.1:4343");
    }

    #[test]
    fn placeholders_fill_only_what_is_unset() {
        let e = env_with(&[]);
        for k in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY", "GEMINI_API_KEY"] {
            assert_eq!(e[k], KEY, "{k}");
        }
        assert_eq!(e["OPENAI_API_VERSION"], "2024-10-21");
        assert_eq!((e["AWS_REGION"].as_str(), e["AWS_DEFAULT_REGION"].as_str()), ("us-east-1", "us-east-1"));
        assert!(e.contains_key("AWS_ACCESS_KEY_ID") && e.contains_key("AWS_SECRET_ACCESS_KEY"));

        let e = env_with(&[("OPENAI_API_KEY", "sk-real"), ("GOOGLE_API_KEY", "g"), ("AWS_PROFILE", "ci")]);
        assert!(!e.contains_key("OPENAI_API_KEY"), "a real key is never replaced");
        assert!(!e.contains_key("GEMINI_API_KEY"), "GOOGLE_API_KEY is the user's Gemini key");
        assert!(!e.contains_key("AWS_ACCESS_KEY_ID") && !e.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(e["ANTHROPIC_API_KEY"], KEY);

        let e = env_with(&[("AWS_DEFAULT_REGION", "eu-west-1"), ("ANTHROPIC_AUTH_TOKEN", "t"), ("OPENAI_API_KEY", "")]);
        assert!(!e.contains_key("AWS_REGION") && !e.contains_key("AWS_DEFAULT_REGION"));
        assert!(!e.contains_key("ANTHROPIC_API_KEY"));
        assert_eq!(e["OPENAI_API_KEY"], KEY, "an empty variable counts as unset");
    }

    #[test]
    fn one_row_per_variable() {
        let names: BTreeSet<&str> = CLIENT_ENV.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), CLIENT_ENV.len());
    }

    #[test]
    fn docs_list_every_row() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ci.md")).unwrap();
        for v in CLIENT_ENV {
            let row = doc.lines().find(|l| l.starts_with('|') && l.contains(&format!("`{}`", v.name)));
            let row = row.unwrap_or_else(|| panic!("docs/ci.md's table has no row for {}", v.name));
            assert!(row.contains(v.api), "docs/ci.md's row for {} does not name {}", v.name, v.api);
        }
    }
}
