//! `ApiError`: one error of the HTTP API, with its status, and its rendering as OpenAI's error
//! JSON (`{"error":{"message","type","code","param"}}`), which every client library parses.

use serde_json::{json, Value};

/// The `type` of an error in OpenAI's JSON, which clients use to decide whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    RateLimit,
    Server,
    NotFound,
}

impl ErrorKind {
    /// The kind a status implies, so that a status change cannot leave a contradicting `type`.
    pub fn for_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Authentication,
            404 => ErrorKind::NotFound,
            429 => ErrorKind::RateLimit,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::InvalidRequest,
        }
    }

    /// The `type` string. OpenAI reports a missing model or file as `invalid_request_error` too,
    /// and clients only know these four.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::NotFound => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Server => "server_error",
        }
    }
}

/// Machine-readable `code`s this crate gives; the server may add its own.
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_TYPE: &str = "invalid_type";
    pub const INVALID_VALUE: &str = "invalid_value";
    pub const MISSING: &str = "missing_required_parameter";
    pub const UNSUPPORTED: &str = "unsupported_value";
    pub const LIMIT: &str = "limit_exceeded";
    pub const FILE_ACCESS: &str = "file_access_denied";
    pub const FILE_NOT_FOUND: &str = "file_not_found";
}

/// An error to send to a client: `message` says what is wrong in words a user can act on, `param`
/// is the JSON path of the offending field (`messages[2].content[0].video_url.url`) when there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
    pub code: Option<&'static str>,
    pub param: Option<String>,
}

impl ApiError {
    /// An error with no code and no param; the kind follows the status.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, kind: ErrorKind::for_status(status), message: message.into(), code: None, param: None }
    }

    /// 400 `invalid_request_error` with code `invalid_value`, about the field at `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.into()), ..ApiError::new(400, message).with_code(code::INVALID_VALUE) }
    }

    /// The same error with another status; the kind follows the status (401 authentication, 404
    /// not found, 429 rate limit, 5xx server, others invalid request).
    pub fn with_status(self, status: u16) -> ApiError {
        ApiError { status, kind: ErrorKind::for_status(status), ..self }
    }

    pub fn with_code(self, code: &'static str) -> ApiError {
        ApiError { code: Some(code), ..self }
    }

    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind.as_str(),
            "code": self.code,
            "param": self.param,
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_openais() {
        let e = ApiError::invalid("messages[0].role", "bad role");
        assert_eq!(
            e.to_json(),
            json!({"error": {"message": "bad role", "type": "invalid_request_error", "code": "invalid_value", "param": "messages[0].role"}})
        );
        let e = ApiError::new(503, "loading");
        assert_eq!(e.to_json(), json!({"error": {"message": "loading", "type": "server_error", "code": null, "param": null}}));
        assert_eq!(e.to_string(), "loading");
    }

    #[test]
    fn kind_follows_status() {
        let e = ApiError::invalid("x", "m").with_status(429);
        assert_eq!((e.status, e.kind), (429, ErrorKind::RateLimit));
        assert_eq!(e.to_json()["error"]["type"], "rate_limit_error");
        assert_eq!(ApiError::new(401, "k").kind.as_str(), "authentication_error");
        assert_eq!(ApiError::new(404, "k").kind, ErrorKind::NotFound);
        assert_eq!(ApiError::new(404, "k").kind.as_str(), "invalid_request_error");
        assert_eq!(ApiError::new(413, "k").kind, ErrorKind::InvalidRequest);
        assert_eq!(ApiError::new(500, "k").with_code("x").code, Some("x"));
    }
}
