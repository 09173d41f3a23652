//! A small OCI distribution client: pushes an image (blobs, then the manifest) to a registry.
//!
//! Speaks the distribution spec's monolithic upload (`POST .../blobs/uploads/` then `PUT ?digest=`), skips blobs
//! the registry already has (`HEAD`), and answers `401` challenges: `Basic`, or `Bearer` with a token from the
//! realm the registry names. Credentials come from `UNDERSTUDY_REGISTRY_USERNAME` / `UNDERSTUDY_REGISTRY_PASSWORD`,
//! else from the `auths` of `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`); credential helpers are not run.
//! They are sent only to the registry and its token realm, and never printed.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;

use crate::package::Image;

/// `registry/repository[:tag][@sha256:...]`, with an optional `oci://` in front.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    /// As written (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self> {
        let rest = s.strip_prefix("oci://").unwrap_or(s);
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => {
                let hex =
                    d.strip_prefix("sha256:").ok_or_else(|| anyhow!("{s:?}: only sha256 digests are supported"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    bail!("{s:?}: a digest is sha256: and 64 lower-case hex digits");
                }
                (r, Some(d.to_string()))
            }
            None => (rest, None),
        };
        let Some((registry, path)) = rest.split_once('/') else {
            bail!("{s:?}: name the registry too, e.g. ghcr.io/my-org/understudy:0.1.0");
        };
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            bail!("{s:?}: {registry:?} is not a registry host; name it, e.g. docker.io/{rest}");
        }
        // A tag follows the last ':' of the last path segment.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        let valid_repo = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            });
        if !valid_repo {
            bail!("{s:?}: repository {repository:?} must be lower-case letters, digits, '.', '_', '-' and '/'");
        }
        if let Some(t) = &tag {
            let ok = t.len() <= 128 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok || t.starts_with(['.', '-']) {
                bail!("{s:?}: bad tag {t:?}");
            }
        }
        if tag.is_none() && digest.is_none() {
            bail!("{s:?}: add a tag (:0.1.0) or a digest (@sha256:...)");
        }
        Ok(ImageRef { registry: registry.to_string(), repository: repository.to_string(), tag, digest })
    }

    /// `registry/repository`, as written.
    pub fn repository_url(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference a manifest is pushed to or pulled by: the digest if pinned, else the tag.
    fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The host the API answers on (Docker Hub's API is not on docker.io).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

/// A connection to one registry, for one repository.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    credentials: Option<(String, String)>,
    authorization: Option<String>,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn read_body(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    let mut s = String::new();
    let _ = resp.body_mut().as_reader().take(4096).read_to_string(&mut s);
    s
}

/// `Bearer realm="...",service="...",scope="..."` → its parameters.
fn challenge(h: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let v = v.trim_start();
        let (value, tail) = match v.strip_prefix('"') {
            Some(q) => q.split_once('"').unwrap_or((q, "")),
            None => v.split_once(',').unwrap_or((v, "")),
        };
        params.push((k, value.to_string()));
        rest = tail.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

fn credentials_for(registry: &str) -> Option<(String, String)> {
    if let (Ok(u), Ok(p)) =
        (std::env::var("UNDERSTUDY_REGISTRY_USERNAME"), std::env::var("UNDERSTUDY_REGISTRY_PASSWORD"))
    {
        return Some((u, p));
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let cfg: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = cfg.get("auths")?.as_object()?;
    let hub = registry == "docker.io";
    let entry = auths.iter().find(|(k, _)| {
        let k = k.trim_start_matches("https://").trim_start_matches("http://");
        let host = k.split('/').next().unwrap_or(k);
        host == registry || (hub && (host == "index.docker.io" || host == "registry-1.docker.io"))
    })?;
    let auth = entry.1.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth).ok()?;
    let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Registry {
    pub fn new(r: &ImageRef, plain_http: bool) -> Result<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let scheme = if plain_http { "http" } else { "https" };
        Ok(Registry {
            agent,
            base: format!("{scheme}://{}/v2/{}", r.api_host(), r.repository),
            credentials: credentials_for(&r.registry),
            authorization: None,
        })
    }

    /// Sends a request, answering one auth challenge if the registry asks for it.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<ureq::http::Response<ureq::Body>> {
        for attempt in 0..2 {
            let mut req = ureq::http::Request::builder().method(method).uri(url);
            if let Some(a) = &self.authorization {
                req = req.header("authorization", a);
            }
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let req = req.body(body.to_vec()).context("building a registry request")?;
            let resp = self.agent.run(req).with_context(|| format!("{method} {url}"))?;
            if resp.status() != 401 || attempt == 1 {
                return Ok(resp);
            }
            let Some(www) = header(&resp, "www-authenticate") else { return Ok(resp) };
            self.authorize(&www)?;
        }
        bail!("{method} {url}: unauthorized")
    }

    fn authorize(&mut self, www_authenticate: &str) -> Result<()> {
        let (scheme, params) = challenge(www_authenticate);
        let basic = self
            .credentials
            .as_ref()
            .map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))));
        if scheme == "basic" {
            self.authorization = Some(basic.ok_or_else(|| {
                anyhow!("the registry wants a login: set UNDERSTUDY_REGISTRY_USERNAME and UNDERSTUDY_REGISTRY_PASSWORD")
            })?);
            return Ok(());
        }
        if scheme != "bearer" {
            bail!("the registry asks for {scheme} authentication, which understudy does not speak");
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| anyhow!("the registry's bearer challenge names no realm"))?;
        let mut query = Vec::new();
        if let Some(s) = get("service") {
            query.push(format!("service={}", url_encode(&s)));
        }
        if let Some(s) = get("scope") {
            query.push(format!("scope={}", url_encode(&s)));
        }
        let url = if query.is_empty() { realm } else { format!("{realm}?{}", query.join("&")) };
        let mut req = self.agent.get(&url);
        if let Some(b) = &basic {
            req = req.header("authorization", b);
        }
        let mut resp = req.call().with_context(|| format!("token request to {url}"))?;
        if resp.status() != 200 {
            bail!("token request to the registry's realm failed: {} {}", resp.status(), read_body(&mut resp));
        }
        let v: serde_json::Value = serde_json::from_str(&read_body_all(&mut resp)?)?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow!("the registry's token answer holds no token"))?;
        self.authorization = Some(format!("Bearer {token}"));
        Ok(())
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            return location.to_string();
        }
        // Relative to the registry's origin.
        let origin_end = self.base.find("/v2/").unwrap_or(self.base.len());
        format!("{}{}", self.base.get(..origin_end).unwrap_or(&self.base), location)
    }

    fn push_blob(&mut self, digest: &str, bytes: &[u8]) -> Result<()> {
        let url = format!("{}/blobs/{digest}", self.base);
        if self.send("HEAD", &url, None, &[])?.status() == 200 {
            return Ok(());
        }
        let start = format!("{}/blobs/uploads/", self.base);
        let mut resp = self.send("POST", &start, None, &[])?;
        if resp.status() != 202 {
            bail!("starting a blob upload: {} {}", resp.status(), read_body(&mut resp));
        }
        let location = header(&resp, "location").ok_or_else(|| anyhow!("the registry gave no upload location"))?;
        let location = self.absolute(&location);
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", url_encode(digest));
        let mut resp = self.send("PUT", &put, Some("application/octet-stream"), bytes)?;
        if resp.status() != 201 {
            bail!("uploading blob {digest}: {} {}", resp.status(), read_body(&mut resp));
        }
        Ok(())
    }

    /// Pushes every blob, then the manifest; returns the manifest digest the registry reports.
    pub fn push(&mut self, r: &ImageRef, image: &Image) -> Result<String> {
        for b in &image.blobs {
            self.push_blob(&b.digest(), &b.bytes)?;
        }
        let want = image.digest();
        if let Some(d) = &r.digest {
            if *d != want {
                bail!("{}: the reference pins {d}, but this image is {want}", r.repository_url());
            }
        }
        let url = format!("{}/manifests/{}", self.base, r.manifest_reference());
        let mut resp = self.send("PUT", &url, Some(crate::package::MANIFEST_MEDIA_TYPE), &image.manifest)?;
        if resp.status() != 201 {
            bail!("pushing the manifest: {} {}", resp.status(), read_body(&mut resp));
        }
        let got = header(&resp, "docker-content-digest").unwrap_or_else(|| want.clone());
        if got != want {
            bail!("the registry stored the manifest as {got}, expected {want}");
        }
        Ok(got)
    }
}

fn read_body_all(resp: &mut ureq::http::Response<ureq::Body>) -> Result<String> {
    let mut s = String::new();
    resp.body_mut().as_reader().take(1 << 20).read_to_string(&mut s)?;
    Ok(s)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r = ImageRef::parse("oci://127.0.0.1:5000/team/understudy:0.1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/understudy", Some("0.1.0"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/o/u@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        assert_eq!(ImageRef::parse("docker.io/o/u:1").unwrap().api_host(), "registry-1.docker.io");
        for bad in ["understudy:1", "o/u:1", "ghcr.io/O/u:1", "ghcr.io/o/u", "ghcr.io/o/u@sha256:12", "ghcr.io/o/u:-x"]
        {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_challenges_parse() {
        let (s, p) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:o/u:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:o/u:pull,push".into()));
    }
}
