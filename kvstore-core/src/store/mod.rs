//! The embedded, revisioned store on sled.
//!
//! Writes go through one writer thread that numbers them (gap-free revisions),
//! applies each group of waiting writes to the `log` (change records, written ahead),
//! `kv` and `meta` trees, and flushes once per group (group commit); on open, change
//! records that a crash cut off from `kv` are re-applied. Events come from
//! sled's own `watch_prefix` subscription on the `log` tree, drained by a dedicated
//! thread and released in revision order once durable; watchers read them from a
//! bounded broadcast ring and resume from `log`.

mod codec;
mod events;
mod watch;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::key::{validate_key, KeyError, DEFAULT_MAX_VALUE_BYTES, MAX_VALUE_BYTES_LIMIT};
use crate::wire::{DeleteResult, Entry, ListPage, PutResult};
use codec::decode_entry;
pub use watch::{Watch, WatchItem, WatchOptions};
use writer::{Op, Outcome, Request};

/// Entries written per step of a restore.
const IMPORT_CHUNK: usize = 1000;

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

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct Config {
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
    /// Events buffered for watchers; a watcher further behind than this is lagged.
    pub event_buffer: usize,
}

impl Config {
    /// Defaults for a store in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
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
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = format!("kvstore-{}-{n}-{nanos}", std::process::id());
        let mut config = Config::new(std::env::temp_dir().join(dir));
        config.temporary = true;
        config
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is not acceptable.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// The value is larger than the configured limit.
    #[error("the value is {size} bytes; the limit is {max} bytes")]
    ValueTooLarge {
        /// Size of the refused value.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The key does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A compare-and-swap or create-only condition did not hold.
    #[error("precondition failed: the key's mod_revision is {}", current.map_or("none (absent)".to_string(), |r| r.to_string()))]
    PreconditionFailed {
        /// The key's current `mod_revision`, `None` when it does not exist.
        current: Option<u64>,
    },
    /// The history no longer holds the requested revision.
    #[error("revision {requested} is compacted; the oldest revision kept is {oldest}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
    },
    /// A watcher fell too far behind the live feed.
    #[error("the watcher fell behind; resume from revision {}", last + 1)]
    Lagged {
        /// The last revision the watcher was given (or passed over).
        last: u64,
    },
    /// A restore needs an empty store.
    #[error("the store is not empty; restore a snapshot into a new data dir")]
    NotEmpty,
    /// A snapshot to restore is malformed.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// sled reported an error (I/O, full disk, lock held by another process).
    #[error("storage error: {}", describe(.0))]
    Storage(sled::Error),
    /// The data dir is in use by another process.
    #[error("the data dir {0} is in use by another kvstore-server (its lock is held)")]
    Locked(PathBuf),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e)
    }
}

fn describe(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

impl Error {
    /// Whether the error is the disk being full (ENOSPC).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Storage(sled::Error::Io(io)) => {
                io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
            }
            _ => false,
        }
    }
}

/// Conditions a write can be made to depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Always write.
    #[default]
    None,
    /// Write only if the key does not exist (create-only).
    Absent,
    /// Write only if the key exists.
    Exists,
    /// Write only if the key exists with this `mod_revision` (compare-and-swap).
    ModRevision(u64),
}

impl Precondition {
    fn holds(self, current: Option<u64>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::Absent => current.is_none(),
            Precondition::Exists => current.is_some(),
            Precondition::ModRevision(want) => current == Some(want),
        }
    }
}

struct Inner {
    db: sled::Db,
    kv: sled::Tree,
    log: sled::Tree,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<Request>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    keys: Arc<AtomicU64>,
    /// The last durable revision, raised by the writer before it answers.
    durable: Arc<tokio::sync::watch::Sender<u64>>,
    feed: events::Feed,
    config: Config,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer after a final flush; waiting for it
        // means the data files are released (and a temporary store removed) when
        // the last handle goes.
        self.writer = None;
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

/// A handle to the store; cheap to clone, usable from any thread.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), kvstore_core::Error> {
/// use kvstore_core::{Config, Precondition, Store};
/// let store = Store::open(Config::temporary())?;
/// let put = store.put("app/db/url", b"postgres://db".to_vec(), Precondition::None).await?;
/// let entry = store.get("app/db/url")?.expect("just written");
/// assert_eq!(entry.value, b"postgres://db");
/// assert_eq!(entry.mod_revision, put.revision);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the store described by `config`.
    pub fn open(mut config: Config) -> Result<Store, Error> {
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
                other => Error::Storage(other),
            })?;
        let kv = db.open_tree("kv")?;
        let log = db.open_tree("log")?;
        let meta = db.open_tree("meta")?;
        let last = writer::recover(&kv, &log, &meta)?;
        let feed = events::Feed::start(&log, last, config.event_buffer);
        // Counted once here (sled's len walks the tree), then kept by the writer.
        let keys = Arc::new(AtomicU64::new(kv.len() as u64));
        let durable = Arc::new(tokio::sync::watch::channel(last).0);
        let (tx, rx) = mpsc::channel(4096);
        let writer_thread = writer::Writer {
            db: db.clone(),
            kv: kv.clone(),
            log: log.clone(),
            meta,
            last,
            sync: config.sync,
            retain: config.retain_revisions,
            sequencer: feed.sequencer(),
            keys: keys.clone(),
            durable: durable.clone(),
            torn: false,
        }
        .spawn(rx)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                kv,
                log,
                writer: Some(tx),
                writer_thread: Some(writer_thread),
                keys,
                durable,
                feed,
                config,
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store's current revision: the last change that is durable (and
    /// acknowledged). Watchers get it a moment later, once in order.
    pub fn revision(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    /// How many keys the store holds.
    pub fn key_count(&self) -> u64 {
        self.inner.keys.load(Ordering::Relaxed)
    }

    /// Bytes the data files take on disk.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// The oldest revision the change history still holds (one past the current
    /// revision when the history is empty).
    pub fn oldest_revision(&self) -> Result<u64, Error> {
        match self.inner.log.first()? {
            Some((rev, _)) => codec::decode_u64(&rev),
            None => Ok(self.revision() + 1),
        }
    }

    /// Reads one key.
    ///
    /// This reads sled directly, so for the moment of a group's flush it can show a
    /// write that is committed but not yet durable (`mod_revision` above
    /// [`Store::revision`]); [`Store::wait_durable`] on that revision waits for it.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        validate_key(key)?;
        match self.inner.kv.get(key.as_bytes())? {
            Some(bytes) => Ok(Some(decode_entry(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Lists up to `limit` (at least 1) entries whose keys start with `prefix`, in
    /// key order, starting after the key `after` when given. Like [`Store::get`], it
    /// can show writes whose flush is under way.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage, Error> {
        let revision = self.revision();
        let start = match after {
            Some(after) if after >= prefix => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let limit = limit.max(1);
        let mut entries = Vec::new();
        let mut more = false;
        for item in self.inner.kv.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if entries.len() == limit {
                more = true;
                break;
            }
            entries.push(decode_entry(&k, &v)?);
        }
        let next = match (more, entries.last()) {
            (true, Some(last)) => Some(last.key.clone()),
            _ => None,
        };
        Ok(ListPage {
            entries,
            next,
            revision,
        })
    }

    /// Sets `key` to `value` if `precondition` holds, and returns the revision.
    pub async fn put(
        &self,
        key: impl Into<String>,
        value: Vec<u8>,
        precondition: Precondition,
    ) -> Result<PutResult, Error> {
        let key = key.into();
        validate_key(&key)?;
        let max = self.inner.config.max_value_bytes;
        if value.len() > max {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                max,
            });
        }
        match self
            .submit(Op::Put {
                key,
                value,
                precondition,
            })
            .await?
        {
            Outcome::Put(result) => Ok(result),
            Outcome::Delete(_) => Err(Error::Corrupt("writer answered a put with a delete".into())),
        }
    }

    /// Deletes `key` if it exists and `precondition` holds.
    pub async fn delete(
        &self,
        key: impl Into<String>,
        precondition: Precondition,
    ) -> Result<DeleteResult, Error> {
        let key = key.into();
        validate_key(&key)?;
        match self.submit(Op::Delete { key, precondition }).await? {
            Outcome::Delete(result) => Ok(result),
            Outcome::Put(_) => Err(Error::Corrupt("writer answered a delete with a put".into())),
        }
    }

    /// Sends the request `make` builds around a reply channel to the writer, and
    /// waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, Error> {
        let writer = self.inner.writer.as_ref().ok_or(Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        writer.send(make(reply)).await.map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)
    }

    async fn submit(&self, op: Op) -> Result<Outcome, Error> {
        // The writer raises the durable revision before it answers, so the store
        // revision already includes this write and a watch opened from now on
        // starts after it.
        self.ask(|reply| Request::Write { op, reply }).await?
    }

    /// Waits until every change through `revision` is durable (the store revision
    /// has reached it).
    pub async fn wait_durable(&self, revision: u64) -> Result<(), Error> {
        if self.revision() >= revision {
            return Ok(());
        }
        let mut revisions = self.inner.durable.subscribe();
        revisions
            .wait_for(|&r| r >= revision)
            .await
            .map(|_| ())
            .map_err(|_| Error::Closed)
    }

    /// Waits until every write submitted before this call is committed, and
    /// returns the last assigned revision.
    async fn barrier(&self) -> Result<u64, Error> {
        self.ask(|reply| Request::Barrier { reply }).await
    }

    /// A consistent copy of every entry under `prefix` as of one revision, in key
    /// order, and that revision.
    pub async fn snapshot(&self, prefix: &str) -> Result<(Vec<Entry>, u64), Error> {
        let (entries, at) = watch::snapshot(self, prefix, self.revision()).await?;
        Ok((entries.into_values().collect(), at))
    }

    /// Restores `entries` (as exported at store revision `revision`) into this
    /// store, which must be empty. Keys, values, revisions and versions are kept;
    /// the store continues at `revision + 1`. Restored entries raise no events.
    pub async fn restore(&self, revision: u64, entries: Vec<Entry>) -> Result<usize, Error> {
        for entry in &entries {
            validate_key(&entry.key)?;
            let max = self.inner.config.max_value_bytes;
            if entry.value.len() > max {
                return Err(Error::ValueTooLarge {
                    size: entry.value.len(),
                    max,
                });
            }
            let revisions_ok = entry.version >= 1
                && entry.create_revision >= 1
                && entry.create_revision <= entry.mod_revision
                && entry.mod_revision <= revision;
            if !revisions_ok {
                return Err(Error::InvalidSnapshot(format!(
                    "entry {:?} has inconsistent revisions for a snapshot at revision {revision}",
                    entry.key
                )));
            }
        }
        let mut total = 0;
        let mut first = true;
        let mut entries = entries.into_iter().peekable();
        while first || entries.peek().is_some() {
            let chunk: Vec<Entry> = entries.by_ref().take(IMPORT_CHUNK).collect();
            total += self
                .ask(|reply| Request::Import {
                    entries: chunk,
                    revision,
                    first,
                    reply,
                })
                .await??;
            first = false;
        }
        self.wait_durable(revision).await?;
        Ok(total)
    }

    /// Makes every write so far durable (useful with [`SyncMode::None`]).
    pub fn flush(&self) -> Result<(), Error> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Subscribes to changes; see [`WatchOptions`] for where the stream starts.
    pub async fn watch(&self, options: WatchOptions) -> Result<Watch, Error> {
        watch::open(self, options).await
    }
}
