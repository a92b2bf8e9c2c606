//! The Hub's HTTP API, the calls huggingface_hub makes: a revision's file list
//! (`GET /api/models/REPO/revision/REV`), a file's metadata (`HEAD /REPO/resolve/COMMIT/FILE`,
//! not following the redirect of LFS files to their storage), and the file itself, resumed with
//! `Range` from what an interrupted download left and checked against the hash the Hub reports.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::HubError;

/// How a download is checked: the Hub names LFS files by their SHA-256 and others by their git
/// blob hash (SHA-1 of `blob LEN\0` and the bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    Sha256(String),
    GitSha1(String),
}

impl Expected {
    fn from_etag(etag: &str) -> Option<Expected> {
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        match etag.len() {
            64 if hex(etag) => Some(Expected::Sha256(etag.to_ascii_lowercase())),
            40 if hex(etag) => Some(Expected::GitSha1(etag.to_ascii_lowercase())),
            _ => None,
        }
    }
}

/// What a `HEAD` of a file's resolve URL says.
#[derive(Clone, Debug)]
pub struct FileMeta {
    /// The blob's name in the cache.
    pub etag: String,
    pub size: u64,
    /// Where the bytes are (the storage URL an LFS file redirects to).
    pub url: String,
    pub expected: Option<Expected>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

#[derive(Deserialize)]
struct RevisionJson {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

pub struct Hub {
    endpoint: String,
    token: Option<String>,
    meta: ureq::Agent,
    data: ureq::Agent,
}

fn seconds_env(name: &str, default: u64) -> Duration {
    Duration::from_secs_f64(std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).filter(|v| *v > 0.0).unwrap_or(default as f64))
}

/// Percent-encodes a path segment (a revision may hold `/`, which the Hub wants encoded).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A file path inside a repository, its segments encoded.
fn encode_path(p: &str) -> String {
    p.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(i) => &url[..start + i],
        None => url,
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// An etag as huggingface_hub stores it: no weak marker, no quotes.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

impl Hub {
    /// `HF_ENDPOINT` (default https://huggingface.co), `HF_TOKEN` or the saved login, and
    /// huggingface_hub's timeouts: `HF_HUB_ETAG_TIMEOUT` for metadata and
    /// `HF_HUB_DOWNLOAD_TIMEOUT` for each read of a download (10 s each), so a server that stops
    /// answering is an error, not a hang.
    pub fn from_env() -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "https://huggingface.co".into());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(super::cache::saved_token);
        let etag_timeout = seconds_env("HF_HUB_ETAG_TIMEOUT", 10);
        let read_timeout = seconds_env("HF_HUB_DOWNLOAD_TIMEOUT", 10);
        let agent = |redirects: u32, t: Duration| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .max_redirects_will_error(false)
                .user_agent(concat!("dycoke/", env!("CARGO_PKG_VERSION")))
                .timeout_connect(Some(t))
                .timeout_recv_response(Some(t))
                .timeout_per_read(Some(t))
                .build()
                .new_agent()
        };
        Hub { meta: agent(0, etag_timeout), data: agent(10, read_timeout), endpoint, token }
    }

    fn authorize<B>(&self, req: ureq::RequestBuilder<B>, url: &str) -> ureq::RequestBuilder<B> {
        // The token goes to the Hub only, never to the storage an LFS file redirects to.
        match &self.token {
            Some(t) if origin(url) == origin(&self.endpoint) => req.header("Authorization", format!("Bearer {t}")),
            _ => req,
        }
    }

    fn status_error(&self, repo: &str, what: &str, resp: &ureq::http::Response<ureq::Body>) -> HubError {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code").unwrap_or_default();
        let message = header(resp, "x-error-message").unwrap_or_default();
        HubError::Status { repo: repo.to_string(), what: what.to_string(), status, code, message, token: self.token.is_some() }
    }

    fn transport(&self, repo: &str, what: &str, e: ureq::Error) -> HubError {
        HubError::Network { repo: repo.to_string(), what: what.to_string(), endpoint: self.endpoint.clone(), problem: e.to_string() }
    }

    /// A metadata request that follows redirects within the Hub (a renamed repository, a
    /// mirror's internal hops: a `Location` without a host) and stops at one elsewhere (the
    /// storage of an LFS file, whose 302 carries the file's metadata), as huggingface_hub does.
    fn meta_call(&self, head: bool, mut url: String, repo: &str, what: &str) -> Result<(ureq::http::Response<ureq::Body>, String), HubError> {
        for _ in 0..5 {
            let resp = if head {
                self.authorize(self.meta.head(&url), &url).header("Accept-Encoding", "identity").call()
            } else {
                self.authorize(self.meta.get(&url), &url).call()
            }
            .map_err(|e| self.transport(repo, what, e))?;
            let status = resp.status().as_u16();
            match header(&resp, "location") {
                Some(loc) if (300..400).contains(&status) && loc.starts_with('/') && !loc.starts_with("//") => {
                    url = format!("{}{loc}", origin(&url));
                }
                _ => return Ok((resp, url)),
            }
        }
        Err(HubError::Protocol { repo: repo.to_string(), problem: format!("{what}: too many redirects") })
    }

    /// The commit a revision points to and the files it holds.
    pub fn revision(&self, repo: &str, revision: &str) -> Result<(String, Vec<String>), HubError> {
        let what = format!("revision {revision}");
        let url = format!("{}/api/models/{repo}/revision/{}", self.endpoint, encode(revision));
        let (mut resp, url) = self.meta_call(false, url, repo, &what)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(repo, &what, &resp));
        }
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_string().map_err(|e| self.transport(repo, &what, e))?;
        let info: RevisionJson = serde_json::from_str(&body).map_err(|e| HubError::Protocol { repo: repo.to_string(), problem: format!("{url}: unexpected answer ({e})") })?;
        if !super::spec::is_commit(&info.sha) {
            return Err(HubError::Protocol { repo: repo.to_string(), problem: format!("{url}: {:?} is not a commit", info.sha) });
        }
        Ok((info.sha, info.siblings.into_iter().map(|s| s.rfilename).collect()))
    }

    /// A file's etag, size and download URL (where a redirect to storage points, else the
    /// resolve URL).
    pub fn file_meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta, HubError> {
        let url = format!("{}/{repo}/resolve/{commit}/{}", self.endpoint, encode_path(file));
        let (resp, url) = self.meta_call(true, url, repo, file)?;
        let status = resp.status().as_u16();
        let location = header(&resp, "location");
        let redirected = (300..400).contains(&status) && location.is_some();
        if status != 200 && !redirected {
            return Err(self.status_error(repo, file, &resp));
        }
        let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag")).map(|e| normalize_etag(&e)).filter(|e| !e.is_empty());
        let Some(etag) = etag else {
            return Err(HubError::Protocol { repo: repo.to_string(), problem: format!("{file}: the Hub sent no ETag; is HF_ENDPOINT ({}) a Hugging Face Hub?", self.endpoint) });
        };
        if etag.contains(['/', '\\']) || etag.starts_with('.') {
            return Err(HubError::Protocol { repo: repo.to_string(), problem: format!("{file}: unusable ETag {etag:?}") });
        }
        let size = header(&resp, "x-linked-size").or_else(|| header(&resp, "content-length")).and_then(|s| s.trim().parse::<u64>().ok());
        let Some(size) = size else {
            return Err(HubError::Protocol { repo: repo.to_string(), problem: format!("{file}: the Hub sent no size") });
        };
        let url = if redirected { location.unwrap_or(url) } else { url };
        Ok(FileMeta { expected: Expected::from_etag(&etag), etag, size, url })
    }

    /// Fetches a file into `partial`, continuing from the bytes already there, and checks its
    /// size and hash; a network failure or a wrong hash is retried (twice). A write error or a
    /// wrong hash removes `partial`; other failures keep it for the next run to resume.
    pub fn download(&self, repo: &str, file: &str, meta: &FileMeta, partial: &Path) -> Result<(), HubError> {
        let mut last = None;
        for attempt in 0..3 {
            match self.download_once(repo, file, meta, partial) {
                Ok(()) => return Ok(()),
                Err(e @ HubError::Network { .. }) => {
                    if attempt < 2 {
                        eprintln!("dycoke: {file}: {e}; resuming");
                    }
                    last = Some(e);
                }
                Err(e @ HubError::Corrupt { .. }) => {
                    let _ = std::fs::remove_file(partial);
                    if attempt < 2 {
                        eprintln!("dycoke: {e}; downloading it again");
                    }
                    last = Some(e);
                }
                Err(e @ HubError::Write { .. }) => {
                    // A full disk or a read-only cache: the partial file would never complete.
                    let _ = std::fs::remove_file(partial);
                    return Err(e);
                }
                // Kept for the next run to resume (an error status, an odd answer).
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts failed"))
    }

    fn download_once(&self, repo: &str, file: &str, meta: &FileMeta, partial: &Path) -> Result<(), HubError> {
        let mut have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if have > meta.size {
            std::fs::remove_file(partial).map_err(|e| HubError::write(partial, e))?;
            have = 0;
        }
        let mut req = self.authorize(self.data.get(&meta.url), &meta.url).header("Accept-Encoding", "identity");
        if have > 0 && have < meta.size {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = if have == meta.size && meta.size > 0 {
            None
        } else {
            Some(req.call().map_err(|e| self.transport(repo, file, e))?)
        };
        let mut out = OpenOptions::new().create(true).append(true).open(partial).map_err(|e| HubError::write(partial, e))?;
        if let Some(mut resp) = resp {
            match resp.status().as_u16() {
                206 if header(&resp, "content-range").is_some_and(|r| r.starts_with(&format!("bytes {have}-"))) => {}
                200 | 206 | 416 => {
                    // The server ignored the range (or could not serve it): start over.
                    out.set_len(0).map_err(|e| HubError::write(partial, e))?;
                    have = 0;
                    if resp.status().as_u16() != 200 {
                        return Err(HubError::Network { repo: repo.into(), what: file.into(), endpoint: self.endpoint.clone(), problem: format!("HTTP {} for a range request", resp.status().as_u16()) });
                    }
                }
                _ => return Err(self.status_error(repo, file, &resp)),
            }
            let bar = byte_bar(file, meta.size, have);
            let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        bar.abandon();
                        return Err(HubError::Network { repo: repo.into(), what: file.into(), endpoint: self.endpoint.clone(), problem: e.to_string() });
                    }
                };
                if have + n as u64 > meta.size {
                    bar.abandon();
                    return Err(HubError::Corrupt { file: file.into(), problem: format!("the server sent more than the {} bytes announced", meta.size) });
                }
                out.write_all(&buf[..n]).map_err(|e| HubError::write(partial, e))?;
                have += n as u64;
                bar.set_position(have);
            }
            bar.finish_and_clear();
        }
        out.sync_all().map_err(|e| HubError::write(partial, e))?;
        drop(out);
        if have != meta.size {
            return Err(HubError::Network { repo: repo.into(), what: file.into(), endpoint: self.endpoint.clone(), problem: format!("the connection ended after {have} of {} bytes", meta.size) });
        }
        verify(file, partial, meta)
    }
}

/// Checks a whole file against the hash the Hub reported; files without a recognisable hash are
/// checked by size only.
pub fn verify(file: &str, path: &Path, meta: &FileMeta) -> Result<(), HubError> {
    let len = std::fs::metadata(path).map_err(|e| HubError::write(path, e))?.len();
    if len != meta.size {
        return Err(HubError::Corrupt { file: file.into(), problem: format!("{len} bytes instead of {}", meta.size) });
    }
    let Some(expected) = &meta.expected else { return Ok(()) };
    let mut f = File::open(path).map_err(|e| HubError::write(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let found = match expected {
        Expected::Sha256(_) => {
            let mut h = Sha256::new();
            hash_into(&mut f, &mut buf, |b| h.update(b)).map_err(|e| HubError::write(path, e))?;
            hex(&h.finalize())
        }
        Expected::GitSha1(_) => {
            let mut h = Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            hash_into(&mut f, &mut buf, |b| h.update(b)).map_err(|e| HubError::write(path, e))?;
            hex(&h.finalize())
        }
    };
    let (Expected::Sha256(want) | Expected::GitSha1(want)) = expected;
    if &found != want {
        return Err(HubError::Corrupt { file: file.into(), problem: format!("its hash is {found}, the Hub says {want}") });
    }
    Ok(())
}

fn hash_into(f: &mut File, buf: &mut [u8], mut update: impl FnMut(&[u8])) -> std::io::Result<()> {
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes, total and rate on a terminal; one line otherwise.
fn byte_bar(file: &str, size: u64, start: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        eprintln!("dycoke: downloading {file} ({})", indicatif::HumanBytes(size));
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    bar.set_style(ProgressStyle::with_template("{msg:>24} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}").unwrap().progress_chars("=> "));
    bar.set_message(file.rsplit('/').next().unwrap_or(file).to_string());
    bar.set_position(start);
    bar.reset_eta();
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_urls() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(Expected::from_etag(&"a".repeat(64)), Some(Expected::Sha256("a".repeat(64))));
        assert_eq!(Expected::from_etag(&"b".repeat(40)), Some(Expected::GitSha1("b".repeat(40))));
        assert_eq!(Expected::from_etag("xyz"), None);
        assert_eq!(origin("http://127.0.0.1:8080/a/b"), "http://127.0.0.1:8080");
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("sub dir/a.gguf"), "sub%20dir/a.gguf");
    }
}
