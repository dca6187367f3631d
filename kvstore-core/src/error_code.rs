//! The stable error codes of the API: one table, each code with its HTTP status.
//!
//! Every error answer carries one of these codes (`{"error": {"code": ..., ...}}`),
//! the server picks the HTTP status from here, and the client decodes the code back
//! into an [`ErrorCode`] to tell errors apart, so neither side matches strings.
//!
//! ```
//! use kvstore_core::ErrorCode;
//! assert_eq!(ErrorCode::KeyNotFound.status(), 404);
//! assert_eq!(ErrorCode::KeyNotFound.as_str(), "key_not_found");
//! assert_eq!(ErrorCode::parse("precondition_failed"), ErrorCode::PreconditionFailed);
//! // A code from a newer server still decodes.
//! assert_eq!(ErrorCode::parse("something_new"), ErrorCode::Unknown);
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = ($status:literal, $code:literal), )*) => {
        /// A stable, machine-readable error code (see the module docs).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $variant, )*
            /// A code this version does not know (sent by a newer server).
            Unknown,
        }

        impl ErrorCode {
            /// Every code a server sends, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The HTTP status of an answer with this code.
            pub const fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                    ErrorCode::Unknown => 500,
                }
            }

            /// The code as it appears in error bodies and watch frames.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// When the code is sent: its line's doc comment in the table, so that
            /// the OpenAPI document's error rows say what this page says.
            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => concat!($($doc),*).trim_start(),)*
                    ErrorCode::Unknown => "A code this version does not know.",
                }
            }

            /// The code named `code`; [`ErrorCode::Unknown`] for one not in the table.
            pub fn parse(code: &str) -> ErrorCode {
                match code {
                    $($code => ErrorCode::$variant,)*
                    _ => ErrorCode::Unknown,
                }
            }
        }
    };
}

error_codes! {
    /// The key is empty, longer than 4 KiB, or not UTF-8 after percent-decoding.
    InvalidKey = (400, "invalid_key"),
    /// A transaction has more compares, or more ops in a branch, than the server takes.
    TooManyOps = (400, "too_many_ops"),
    /// A transaction branch writes a key twice (a put or delete under a prefix it
    /// deletes counts).
    DuplicateKey = (400, "duplicate_key"),
    /// A query string, header or JSON body could not be understood.
    InvalidRequest = (400, "invalid_request"),
    /// A lease TTL of 0, or more than a year.
    InvalidTtl = (400, "invalid_ttl"),
    /// A restore body is not a snapshot.
    InvalidSnapshot = (400, "invalid_snapshot"),
    /// A read at a revision the store has not reached yet; `revision` is the
    /// store's current one.
    FutureRevision = (400, "future_revision"),
    /// No token, or an unknown one.
    Unauthorized = (401, "unauthorized"),
    /// The token may not read or write that key or prefix.
    Forbidden = (403, "forbidden"),
    /// Get or delete of an absent key.
    KeyNotFound = (404, "key_not_found"),
    /// No such lease: never granted, expired or revoked.
    LeaseNotFound = (404, "lease_not_found"),
    /// No such endpoint.
    NotFound = (404, "not_found"),
    /// The path does not take this method (the `Allow` header lists those it takes).
    MethodNotAllowed = (405, "method_not_allowed"),
    /// A request's headers or body did not arrive in time.
    RequestTimeout = (408, "request_timeout"),
    /// A restore into a store that holds data.
    StoreNotEmpty = (409, "store_not_empty"),
    /// A watcher fell too far behind (sent only as a watch frame).
    Lagged = (409, "lagged"),
    /// The legacy `/kv` API shows text only, and the key's value is not UTF-8.
    ValueNotText = (409, "value_not_text"),
    /// The requested history is compacted; `revision` is the oldest kept.
    Compacted = (410, "compacted"),
    /// `If-Match` / `If-None-Match` did not hold; `revision` is the key's current one.
    PreconditionFailed = (412, "precondition_failed"),
    /// A value (or body) is over the limit.
    ValueTooLarge = (413, "value_too_large"),
    /// The client holds as many watch streams as it may.
    TooManyWatchers = (429, "too_many_watchers"),
    /// The request headers are over 16 KiB.
    HeadersTooLarge = (431, "headers_too_large"),
    /// A bug; please report it.
    Internal = (500, "internal"),
    /// The storage cannot serve now (an I/O error, an unreachable cluster).
    StorageUnavailable = (503, "storage_unavailable"),
    /// The server is stopping.
    ShuttingDown = (503, "shutting_down"),
    /// The disk is full; reads and watches go on.
    InsufficientStorage = (507, "insufficient_storage"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ErrorCode::parse(&code))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .description(Some("A stable, machine-readable error code"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ErrorCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_and_has_an_error_status() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
            assert!((400..600).contains(&code.status()), "{code}");
        }
    }

    #[test]
    fn codes_travel_as_strings() -> Result<(), serde_json::Error> {
        assert_eq!(
            serde_json::to_string(&ErrorCode::Compacted)?,
            "\"compacted\""
        );
        let back: ErrorCode = serde_json::from_str("\"too_many_watchers\"")?;
        assert_eq!(back, ErrorCode::TooManyWatchers);
        Ok(())
    }
}
