//! Media URLs: `data:` (decoded here), `file://` (to a local path) and `http(s)://` (kept as a
//! URL); anything else is refused. `param` names the field in every error.

use crate::error::{code, ApiError};
use crate::request::MediaSource;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use std::os::unix::ffi::OsStrExt;

/// Standard base64, padded or not (both are seen from clients).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent).with_decode_allow_trailing_bits(true),
);

/// What a data URL without a media type carries, as far as we can tell.
const DEFAULT_MIME: &str = "application/octet-stream";

/// Parses a media URL into where its bytes are.
pub fn parse_media_url(url: &str, param: &str) -> Result<MediaSource, ApiError> {
    let Some(scheme) = scheme(url) else {
        return Err(ApiError::invalid(param, format!("`{param}` is not a URL: give a data:, file:// or http(s):// URL")));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "data" => {
            let (mime, bytes) = decode_data_url(url, param)?;
            Ok(MediaSource::Data { mime, bytes })
        }
        "file" => file_url(url, param).map(MediaSource::File),
        "http" | "https" => match url::Url::parse(url) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(MediaSource::Remote(u.into())),
            Ok(_) => Err(ApiError::invalid(param, format!("`{param}` has no host"))),
            Err(e) => Err(ApiError::invalid(param, format!("`{param}` is not a valid URL: {e}"))),
        },
        _ => Err(ApiError::invalid(
            param,
            format!("`{param}` has the unsupported URL scheme '{}': give a data:, file:// or http(s):// URL", shorten(scheme)),
        )
        .with_code(code::UNSUPPORTED)),
    }
}

/// Decodes `data:[MIME][;PARAM...];base64,PAYLOAD` into its media type (lower case) and bytes.
/// ASCII whitespace in the payload is skipped: clients wrap long base64 lines.
pub fn decode_data_url(url: &str, param: &str) -> Result<(String, Vec<u8>), ApiError> {
    let rest = match url.get(..5) {
        Some(s) if s.eq_ignore_ascii_case("data:") => &url[5..],
        _ => return Err(ApiError::invalid(param, format!("`{param}` is not a data: URL"))),
    };
    let Some((meta, payload)) = rest.split_once(',') else {
        return Err(ApiError::invalid(param, format!("`{param}` is a data: URL without a comma before its data")));
    };
    let mime = meta.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let last = meta.rsplit(';').next().unwrap_or_default();
    if !meta.contains(';') || !last.trim().eq_ignore_ascii_case("base64") {
        return Err(ApiError::invalid(param, format!("`{param}` is a data: URL that is not base64 (expected `;base64,`)")));
    }
    if !mime.is_empty() && !is_mime(&mime) {
        return Err(ApiError::invalid(param, format!("`{param}` has an invalid media type '{}'", shorten(&mime))));
    }
    let mime = if mime.is_empty() { DEFAULT_MIME.to_string() } else { mime };
    let bytes = decode_base64(payload).map_err(|e| ApiError::invalid(param, format!("`{param}` has invalid base64 data: {e}")))?;
    if bytes.is_empty() {
        return Err(ApiError::invalid(param, format!("`{param}` carries no data")));
    }
    Ok((mime, bytes))
}

/// Decodes base64 (standard alphabet, padding optional), skipping ASCII whitespace.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    if text.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        BASE64.decode(compact)
    } else {
        BASE64.decode(text)
    }
}

/// `type/subtype` in RFC 6838's restricted name characters.
pub(crate) fn is_mime(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty() && t.len() <= 127 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(s.split_once('/'), Some((a, b)) if token(a) && token(b))
}

/// The scheme of `url` if it starts with one (RFC 3986: a letter, then letters, digits, `+-.`).
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first = bytes.next()?;
    (first.is_ascii_alphabetic() && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))).then_some(scheme)
}

fn file_url(url: &str, param: &str) -> Result<std::path::PathBuf, ApiError> {
    let u = url::Url::parse(url).map_err(|e| ApiError::invalid(param, format!("`{param}` is not a valid file URL: {e}")))?;
    match u.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(host) => {
            return Err(ApiError::invalid(
                param,
                format!("`{param}` names the host '{}': a file URL must be local (file:///path)", shorten(host)),
            ))
        }
    }
    let path = u.to_file_path().map_err(|()| ApiError::invalid(param, format!("`{param}` is not a local file path")))?;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(ApiError::invalid(param, format!("`{param}` contains a NUL byte")));
    }
    if !path.is_absolute() {
        return Err(ApiError::invalid(param, format!("`{param}` is not an absolute path")));
    }
    Ok(path)
}

/// A client's text quoted in a message, cut so that an error stays readable.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn err(url: &str) -> ApiError {
        parse_media_url(url, "u").unwrap_err()
    }

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_media_url("data:video/mp4;base64,AAEC", "u").unwrap(),
            MediaSource::Data { mime: "video/mp4".into(), bytes: vec![0, 1, 2] }
        );
        // Upper case, no padding, wrapped lines, extra parameters, no media type.
        assert_eq!(decode_data_url("DATA:Image/PNG;name=a.png;BASE64,AAE", "u").unwrap(), ("image/png".into(), vec![0, 1]));
        assert_eq!(decode_data_url("data:;base64,AA\nEC\r\n", "u").unwrap(), (DEFAULT_MIME.into(), vec![0, 1, 2]));
        assert!(err("data:video/mp4,AAEC").message.contains("not base64"));
        assert!(err("data:video/mp4;base64").message.contains("without a comma"));
        assert!(err("data:video/mp4;base64,AA$C").message.contains("invalid base64"));
        assert!(err("data:video/mp4;base64,").message.contains("no data"));
        assert!(err("data:vid eo;base64,AAEC").message.contains("invalid media type"));
        assert!(err("data:video;base64,AAEC").message.contains("invalid media type"));
    }

    #[test]
    fn file_urls() {
        assert_eq!(parse_media_url("file:///tmp/a%20b.mp4", "u").unwrap(), MediaSource::File(PathBuf::from("/tmp/a b.mp4")));
        assert_eq!(parse_media_url("file://localhost/tmp/x", "u").unwrap(), MediaSource::File(PathBuf::from("/tmp/x")));
        assert!(err("file://evil.example/etc/passwd").message.contains("must be local"));
        assert!(err("file:///tmp/a%00b").message.contains("NUL"));
        // `..` is resolved as a URL (and the result still checked against the allowed folders).
        assert_eq!(parse_media_url("file:///srv/media/../x", "u").unwrap(), MediaSource::File(PathBuf::from("/srv/x")));
    }

    #[test]
    fn remote_and_refused_urls() {
        assert_eq!(
            parse_media_url("HTTPS://Example.com/v.mp4?a=1", "u").unwrap(),
            MediaSource::Remote("https://example.com/v.mp4?a=1".into())
        );
        assert!(err("http://").message.contains("not a valid URL"));
        let e = err("ftp://example.com/v.mp4");
        assert_eq!((e.status, e.param.as_deref(), e.code), (400, Some("u"), Some(code::UNSUPPORTED)));
        assert!(e.message.contains("unsupported URL scheme 'ftp'"));
        assert!(err("javascript:alert(1)").message.contains("'javascript'"));
        assert!(err("/tmp/video.mp4").message.contains("not a URL"));
        assert!(err("").message.contains("not a URL"));
        assert!(err("ünïcode:x").message.contains("not a URL"));
    }

    #[test]
    fn shorten_cuts_on_characters() {
        let long = "é".repeat(100);
        assert_eq!(shorten(&long).chars().count(), 67);
        assert_eq!(shorten("abc"), "abc");
    }
}
