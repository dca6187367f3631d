//! The client's error type.

use kvstore_core::wire::ErrorDetail;
use kvstore_core::ErrorCode;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (HTTP 404 `key_not_found`).
    #[error("key not found: {key}")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A compare-and-swap or create-only condition did not hold (HTTP 412).
    #[error("{message}")]
    PreconditionFailed {
        /// The key's current `mod_revision`, `None` if it does not exist.
        current: Option<u64>,
        /// The server's message.
        message: String,
    },
    /// The watch asked for history the server no longer keeps.
    #[error("{message}")]
    Compacted {
        /// The oldest revision the server still has.
        oldest: u64,
        /// The server's message.
        message: String,
    },
    /// The request was refused as malformed (HTTP 4xx other than the above).
    #[error("bad request ({code}): {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// Stable error code, e.g. [`ErrorCode::InvalidKey`], [`ErrorCode::ValueTooLarge`].
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server failed (HTTP 5xx), e.g. `storage_unavailable`, `shutting_down`.
    #[error("server error ({code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Stable error code ([`ErrorCode::Unknown`] for an answer without one).
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the server: {0}")]
    Connection(String),
    /// The server's answer could not be understood.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    /// The token has characters a header cannot carry.
    #[error("invalid token: it must be printable ASCII")]
    InvalidToken,
    /// No token, or one the server does not know (HTTP 401).
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The server's message.
        message: String,
    },
    /// The token may not do this (HTTP 403).
    #[error("forbidden: {message}")]
    Forbidden {
        /// The server's message.
        message: String,
    },
    /// TLS could not be set up (a bad CA file, no usable roots).
    #[error("TLS: {0}")]
    Tls(String),
    /// A lease held by this program (a lock's) was lost: it expired or was revoked.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The server URL is not usable.
    #[error("invalid server URL {0:?}: use http://host:port")]
    InvalidUrl(String),
}

impl Error {
    /// Builds the error for an HTTP error answer: by its code when it has our
    /// error body, else by its status.
    pub(crate) fn from_status(status: u16, detail: Option<ErrorDetail>, key: &str) -> Error {
        let (code, message, revision) = match detail {
            Some(d) => (d.code, d.message, d.revision),
            None => (ErrorCode::Unknown, format!("HTTP status {status}"), None),
        };
        // An answer without our body (from a proxy, say) goes by its status.
        let code = match (code, status) {
            (ErrorCode::Unknown, 401) => ErrorCode::Unauthorized,
            (ErrorCode::Unknown, 403) => ErrorCode::Forbidden,
            (code, _) => code,
        };
        match code {
            ErrorCode::KeyNotFound => Error::NotFound {
                key: key.to_string(),
            },
            ErrorCode::Unauthorized => Error::Unauthorized { message },
            ErrorCode::Forbidden => Error::Forbidden { message },
            ErrorCode::PreconditionFailed => Error::PreconditionFailed {
                current: revision,
                message,
            },
            ErrorCode::Compacted => Error::Compacted {
                oldest: revision.unwrap_or(0),
                message,
            },
            _ if status >= 500 => Error::Server {
                status,
                code,
                message,
            },
            _ => Error::BadRequest {
                status,
                code,
                message,
            },
        }
    }

    /// The stable code of an error the server answered with; `None` for
    /// failures on this side (a connection, a decode, a setting).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::NotFound { .. } => Some(ErrorCode::KeyNotFound),
            Error::PreconditionFailed { .. } => Some(ErrorCode::PreconditionFailed),
            Error::Compacted { .. } => Some(ErrorCode::Compacted),
            Error::Unauthorized { .. } => Some(ErrorCode::Unauthorized),
            Error::Forbidden { .. } => Some(ErrorCode::Forbidden),
            Error::BadRequest { code, .. } | Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying later may succeed (connection failures and server errors).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connection(_) | Error::Server { .. })
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        if e.is_decode() {
            Error::Decode(e.to_string())
        } else {
            // Keep the cause chain: "error sending request" alone says nothing.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            Error::Connection(text)
        }
    }
}
