//! Where downloads and conversions live on disk.
//!
//! Downloads go to Hugging Face's own cache, in the layout Python's `huggingface_hub` reads and
//! writes (so either can use what the other fetched): `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; in it `models--OWNER--NAME/` holds `blobs/` (files named by their
//! etag: the SHA-256 of LFS files, the git blob hash of others), `snapshots/COMMIT/` (links into
//! `blobs/`) and `refs/REVISION` (a branch's or tag's commit).
//!
//! What dycoke derives from a snapshot, keyed by the snapshot's commit and the type asked for
//! (converted GGUF files, or which GGUF files of the snapshot were picked), lives in dycoke's own
//! cache: `DYCOKE_CACHE`, else `$XDG_CACHE_HOME/dycoke`, else `~/.cache/dycoke`, under
//! `hub/models--OWNER--NAME/COMMIT/TYPE/`. A new revision is a new commit, so it is converted again.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use super::HubError;

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn home_cache() -> Result<PathBuf, HubError> {
    if let Some(x) = env_dir("XDG_CACHE_HOME") {
        return Ok(x);
    }
    env_dir("HOME").map(|h| h.join(".cache")).ok_or_else(|| HubError::Cache("neither HF_HOME nor HOME is set; set HF_HOME to a folder for the model cache".into()))
}

/// `HF_HOME`: the Hugging Face folder (the hub cache and the login token).
pub fn hf_home() -> Result<PathBuf, HubError> {
    match env_dir("HF_HOME") {
        Some(h) => Ok(h),
        None => Ok(home_cache()?.join("huggingface")),
    }
}

/// The token `hf auth login` saved, when `HF_TOKEN` is not set.
pub fn saved_token() -> Option<String> {
    let t = std::fs::read_to_string(hf_home().ok()?.join("token")).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The hub cache and dycoke's cache of derived files.
pub struct Caches {
    pub hub: PathBuf,
    pub derived: PathBuf,
}

impl Caches {
    pub fn from_env() -> Result<Caches, HubError> {
        let hub = match env_dir("HF_HUB_CACHE") {
            Some(h) => h,
            None => hf_home()?.join("hub"),
        };
        let derived = match env_dir("DYCOKE_CACHE") {
            Some(d) => d,
            None => home_cache()?.join("dycoke"),
        }
        .join("hub");
        Ok(Caches { hub, derived })
    }

    pub fn repo(&self, repo: &str) -> RepoCache {
        let folder = Repo::new(repo.to_string(), RepoType::Model).folder_name();
        RepoCache { repo: repo.to_string(), hub: self.hub.clone(), dir: self.hub.join(&folder), derived: self.derived.join(folder) }
    }
}

/// One repository's part of both caches.
pub struct RepoCache {
    repo: String,
    hub: PathBuf,
    pub dir: PathBuf,
    derived: PathBuf,
}

impl RepoCache {
    /// The commit a revision points to, as last seen: itself for a commit, else its ref.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if super::spec::is_commit(revision) {
            return Some(revision.to_string());
        }
        let c = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let c = c.trim();
        super::spec::is_commit(c).then(|| c.to_string())
    }

    /// Records that `revision` points to `commit` (huggingface_hub's own ref file).
    pub fn set_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if super::spec::is_commit(revision) {
            return Ok(());
        }
        let cache = hf_hub::Cache::new(self.hub.clone());
        let repo = cache.repo(Repo::with_revision(self.repo.clone(), RepoType::Model, revision.to_string()));
        repo.create_ref(commit).map_err(|e| HubError::write(&self.dir.join("refs").join(revision), e))
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// Points `snapshots/COMMIT/FILE` at the blob, by a relative link as huggingface_hub makes
    /// them; the link is made under a temporary name and renamed, so it is whole or absent.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf, HubError> {
        let path = self.snapshot(commit).join(file);
        let parent = path.parent().expect("a snapshot file has a folder");
        std::fs::create_dir_all(parent).map_err(|e| HubError::write(parent, e))?;
        let depth = file.matches('/').count() + 2;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        let tmp = parent.join(format!(".{}.dycoke-link", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| HubError::write(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| HubError::write(&path, e))?;
        Ok(path)
    }

    /// The files of a snapshot that are present (links whose blob exists), as repository paths.
    pub fn local_files(&self, commit: &str) -> Vec<String> {
        let root = self.snapshot(commit);
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.is_file() {
                    if let Some(rel) = p.strip_prefix(&root).ok().and_then(|r| r.to_str()) {
                        out.push(rel.to_string());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Where dycoke keeps what it derives from `commit` for `key` (the type asked for).
    pub fn derived(&self, commit: &str, key: &str) -> PathBuf {
        self.derived.join(commit).join(key)
    }
}

/// Total size of the regular files under `dir` (links not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// Subfolders of `dir`, sorted by name.
pub fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .collect();
    v.sort();
    v
}
