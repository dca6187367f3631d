//! The storage interface: what the server asks of an engine, whichever it is.
//!
//! [`Storage`] is object-safe; the server holds an `Arc<dyn Storage>` and never a
//! concrete engine. Every engine keeps the same promises:
//!
//! - Every change gets a store-wide revision that only grows. Each key records its
//!   `create_revision`, `mod_revision` and `version`, as in etcd. A new store is at
//!   revision [`INITIAL_REVISION`] (1) before any write, so its first write is
//!   revision 2, as in etcd.
//! - A write is acknowledged once durable, and a read never shows a write that a
//!   crash could still undo.
//! - A watch delivers every change under its prefix in revision order, with no gap
//!   and no duplicate, from any revision the history still holds; its
//!   [`Watch::position`] is always safe to resume after.
//! - A snapshot shows every entry under a prefix as of one revision, streamed.
//! - Any revision from the oldest the history holds ([`Status::oldest_revision`])
//!   to the current one can be read: a key or a range as it was then, and a key's
//!   changes. An older one is [`Error::Compacted`], a newer one
//!   [`Error::FutureRevision`].
//! - A lease ends when its TTL passes without a keep-alive, or when it is revoked;
//!   then every key still attached to it is deleted, all at one revision, and
//!   watchers see each deletion as a `delete` event of that revision. A put without
//!   a lease detaches the key from the one it had.
//!
//! What one engine needs and another does not (waiting until a read is durable,
//! retrying a member that died) stays inside that engine.

mod error;
mod event;
mod snapshot;
mod ttl;
mod watch;

pub use error::Error;
pub use event::SharedEvent;
pub use snapshot::{check_entry, EntryStream, Snapshot};
pub use watch::{Watch, WatchItem, WatchOptions, WatchStream};

use crate::condition::Condition;
use crate::txn::{Txn, TxnOp, TxnResponse};
use crate::wire::{
    DeletePrefixResult, DeleteResult, Entry, HistoryPage, Lease, LeaseInfo, ListPage, PutResult,
    RestoreResult, RevokeResult,
};

/// The revision of a new store before any write, as in etcd: the first write is
/// revision 2. Every revision from here to the current one can be read (at this
/// one the store is empty).
pub const INITIAL_REVISION: u64 = 1;

/// What a store reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The engine's name: `sled` or `etcd`.
    pub engine: &'static str,
    /// The store's current revision.
    pub revision: u64,
    /// The oldest revision a read can ask for, and a watch start from: the oldest
    /// the change history still holds (when it holds none: `revision`, which can
    /// always be read).
    pub oldest_revision: u64,
    /// How many keys the store holds.
    pub keys: u64,
    /// Bytes the data takes on disk, where the engine knows it.
    pub size_on_disk: Option<u64>,
    /// The disk is full: the last write failed for want of space (on etcd, its
    /// NOSPACE alarm is raised). Cleared once a write is durable again.
    pub disk_full: bool,
}

/// A store of keys and values with numbered changes and watches. See the module
/// docs for what every implementation promises.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), kvstore_core::Error> {
/// use std::sync::Arc;
/// use kvstore_core::{Condition, SledConfig, SledStore, Storage};
///
/// let store: Arc<dyn Storage> = Arc::new(SledStore::open(SledConfig::temporary())?);
/// let put = store.put("app/mode", b"blue".to_vec(), None).await?;
/// store
///     .put("app/mode", b"green".to_vec(), Some(Condition::ModRevision(put.revision)))
///     .await?;
/// let entry = store.get("app/mode").await?.expect("just written");
/// assert_eq!((entry.value.as_slice(), entry.version), (&b"green"[..], 2));
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The engine's name (`sled`, `etcd`), for logs and `/healthz`.
    fn engine(&self) -> &'static str;

    /// The store's current revision as far as this process knows without asking
    /// anyone: every acknowledged write is at or below it.
    fn revision(&self) -> u64;

    /// The largest value a put accepts, in bytes.
    fn max_value_bytes(&self) -> usize;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<Entry>, Error>;

    /// Up to `limit` (at least 1) entries whose keys start with `prefix`, in key
    /// order, starting after the key `after` when given; `next` is set when more
    /// follow.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, Error>;

    /// Reads one key as it was at `revision` (its value, revisions, version and
    /// lease then); `None` when it did not exist then. [`Error::Compacted`] below
    /// the oldest revision kept, [`Error::FutureRevision`] above the current one.
    async fn get_at(&self, key: &str, revision: u64) -> Result<Option<Entry>, Error>;

    /// Like [`Storage::list`], as the store was at `revision` (the page's
    /// `revision` is that one, `current_revision` the store's); the errors of
    /// [`Storage::get_at`]. Pages read at one revision, each after the last key of
    /// the one before, show the store at that revision once, whatever is written
    /// meanwhile, until it is compacted.
    async fn list_at(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: u64,
    ) -> Result<ListPage, Error>;

    /// Up to `limit` (at least 1) changes of `key` after revision `after`, oldest
    /// first, through the current revision: from the oldest revision kept when
    /// `after` is 0, else [`Error::Compacted`] when revisions after `after` are
    /// gone. `next` is set when more follow.
    async fn history(&self, key: &str, after: u64, limit: usize) -> Result<HistoryPage, Error>;

    /// Sets `key` to `value` if `condition` holds (always, for `None`). The key is
    /// permanent afterwards: detached from any lease it had.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        condition: Option<Condition>,
    ) -> Result<PutResult, Error> {
        self.put_leased(key, value, condition, None).await
    }

    /// Like [`Storage::put`], attaching the key to `lease` (`None`: permanent);
    /// [`Error::LeaseNotFound`] when the lease does not exist.
    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        condition: Option<Condition>,
        lease: Option<u64>,
    ) -> Result<PutResult, Error>;

    /// Like [`Storage::put_leased`] on a lease of the key's own of `ttl` seconds
    /// (HTTP's `?ttl=`), granted first: revoked when the store refuses the put,
    /// kept until its TTL when the put may or may not have been applied (revoking
    /// it then could delete a key at a revision no client was given). Answers the
    /// put and the lease.
    async fn put_with_ttl(
        &self,
        key: &str,
        value: Vec<u8>,
        condition: Option<Condition>,
        ttl: u64,
    ) -> Result<(PutResult, u64), Error> {
        ttl::put(self, key, value, condition, ttl).await
    }

    /// Like [`Storage::txn`], first granting each put with a `ttl` a lease of
    /// its own and putting it on that lease; a lease whose put does not run is
    /// revoked (kept until its TTL when the transaction's outcome is unknown, as
    /// [`Storage::put_with_ttl`]).
    async fn txn_with_ttls(&self, txn: Txn) -> Result<TxnResponse, Error> {
        ttl::txn(self, txn).await
    }

    /// Grants a lease of `ttl` seconds (see [`crate::lease::check_ttl`]); the
    /// answer has the TTL granted, which an engine may raise to its own minimum.
    async fn grant(&self, ttl: u64) -> Result<Lease, Error>;

    /// Restarts the lease's TTL in full; [`Error::LeaseNotFound`] once it ended.
    async fn keepalive(&self, id: u64) -> Result<Lease, Error>;

    /// Ends the lease now, deleting its keys at one revision.
    async fn revoke(&self, id: u64) -> Result<RevokeResult, Error>;

    /// The lease's TTL left, its granted TTL and its keys.
    async fn lease(&self, id: u64) -> Result<LeaseInfo, Error>;

    /// The ids of the leases that exist, in order.
    async fn leases(&self) -> Result<Vec<u64>, Error>;

    /// Drops the history before `revision` (etcd's compaction): reads and watches
    /// of older revisions answer [`Error::Compacted`] from then on (an engine may
    /// keep a little more). [`Error::Compacted`] when `revision` is gone already,
    /// [`Error::FutureRevision`] above the current one. Answers the store's
    /// revision.
    async fn compact(&self, revision: u64) -> Result<u64, Error>;

    /// Deletes `key` if it exists and `condition` holds; [`Error::KeyNotFound`] if it
    /// does not exist (and no revision is taken).
    async fn delete(&self, key: &str, condition: Option<Condition>) -> Result<DeleteResult, Error>;

    /// Deletes every key that starts with `prefix` (every key, for an empty one) at
    /// one revision; none is taken when no key matches.
    async fn delete_prefix(&self, prefix: &str) -> Result<DeletePrefixResult, Error>;

    /// Runs a transaction: its compares, then its `success` ops if all hold, else
    /// its `failure` ops, every write at one revision (none taken when it writes
    /// nothing). A failed compare is no error: see [`TxnResponse::succeeded`].
    /// A put with a `lease` attaches the key to it ([`Error::LeaseNotFound`], and
    /// nothing changes, when a put of the branch that runs names a lease that does
    /// not exist); one without makes the key permanent. Puts with a `ttl` are
    /// refused: [`Storage::txn_with_ttls`] grants each its own lease first.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error>;

    /// Subscribes to changes; [`WatchOptions`] says where the stream starts.
    async fn watch(&self, options: WatchOptions) -> Result<Watch, Error>;

    /// Every entry under `prefix` as of one revision, streamed in key order.
    async fn snapshot(&self, prefix: &str) -> Result<Snapshot, Error>;

    /// Restores `snapshot` into this store, which must be empty (else
    /// [`Error::NotEmpty`]). A restore raises no watch events. Each engine documents
    /// which revisions the restored keys get.
    async fn restore(&self, snapshot: Snapshot) -> Result<RestoreResult, Error>;

    /// The store's status; an error when the engine cannot be reached or read.
    async fn status(&self) -> Result<Status, Error>;

    /// Makes every acknowledged write durable (before a graceful stop).
    async fn flush(&self) -> Result<(), Error>;
}

/// What every engine checks of a put before it runs it: the key (see
/// [`crate::key::validate_key`]) and the value's size against `max_value_bytes`.
pub fn check_put(key: &str, value: &[u8], max_value_bytes: usize) -> Result<(), Error> {
    crate::key::validate_key(key)?;
    check_value(value, max_value_bytes)
}

fn check_value(value: &[u8], max_value_bytes: usize) -> Result<(), Error> {
    if value.len() > max_value_bytes {
        return Err(Error::ValueTooLarge {
            size: value.len(),
            max: max_value_bytes,
        });
    }
    Ok(())
}

/// What every engine checks of a transaction before it runs it: its shape (keys,
/// no key written twice in a branch; the number of ops is the server's to limit),
/// its values against `max_value_bytes`, and that its puts name no `ttl`: the
/// caller grants those their own leases first (see [`Storage::txn`]).
pub fn check_txn(txn: &Txn, max_value_bytes: usize) -> Result<(), Error> {
    txn.validate(usize::MAX)?;
    if txn.uses_ttls() {
        return Err(Error::Unsupported(
            "a transaction's put takes a `lease`: grant the key's own lease for a `ttl` first"
                .into(),
        ));
    }
    for op in txn.success.iter().chain(&txn.failure) {
        if let TxnOp::Put { value, .. } = op {
            check_value(value, max_value_bytes)?;
        }
    }
    Ok(())
}
