//! The errors of every storage engine, in terms of the data model only.

use std::path::PathBuf;

use crate::error_code::ErrorCode;
use crate::key::KeyError;
use crate::txn::TxnError;

/// Everything that can go wrong in a store, whatever its engine. No variant carries
/// an engine's own error type: an engine describes its failures in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is not acceptable.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// A transaction that cannot run as it is.
    #[error(transparent)]
    InvalidTxn(#[from] TxnError),
    /// The request asks for what this store does not take (a transaction put with
    /// a `ttl`: its caller grants the lease first).
    #[error("{0}")]
    Unsupported(String),
    /// The value is larger than the configured limit.
    #[error("the value is {size} bytes; the limit is {max} bytes")]
    ValueTooLarge {
        /// Size of the refused value.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The store itself refused the request as too large (etcd's own
    /// `--max-request-bytes`, when it is below what the value limit lets through).
    #[error("{0}")]
    RequestTooLarge(String),
    /// The key does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A compare-and-swap or create-only condition did not hold.
    #[error("precondition failed: {}", match current {
        Some(r) => format!("the key's mod_revision is {r}"),
        None => "the key does not exist".to_string(),
    })]
    PreconditionFailed {
        /// The key's current `mod_revision`, `None` when it does not exist.
        current: Option<u64>,
    },
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0} not found: it expired, was revoked, or was never granted")]
    LeaseNotFound(u64),
    /// A lease TTL out of range.
    #[error(transparent)]
    InvalidTtl(#[from] crate::lease::TtlError),
    /// The history no longer holds the requested revision.
    #[error("revision {requested} is compacted; the oldest revision kept is {oldest}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
    },
    /// A read at a revision the store has not reached yet.
    #[error("revision {requested} is a future revision; the store is at revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
    /// A watcher fell too far behind the live feed.
    #[error("the watcher fell too far behind; resume from revision {}", last + 1)]
    Lagged {
        /// The last revision the watcher was given (or passed over).
        last: u64,
    },
    /// A restore needs an empty store.
    #[error("the store is not empty; restore a snapshot into an empty store")]
    NotEmpty,
    /// A snapshot to restore is malformed.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// The storage cannot serve now: an I/O error, a write not confirmed in time, a
    /// cluster out of reach. A write that fails this way may or may not have been
    /// applied.
    #[error("{0}")]
    Unavailable(String),
    /// The disk is full. A write that fails this way may or may not have been applied.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// The data dir is in use by another process.
    #[error("the data dir {0} is in use by another kvstore-server (its lock is held)")]
    Locked(PathBuf),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    /// The stable code of this error, as the HTTP API reports it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidKey(_) => ErrorCode::InvalidKey,
            Error::InvalidTxn(TxnError::InvalidKey(_)) => ErrorCode::InvalidKey,
            Error::InvalidTxn(TxnError::TooManyOps { .. } | TxnError::OverStoreLimit(_)) => {
                ErrorCode::TooManyOps
            }
            Error::InvalidTxn(TxnError::DuplicateKey(_)) => ErrorCode::DuplicateKey,
            Error::InvalidTxn(TxnError::InvalidTtl(_)) => ErrorCode::InvalidTtl,
            Error::InvalidTxn(_) | Error::Unsupported(_) => ErrorCode::InvalidRequest,
            Error::ValueTooLarge { .. } | Error::RequestTooLarge(_) => ErrorCode::ValueTooLarge,
            Error::KeyNotFound => ErrorCode::KeyNotFound,
            Error::LeaseNotFound(_) => ErrorCode::LeaseNotFound,
            Error::InvalidTtl(_) => ErrorCode::InvalidTtl,
            Error::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
            Error::Compacted { .. } => ErrorCode::Compacted,
            Error::FutureRevision { .. } => ErrorCode::FutureRevision,
            Error::Lagged { .. } => ErrorCode::Lagged,
            Error::NotEmpty => ErrorCode::StoreNotEmpty,
            Error::InvalidSnapshot(_) => ErrorCode::InvalidSnapshot,
            Error::Closed => ErrorCode::ShuttingDown,
            Error::Unavailable(_) | Error::Locked(_) => ErrorCode::StorageUnavailable,
            Error::DiskFull(_) => ErrorCode::InsufficientStorage,
            Error::Corrupt(_) => ErrorCode::Internal,
        }
    }

    /// Whether a write that failed with this error certainly changed nothing: the
    /// store refused it (a bad request, a missing key or lease, a condition that
    /// did not hold). `false` after a failure that leaves its outcome unknown
    /// (`Unavailable`, `DiskFull`, `Closed`: it may or may not have been applied),
    /// so that nothing is undone on the strength of it.
    pub fn refused(&self) -> bool {
        match self {
            Error::InvalidKey(_)
            | Error::InvalidTxn(_)
            | Error::Unsupported(_)
            | Error::ValueTooLarge { .. }
            | Error::RequestTooLarge(_)
            | Error::KeyNotFound
            | Error::PreconditionFailed { .. }
            | Error::LeaseNotFound(_)
            | Error::InvalidTtl(_)
            | Error::NotEmpty
            | Error::InvalidSnapshot(_)
            | Error::FutureRevision { .. } => true,
            Error::Compacted { .. }
            | Error::Lagged { .. }
            | Error::Closed
            | Error::Unavailable(_)
            | Error::DiskFull(_)
            | Error::Locked(_)
            | Error::Corrupt(_) => false,
        }
    }

    /// The revision the error refers to: the key's current `mod_revision` for a
    /// failed condition, the oldest kept revision for `compacted`, the last
    /// delivered one for `lagged`.
    pub fn revision(&self) -> Option<u64> {
        match self {
            Error::PreconditionFailed { current } => *current,
            Error::Compacted { oldest, .. } => Some(*oldest),
            Error::FutureRevision { current, .. } => Some(*current),
            Error::Lagged { last } => Some(*last),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_says_a_failed_write_changed_nothing() {
        for refused in [
            Error::KeyNotFound,
            Error::PreconditionFailed { current: Some(3) },
            Error::LeaseNotFound(7),
            Error::ValueTooLarge { size: 2, max: 1 },
            Error::RequestTooLarge("etcd: request is too large".into()),
        ] {
            assert!(refused.refused(), "{refused:?}");
        }
        // Each may follow a write that was applied: nothing may be undone on it.
        for unknown in [
            Error::Unavailable("etcd: transport error (during a write)".into()),
            Error::DiskFull("no space left on device".into()),
            Error::Closed,
        ] {
            assert!(!unknown.refused(), "{unknown:?}");
        }
    }
}
