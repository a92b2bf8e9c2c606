//! Which local files a request may read: only those inside the folders the operator allows.

use crate::error::{code, ApiError};
use std::io::ErrorKind as IoKind;
use std::path::{Component, Path, PathBuf};

/// Resolves `path` (a file URL's path) against the folders the operator allows and returns the
/// canonical path to open. Both sides are canonicalised, so `..` and symbolic links cannot lead
/// out of a folder. A missing file is reported as missing only when its path is inside a folder,
/// so that the answers do not tell which files exist elsewhere. (A link swapped between this check
/// and the open is not caught: the folders must not be writable by those who send requests.)
pub fn check_allowed_file(path: &Path, allowed: &[PathBuf]) -> Result<PathBuf, ApiError> {
    if allowed.is_empty() {
        return Err(ApiError::new(403, "file URLs are disabled; start the server with --media-dir").with_code(code::FILE_ACCESS));
    }
    let shown = path.display();
    let outside = || ApiError::new(403, format!("{shown} is outside the allowed media folders")).with_code(code::FILE_ACCESS);
    if !path.is_absolute() {
        return Err(ApiError::new(400, format!("{shown} is not an absolute path")).with_code(code::INVALID_VALUE));
    }
    let folders: Vec<PathBuf> = allowed.iter().filter_map(|d| d.canonicalize().ok()).collect();
    match path.canonicalize() {
        Ok(real) => {
            if !folders.iter().any(|d| real.starts_with(d)) {
                return Err(outside());
            }
            match real.metadata() {
                Ok(m) if m.is_file() => Ok(real),
                Ok(_) => Err(ApiError::new(400, format!("{shown} is not a regular file")).with_code(code::INVALID_VALUE)),
                Err(e) => Err(io_error(&shown.to_string(), &e)),
            }
        }
        Err(e) => {
            let lexical = normalize(path);
            if !allowed.iter().chain(&folders).any(|d| lexical.starts_with(normalize(d))) {
                return Err(outside());
            }
            Err(io_error(&shown.to_string(), &e))
        }
    }
}

fn io_error(shown: &str, e: &std::io::Error) -> ApiError {
    match e.kind() {
        IoKind::NotFound | IoKind::NotADirectory => {
            ApiError::new(404, format!("{shown}: no such file")).with_code(code::FILE_NOT_FOUND)
        }
        IoKind::PermissionDenied => ApiError::new(403, format!("{shown}: permission denied")).with_code(code::FILE_ACCESS),
        _ => ApiError::new(400, format!("{shown}: {e}")).with_code(code::INVALID_VALUE),
    }
}

/// `path` with `.` and `..` resolved without the file system (for paths that do not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Fixture {
        _dir: tempfile::TempDir,
        media: PathBuf,
        other: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join("media");
        let other = dir.path().join("other");
        fs::create_dir_all(media.join("sub")).unwrap();
        fs::create_dir_all(&other).unwrap();
        fs::write(media.join("a.mp4"), b"x").unwrap();
        fs::write(other.join("secret.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(other.join("secret.mp4"), media.join("link.mp4")).unwrap();
        std::os::unix::fs::symlink(media.join("a.mp4"), other.join("in.mp4")).unwrap();
        Fixture { _dir: dir, media, other }
    }

    #[test]
    fn inside_is_allowed_and_canonical() {
        let f = fixture();
        let allowed = [f.media.clone()];
        let real = f.media.canonicalize().unwrap().join("a.mp4");
        assert_eq!(check_allowed_file(&f.media.join("a.mp4"), &allowed).unwrap(), real);
        assert_eq!(check_allowed_file(&f.media.join("sub/../a.mp4"), &allowed).unwrap(), real);
        // A link from elsewhere into the folder reads a file inside.
        assert_eq!(check_allowed_file(&f.other.join("in.mp4"), &allowed).unwrap(), real);
    }

    #[test]
    fn outside_is_refused() {
        let f = fixture();
        let allowed = [f.media.clone()];
        for p in [f.other.join("secret.mp4"), f.media.join("link.mp4"), f.media.join("../other/secret.mp4"), PathBuf::from("/etc/passwd")]
        {
            let e = check_allowed_file(&p, &allowed).unwrap_err();
            assert_eq!(e.status, 403, "{p:?}");
            assert!(e.message.contains(&p.display().to_string()) && e.message.contains("outside"), "{}", e.message);
        }
        // Missing files outside answer as outside, so that existence does not leak.
        let e = check_allowed_file(&f.other.join("missing.mp4"), &allowed).unwrap_err();
        assert_eq!(e.status, 403);
        let e = check_allowed_file(&f.media.join("../other/missing.mp4"), &allowed).unwrap_err();
        assert_eq!(e.status, 403);
    }

    #[test]
    fn missing_and_not_files() {
        let f = fixture();
        let allowed = [f.media.clone()];
        let e = check_allowed_file(&f.media.join("missing.mp4"), &allowed).unwrap_err();
        assert_eq!((e.status, e.code), (404, Some(code::FILE_NOT_FOUND)));
        assert!(e.message.contains("missing.mp4") && e.message.contains("no such file"));
        let e = check_allowed_file(&f.media.join("a.mp4/x"), &allowed).unwrap_err();
        assert_eq!(e.status, 404);
        let e = check_allowed_file(&f.media.join("sub"), &allowed).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("not a regular file"));
        let e = check_allowed_file(Path::new("relative.mp4"), &allowed).unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn no_folders_disables_file_urls() {
        let f = fixture();
        let e = check_allowed_file(&f.media.join("a.mp4"), &[]).unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.message, "file URLs are disabled; start the server with --media-dir");
        // A folder that does not exist allows nothing.
        let e = check_allowed_file(&f.media.join("a.mp4"), &[f.media.join("nope")]).unwrap_err();
        assert_eq!(e.status, 403);
    }
}
