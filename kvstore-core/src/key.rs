//! Rules for keys and the default limits, shared by the server and the client.

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 4096;

/// Default largest value, in bytes (configurable on the server).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The highest value limit a server may be configured with (1 GiB).
pub const MAX_VALUE_BYTES_LIMIT: usize = 1 << 30;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is the empty string.
    #[error("the key is empty; keys are non-empty UTF-8 strings")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is {0} bytes long; keys may be at most {MAX_KEY_BYTES} bytes")]
    TooLong(usize),
}

/// Checks that `key` is a valid key: non-empty and at most [`MAX_KEY_BYTES`] bytes.
/// `/` is an ordinary character, so `app/db/url` is a key and `app/` a prefix.
///
/// ```
/// use kvstore_core::key::{validate_key, KeyError};
/// assert!(validate_key("app/db/url").is_ok());
/// assert_eq!(validate_key(""), Err(KeyError::Empty));
/// ```
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    match key.len() {
        0 => Err(KeyError::Empty),
        n if n > MAX_KEY_BYTES => Err(KeyError::TooLong(n)),
        _ => Ok(()),
    }
}
