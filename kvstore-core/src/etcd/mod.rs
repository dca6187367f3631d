//! The engine on an etcd cluster (v3 API), through the `etcd-client` crate.
//!
//! etcd's data model is ours: store-wide revisions, and `create_revision`,
//! `mod_revision` and `version` per key. Our keys live under a prefix of the
//! cluster (`kvstore/` by default), invisible to API users; revisions are the
//! cluster's, so they skip numbers when others write to it.
//!
//! - Writes are etcd puts and deletes; a condition is a transaction (compare the
//!   key's revisions, then write, else read it), so it takes one revision.
//! - Reads are served from this replica's copy of the store (`cache`), kept
//!   current by one etcd watch, once the copy has reached the revision etcd reports
//!   for a quorum read made after the request arrived (`barrier`): a read shows
//!   every write acknowledged before it, by any replica. When the copy cannot get
//!   there in time, the read goes to etcd itself.
//! - Watches are fed by the copy, or by an etcd watch of their own when they start
//!   before its history (`watch`).
//! - A snapshot is a range read at one revision, a page at a time. A restore puts
//!   the entries at new revisions (etcd cannot take ours): their values come back,
//!   with `version` 1 and the revisions of the restore, and watchers see them as
//!   puts.
//! - Every call has a deadline per try and is retried where that is safe
//!   (`client`); etcd out of reach is [`Error::Unavailable`], and the server goes
//!   on, serving again once a member answers.
//!
//! The engine runs its background work (the copy's watch, the revision reads, the
//! cluster connections) on a small runtime of its own, so it works from any caller.

mod barrier;
mod cache;
mod client;
mod keys;
mod lease;
mod route;
mod txn;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};

use crate::condition::Condition;
use crate::key::{validate_key, DEFAULT_MAX_VALUE_BYTES};
use crate::storage::{
    check_entry, check_put, check_txn, Error, Snapshot, Status, Storage, Watch, WatchItem,
    WatchOptions,
};
use crate::txn::{Txn as OurTxn, TxnResponse};
use crate::wire::{
    DeletePrefixResult, DeleteResult, Entry, HistoryPage, Lease, LeaseInfo, ListPage, PutResult,
    RestoreResult, RevokeResult,
};
use barrier::Barrier;
use cache::{entry_of, Cache};
use client::{Connection, Retry};
use keys::Keys;

/// How long a read waits for this replica's copy before it asks etcd itself.
const COPY_WAIT: Duration = Duration::from_secs(2);
/// How long a put's answer waits for the copy (which brings the key's create
/// revision and version) before it reads them from etcd: the copy trails a put by
/// milliseconds, unless its watch is broken, and a put already waited for etcd.
const PUT_ANSWER_WAIT: Duration = Duration::from_millis(250);
/// Entries read per page of a snapshot.
const SNAPSHOT_PAGE: i64 = 1000;
/// Entries written per transaction of a restore (etcd takes 128 operations).
const RESTORE_CHUNK: usize = 100;

/// TLS towards etcd (for `https://` endpoints).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// CA certificates (PEM) that sign the members' certificates; the system's
    /// roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for clusters that ask for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://host:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// Our keys' prefix in the cluster.
    pub prefix: String,
    /// A user and password, for clusters with authentication on.
    pub user: Option<(String, String)>,
    /// TLS settings for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// Largest value accepted, in bytes (etcd's own request limit, 1.5 MiB by
    /// default, applies too).
    pub max_value_bytes: usize,
    /// Changes this replica keeps for watchers that resume, and how far a watcher
    /// may fall behind before it is lagged.
    pub event_buffer: usize,
}

impl EtcdConfig {
    /// Defaults for a cluster at `endpoints`.
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: "kvstore/".into(),
            user: None,
            tls: None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            event_buffer: 4096,
        }
    }
}

struct Inner {
    connection: Connection,
    keys: Keys,
    cache: Arc<Cache>,
    barrier: Arc<Barrier>,
    /// The highest revision an answer of etcd's showed this replica (a write, a
    /// read that went to etcd itself): `revision` is never below what a caller
    /// was shown.
    seen: AtomicU64,
    /// The revision of the last compaction made through this replica: its copy
    /// holds older changes still, but a watch from before it is refused as etcd
    /// refuses it.
    compacted: AtomicU64,
    config: EtcdConfig,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle may go inside another runtime, where a runtime may not be
        // dropped: its tasks are left to end in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A store on an etcd cluster; cheap to clone. Its operations are those of
/// [`Storage`].
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl EtcdStore {
    /// Connects to the cluster `config` names. A cluster that does not answer yet
    /// is no error: the store answers `unavailable` until it does.
    pub fn open(config: EtcdConfig) -> Result<EtcdStore, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Unavailable("etcd: no endpoints given".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kvstore-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot start the etcd engine: {e}")))?;
        let mut options = ConnectOptions::new();
        if let Some((user, password)) = &config.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &config.tls {
            let mut tls_options = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                tls_options = tls_options.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                tls_options = tls_options.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls_options);
        }
        let keys = Keys::new(&config.prefix);
        let (connection, cache, barrier) = runtime.block_on(async {
            let connection = Connection::open(&config.endpoints, options).await?;
            let cache = Cache::start(connection.clone(), keys.clone(), config.event_buffer);
            let barrier = Barrier::start(connection.clone(), keys.etcd(""));
            Ok::<_, Error>((connection, cache, barrier))
        })?;
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                connection,
                keys,
                cache,
                barrier,
                seen: AtomicU64::new(0),
                compacted: AtomicU64::new(0),
                config,
                runtime: Some(runtime),
            }),
        })
    }

    /// Waits until this replica's copy shows every write acknowledged before this
    /// call; false when it cannot get there in time (then read etcd itself).
    async fn copy_is_current(&self) -> Result<bool, Error> {
        let revision = self.inner.barrier.revision().await?;
        let reached = self.inner.cache.reach(revision, COPY_WAIT).await;
        if let Err(e) = &reached {
            log::debug!("{e}: reading etcd itself");
        }
        Ok(reached.is_ok())
    }

    /// A linearizable range read of etcd itself.
    async fn range(
        &self,
        from: Vec<u8>,
        options: GetOptions,
    ) -> Result<etcd_client::GetResponse, Error> {
        let answer = self
            .inner
            .connection
            .call("a read", Retry::Read, |mut client| {
                let (from, options) = (from.clone(), options.clone());
                async move { client.get(from, Some(options)).await }
            })
            .await?;
        self.answered(answer.header())?;
        Ok(answer)
    }

    /// A range read of etcd itself, now (linearizable) or at revision `at`.
    async fn range_maybe_at(
        &self,
        from: Vec<u8>,
        options: GetOptions,
        at: Option<u64>,
    ) -> Result<etcd_client::GetResponse, Error> {
        match at {
            None => self.range(from, options).await,
            Some(revision) => self.range_at(from, options, revision).await,
        }
    }

    /// `key` read from etcd itself, now or at revision `at`.
    async fn read_key(&self, key: &str, at: Option<u64>) -> Result<Option<Entry>, Error> {
        let answer = self
            .range_maybe_at(self.inner.keys.etcd(key), GetOptions::new(), at)
            .await?;
        Ok(answer
            .kvs()
            .first()
            .and_then(|kv| entry_of(&self.inner.keys, kv)))
    }

    /// Up to `limit` entries under `prefix` from `start` on, read from etcd itself
    /// now or at revision `at`; the key to page on when more follow, and the
    /// revision etcd answered at.
    async fn read_page(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        at: Option<u64>,
    ) -> Result<(Vec<Entry>, Option<String>, u64), Error> {
        let (_, end) = self.inner.keys.range(prefix);
        let answer = self
            .range_maybe_at(
                self.inner.keys.etcd(start),
                GetOptions::new().with_range(end).with_limit(limit as i64),
                at,
            )
            .await?;
        let entries: Vec<Entry> = answer
            .kvs()
            .iter()
            .filter_map(|kv| entry_of(&self.inner.keys, kv))
            .collect();
        let next = if answer.more() {
            entries.last().map(|e| e.key.clone())
        } else {
            None
        };
        Ok((entries, next, self.answered(answer.header())?))
    }

    /// The revision of an answer of etcd's, noted as seen.
    fn answered(&self, header: Option<&etcd_client::ResponseHeader>) -> Result<u64, Error> {
        let revision = header
            .map(|h| h.revision().max(0) as u64)
            .ok_or_else(|| Error::Unavailable("etcd: an answer without a header".into()))?;
        self.inner.seen.fetch_max(revision, Ordering::Relaxed);
        Ok(revision)
    }

    /// A transaction (a write).
    async fn etcd_txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, Error> {
        self.inner
            .connection
            .call("a write", Retry::Write, |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await
    }

    /// The answer to a put of `key` at `revision` made without its previous state:
    /// from the copy, or else from etcd's record of the key at that revision.
    async fn put_answer(&self, key: &str, revision: u64) -> Result<PutResult, Error> {
        if let Some((create_revision, version)) = self
            .inner
            .cache
            .after_put(key, revision, PUT_ANSWER_WAIT)
            .await
        {
            return Ok(PutResult {
                revision,
                create_revision,
                version,
            });
        }
        log::debug!("the copy cannot tell the put at {revision}: reading etcd itself");
        let at = GetOptions::new().with_revision(revision as i64);
        let answer = self.range(self.inner.keys.etcd(key), at).await?;
        match answer.kvs().first() {
            Some(kv) if kv.mod_revision().max(0) as u64 == revision => Ok(PutResult {
                revision,
                create_revision: kv.create_revision().max(0) as u64,
                version: kv.version().max(0) as u64,
            }),
            _ => Err(Error::Unavailable(format!(
                "etcd: the put was applied at revision {revision}, but etcd no longer shows it"
            ))),
        }
    }

    /// The oldest revision whose history is whole: 1 when etcd never compacted;
    /// else the revision after etcd's last compaction (see [`watch::HistoryWatch`]:
    /// etcd may drop a delete made at the very revision it compacts at), and never
    /// below one this replica compacted to. A read at revision 1 fails when it is
    /// compacted, and a watch from 1 is then cancelled with etcd's compaction.
    async fn oldest_kept(&self) -> Result<u64, Error> {
        let ours = self.inner.compacted.load(Ordering::Relaxed);
        let (start, end) = self.inner.keys.range("");
        let at_one = GetOptions::new()
            .with_range(end)
            .with_revision(1)
            .with_count_only();
        match self.range(start, at_one).await {
            Ok(_) => Ok(ours.max(1)),
            Err(Error::Compacted { .. }) => {
                let watch = watch::HistoryWatch::open(
                    self.inner.connection.clone(),
                    self.inner.keys.clone(),
                    String::new(),
                    1,
                )
                .await;
                match watch {
                    Err(Error::Compacted { oldest, .. }) => Ok(ours.max(oldest)),
                    Err(e) => Err(e),
                    Ok(_) => Err(Error::Unavailable(
                        "etcd: revision 1 is compacted, but a watch from it was taken".into(),
                    )),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A range read at `revision`, with etcd's refusals in our terms.
    async fn range_at(
        &self,
        from: Vec<u8>,
        options: GetOptions,
        revision: u64,
    ) -> Result<etcd_client::GetResponse, Error> {
        if revision == 0 {
            // etcd reads revision 0 as "now"; before the first revision there was
            // nothing, and it is compacted like every revision before the oldest.
            return Err(Error::Compacted {
                requested: 0,
                oldest: self.oldest_kept().await?,
            });
        }
        if revision < self.inner.compacted.load(Ordering::Relaxed) {
            return Err(Error::Compacted {
                requested: revision,
                oldest: self.oldest_kept().await?,
            });
        }
        let options = options.with_revision(i64::try_from(revision).unwrap_or(i64::MAX));
        match self.range(from, options).await {
            Ok(answer) => Ok(answer),
            Err(Error::Compacted { .. }) => Err(Error::Compacted {
                requested: revision,
                oldest: self.oldest_kept().await?,
            }),
            Err(Error::Unavailable(m)) if m.contains("required revision is a future revision") => {
                Err(Error::FutureRevision {
                    requested: revision,
                    current: self.revision(),
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// The compares that make `condition` hold for etcd key `key`.
fn compares(key: &[u8], condition: Condition) -> Vec<Compare> {
    match condition {
        Condition::Absent => vec![Compare::version(key.to_vec(), CompareOp::Equal, 0)],
        Condition::Exists => vec![Compare::version(key.to_vec(), CompareOp::Greater, 0)],
        Condition::ModRevision(revision) => vec![
            Compare::version(key.to_vec(), CompareOp::Greater, 0),
            Compare::mod_revision(key.to_vec(), CompareOp::Equal, revision as i64),
        ],
    }
}

/// The key's `mod_revision` in the `get` of a transaction's failure branch.
fn current_of(txn: &etcd_client::TxnResponse) -> Option<u64> {
    txn.op_responses().iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(get) => {
            get.kvs().first().map(|kv| kv.mod_revision().max(0) as u64)
        }
        _ => None,
    })
}

/// A put's result, from the key's state before it (`prev`) and its revision.
pub(super) fn put_result(revision: u64, prev: Option<&etcd_client::KeyValue>) -> PutResult {
    match prev {
        Some(prev) => PutResult {
            revision,
            create_revision: prev.create_revision().max(0) as u64,
            version: prev.version().max(0) as u64 + 1,
        },
        None => PutResult {
            revision,
            create_revision: revision,
            version: 1,
        },
    }
}

#[async_trait::async_trait]
impl Storage for EtcdStore {
    fn engine(&self) -> &'static str {
        "etcd"
    }

    fn revision(&self) -> u64 {
        // The copy's revision as read with its entries (its published revision
        // follows a moment later): an entry read from it is never newer.
        let copy = self.inner.cache.read().revision;
        copy.max(self.inner.seen.load(Ordering::Relaxed))
    }

    fn max_value_bytes(&self) -> usize {
        self.inner.config.max_value_bytes
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        validate_key(key)?;
        if self.copy_is_current().await? {
            return Ok(self.inner.cache.read().entries.get(key).cloned());
        }
        self.read_key(key, None).await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        let limit = limit.max(1);
        let start = match after {
            Some(after) if after >= prefix => format!("{after}\0"),
            _ => prefix.to_string(),
        };
        if self.copy_is_current().await? {
            let state = self.inner.cache.read();
            let mut entries: Vec<Entry> = state
                .entries
                .range(start..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit + 1)
                .map(|(_, e)| e.clone())
                .collect();
            let next = (entries.len() > limit).then(|| {
                entries.truncate(limit);
                entries.last().map(|e| e.key.clone())
            });
            return Ok(ListPage {
                entries,
                next: next.flatten(),
                revision: state.revision,
                continue_token: None,
                current_revision: None,
            });
        }
        let (entries, next, now) = self.read_page(prefix, &start, limit, None).await?;
        Ok(ListPage {
            entries,
            next,
            revision: now,
            continue_token: None,
            current_revision: None,
        })
    }

    async fn get_at(&self, key: &str, revision: u64) -> Result<Option<Entry>, Error> {
        validate_key(key)?;
        self.read_key(key, Some(revision)).await
    }

    async fn list_at(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: u64,
    ) -> Result<ListPage, Error> {
        let limit = limit.max(1);
        let start = match after {
            Some(after) if after >= prefix => format!("{after}\0"),
            _ => prefix.to_string(),
        };
        let (entries, next, now) = self
            .read_page(prefix, &start, limit, Some(revision))
            .await?;
        Ok(ListPage {
            entries,
            next,
            revision,
            continue_token: None,
            current_revision: Some(now),
        })
    }

    /// From etcd's watch of the key: etcd has no other way to tell a key's changes.
    async fn history(&self, key: &str, after: u64, limit: usize) -> Result<HistoryPage, Error> {
        validate_key(key)?;
        let limit = limit.max(1);
        // The revision the history runs to, and the key's last change then if it
        // exists (a delete's revision is known only from the watch).
        let now = self
            .range(self.inner.keys.etcd(key), GetOptions::new())
            .await?;
        let through = self.answered(now.header())?;
        let last_put = now.kvs().first().map(|kv| kv.mod_revision().max(0) as u64);
        let oldest = self.oldest_kept().await?;
        if after != 0 && after.saturating_add(1) < oldest {
            return Err(Error::Compacted {
                requested: after + 1,
                oldest,
            });
        }
        let start = after.saturating_add(1).max(oldest);
        let mut events = Vec::new();
        let nothing_new = last_put.is_some_and(|m| m < start);
        if start <= through && !nothing_new {
            let mut watch = self
                .watch(WatchOptions {
                    prefix: key.to_string(),
                    start_revision: Some(start),
                    initial: false,
                })
                .await?;
            loop {
                let done = events.len() > limit
                    || watch.position() >= through
                    || last_put.is_some_and(|m| {
                        events
                            .last()
                            .is_some_and(|e: &crate::wire::Event| e.revision >= m)
                    });
                if done {
                    break;
                }
                if let WatchItem::Event(event) = watch.next().await? {
                    if event.revision > through {
                        break;
                    }
                    if event.key == key {
                        events.push(event.event().clone());
                    }
                }
            }
        }
        let next = (events.len() > limit).then(|| {
            events.truncate(limit);
            events.last().map(|e| e.revision)
        });
        Ok(HistoryPage {
            events,
            next: next.flatten(),
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
        let etcd_key = self.inner.keys.etcd(key);
        let options = put_options(lease)?;
        let Some(condition) = condition else {
            // No condition: etcd's plain put, lighter on the cluster than a
            // transaction of one op, and without the key's previous state (which
            // every member would read as it applies the put): the copy tells it.
            let answer = self
                .inner
                .connection
                .call("a write", Retry::Write, |mut client| {
                    let (key, value, options) = (etcd_key.clone(), value.clone(), options.clone());
                    async move { client.put(key, value, Some(options)).await }
                })
                .await
                .map_err(|e| lease_not_found(e, lease))?;
            let revision = self.answered(answer.header())?;
            return self.put_answer(key, revision).await;
        };
        let put = TxnOp::put(etcd_key.clone(), value, Some(options.with_prev_key()));
        let txn = Txn::new()
            .when(compares(&etcd_key, condition))
            .and_then([put])
            .or_else([TxnOp::get(etcd_key, None)]);
        let answer = self
            .etcd_txn(txn)
            .await
            .map_err(|e| lease_not_found(e, lease))?;
        let revision = self.answered(answer.header())?;
        if !answer.succeeded() {
            return Err(Error::PreconditionFailed {
                current: current_of(&answer),
            });
        }
        let prev = answer.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Put(put) => put.prev_key().cloned(),
            _ => None,
        });
        Ok(put_result(revision, prev.as_ref()))
    }

    async fn grant(&self, ttl: u64) -> Result<Lease, Error> {
        self.grant_lease(ttl).await
    }

    async fn keepalive(&self, id: u64) -> Result<Lease, Error> {
        self.keepalive_lease(id).await
    }

    async fn revoke(&self, id: u64) -> Result<RevokeResult, Error> {
        self.revoke_lease(id).await
    }

    async fn lease(&self, id: u64) -> Result<LeaseInfo, Error> {
        self.lease_info(id).await
    }

    async fn leases(&self) -> Result<Vec<u64>, Error> {
        self.lease_ids().await
    }

    async fn compact(&self, revision: u64) -> Result<u64, Error> {
        // etcd before 3.4.34 and 3.5.15 drops a delete made at the very revision
        // it compacts at (etcd issue #18089): a watch from that revision would
        // miss it. So etcd compacts one revision earlier, and this store keeps
        // every change from `revision` on, whole; the revision etcd compacted at
        // counts as compacted too (see `watch::HistoryWatch`).
        let now = self
            .range(
                self.inner.keys.etcd(""),
                GetOptions::new().with_count_only(),
            )
            .await?;
        let current = self.answered(now.header())?;
        if revision > current {
            return Err(Error::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= 1 {
            return Ok(current);
        }
        let at = i64::try_from(revision - 1).unwrap_or(i64::MAX);
        // Compacting again to the same revision is refused as compacted: a retry
        // of one that reached etcd says so too.
        let answer = self
            .inner
            .connection
            .call("a compaction", Retry::Read, |mut client| async move {
                client.compact(at, None).await
            })
            .await;
        match answer {
            Ok(answer) => {
                self.inner.compacted.fetch_max(revision, Ordering::Relaxed);
                self.answered(answer.header())
            }
            Err(Error::Compacted { .. }) => Err(Error::Compacted {
                requested: revision,
                oldest: self.oldest_kept().await?,
            }),
            Err(Error::Unavailable(m)) if m.contains("required revision is a future revision") => {
                Err(Error::FutureRevision {
                    requested: revision,
                    current: self.revision(),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, key: &str, condition: Option<Condition>) -> Result<DeleteResult, Error> {
        validate_key(key)?;
        let etcd_key = self.inner.keys.etcd(key);
        // A missing key is "not found" whatever the condition, as on sled.
        let exists = Compare::version(etcd_key.clone(), CompareOp::Greater, 0);
        let mut when = vec![exists];
        if let Some(condition) = condition {
            when.extend(compares(&etcd_key, condition));
        }
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::delete(etcd_key.clone(), None)])
            .or_else([TxnOp::get(etcd_key, None)]);
        let answer = self.etcd_txn(txn).await?;
        if answer.succeeded() {
            return Ok(DeleteResult {
                revision: self.answered(answer.header())?,
            });
        }
        match current_of(&answer) {
            None => Err(Error::KeyNotFound),
            current => Err(Error::PreconditionFailed { current }),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<DeletePrefixResult, Error> {
        let (start, end) = self.inner.keys.range(prefix);
        let delete = TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)));
        let answer = self.etcd_txn(Txn::new().and_then([delete])).await?;
        let deleted = answer
            .op_responses()
            .iter()
            .map(|op| match op {
                etcd_client::TxnOpResponse::Delete(delete) => delete.deleted().max(0) as usize,
                _ => 0,
            })
            .sum();
        Ok(DeletePrefixResult {
            deleted,
            revision: self.answered(answer.header())?,
        })
    }

    async fn txn(&self, txn: OurTxn) -> Result<TxnResponse, Error> {
        check_txn(&txn, self.inner.config.max_value_bytes)?;
        let keys = &self.inner.keys;
        let etcd_txn = txn::to_etcd(keys, &txn)?;
        let answer = self.etcd_txn(etcd_txn).await.map_err(|e| {
            // etcd does not say which: the first lease named.
            let mut named = OurTxn::leases(&txn.success).chain(OurTxn::leases(&txn.failure));
            lease_not_found(e, named.next())
        })?;
        let revision = self.answered(answer.header())?;
        txn::response_of(keys, &txn, &answer, revision)
    }

    async fn watch(&self, options: WatchOptions) -> Result<Watch, Error> {
        let cache = &self.inner.cache;
        let start = match options.start_revision {
            Some(start) => start.max(1),
            None => {
                // From now on: after every write acknowledged before this call.
                if !self.copy_is_current().await? {
                    return Err(Error::Unavailable(
                        "etcd: this replica cannot follow the cluster now".into(),
                    ));
                }
                cache.current() + 1
            }
        };
        let compacted = self.inner.compacted.load(Ordering::Relaxed);
        if start < compacted {
            return Err(Error::Compacted {
                requested: start,
                oldest: compacted,
            });
        }
        if options.initial && !self.copy_is_current().await? {
            return Err(Error::Unavailable(
                "etcd: this replica cannot follow the cluster now".into(),
            ));
        }
        if let Some(watch) =
            watch::CacheWatch::open(cache, options.prefix.clone(), start, options.initial)
        {
            return Ok(watch);
        }
        watch::HistoryWatch::open(
            self.inner.connection.clone(),
            self.inner.keys.clone(),
            options.prefix,
            start,
        )
        .await
    }

    async fn snapshot(&self, prefix: &str) -> Result<Snapshot, Error> {
        let (start, end) = self.inner.keys.range(prefix);
        // The first page fixes the revision every page is read at.
        let first = self
            .range(
                start.clone(),
                GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(SNAPSHOT_PAGE),
            )
            .await?;
        let revision = self.answered(first.header())?;
        let store = self.clone();
        let pages = futures_util::stream::unfold(Some((first, start)), move |state| {
            let (store, end) = (store.clone(), end.clone());
            async move {
                let (page, _) = state?;
                let entries: Vec<Result<Entry, Error>> = page
                    .kvs()
                    .iter()
                    .filter_map(|kv| entry_of(&store.inner.keys, kv))
                    .map(Ok)
                    .collect();
                let next = match page.kvs().last() {
                    Some(last) if page.more() => {
                        let mut from = last.key().to_vec();
                        from.push(0);
                        let options = GetOptions::new()
                            .with_range(end)
                            .with_limit(SNAPSHOT_PAGE)
                            .with_revision(revision as i64);
                        match store.range(from.clone(), options).await {
                            Ok(page) => Some((page, from)),
                            Err(e) => {
                                let mut entries = entries;
                                entries.push(Err(match e {
                                    Error::Compacted { .. } => Error::Compacted {
                                        requested: revision,
                                        oldest: revision + 1,
                                    },
                                    other => other,
                                }));
                                return Some((futures_util::stream::iter(entries), None));
                            }
                        }
                    }
                    _ => None,
                };
                Some((futures_util::stream::iter(entries), next))
            }
        });
        Ok(Snapshot {
            revision,
            entries: Box::pin(futures_util::StreamExt::flatten(pages)),
        })
    }

    /// The values come back at new revisions: etcd gives each write its own.
    async fn restore(&self, snapshot: Snapshot) -> Result<RestoreResult, Error> {
        use futures_util::StreamExt;
        let (start, end) = self.inner.keys.range("");
        let existing = self
            .range(start, GetOptions::new().with_range(end).with_count_only())
            .await?;
        if existing.count() > 0 {
            return Err(Error::NotEmpty);
        }
        let Snapshot {
            revision: from,
            mut entries,
        } = snapshot;
        let max = self.inner.config.max_value_bytes;
        let mut restored = 0;
        let mut revision = self.answered(existing.header())?;
        let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
        loop {
            let next = entries.next().await;
            let end = next.is_none();
            if let Some(entry) = next {
                let entry = entry?;
                check_entry(&entry, from, max)?;
                chunk.push(TxnOp::put(
                    self.inner.keys.etcd(&entry.key),
                    entry.value,
                    None,
                ));
            }
            if chunk.len() == RESTORE_CHUNK || (end && !chunk.is_empty()) {
                restored += chunk.len();
                let answer = self
                    .etcd_txn(Txn::new().and_then(std::mem::take(&mut chunk)))
                    .await?;
                revision = self.answered(answer.header())?;
            }
            if end {
                return Ok(RestoreResult { restored, revision });
            }
        }
    }

    async fn status(&self) -> Result<Status, Error> {
        let (start, end) = self.inner.keys.range("");
        let keys = self
            .range(start, GetOptions::new().with_range(end).with_count_only())
            .await?;
        let status = self
            .inner
            .connection
            .call("a status", Retry::Read, |mut client| async move {
                client.status().await
            })
            .await?;
        let revision = self.answered(keys.header())?;
        Ok(Status {
            engine: "etcd",
            revision,
            oldest_revision: self.oldest_kept().await?,
            keys: keys.count().max(0) as u64,
            size_on_disk: Some(status.db_size().max(0) as u64),
            disk_full: status.errors().iter().any(|e| e.contains("NOSPACE")),
        })
    }

    async fn flush(&self) -> Result<(), Error> {
        // etcd makes every write durable before it answers.
        Ok(())
    }
}

/// The options of a put attaching the key to `lease` (`None`: permanent, as etcd
/// detaches a key put without one).
fn put_options(lease: Option<u64>) -> Result<PutOptions, Error> {
    let options = PutOptions::new();
    let Some(lease) = lease else {
        return Ok(options);
    };
    // etcd refuses ids it does not know ("requested lease not found").
    let id = i64::try_from(lease)
        .ok()
        .filter(|&id| id > 0)
        .ok_or(Error::LeaseNotFound(lease))?;
    Ok(options.with_lease(id))
}

/// etcd's refusal of a put on an unknown lease as ours, for a write naming `lease`.
fn lease_not_found(error: Error, lease: Option<u64>) -> Error {
    match (error, lease) {
        (Error::Unavailable(m), Some(lease)) if m.contains("lease not found") => {
            Error::LeaseNotFound(lease)
        }
        (e, _) => e,
    }
}
