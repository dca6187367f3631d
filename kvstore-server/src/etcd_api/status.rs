//! Our errors as etcd's gRPC statuses, with etcd's messages where clients match on
//! them (`etcdserver: mvcc: required revision has been compacted`, ...).

use kvstore_core::txn::TxnError;
use kvstore_core::Error;
use tonic::Status;

/// etcd's message for a read or watch below the oldest revision kept.
pub(crate) const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's message for a read above the current revision.
pub(crate) const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
/// etcd's message for a lease that does not exist (any more).
pub(crate) const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
/// etcd's message when a token may not do what it asks.
pub(crate) const PERMISSION_DENIED: &str = "etcdserver: permission denied";

/// The status a client of etcd expects for `error`.
pub(crate) fn from_store(error: Error) -> Status {
    match error {
        Error::Compacted { .. } => Status::out_of_range(COMPACTED),
        Error::FutureRevision { .. } => Status::out_of_range(FUTURE_REVISION),
        Error::LeaseNotFound(_) => Status::not_found(LEASE_NOT_FOUND),
        Error::InvalidKey(kvstore_core::key::KeyError::Empty) => key_not_provided(),
        Error::ValueTooLarge { .. } | Error::RequestTooLarge(_) => {
            Status::invalid_argument("etcdserver: request is too large")
        }
        Error::InvalidTxn(TxnError::DuplicateKey(_)) => {
            Status::invalid_argument("etcdserver: duplicate key given in txn request")
        }
        Error::InvalidTxn(TxnError::TooManyOps { .. } | TxnError::OverStoreLimit(_)) => {
            too_many_ops()
        }
        Error::InvalidTxn(TxnError::InvalidTtl(_)) | Error::InvalidTtl(_) => {
            Status::out_of_range("etcdserver: too large lease TTL")
        }
        Error::InvalidKey(_) | Error::InvalidTxn(_) | Error::InvalidSnapshot(_) => {
            Status::invalid_argument(error.to_string())
        }
        Error::Unsupported(message) => Status::unimplemented(message),
        Error::PreconditionFailed { .. } | Error::NotEmpty => {
            Status::failed_precondition(error.to_string())
        }
        Error::DiskFull(_) => {
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded")
        }
        Error::Closed => Status::unavailable("etcdserver: server stopped"),
        Error::Unavailable(message) => Status::unavailable(message),
        Error::KeyNotFound => Status::invalid_argument("etcdserver: key not found"),
        other => Status::internal(other.to_string()),
    }
}

/// What etcd answers a call outside the caller's roles.
pub(crate) fn denied() -> Status {
    Status::permission_denied(PERMISSION_DENIED)
}

/// etcd's answer to a request without a key.
pub(crate) fn key_not_provided() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

/// etcd's answer to a transaction over `--max-txn-ops`.
pub(crate) fn too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

/// A part of etcd's API that kvstore does not serve, and why.
pub(crate) fn not_served(what: &str, why: &str) -> Status {
    Status::unimplemented(format!("kvstore does not serve {what}: {why}"))
}
