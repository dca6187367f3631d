//! The embedded engine, on [sled](https://docs.rs/sled/0.34.7).
//!
//! Writes go through one writer thread that numbers them (gap-free revisions; a
//! transaction or a delete by prefix is one revision of several changes),
//! applies each group of waiting writes to the `log` (change records, written ahead),
//! `kv` and `meta` trees, and flushes once per group (group commit); on open, change
//! records that a crash cut off from `kv` are re-applied. Events come from
//! sled's own `watch_prefix` subscription on the `log` tree, drained by a dedicated
//! thread and released in revision order once durable; watchers read them from a
//! bounded broadcast ring and resume from `log`.
//!
//! Reads wait (a bounded time) until the revisions they show are durable, so
//! nothing a reader saw can be undone by a crash. A snapshot streams the `kv` tree
//! in key order while the writer keeps, for the snapshot, the state at its revision
//! of each key it changes meanwhile (see `export`). A restore writes the entries as
//! they are, revisions included, and refuses other writes until it is done.

mod codec;
mod events;
mod export;
#[cfg(feature = "failpoints")]
mod failpoints;
mod history;
mod lease;
mod stage;
mod txn;
mod watch;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::condition::Condition;
use crate::key::{validate_key, DEFAULT_MAX_VALUE_BYTES, MAX_VALUE_BYTES_LIMIT};
use crate::lease::check_ttl;
use crate::storage::{
    check_entry, check_put, check_txn, Error, Snapshot, Status, Storage, Watch, WatchOptions,
};
use crate::txn::{Txn, TxnResponse};
use crate::wire::{
    DeletePrefixResult, DeleteResult, Entry, HistoryPage, Lease, LeaseInfo, ListPage, PutResult,
    RestoreResult, RevokeResult,
};
use codec::decode_entry;
use writer::{Change, Op, Outcome, Request};

/// Entries written per step of a restore.
const IMPORT_CHUNK: usize = 1000;

/// How long a read waits for the flush of a write it would show.
const DURABLE_WAIT: Duration = Duration::from_secs(5);

/// How long a write may wait for its group to be committed and flushed.
const WRITE_WAIT: Duration = Duration::from_secs(30);

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every write is flushed before it is acknowledged or shown to watchers;
    /// concurrent writes share one flush.
    #[default]
    Always,
    /// Writes are acknowledged once in memory and reach disk by sled's background
    /// flush (every 500 ms): a crash can lose the last half second of writes.
    None,
}

/// How to open a [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledConfig {
    /// Folder of the data files (created if missing).
    pub path: PathBuf,
    /// Remove the data when the store is dropped (for tests and examples).
    pub temporary: bool,
    /// Durability of acknowledged writes.
    pub sync: SyncMode,
    /// Largest value accepted, in bytes (at most [`MAX_VALUE_BYTES_LIMIT`]: a larger
    /// setting counts as that).
    pub max_value_bytes: usize,
    /// Bytes of sled page cache.
    pub cache_capacity: u64,
    /// How many past revisions (at least) the change history keeps for resuming watches.
    pub retain_revisions: u64,
    /// Revisions buffered for watchers; a watcher further behind than this is lagged.
    pub event_buffer: usize,
}

impl SledConfig {
    /// Defaults for a store in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledConfig {
            path: path.into(),
            temporary: false,
            sync: SyncMode::Always,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            cache_capacity: 256 * 1024 * 1024,
            retain_revisions: 100_000,
            event_buffer: 4096,
        }
    }

    /// A store in a fresh folder of its own under the system temp dir, removed
    /// when the store is dropped.
    pub fn temporary() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = format!("kvstore-{}-{n}-{nanos}", std::process::id());
        let mut config = SledConfig::new(std::env::temp_dir().join(dir));
        config.temporary = true;
        config
    }
}

/// A sled error in our terms: a full disk, or storage that cannot serve.
pub(crate) fn storage_error(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) =>
        {
            Error::DiskFull(io.to_string())
        }
        sled::Error::Io(io) => Error::Unavailable(format!("storage error: {io}")),
        sled::Error::Corruption { .. } => Error::Corrupt(e.to_string()),
        other => Error::Unavailable(format!("storage error: {other}")),
    }
}

/// `?` on sled results inside this engine.
pub(crate) trait OrStorage<T> {
    fn or_storage(self) -> Result<T, Error>;
}

impl<T> OrStorage<T> for Result<T, sled::Error> {
    fn or_storage(self) -> Result<T, Error> {
        self.map_err(storage_error)
    }
}

struct Inner {
    db: sled::Db,
    kv: sled::Tree,
    log: sled::Tree,
    /// Each key's changes by revision (see `history`).
    history: sled::Tree,
    /// The oldest revision `history` answers for.
    history_from: Arc<AtomicU64>,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<Request>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    keys: Arc<AtomicU64>,
    /// The writer's last group failed for a full disk.
    disk_full: Arc<AtomicBool>,
    leases: Arc<lease::Leases>,
    lease_timer: Option<std::thread::JoinHandle<()>>,
    /// The last durable revision, raised by the writer before it answers.
    durable: Arc<tokio::sync::watch::Sender<u64>>,
    feed: events::Feed,
    config: SledConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer after a final flush; waiting for it
        // means the data files are released (and a temporary store removed) when
        // the last handle goes.
        self.writer = None;
        self.leases.stop();
        if let Some(thread) = self.lease_timer.take() {
            let _ = thread.join();
        }
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The embedded store; cheap to clone, usable from any thread. Its operations are
/// those of [`Storage`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), kvstore_core::Error> {
/// use kvstore_core::{SledConfig, SledStore, Storage};
/// let store = SledStore::open(SledConfig::temporary())?;
/// let put = store.put("app/db/url", b"postgres://db".to_vec(), None).await?;
/// let entry = store.get("app/db/url").await?.expect("just written");
/// assert_eq!(entry.value, b"postgres://db");
/// assert_eq!(entry.mod_revision, put.revision);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl SledStore {
    /// Opens (or creates) the store described by `config`.
    pub fn open(mut config: SledConfig) -> Result<SledStore, Error> {
        #[cfg(feature = "failpoints")]
        failpoints::setup();
        config.max_value_bytes = config.max_value_bytes.min(MAX_VALUE_BYTES_LIMIT);
        let db = sled::Config::new()
            .path(&config.path)
            .temporary(config.temporary)
            .cache_capacity(config.cache_capacity)
            .open()
            .map_err(|e| match e {
                // sled reports a held lock as an I/O error with this text.
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    Error::Locked(config.path.clone())
                }
                other => storage_error(other),
            })?;
        let kv = db.open_tree("kv").or_storage()?;
        let log = db.open_tree("log").or_storage()?;
        let meta = db.open_tree("meta").or_storage()?;
        let lease_tree = db.open_tree("leases").or_storage()?;
        let history = db.open_tree("history").or_storage()?;
        writer::start_new(&meta, &log)?;
        let last = writer::recover(&kv, &log, &meta, &history)?;
        let history_from = Arc::new(AtomicU64::new(history_from(&kv, &meta, &history, last)?));
        let leases = Arc::new(lease::Leases::load(&lease_tree, &kv)?);
        let feed = events::Feed::start(&log, last, config.event_buffer);
        // Counted once here (sled's len walks the tree), then kept by the writer.
        let keys = Arc::new(AtomicU64::new(kv.len() as u64));
        let disk_full = Arc::new(AtomicBool::new(false));
        let durable = Arc::new(tokio::sync::watch::channel(last).0);
        let (tx, rx) = mpsc::channel(4096);
        let writer_thread = writer::Writer {
            db: db.clone(),
            kv: kv.clone(),
            log: log.clone(),
            meta,
            history: history.clone(),
            history_from: history_from.clone(),
            last,
            sync: config.sync,
            retain: config.retain_revisions,
            sequencer: feed.sequencer(),
            keys: keys.clone(),
            disk_full: disk_full.clone(),
            durable: durable.clone(),
            torn: false,
            exports: export::Exports::default(),
            restoring: false,
            lease_tree,
            leases: leases.clone(),
        }
        .spawn(rx)?;
        // Held weakly: the writer stops when the store goes, and the timer with it.
        let writer = tx.downgrade();
        let lease_timer = leases.start_timer(move |id| {
            writer
                .upgrade()
                .is_some_and(|w| w.blocking_send(writer::Request::Expire { id }).is_ok())
        })?;
        Ok(SledStore {
            inner: Arc::new(Inner {
                db,
                kv,
                log,
                history,
                history_from,
                writer: Some(tx),
                writer_thread: Some(writer_thread),
                keys,
                disk_full,
                leases,
                lease_timer: Some(lease_timer),
                durable,
                feed,
                config,
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SledConfig {
        &self.inner.config
    }

    /// The last durable (and acknowledged) revision. Watchers get it a moment
    /// later, once in order.
    fn durable_revision(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    /// The oldest revision a read can ask for: the oldest the change history still
    /// holds (and the `history` tree answers for); with no history, the current
    /// one, which can always be read (1 for a store that never changed: see
    /// `writer::start_new`).
    ///
    /// A restored store (or one made before the `history` tree) answers from the
    /// revision it started at, until compaction passes it.
    fn oldest_revision(&self) -> Result<u64, Error> {
        let current = self.durable_revision();
        let from = self.inner.history_from.load(Ordering::Relaxed);
        Ok(match self.inner.log.first().or_storage()? {
            Some((first, _)) => match codec::decode_u64(&first)? {
                // Nothing compacted since the revision the history starts at.
                first if first == from + 1 => from,
                first => first.max(from),
            },
            None => current.max(from),
        })
    }

    /// A read of the past: a `log` item compacted while it was read says that
    /// `revision` is compacted now.
    fn past<T>(&self, read: Result<T, Error>, revision: u64) -> Result<T, Error> {
        match read {
            Err(Error::Compacted { oldest: 0, .. }) => {
                self.check_revision(revision)?;
                Err(Error::Corrupt(format!(
                    "a change readable at revision {revision} is missing from the log"
                )))
            }
            other => other,
        }
    }

    /// Checks that a read may ask for `revision`: neither compacted nor ahead of
    /// the store (the current revision is always readable). Returns the oldest
    /// revision kept.
    fn check_revision(&self, revision: u64) -> Result<u64, Error> {
        let current = self.durable_revision();
        if revision > current {
            return Err(Error::FutureRevision {
                requested: revision,
                current,
            });
        }
        let oldest = self.oldest_revision()?;
        if revision < oldest && revision != current {
            return Err(Error::Compacted {
                requested: revision,
                oldest,
            });
        }
        Ok(oldest)
    }

    /// Sends the request `make` builds around a reply channel to the writer, and
    /// waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, Error> {
        let writer = self.inner.writer.as_ref().ok_or(Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        writer.send(make(reply)).await.map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// Hands `op` to the writer and waits (bounded by [`WRITE_WAIT`]) for its
    /// answer. The writer raises the durable revision before it answers, so the
    /// store revision already includes the write and a watch opened from now on
    /// starts after it.
    async fn submit(&self, op: Op) -> Result<Outcome, Error> {
        let answer = self.ask(|reply| Request::Write { op, reply });
        match tokio::time::timeout(WRITE_WAIT, answer).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Unavailable(
                "the write was not confirmed in time; it may or may not have been applied".into(),
            )),
        }
    }

    /// Waits until every change through `revision` is durable (the store revision
    /// has reached it).
    async fn wait_durable(&self, revision: u64) -> Result<(), Error> {
        if self.durable_revision() >= revision {
            return Ok(());
        }
        let mut revisions = self.inner.durable.subscribe();
        revisions
            .wait_for(|&r| r >= revision)
            .await
            .map(|_| ())
            .map_err(|_| Error::Closed)
    }

    /// Like [`SledStore::wait_durable`], for a read that would show `revision`: a
    /// read never shows a write a crash could undo, and answers `unavailable`
    /// rather than hang when flushes stop (a failing disk).
    async fn readable(&self, revision: u64) -> Result<(), Error> {
        // Almost always so: no timer to arm and cancel.
        if self.durable_revision() >= revision {
            return Ok(());
        }
        match tokio::time::timeout(DURABLE_WAIT, self.wait_durable(revision)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(format!(
                "revision {revision} is not durable yet; the disk may be failing"
            ))),
        }
    }

    /// The entries under `prefix` as of one revision, streamed; see `export`.
    async fn export(&self, prefix: &str) -> Result<(export::Export, u64), Error> {
        let capture = self
            .ask(|reply| Request::Export {
                prefix: prefix.as_bytes().to_vec(),
                reply,
            })
            .await?;
        let revision = capture.revision();
        // Show nothing that is not yet durable.
        self.wait_durable(revision).await?;
        Ok((
            export::Export::new(self.inner.kv.clone(), capture),
            revision,
        ))
    }

    /// Writes `entries` (part of a restore at `revision`) as they are.
    async fn import(&self, entries: Vec<Entry>, step: writer::ImportStep) -> Result<usize, Error> {
        self.ask(|reply| Request::Import {
            entries,
            step,
            reply,
        })
        .await?
    }
}

#[async_trait::async_trait]
impl Storage for SledStore {
    fn engine(&self) -> &'static str {
        "sled"
    }

    fn revision(&self) -> u64 {
        self.durable_revision()
    }

    fn max_value_bytes(&self) -> usize {
        self.inner.config.max_value_bytes
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        validate_key(key)?;
        let entry = match self.inner.kv.get(key.as_bytes()).or_storage()? {
            Some(bytes) => decode_entry(key.as_bytes(), &bytes)?,
            // Gone from `kv`, but its delete may not be durable yet, and a crash
            // would bring the key back: show it as of the durable revision.
            None => return self.get_at(key, self.durable_revision()).await,
        };
        // sled shows a group's writes before its flush ends.
        self.readable(entry.mod_revision).await?;
        Ok(Some(entry))
    }

    /// Read at the durable revision from the `history` tree: one revision for the
    /// whole page, whatever is written meanwhile.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        self.list_at(prefix, after, limit, self.durable_revision())
            .await
    }

    async fn get_at(&self, key: &str, revision: u64) -> Result<Option<Entry>, Error> {
        validate_key(key)?;
        self.check_revision(revision)?;
        let mut reader = history::Reader::new(&self.inner.history, &self.inner.log);
        let entry = self.past(history::get_at(&mut reader, key, revision), revision)?;
        // Compacted meanwhile: what was read may be incomplete.
        self.check_revision(revision)?;
        Ok(entry)
    }

    async fn list_at(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: u64,
    ) -> Result<ListPage, Error> {
        self.check_revision(revision)?;
        let mut reader = history::Reader::new(&self.inner.history, &self.inner.log);
        let listed = history::list_at(&mut reader, prefix, after, limit.max(1), revision);
        let (entries, more) = self.past(listed, revision)?;
        self.check_revision(revision)?;
        let next = match (more, entries.last()) {
            (true, Some(last)) => Some(last.key.clone()),
            _ => None,
        };
        Ok(ListPage {
            entries,
            next,
            revision,
            continue_token: None,
            current_revision: Some(self.durable_revision()),
        })
    }

    async fn history(&self, key: &str, after: u64, limit: usize) -> Result<HistoryPage, Error> {
        validate_key(key)?;
        let through = self.durable_revision();
        let oldest = self.oldest_revision()?;
        if after.saturating_add(1) < oldest && after != 0 {
            return Err(Error::Compacted {
                requested: after + 1,
                oldest,
            });
        }
        let mut reader = history::Reader::new(&self.inner.history, &self.inner.log);
        let (events, more) =
            history::history(&mut reader, key, after, oldest, through, limit.max(1))?;
        // Compacted meanwhile: the first events read may be gone.
        let now_oldest = self.oldest_revision()?;
        if events.first().is_some_and(|e| e.revision < now_oldest) {
            return Err(Error::Compacted {
                requested: after + 1,
                oldest: now_oldest,
            });
        }
        let next = match (more, events.last()) {
            (true, Some(last)) => Some(last.revision),
            _ => None,
        };
        Ok(HistoryPage {
            events,
            next,
            revision: through,
            oldest_revision: oldest,
        })
    }

    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        condition: Option<Condition>,
        lease: Option<u64>,
    ) -> Result<PutResult, Error> {
        check_put(key, &value, self.inner.config.max_value_bytes)?;
        let op = Op::Put {
            key: key.to_string(),
            value,
            condition,
            lease,
        };
        match self.submit(op).await? {
            Outcome::Put(result) => Ok(result),
            _ => Err(Error::Corrupt(
                "writer answered a put with another op".into(),
            )),
        }
    }

    async fn delete(&self, key: &str, condition: Option<Condition>) -> Result<DeleteResult, Error> {
        validate_key(key)?;
        let op = Op::Delete {
            key: key.to_string(),
            condition,
        };
        match self.submit(op).await? {
            Outcome::Delete(result) => Ok(result),
            _ => Err(Error::Corrupt(
                "writer answered a delete with another op".into(),
            )),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<DeletePrefixResult, Error> {
        let op = Op::Batch(vec![Change::DeletePrefix {
            prefix: prefix.to_string(),
        }]);
        match self.submit(op).await? {
            Outcome::Batch(batch) => Ok(DeletePrefixResult {
                deleted: batch.deleted,
                revision: batch.revision,
            }),
            _ => Err(Error::Corrupt(
                "writer answered a delete by prefix with another op".into(),
            )),
        }
    }

    async fn grant(&self, ttl: u64) -> Result<Lease, Error> {
        check_ttl(ttl)?;
        self.ask(|reply| Request::Grant { ttl, reply }).await?
    }

    async fn keepalive(&self, id: u64) -> Result<Lease, Error> {
        self.inner.leases.keepalive(id)
    }

    async fn revoke(&self, id: u64) -> Result<RevokeResult, Error> {
        self.ask(|reply| Request::Revoke { id, reply }).await?
    }

    async fn lease(&self, id: u64) -> Result<LeaseInfo, Error> {
        self.inner.leases.info(id)
    }

    async fn leases(&self) -> Result<Vec<u64>, Error> {
        Ok(self.inner.leases.ids())
    }

    async fn compact(&self, revision: u64) -> Result<u64, Error> {
        self.check_revision(revision)?;
        self.ask(|reply| Request::Compact { revision, reply })
            .await?
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        check_txn(&txn, self.inner.config.max_value_bytes)?;
        match self.submit(Op::Txn(txn)).await? {
            Outcome::Txn(response) => Ok(response),
            _ => Err(Error::Corrupt(
                "writer answered a transaction with another op".into(),
            )),
        }
    }

    async fn watch(&self, options: WatchOptions) -> Result<Watch, Error> {
        watch::open(self, options).await
    }

    async fn snapshot(&self, prefix: &str) -> Result<Snapshot, Error> {
        let (export, revision) = self.export(prefix).await?;
        Ok(Snapshot {
            revision,
            entries: Box::pin(export.into_stream()),
        })
    }

    /// Keys, values, revisions and versions are kept, as the snapshot has them;
    /// the store is at the snapshot's revision and continues at the next one (a
    /// snapshot of an empty store at revision 0, as stores before the initial
    /// revision 1 made them, leaves it at 1). Writes are refused while the restore
    /// runs; one that fails part way (a bad entry, a broken upload) leaves the store
    /// new again.
    async fn restore(&self, snapshot: Snapshot) -> Result<RestoreResult, Error> {
        let Snapshot {
            revision,
            mut entries,
        } = snapshot;
        let max = self.inner.config.max_value_bytes;
        self.import(Vec::new(), writer::ImportStep::Begin).await?;
        // From here on, a failure (or this future being dropped) must undo the
        // entries written so far.
        let mut undo = writer::UndoImport::new(self.inner.writer.clone());
        let mut restored = 0;
        let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
        loop {
            let next = entries.next().await;
            let end = next.is_none();
            if let Some(entry) = next {
                let entry = entry?;
                check_entry(&entry, revision, max)?;
                chunk.push(entry);
            }
            if chunk.len() == IMPORT_CHUNK || (end && !chunk.is_empty()) {
                restored += self
                    .import(std::mem::take(&mut chunk), writer::ImportStep::Entries)
                    .await?;
            }
            if end {
                break;
            }
        }
        self.import(Vec::new(), writer::ImportStep::Commit { revision })
            .await?;
        undo.disarm();
        Ok(RestoreResult {
            restored,
            revision: revision.max(crate::storage::INITIAL_REVISION),
        })
    }

    async fn status(&self) -> Result<Status, Error> {
        Ok(Status {
            engine: "sled",
            revision: self.durable_revision(),
            oldest_revision: self.oldest_revision()?,
            keys: self.inner.keys.load(Ordering::Relaxed),
            size_on_disk: self.inner.db.size_on_disk().ok(),
            disk_full: self.inner.disk_full.load(Ordering::Relaxed),
        })
    }

    async fn flush(&self) -> Result<(), Error> {
        self.inner.db.flush().or_storage()?;
        Ok(())
    }
}

/// The oldest revision the `history` tree answers for, from `meta` (a new store
/// writes it when it starts: see `writer::start_new`); for a store made before the
/// tree existed, the tree is written first from `kv` (each key's present state),
/// and answers from the last revision on.
fn history_from(
    kv: &sled::Tree,
    meta: &sled::Tree,
    tree: &sled::Tree,
    last: u64,
) -> Result<u64, Error> {
    if let Some(bytes) = meta.get(history::META_HISTORY_FROM).or_storage()? {
        return codec::decode_u64(&bytes);
    }
    let from = last;
    tree.clear().or_storage()?;
    history::build(kv, tree)?;
    if !kv.is_empty() {
        log::info!("indexed the store's keys for reads of the past, from revision {from} on");
    }
    meta.insert(history::META_HISTORY_FROM, &codec::encode_u64(from))
        .or_storage()?;
    meta.flush().or_storage()?;
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EventKind;
    use crate::WatchItem;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Opens the store in `dir`, waiting (a bounded number of times) for a store
    /// dropped just before to release sled's lock: its writer thread lets go of the
    /// files once it has seen its channel close.
    async fn open_in(dir: &std::path::Path) -> Result<SledStore, Error> {
        let mut attempts = 0;
        loop {
            match SledStore::open(SledConfig::new(dir)) {
                Err(Error::Locked(_)) if attempts < 2000 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other,
            }
        }
    }

    /// The revisions of the next `n` events of `watch`.
    async fn revisions(watch: &mut Watch, n: usize) -> Result<Vec<u64>, Error> {
        let mut seen = Vec::new();
        while seen.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
                Ok(Ok(WatchItem::Event(event))) => seen.push(event.revision),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::Unavailable("no event in time".into())),
            }
        }
        Ok(seen)
    }

    /// A new store is at revision 1 before any write, as etcd is, and stays there
    /// across a reopen until its first write, which is revision 2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_store_starts_at_revision_1() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open_in(dir.path()).await?;
        assert_eq!(store.revision(), 1);
        let status = store.status().await?;
        assert_eq!((status.revision, status.oldest_revision), (1, 1));
        assert_eq!(store.list("", None, 10).await?.revision, 1);
        assert_eq!(store.get_at("k", 1).await?, None);
        assert_eq!(store.snapshot("").await?.revision, 1);
        drop(store);

        let store = open_in(dir.path()).await?;
        assert_eq!(store.revision(), 1, "reopened before any write");
        // A watch from revision 1 starts with the first write.
        let mut watch = store
            .watch(WatchOptions {
                start_revision: Some(1),
                ..Default::default()
            })
            .await?;
        let put = store.put("k", b"v".to_vec(), None).await?;
        assert_eq!((put.revision, put.create_revision), (2, 2));
        assert_eq!(revisions(&mut watch, 1).await?, [2]);
        // Revision 1 stays readable, empty, and is where the history begins.
        assert_eq!(store.get_at("k", 1).await?, None);
        assert_eq!(store.status().await?.oldest_revision, 1);
        let history = store.history("k", 0, 10).await?;
        let seen: Vec<_> = history.events.iter().map(|e| e.revision).collect();
        assert_eq!(seen, [2]);
        let mut from_1 = store
            .watch(WatchOptions {
                start_revision: Some(1),
                ..Default::default()
            })
            .await?;
        assert_eq!(revisions(&mut from_1, 1).await?, [2]);
        Ok(())
    }

    /// A data dir written before stores started at revision 1 (its first write was
    /// revision 1), laid out by hand as that version left it: it opens with its
    /// numbering unchanged, and its next write follows its last revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_from_before_opens_with_its_revisions() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let db = sled::Config::new().path(dir.path()).open()?;
            let (kv, log, meta, history) = (
                db.open_tree("kv")?,
                db.open_tree("log")?,
                db.open_tree("meta")?,
                db.open_tree("history")?,
            );
            // Revision 1 puts "a", revision 2 puts it again, in one write group.
            let first = codec::Stored {
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                lease: None,
                value: b"one".to_vec(),
            };
            let second = codec::Stored {
                mod_revision: 2,
                version: 2,
                value: b"two".to_vec(),
                ..first.clone()
            };
            let mut group = codec::GroupRecord::new();
            group.push_revision([("a", Some(&first))]);
            group.push_revision([("a", Some(&second))]);
            let group = group.finish();
            for (item, changes) in
                history::group_items(&codec::decode_group(&codec::encode_u64(1), &group)?)
            {
                history.insert(item, changes)?;
            }
            log.insert(codec::encode_u64(1), group)?;
            kv.insert("a", second.encode())?;
            meta.insert(codec::META_LAST, &codec::encode_u64(2))?;
            meta.insert(history::META_HISTORY_FROM, &codec::encode_u64(1))?;
            db.flush()?;
        }
        let store = open_in(dir.path()).await?;
        assert_eq!(store.revision(), 2);
        assert_eq!(store.status().await?.oldest_revision, 1);
        let entry = store.get("a").await?.ok_or("a is missing")?;
        assert_eq!(
            (entry.create_revision, entry.mod_revision, entry.version),
            (1, 2, 2)
        );
        let then = store.get_at("a", 1).await?.ok_or("a at 1 is missing")?;
        assert_eq!(then.value, b"one");
        let history = store.history("a", 0, 10).await?;
        let seen: Vec<_> = history
            .events
            .iter()
            .map(|e| (e.revision, e.kind))
            .collect();
        assert_eq!(seen, [(1, EventKind::Put), (2, EventKind::Put)]);
        let mut watch = store
            .watch(WatchOptions {
                start_revision: Some(1),
                ..Default::default()
            })
            .await?;
        assert_eq!(store.put("b", b"new".to_vec(), None).await?.revision, 3);
        assert_eq!(revisions(&mut watch, 3).await?, [1, 2, 3]);
        // Not a new store: a restore is refused.
        let empty = Snapshot {
            revision: 0,
            entries: Box::pin(futures_util::stream::empty()),
        };
        assert!(matches!(store.restore(empty).await, Err(Error::NotEmpty)));
        Ok(())
    }

    /// A data dir an earlier version made and never wrote to (its `meta` holds the
    /// start of the history and no last revision) is a new store: at revision 1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_from_before_never_written_to_starts_at_revision_1() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let db = sled::Config::new().path(dir.path()).open()?;
            for tree in ["kv", "log", "leases", "history"] {
                db.open_tree(tree)?;
            }
            let meta = db.open_tree("meta")?;
            meta.insert(history::META_HISTORY_FROM, &codec::encode_u64(1))?;
            db.flush()?;
        }
        let store = open_in(dir.path()).await?;
        assert_eq!(store.revision(), 1);
        assert_eq!(store.put("k", b"v".to_vec(), None).await?.revision, 2);
        Ok(())
    }

    /// A restore keeps the snapshot's revisions, old numbering included; a snapshot
    /// of an empty store at revision 0 (as stores before revision 1 wrote them)
    /// leaves a new store at revision 1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_keeps_the_snapshots_revisions() -> TestResult {
        let snapshot = |revision, entries: Vec<Entry>| Snapshot {
            revision,
            entries: Box::pin(futures_util::stream::iter(entries.into_iter().map(Ok))),
        };
        let dir = tempfile::tempdir()?;
        let store = open_in(dir.path()).await?;
        let restored = store.restore(snapshot(0, Vec::new())).await?;
        assert_eq!((restored.restored, restored.revision), (0, 1));
        assert_eq!(store.revision(), 1);
        // Still new: it takes another restore, of a snapshot whose first write was 1.
        let old = Entry {
            key: "a".into(),
            value: b"v".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        };
        let restored = store.restore(snapshot(3, vec![old.clone()])).await?;
        assert_eq!((restored.restored, restored.revision), (1, 3));
        assert_eq!(store.get("a").await?, Some(old));
        assert_eq!(store.put("b", b"w".to_vec(), None).await?.revision, 4);
        Ok(())
    }
}
