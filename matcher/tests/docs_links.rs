//! The docs hold together: every relative link in README.md, SECURITY.md and `docs/*.md` points at a file of
//! this repository, every `#anchor` at a heading of the page it names (GitHub's heading ids), and the README's
//! index links every page of `docs/`. Pages move (the README became an index) and headings get renamed; a
//! dangling link is a bug a reader finds first otherwise. It reads the repository's files, so it runs natively
//! only (the wasm runner has no filesystem).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[cfg(not(target_os = "wasi"))]
mod native {
    use std::collections::{HashMap, HashSet};
    use std::path::{Component, Path, PathBuf};

    use regex::Regex;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    /// README.md, SECURITY.md and every `docs/*.md`, as paths relative to the repository root.
    fn pages() -> Vec<PathBuf> {
        let mut out = vec![PathBuf::from("README.md"), PathBuf::from("SECURITY.md")];
        let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .map(|p| Path::new("docs").join(p.file_name().unwrap()))
            .collect();
        docs.sort();
        out.extend(docs);
        out
    }

    /// The lines of `text` outside fenced code blocks (a `# comment` in a shell block is not a heading).
    fn prose(text: &str) -> Vec<&str> {
        let mut fenced = false;
        let mut out = Vec::new();
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if !fenced {
                out.push(line);
            }
        }
        out
    }

    /// GitHub's id for a heading: lower case, every character but letters, digits, `-`, `_` and spaces
    /// dropped, spaces turned into `-`; a repeated id gets `-1`, `-2`, ...
    fn anchors(text: &str) -> HashSet<String> {
        let heading = Regex::new(r"^#{1,6}\s+(.*?)\s*$").unwrap();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = HashSet::new();
        for line in prose(text) {
            let Some(c) = heading.captures(line) else { continue };
            let slug: String = c[1]
                .to_lowercase()
                .chars()
                .filter(|ch| ch.is_alphanumeric() || matches!(ch, '-' | '_' | ' '))
                .map(|ch| if ch == ' ' { '-' } else { ch })
                .collect();
            let n = seen.entry(slug.clone()).or_insert(0);
            out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
            *n += 1;
        }
        out
    }

    /// The targets of the inline links `[text](target)` outside code.
    fn links(text: &str) -> Vec<String> {
        let code = Regex::new(r"`[^`]*`").unwrap();
        let link = Regex::new(r#"\]\(([^)\s]+)(?:\s+"[^"]*")?\)"#).unwrap();
        let mut out = Vec::new();
        for line in prose(text) {
            let line = code.replace_all(line, "");
            out.extend(link.captures_iter(&line).map(|c| c[1].to_string()));
        }
        out
    }

    /// `base/rel` with `.` and `..` resolved, relative to the repository root; `None` if it leaves it.
    fn resolve(base: &Path, rel: &str) -> Option<PathBuf> {
        let mut out: Vec<String> = Vec::new();
        for part in base.join(rel).components() {
            match part {
                Component::Normal(p) => out.push(p.to_string_lossy().into_owned()),
                Component::ParentDir => {
                    out.pop()?;
                }
                Component::CurDir => {}
                _ => return None,
            }
        }
        Some(out.iter().collect())
    }

    /// Every problem with `page`'s links, as readable lines.
    fn problems(page: &Path, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let dir = page.parent().unwrap_or(Path::new(""));
        for target in links(text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() { Some(page.to_path_buf()) } else { resolve(dir, file) };
            let Some(path) = path else {
                out.push(format!("{}: {target} leaves the repository", page.display()));
                continue;
            };
            let full = root().join(&path);
            if !full.exists() {
                out.push(format!("{}: {target} → {} does not exist", page.display(), path.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if path.extension().is_some_and(|x| x == "md") {
                let headings = anchors(&std::fs::read_to_string(&full).unwrap());
                if !headings.contains(anchor) {
                    out.push(format!("{}: {target} → no heading #{anchor} in {}", page.display(), path.display()));
                }
            }
        }
        out
    }

    #[test]
    fn every_relative_link_and_anchor_resolves() {
        let mut all = Vec::new();
        let mut count = 0;
        for page in pages() {
            let text = std::fs::read_to_string(root().join(&page)).unwrap();
            count += links(&text).len();
            all.extend(problems(&page, &text));
        }
        assert!(count > 100, "only {count} links found: the link pattern no longer matches the docs");
        assert!(all.is_empty(), "broken links:\n{}", all.join("\n"));
    }

    #[test]
    fn the_readme_index_links_every_page() {
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        let index = Regex::new(r"(?m)^\| \[docs/([a-z0-9_-]+\.md)\]\(docs/([a-z0-9_-]+\.md)\) \| .+ \|$").unwrap();
        let listed: HashSet<String> =
            index.captures_iter(&readme).filter(|c| c[1] == c[2]).map(|c| format!("docs/{}", &c[1])).collect();
        for page in pages().iter().filter(|p| p.starts_with("docs")) {
            let page = page.to_string_lossy().into_owned();
            assert!(listed.contains(&page), "README.md's documentation index has no row for {page}");
        }
    }

    /// The checker itself: GitHub's ids, code ignored, a missing file and a missing heading both reported.
    #[test]
    fn the_checker_finds_what_is_broken() {
        let ids = anchors("# A\n## 5. Non-LLM traffic\n### Locally: `up --watch`\n```sh\n# not a heading\n```\n## A\n");
        for id in ["a", "5-non-llm-traffic", "locally-up---watch", "a-1"] {
            assert!(ids.contains(id), "{id} missing from {ids:?}");
        }
        assert!(!ids.contains("not-a-heading"));
        assert_eq!(links("[x](a.md) `[y](b.md)` [`z`](c.md#d)\n```\n[w](e.md)\n```\n"), ["a.md", "c.md#d"]);
        let page = Path::new("docs/limits.md");
        let found =
            problems(page, "[a](nope.md) [b](store.md#no-such-heading) [c](store.md) [d](#when-a-vm-traps-anyway)");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("docs/nope.md does not exist") && found[1].contains("#no-such-heading"), "{found:?}");
    }
}
