//! The one error contract of the HTTP API: a status, a stable code, a message.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use kvstore_core::wire::{ErrorBody, ErrorDetail};

/// Everything a request can fail with. Each variant has a fixed HTTP status and a
/// stable `code` that clients match on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key in the path is not a valid key.
    #[error("{0}")]
    InvalidKey(String),
    /// A query parameter, header or body could not be understood.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is larger than the limit.
    #[error("the value is larger than the limit of {max} bytes")]
    ValueTooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// No valid token (HTTP 401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token may not do this (HTTP 403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The key does not exist.
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String, Option<u64>),
    /// The requested history is gone.
    #[error("{message}")]
    Compacted {
        /// What happened.
        message: String,
        /// Oldest revision kept.
        oldest: u64,
    },
    /// A watcher fell behind the live feed (sent as a watch frame).
    #[error("the watcher fell too far behind; resume from revision {}", .0 + 1)]
    Lagged(u64),
    /// A restore into a store that already holds data.
    #[error("the store is not empty; restore a snapshot into a new data dir")]
    StoreNotEmpty,
    /// A snapshot to restore is malformed.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The client holds as many watch streams as it may.
    #[error("this client already holds {0} watch streams, the most it may")]
    TooManyWatchers(usize),
    /// The request's headers are larger than the limit.
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The request body did not arrive in time.
    #[error("the request body did not arrive within the request timeout")]
    RequestTimeout,
    /// No route for this path.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The path exists but does not take this method (HTTP 405, with `Allow`).
    #[error("{method} is not supported here; use one of {allow}")]
    MethodNotAllowed {
        /// The method of the request.
        method: String,
        /// The methods the path takes, as in the `Allow` header: `GET, PUT, DELETE`.
        allow: &'static str,
    },
    /// Writing failed (disk full or I/O error); reads still work.
    #[error("the store cannot write now: {0}")]
    Storage(String, StatusCode),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A bug or corrupt data.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidKey(_) => "invalid_key",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::ValueTooLarge { .. } => "value_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::KeyNotFound(_) => "key_not_found",
            ApiError::PreconditionFailed(..) => "precondition_failed",
            ApiError::Compacted { .. } => "compacted",
            ApiError::Lagged(_) => "lagged",
            ApiError::StoreNotEmpty => "store_not_empty",
            ApiError::InvalidSnapshot(_) => "invalid_snapshot",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::TooManyWatchers(_) => "too_many_watchers",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::Storage(_, status) if *status == StatusCode::INSUFFICIENT_STORAGE => {
                "insufficient_storage"
            }
            ApiError::Storage(..) => "storage_unavailable",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The revision the error refers to, if any.
    pub fn revision(&self) -> Option<u64> {
        match self {
            ApiError::PreconditionFailed(_, current) => *current,
            ApiError::Compacted { oldest, .. } => Some(*oldest),
            ApiError::Lagged(last) => Some(*last),
            _ => None,
        }
    }

    /// The body's `error` object.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code().to_string(),
            message: self.to_string(),
            revision: self.revision(),
        }
    }

    /// Maps a store error on `key` to its API error.
    pub fn from_store(e: kvstore_core::Error, key: &str) -> ApiError {
        use kvstore_core::Error as E;
        match e {
            E::InvalidKey(e) => ApiError::InvalidKey(e.to_string()),
            E::ValueTooLarge { max, .. } => ApiError::ValueTooLarge { max },
            E::KeyNotFound => ApiError::KeyNotFound(key.to_string()),
            E::PreconditionFailed { current } => ApiError::PreconditionFailed(
                match current {
                    Some(r) => format!("the key's mod_revision is {r}"),
                    None => "the key does not exist".to_string(),
                },
                current,
            ),
            E::Compacted { oldest, .. } => ApiError::Compacted {
                message: e.to_string(),
                oldest,
            },
            E::Closed => ApiError::ShuttingDown,
            E::NotEmpty => ApiError::StoreNotEmpty,
            E::InvalidSnapshot(m) => ApiError::InvalidSnapshot(m),
            E::Storage(_) => {
                let status = if e.is_disk_full() {
                    StatusCode::INSUFFICIENT_STORAGE
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                ApiError::Storage(e.to_string(), status)
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidKey(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidSnapshot(_) => StatusCode::BAD_REQUEST,
            ApiError::StoreNotEmpty => StatusCode::CONFLICT,
            ApiError::TooManyWatchers(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::KeyNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed(..) => StatusCode::PRECONDITION_FAILED,
            ApiError::Compacted { .. } => StatusCode::GONE,
            ApiError::Lagged(_) => StatusCode::CONFLICT,
            ApiError::Storage(_, status) => *status,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if self.status_code().is_server_error() {
            log::error!("{self}");
        }
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(_) => {
                res.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                res.insert_header((actix_web::http::header::ALLOW, *allow));
            }
            _ => {}
        }
        res.json(ErrorBody {
            error: self.detail(),
        })
    }
}
