//! Leases: the rules every engine and the SDK share.
//!
//! A lease is granted with a TTL in whole seconds and lives until that long has
//! passed without a keep-alive, or until it is revoked. Keys put with the lease are
//! deleted, all at one revision, when it ends. A later put of such a key without
//! the lease makes it permanent again (as in etcd).
//!
//! ```
//! use kvstore_core::lease::{check_ttl, MAX_TTL};
//! assert!(check_ttl(30).is_ok());
//! assert!(check_ttl(0).is_err());
//! assert!(check_ttl(MAX_TTL + 1).is_err());
//! ```

/// Shortest TTL a lease may be granted with, in seconds. An engine may raise it (etcd
/// grants 2 s at least); the TTL granted is in the answer.
pub const MIN_TTL: u64 = 1;

/// Longest TTL a lease may be granted with, in seconds: one year. A longer one is a
/// mistake (a unit taken for another) more often than a wish.
pub const MAX_TTL: u64 = 365 * 24 * 3600;

/// A TTL that is not in `MIN_TTL..=MAX_TTL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a lease TTL must be between {MIN_TTL} and {MAX_TTL} seconds; got {0}")]
pub struct TtlError(pub u64);

/// Checks a TTL asked for, in seconds.
pub fn check_ttl(ttl: u64) -> Result<(), TtlError> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) {
        Ok(())
    } else {
        Err(TtlError(ttl))
    }
}
