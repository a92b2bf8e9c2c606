//! `REPO[:TYPE][@REV]`, the way `-hf` and `dycoke pull` name a model on the Hub.

use std::fmt;

/// A repository, the type asked of it, and the revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSpec {
    /// `owner/name` (or a bare `name`, as the Hub's oldest repositories are called).
    pub repo: String,
    /// The quantization (a GGUF repository) or the output type (a checkpoint converted on first
    /// use), as written; matched case-insensitively.
    pub quant: Option<String>,
    /// A branch, a tag or a commit; `main` unless given.
    pub revision: String,
}

impl fmt::Display for HubSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(q) = &self.quant {
            write!(f, ":{q}")?;
        }
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

const USAGE: &str = "expected REPO[:TYPE][@REV], for example llava-hf/llava-onevision-qwen2-0.5b-ov-hf or owner/name-GGUF:Q4_K_M";

impl HubSpec {
    pub fn parse(s: &str) -> Result<HubSpec, String> {
        let bad = |why: String| format!("{s:?}: {why}; {USAGE}");
        let (rest, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (s, None),
        };
        let (repo, quant) = match rest.split_once(':') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        check_repo(repo).map_err(bad)?;
        if let Some(q) = quant {
            if q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(format!("bad TYPE {q:?} (letters, digits and _ only)")));
            }
        }
        if let Some(r) = revision {
            check_revision(r).map_err(bad)?;
        }
        Ok(HubSpec { repo: repo.to_string(), quant: quant.map(str::to_string), revision: revision.unwrap_or("main").to_string() })
    }
}

pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The Hub's rules for repository names: one optional owner, each part 1 to 96 of letters,
/// digits, `-`, `_` and `.`, not starting or ending with `-` or `.`, without `--` or `..`
/// (which would also break the cache's `models--owner--name` folder names).
fn check_repo(repo: &str) -> Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() > 2 {
        return Err(format!("a repository is owner/name, not {} parts", parts.len()));
    }
    for p in parts {
        if p.is_empty() {
            return Err("empty owner or name".into());
        }
        if p.len() > 96 {
            return Err(format!("{p:?} is longer than 96 characters"));
        }
        if let Some(c) = p.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(format!("{c:?} is not allowed in a repository name"));
        }
        if p.starts_with(['-', '.']) || p.ends_with(['-', '.']) {
            return Err(format!("{p:?} starts or ends with - or ."));
        }
        if p.contains("--") || p.contains("..") {
            return Err(format!("{p:?} contains -- or .."));
        }
    }
    Ok(())
}

/// Branch and tag names as git allows them, minus what could escape the cache's refs folder.
fn check_revision(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("empty revision after @".into());
    }
    if let Some(c) = r.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))) {
        return Err(format!("{c:?} is not allowed in a revision"));
    }
    if r.starts_with('/') || r.ends_with('/') || r.contains("..") || r.contains("//") {
        return Err(format!("bad revision {r:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_type_and_revision() {
        let s = HubSpec::parse("owner/name-GGUF:Q4_K_M@v1.0").unwrap();
        assert_eq!((s.repo.as_str(), s.quant.as_deref(), s.revision.as_str()), ("owner/name-GGUF", Some("Q4_K_M"), "v1.0"));
        let s = HubSpec::parse("llava-hf/llava-onevision-qwen2-0.5b-ov-hf").unwrap();
        assert_eq!((s.quant, s.revision.as_str()), (None, "main"));
        assert_eq!(HubSpec::parse("gpt2@refs/pr/1").unwrap().revision, "refs/pr/1");
        assert_eq!(HubSpec::parse("a/b:f16").unwrap().to_string(), "a/b:f16");
    }

    #[test]
    fn refuses_malformed_names() {
        for bad in ["", "/", "a/", "/b", "a/b/c", "a//b", "a/b c", "a/-b", "a/b.", "a/b--c", "a/b..c", "a/b:", "a/b:q4-k", "a/b@", "a/b@../x", "a/b@/x", "a/b@x y", "../b", "a/b:q8_0:f16"] {
            assert!(HubSpec::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(HubSpec::parse(&format!("a/{}", "x".repeat(97))).is_err());
    }
}
