//! The one error contract of the HTTP API: a code from the table
//! ([`ErrorCode`], with its HTTP status), a message, and a revision where one applies.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use kvstore_core::wire::{ErrorBody, ErrorDetail};
use kvstore_core::ErrorCode;

/// An error answer. Its status comes from its code, in [`ErrorCode`]'s table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    revision: Option<u64>,
    /// The methods the path takes (the `Allow` header of a 405).
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with `code` and a message that says what to do about it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            revision: None,
            allow: None,
        }
    }

    /// The same error, naming the revision it refers to.
    pub fn with_revision(mut self, revision: Option<u64>) -> ApiError {
        self.revision = revision;
        self
    }

    /// The same error, its message preceded by `context`.
    pub fn prefixed(mut self, context: &str) -> ApiError {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// `invalid_request`: a query string, header or body that cannot be understood.
    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// `invalid_key`.
    pub fn invalid_key(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidKey, message)
    }

    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(
            ErrorCode::Forbidden,
            format!("forbidden: {}", message.into()),
        )
    }

    /// `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(
            ErrorCode::Unauthorized,
            format!("unauthorized: {}", message.into()),
        )
    }

    /// `internal`: a bug or corrupt data.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            ErrorCode::Internal,
            format!("internal error: {}", message.into()),
        )
    }

    /// `not_found`: no route for `what`.
    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("no such endpoint: {what}"))
    }

    /// `key_not_found`.
    pub fn key_not_found(key: &str) -> ApiError {
        ApiError::new(ErrorCode::KeyNotFound, format!("key {key:?} not found"))
    }

    /// `method_not_allowed`, with the methods the path takes (`GET, HEAD, PUT, DELETE`).
    pub fn method_not_allowed(method: &actix_web::http::Method, allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{method} is not supported here; use one of {allow}"),
            )
        }
    }

    /// `value_too_large`.
    pub fn value_too_large(max: usize) -> ApiError {
        ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("the value is larger than the limit of {max} bytes"),
        )
    }

    /// `request_timeout`.
    pub fn request_timeout() -> ApiError {
        ApiError::new(
            ErrorCode::RequestTimeout,
            "the request body did not arrive within the request timeout",
        )
    }

    /// `shutting_down`.
    pub fn shutting_down() -> ApiError {
        ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down")
    }

    /// A store error, for a request about `key`.
    pub fn from_store(e: kvstore_core::Error, key: &str) -> ApiError {
        match e {
            kvstore_core::Error::KeyNotFound => ApiError::key_not_found(key),
            other => ApiError::from(other),
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The body's `error` object.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code,
            message: self.message.clone(),
            revision: self.revision,
        }
    }
}

impl From<kvstore_core::Error> for ApiError {
    fn from(e: kvstore_core::Error) -> ApiError {
        let message = match &e {
            kvstore_core::Error::Unavailable(m) | kvstore_core::Error::DiskFull(m) => {
                format!("the store cannot serve now: {m}")
            }
            other => other.to_string(),
        };
        ApiError::new(e.code(), message).with_revision(e.revision())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if self.status_code().is_server_error() {
            log::error!("{self}");
        }
        let mut res = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::Unauthorized {
            res.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(allow) = self.allow {
            res.insert_header((actix_web::http::header::ALLOW, allow));
        }
        res.json(ErrorBody {
            error: self.detail(),
        })
    }
}
