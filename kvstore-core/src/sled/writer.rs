//! The single writer: numbers writes, commits them in groups, flushes once per group.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Stored};
use super::events::SequencerHandle;
use super::export::{Capture, Exports};
use super::history;
use super::lease::Leases;
use super::stage::{Revision, View};
use super::{storage_error, OrStorage, SyncMode};
use crate::condition::Condition;
use crate::storage::{Error, INITIAL_REVISION};
use crate::txn::{Txn, TxnOp, TxnResponse};
use crate::wire::{DeleteResult, Entry, EventKind, Lease, PutResult, RevokeResult};

/// Most writes committed in one group (one flush, one `log` item).
const MAX_GROUP: usize = 256;
/// Value bytes after which a group takes no more writes (a group's `log` item
/// holds all its values, and every history read of it decodes them all).
const MAX_GROUP_BYTES: usize = 4 << 20;
/// Log items (write groups) removed per compaction step (kept small so a step
/// never stalls writes).
const COMPACT_STEP: usize = 1024;
/// `meta` key present while a restore is under way (see [`ImportStep`]).
const META_RESTORING: &[u8] = b"restoring";

pub(super) enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        condition: Option<Condition>,
        /// The lease to attach the key to; `None` makes it permanent.
        lease: Option<u64>,
    },
    Delete {
        key: String,
        condition: Option<Condition>,
    },
    /// Several changes at one revision, unconditional, in order (no revision at
    /// all when none changes anything).
    Batch(Vec<Change>),
    /// A transaction (checked beforehand), at one revision.
    Txn(Txn),
}

/// One change of an [`Op::Batch`]. (Puts and deletes of single keys are for the
/// writes of the engine's own that change several keys at once.)
#[allow(dead_code)]
pub(super) enum Change {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deletes the key if it exists.
    Delete {
        key: String,
    },
    /// Deletes every key under the prefix.
    DeletePrefix {
        prefix: String,
    },
}

pub(super) enum Outcome {
    Put(PutResult),
    Delete(DeleteResult),
    Batch(BatchResult),
    Txn(TxnResponse),
}

/// What an [`Op::Batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchResult {
    /// The batch's revision; the store revision when it changed nothing.
    pub revision: u64,
    /// Keys deleted.
    pub deleted: usize,
}

pub(super) enum Request {
    Write {
        op: Op,
        reply: oneshot::Sender<Result<Outcome, Error>>,
    },
    /// Starts an export at the last assigned revision (see `export`).
    Export {
        prefix: Vec<u8>,
        reply: oneshot::Sender<Arc<Capture>>,
    },
    /// A step of a restore.
    Import {
        entries: Vec<Entry>,
        step: ImportStep,
        reply: oneshot::Sender<Result<usize, Error>>,
    },
    /// Grants a lease of `ttl` seconds.
    Grant {
        ttl: u64,
        reply: oneshot::Sender<Result<Lease, Error>>,
    },
    /// Revokes a lease: its keys are deleted in one group.
    Revoke {
        id: u64,
        reply: oneshot::Sender<Result<RevokeResult, Error>>,
    },
    /// The lease timer found the lease past its deadline: expire it, unless it was
    /// kept alive since.
    Expire { id: u64 },
    /// Drops the change history before `revision` (checked beforehand).
    Compact {
        revision: u64,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
}

/// The steps of a restore. `Begin` requires an empty store and refuses every other
/// write until `Commit` (which sets the store revision) or `Abort` (which removes
/// what was imported). A marker in `meta` says a restore is under way, so one cut
/// short by a crash is removed on open.
pub(super) enum ImportStep {
    Begin,
    /// Entries written as they are, revisions included.
    Entries,
    Commit {
        revision: u64,
    },
    Abort,
}

/// Undoes a restore that did not finish: when dropped armed (an error, or the
/// restoring request went away), it asks the writer to remove what was imported.
pub(super) struct UndoImport {
    writer: Option<mpsc::Sender<Request>>,
}

impl UndoImport {
    pub fn new(writer: Option<mpsc::Sender<Request>>) -> UndoImport {
        UndoImport { writer }
    }

    /// The restore finished: nothing to undo.
    pub fn disarm(&mut self) {
        self.writer = None;
    }
}

impl Drop for UndoImport {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let (reply, _) = oneshot::channel();
        let abort = Request::Import {
            entries: Vec::new(),
            step: ImportStep::Abort,
            reply,
        };
        if let Err(mpsc::error::TrySendError::Full(abort)) = writer.try_send(abort) {
            // Off the runtime, where waiting for room is allowed.
            let spawned = std::thread::Builder::new()
                .name("kvstore-restore-undo".into())
                .spawn(move || {
                    let _ = writer.blocking_send(abort);
                });
            if let Err(e) = spawned {
                log::error!("cannot undo an unfinished restore: {e}");
            }
        }
    }
}

impl Request {
    /// Bytes of value this request writes.
    fn value_len(&self) -> usize {
        match self {
            Request::Write {
                op: Op::Put { value, .. },
                ..
            } => value.len(),
            Request::Write {
                op: Op::Batch(changes),
                ..
            } => changes
                .iter()
                .map(|c| match c {
                    Change::Put { value, .. } => value.len(),
                    Change::Delete { .. } | Change::DeletePrefix { .. } => 0,
                })
                .sum(),
            Request::Write {
                op: Op::Txn(txn), ..
            } => txn
                .success
                .iter()
                .chain(&txn.failure)
                .map(|op| match op {
                    TxnOp::Put { value, .. } => value.len(),
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }
}

pub(super) struct Writer {
    pub db: sled::Db,
    pub kv: sled::Tree,
    pub log: sled::Tree,
    pub meta: sled::Tree,
    /// Each key's changes by revision (see `history`).
    pub history: sled::Tree,
    /// The oldest revision `history` answers for (raised by a restore).
    pub history_from: Arc<AtomicU64>,
    pub last: u64,
    pub sync: SyncMode,
    pub retain: u64,
    pub sequencer: SequencerHandle,
    /// Number of keys in the store, kept up to date by this writer.
    pub keys: Arc<AtomicU64>,
    /// The last group failed for a full disk (cleared by one made durable).
    pub disk_full: Arc<AtomicBool>,
    /// The last durable revision, raised before any write of a group is answered.
    pub durable: Arc<tokio::sync::watch::Sender<u64>>,
    /// A group failed after its `log` item was written (see `Writer::repair`).
    pub torn: bool,
    /// Exports under way, which need the state of each key before it changes.
    pub exports: Exports,
    /// A restore is under way: other writes are refused.
    pub restoring: bool,
    /// The `leases` tree (id -> granted TTL).
    pub lease_tree: sled::Tree,
    /// The live leases and the keys attached to them.
    pub leases: Arc<Leases>,
}

impl Writer {
    pub fn spawn(self, rx: mpsc::Receiver<Request>) -> Result<std::thread::JoinHandle<()>, Error> {
        std::thread::Builder::new()
            .name("kvstore-writer".into())
            .spawn(move || self.run(rx))
            .map_err(|e| Error::Unavailable(format!("cannot start the writer: {e}")))
    }

    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut held = None;
        while let Some(first) = held.take().or_else(|| rx.blocking_recv()) {
            // Imports and exports go alone, between groups.
            let first = match first {
                Request::Import {
                    entries,
                    step,
                    reply,
                } => {
                    let _ = reply.send(self.import(entries, step));
                    continue;
                }
                Request::Export { prefix, reply } => {
                    let _ = reply.send(self.exports.register(self.last, prefix));
                    continue;
                }
                Request::Grant { ttl, reply } => {
                    let _ = reply.send(self.grant(ttl));
                    continue;
                }
                Request::Revoke { id, reply } => {
                    let _ = reply.send(self.end_lease(id, false));
                    continue;
                }
                Request::Expire { id } => {
                    if let Err(e) = self.end_lease(id, true) {
                        log::error!("expiring lease {id} failed: {e}");
                    }
                    continue;
                }
                Request::Compact { revision, reply } => {
                    let _ = reply.send(self.compact_before(revision));
                    continue;
                }
                write @ Request::Write { .. } => write,
            };
            let mut bytes = first.value_len();
            group.push(first);
            while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(request @ Request::Write { .. }) => {
                        bytes += request.value_len();
                        group.push(request);
                    }
                    // Everything else goes alone, between groups.
                    Ok(request) => {
                        held = Some(request);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group);
            self.compact();
        }
        if let Err(e) = self.db.flush() {
            log::error!("final flush failed: {e}");
        }
        log::debug!("writer stopped at revision {}", self.last);
    }

    fn commit_group(&mut self, group: &mut Vec<Request>) {
        let ops: Vec<&Op> = group
            .iter()
            .filter_map(|r| match r {
                Request::Write { op, .. } => Some(op),
                _ => None,
            })
            .collect();
        let mut results: Vec<Result<Outcome, Error>> = Vec::new();
        if self.restoring {
            results = fail_all(
                ops.len(),
                &Error::Unavailable("a restore is under way; write when it is done".into()),
            );
        } else if !ops.is_empty() {
            let started = Instant::now();
            let capturing = !self.exports.prune();
            let applied = match self.repair() {
                Ok(()) => self.apply_group(&ops, capturing),
                Err(error) => Applied {
                    results: Vec::new(),
                    last: self.last,
                    failure: Some(error),
                    torn: false,
                    keys_delta: 0,
                },
            };
            self.torn |= applied.torn;
            if applied.failure.is_none() {
                self.count_keys(applied.keys_delta);
            }
            let failure = match applied.failure {
                Some(e) => Some(e),
                // Nothing new to flush (every write refused, no earlier failure).
                None if applied.last == *self.durable.borrow() => None,
                None => self.make_durable(),
            };
            #[cfg(feature = "failpoints")]
            fail::fail_point!("sled::after-flush", failure.is_none(), |_| {
                super::failpoints::crash("sled::after-flush")
            });
            metrics::histogram!("kvstore_commit_group_size").record(ops.len() as f64);
            metrics::histogram!("kvstore_commit_seconds").record(started.elapsed().as_secs_f64());
            // Revisions taken stay taken, even by a failed group: its change records
            // may be in the log.
            self.last = applied.last;
            self.disk_full.store(
                matches!(failure, Some(Error::DiskFull(_))),
                Ordering::Relaxed,
            );
            match failure {
                None => {
                    self.durable.send_replace(self.last);
                    self.sequencer.durable(self.last);
                    results = applied.results;
                }
                Some(e) => {
                    // Applied in memory (maybe in part) but not known to be durable:
                    // say so; a later successful flush makes it durable and visible.
                    log::error!("write failed: {e}");
                    results = fail_all(ops.len(), &e);
                }
            }
        }
        let mut results = results.into_iter();
        // Only writes are grouped (see `run`).
        for request in group.drain(..) {
            if let Request::Write { reply, .. } = request {
                let result = results.next().unwrap_or(Err(Error::Closed));
                // The requester may have gone away; nothing to do then.
                let _ = reply.send(result);
            }
        }
    }

    /// Follows the number of keys.
    fn count_keys(&self, delta: i64) {
        if delta >= 0 {
            self.keys.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.keys.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// After a group failed between writing its `log` item and its end, brings `kv`
    /// and `meta` up to the log (as on open) before any other write: until then
    /// every write fails.
    fn repair(&mut self) -> Result<(), Error> {
        if !self.torn {
            return Ok(());
        }
        recover(&self.kv, &self.log, &self.meta, &self.history)?;
        self.keys.store(self.kv.len() as u64, Ordering::Relaxed);
        self.torn = false;
        log::warn!("the store caught up with its change history after a failed write");
        Ok(())
    }

    /// Flushes the group when writes are durable, timing the flush.
    fn make_durable(&self) -> Option<Error> {
        if self.sync == SyncMode::None {
            return None;
        }
        #[cfg(feature = "failpoints")]
        {
            fail::fail_point!("sled::before-flush", |_| -> Option<Error> {
                super::failpoints::crash("sled::before-flush")
            });
            fail::fail_point!("sled::flush-error", |_| {
                Some(Error::Unavailable(
                    "storage error: an I/O error on the flush (failpoint)".into(),
                ))
            });
        }
        let started = Instant::now();
        let flushed = self.db.flush();
        metrics::histogram!("kvstore_flush_seconds").record(started.elapsed().as_secs_f64());
        flushed.err().map(storage_error)
    }

    /// Applies `ops` in order, each at the next revision (an op that changes
    /// nothing takes none), with plain sled writes: the group's change records as
    /// one `log` item first, then each key it changed into `kv` (once, in its final
    /// state), then the last revision into `meta`. An op may change several keys at
    /// its one revision (see `stage`); a failed op changes none.
    ///
    /// A sled transaction or batch would make the group atomic, but each one seals
    /// and writes sled's log buffer twice, which costs more than the writes. sled
    /// recovers a prefix of its log after a crash, so a torn group can only leave a
    /// `log` item past `meta`'s revision whose `kv` side is missing or stale;
    /// [`recover`] re-applies it on open. One `log` item per group (not per write)
    /// also means one sled event for the feed and one removal at compaction.
    ///
    /// With `capturing`, each key's state before its first change of the group is
    /// handed to the exports under way, before `kv` changes.
    fn apply_group(&self, ops: &[&Op], capturing: bool) -> Applied {
        let mut results = Vec::with_capacity(ops.len());
        let mut record = codec::GroupRecord::new();
        // The group's `history` items: each key's first revision and its changes.
        let mut index: std::collections::HashMap<String, (u64, Vec<u8>)> =
            std::collections::HashMap::new();
        let mut view = View::new(&self.kv, capturing.then_some(&self.exports));
        let mut last = self.last;
        for op in ops {
            let mut revision = Revision::new(&view, last + 1);
            let outcome = apply_op(&mut revision, op, &self.leases);
            if outcome.is_err() || revision.is_empty() {
                results.push(outcome);
                continue;
            }
            let changes = revision.finish();
            if let Err(error) = view.stage(&changes) {
                return self.failed(results, error);
            }
            record.push_revision(changes.iter().map(|c| (c.key.as_str(), c.state.as_ref())));
            for change in &changes {
                let (_, item) = index
                    .entry(change.key.clone())
                    .or_insert_with(|| (last + 1, Vec::new()));
                // A put's value is written once, in its `log` record.
                match change.state {
                    Some(_) => history::push_in_log(item, last + 1),
                    None => history::push_change(item, last + 1, &[]),
                }
            }
            for change in &changes {
                self.leases
                    .set_key(&change.key, change.state.as_ref().and_then(|s| s.lease));
            }
            last += 1;
            results.push(outcome);
        }
        let keys_delta = view.keys_delta;
        if record.is_empty() {
            return Applied {
                results,
                last,
                failure: None,
                torn: false,
                keys_delta,
            };
        }
        let first = codec::encode_u64(self.last + 1);
        if let Err(error) = self.log.insert(first, record.finish()) {
            return self.failed(results, storage_error(error));
        }
        #[cfg(feature = "failpoints")]
        fail::fail_point!("sled::between-log-and-kv", |_| -> Applied {
            super::failpoints::crash("sled::between-log-and-kv")
        });
        // After the `log` item (which `recover` rebuilds them from), before `kv`.
        for (key, (first, item)) in index {
            let written = self
                .history
                .insert(history::item_key(key.as_bytes(), first), item);
            if let Err(error) = written {
                return Applied {
                    results,
                    last,
                    failure: Some(storage_error(error)),
                    torn: true,
                    keys_delta,
                };
            }
        }
        for (key, state) in &view.changed {
            let written = match state {
                Some(stored) => self.kv.insert(key.as_bytes(), stored.encode()),
                None => self.kv.remove(key.as_bytes()),
            };
            if let Err(error) = written {
                // The change records are in the log: their revisions are taken, and
                // `kv` must catch up with them (see `repair`).
                return Applied {
                    results,
                    last,
                    failure: Some(storage_error(error)),
                    torn: true,
                    keys_delta,
                };
            }
        }
        let failure = self
            .meta
            .insert(codec::META_LAST, &codec::encode_u64(last))
            .err()
            .map(storage_error);
        Applied {
            results,
            last,
            torn: failure.is_some(),
            failure,
            keys_delta,
        }
    }

    /// A group stopped by `error` before its change records were written: no
    /// revision taken.
    fn failed(&self, results: Vec<Result<Outcome, Error>>, error: Error) -> Applied {
        Applied {
            results,
            last: self.last,
            failure: Some(error),
            torn: false,
            keys_delta: 0,
        }
    }

    /// Grants a lease: a new id (never reused), its TTL in the `leases` tree,
    /// flushed before it is answered.
    fn grant(&mut self, ttl: u64) -> Result<Lease, Error> {
        let id = match self.meta.get(codec::META_NEXT_LEASE).or_storage()? {
            Some(bytes) => codec::decode_u64(&bytes)?,
            None => 1,
        };
        self.meta
            .insert(codec::META_NEXT_LEASE, &codec::encode_u64(id + 1))
            .or_storage()?;
        self.lease_tree
            .insert(codec::encode_u64(id), &codec::encode_u64(ttl))
            .or_storage()?;
        if let Some(e) = self.make_durable() {
            return Err(e);
        }
        self.leases.insert(id, ttl);
        Ok(Lease { id, ttl })
    }

    /// Ends lease `id` (for an expiry, only if it is still past its deadline):
    /// removes it, and deletes the keys still attached to it in one group.
    fn end_lease(&mut self, id: u64, expiring: bool) -> Result<RevokeResult, Error> {
        if expiring && !self.leases.is_expired(id) {
            // Kept alive since the timer fired, or revoked already.
            return Ok(RevokeResult {
                revision: self.last,
            });
        }
        if self.restoring {
            return Err(Error::Unavailable(
                "a restore is under way; write when it is done".into(),
            ));
        }
        let keys = self.leases.remove(id).ok_or(Error::LeaseNotFound(id))?;
        // The lease's record goes after its keys: a crash in between leaves a
        // lease without keys (it expires again after a restart), never keys on a
        // lease that is gone.
        let forget = |writer: &Self| {
            writer
                .lease_tree
                .remove(codec::encode_u64(id))
                .map(|_| ())
                .or_storage()
        };
        let mut changes = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(bytes) = self.kv.get(key.as_bytes()).or_storage()? else {
                continue;
            };
            // Only keys still on this lease: one put again without it stays. (Nothing
            // writes between this read and the batch: this is the writer.)
            if Stored::decode_header(&bytes)?.lease == Some(id) {
                changes.push(Change::Delete { key });
            }
        }
        if changes.is_empty() {
            forget(self)?;
            if let Some(e) = self.make_durable() {
                return Err(e);
            }
            return Ok(RevokeResult {
                revision: self.last,
            });
        }
        let (reply, mut answer) = oneshot::channel();
        self.commit_group(&mut vec![Request::Write {
            op: Op::Batch(changes),
            reply,
        }]);
        let revision = match answer.try_recv() {
            Ok(Ok(Outcome::Batch(batch))) => batch.revision,
            Ok(Err(e)) => return Err(e),
            _ => return Err(Error::Closed),
        };
        // Forgotten only once its keys' deletes are durable (else a failed group
        // would leave keys on a lease that no longer expires), and durable before
        // the answer: a crash after it must not bring the lease back.
        forget(self)?;
        if let Some(e) = self.make_durable() {
            return Err(e);
        }
        log::debug!("lease {id} ended at revision {revision}");
        Ok(RevokeResult { revision })
    }

    /// Runs one step of a restore (see [`ImportStep`]).
    fn import(&mut self, entries: Vec<Entry>, step: ImportStep) -> Result<usize, Error> {
        match step {
            ImportStep::Begin => {
                // A store that never took a write: at its initial revision, with
                // nothing in `kv` or `log`.
                let written =
                    self.last > INITIAL_REVISION || !self.kv.is_empty() || !self.log.is_empty();
                if self.restoring || written {
                    return Err(Error::NotEmpty);
                }
                self.meta.insert(META_RESTORING, &[1]).or_storage()?;
                self.db.flush().or_storage()?;
                self.restoring = true;
                Ok(0)
            }
            _ if !self.restoring => Err(Error::Unavailable("no restore is under way".into())),
            ImportStep::Entries => {
                let mut batch = sled::Batch::default();
                for entry in &entries {
                    let stored = Stored {
                        create_revision: entry.create_revision,
                        mod_revision: entry.mod_revision,
                        version: entry.version,
                        // Leases are not part of a snapshot: restored keys are permanent.
                        lease: None,
                        value: entry.value.clone(),
                    };
                    let encoded = stored.encode();
                    let mut item = Vec::with_capacity(12 + encoded.len());
                    history::push_change(&mut item, entry.mod_revision, &encoded);
                    self.history
                        .insert(
                            history::item_key(entry.key.as_bytes(), entry.mod_revision),
                            item,
                        )
                        .or_storage()?;
                    batch.insert(entry.key.as_bytes(), encoded);
                }
                self.kv.apply_batch(batch).or_storage()?;
                self.db.flush().or_storage()?;
                Ok(entries.len())
            }
            ImportStep::Commit { revision } => {
                // A snapshot of an empty store from before stores started at
                // revision 1 is at revision 0: the store stays at its initial one.
                let revision = revision.max(INITIAL_REVISION);
                self.meta
                    .insert(codec::META_LAST, &codec::encode_u64(revision))
                    .or_storage()?;
                // Nothing before the snapshot's revision is known.
                self.meta
                    .insert(history::META_HISTORY_FROM, &codec::encode_u64(revision))
                    .or_storage()?;
                self.meta.remove(META_RESTORING).or_storage()?;
                self.db.flush().or_storage()?;
                self.history_from.store(revision, Ordering::Relaxed);
                self.restoring = false;
                // Counted, not summed: a snapshot may name a key twice.
                self.keys.store(self.kv.len() as u64, Ordering::Relaxed);
                self.last = revision;
                self.durable.send_replace(revision);
                self.sequencer.jump(revision);
                Ok(0)
            }
            ImportStep::Abort => {
                self.restoring = false;
                undo_restore(&self.kv, &self.meta, &self.history)?;
                self.db.flush().or_storage()?;
                self.keys.store(0, Ordering::Relaxed);
                self.history_from.store(INITIAL_REVISION, Ordering::Relaxed);
                Ok(0)
            }
        }
    }

    /// Trims the change history to the configured number of revisions (whole
    /// groups: at least that many stay), a step at a time.
    fn compact(&self) {
        // Keep revisions cutoff..=durable: `retain` of them. (Not counted from
        // `last`, which a failed group may have raised: its records are needed to
        // recover it.)
        let durable = *self.durable.borrow();
        let Some(cutoff) = (durable + 1).checked_sub(self.retain.max(1)) else {
            return;
        };
        if let Err(e) = self.trim(cutoff, COMPACT_STEP) {
            log::warn!("compacting the change history failed: {e}");
        }
    }

    /// Drops the history of every group wholly before `revision` (etcd's
    /// compaction: a read or watch before it is `Compacted` then; the group that
    /// holds `revision` stays whole). Answers the store's revision.
    fn compact_before(&self, revision: u64) -> Result<u64, Error> {
        let durable = *self.durable.borrow();
        self.trim(revision.min(durable), usize::MAX)?;
        Ok(durable)
    }

    /// Drops the history of up to `steps` groups, oldest first, whose last
    /// revision is before `cutoff`. One item at a time (a batch would cost two
    /// writes of sled's log buffer): a crash part way leaves a shorter history,
    /// never a hole.
    fn trim(&self, cutoff: u64, steps: usize) -> Result<(), Error> {
        for item in self.log.iter().take(steps) {
            let (first, record) = item.or_storage()?;
            if codec::last_revision(&first, &record)? >= cutoff {
                return Ok(());
            }
            // The `log` item first: a crash in between leaves `history` items
            // no read chooses, never a read that finds too little.
            let changes = codec::group_changes(&first, &record)?;
            history::materialize(&self.history, &first, &record)?;
            self.log.remove(&first).or_storage()?;
            history::compact(&self.history, &changes)?;
        }
        Ok(())
    }
}

/// Applies one op to the revision under way: its changes (none when it fails or is
/// refused) and its answer.
fn apply_op(revision: &mut Revision<'_, '_>, op: &Op, leases: &Leases) -> Result<Outcome, Error> {
    match op {
        Op::Put {
            key,
            value,
            condition,
            lease,
        } => {
            check(revision, key, *condition)?;
            leases.check_put(*lease)?;
            revision.put(key, value, *lease).map(Outcome::Put)
        }
        Op::Delete { key, condition } => {
            if revision.header(key)?.is_none() {
                return Err(Error::KeyNotFound);
            }
            check(revision, key, *condition)?;
            revision.delete(key)?;
            Ok(Outcome::Delete(DeleteResult {
                revision: revision.revision,
            }))
        }
        Op::Batch(changes) => {
            let mut deleted = 0;
            for change in changes {
                match change {
                    Change::Put { key, value } => {
                        revision.put(key, value, None)?;
                    }
                    Change::Delete { key } => deleted += usize::from(revision.delete(key)?),
                    Change::DeletePrefix { prefix } => deleted += revision.delete_prefix(prefix)?,
                }
            }
            Ok(Outcome::Batch(BatchResult {
                revision: revision.revision - u64::from(revision.is_empty()),
                deleted,
            }))
        }
        Op::Txn(txn) => super::txn::apply(revision, txn, leases).map(Outcome::Txn),
    }
}

/// Refuses a write whose condition does not hold for `key`.
fn check(
    revision: &Revision<'_, '_>,
    key: &str,
    condition: Option<Condition>,
) -> Result<(), Error> {
    let current = revision.header(key)?.map(|h| h.mod_revision);
    if condition.is_some_and(|c| !c.holds(current)) {
        return Err(Error::PreconditionFailed { current });
    }
    Ok(())
}

fn fail_all(n: usize, e: &Error) -> Vec<Result<Outcome, Error>> {
    (0..n).map(|_| Err(e.clone())).collect()
}

/// Removes what an unfinished restore imported: the store is new again, at its
/// initial revision (a restore begins only on a store that never took a write).
fn undo_restore(kv: &sled::Tree, meta: &sled::Tree, history: &sled::Tree) -> Result<(), Error> {
    kv.clear().or_storage()?;
    history.clear().or_storage()?;
    write_initial(meta)?;
    meta.remove(META_RESTORING).or_storage()?;
    Ok(())
}

/// Records a new store's revision, [`INITIAL_REVISION`], as the last one applied,
/// and its history as answering from there.
fn write_initial(meta: &sled::Tree) -> Result<(), Error> {
    let initial = codec::encode_u64(INITIAL_REVISION);
    meta.insert(codec::META_LAST, &initial).or_storage()?;
    meta.insert(history::META_HISTORY_FROM, &initial)
        .or_storage()?;
    Ok(())
}

/// Starts a store that never took a revision at [`INITIAL_REVISION`], as etcd
/// does, so that its first write is revision 2: a new data dir, or one that an
/// earlier version made and never wrote to (both have no `last_revision` in `meta`
/// and an empty `log`). A store that took a revision always has one or the other,
/// and is left as it is: its revisions are never renumbered.
pub(super) fn start_new(meta: &sled::Tree, log: &sled::Tree) -> Result<(), Error> {
    if meta.contains_key(codec::META_LAST).or_storage()? || !log.is_empty() {
        return Ok(());
    }
    write_initial(meta)?;
    meta.flush().or_storage()?;
    Ok(())
}

/// What became of a group.
struct Applied {
    /// One per write, up to the one that failed.
    results: Vec<Result<Outcome, Error>>,
    /// The last revision taken.
    last: u64,
    /// The sled error that stopped the group.
    failure: Option<Error>,
    /// The group's `log` item is written but `kv` or `meta` may lag behind it.
    torn: bool,
    /// Keys created less keys deleted.
    keys_delta: i64,
}

/// Brings `kv` and `meta` up to the change history after a crash in the middle of a
/// group (see `Writer::apply_group`), and returns the last revision.
pub(super) fn recover(
    kv: &sled::Tree,
    log: &sled::Tree,
    meta: &sled::Tree,
    history: &sled::Tree,
) -> Result<u64, Error> {
    if meta.get(META_RESTORING).or_storage()?.is_some() {
        // A restore was cut short: it began on an empty store, so empty it is again.
        undo_restore(kv, meta, history)?;
        meta.flush().or_storage()?;
        log::warn!("removed the entries of a restore that did not finish");
    }
    let applied = match meta.get(codec::META_LAST).or_storage()? {
        Some(bytes) => codec::decode_u64(&bytes)?,
        None => 0,
    };
    let mut last = applied;
    for item in log.range(codec::encode_u64(applied + 1)..) {
        let (first, record) = item.or_storage()?;
        let events = codec::decode_group(&first, &record)?;
        // The group's `history` items may be missing, whatever `kv` shows.
        for (item, changes) in history::group_items(&events) {
            history.insert(item, changes).or_storage()?;
        }
        for event in events {
            let current = match kv.get(event.key.as_bytes()).or_storage()? {
                Some(bytes) => Some(Stored::decode_header(&bytes)?.mod_revision),
                None => None,
            };
            last = event.revision;
            if current.is_some_and(|current| current >= event.revision) {
                continue;
            }
            match event.kind {
                EventKind::Put => {
                    let stored = Stored {
                        create_revision: event.create_revision,
                        mod_revision: event.revision,
                        version: event.version,
                        lease: event.lease,
                        value: event.value,
                    };
                    kv.insert(event.key.as_bytes(), stored.encode())
                        .or_storage()?;
                }
                EventKind::Delete => {
                    kv.remove(event.key.as_bytes()).or_storage()?;
                }
            }
        }
    }
    if last != applied {
        meta.insert(codec::META_LAST, &codec::encode_u64(last))
            .or_storage()?;
        meta.flush().or_storage()?;
        log::warn!(
            "recovered revisions {}..={last} of a write group cut short by a crash",
            applied + 1
        );
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(create_revision: u64, mod_revision: u64, version: u64, value: &[u8]) -> Stored {
        Stored {
            create_revision,
            mod_revision,
            version,
            lease: None,
            value: value.to_vec(),
        }
    }

    /// A crash inside a group leaves change records past `meta`'s revision whose
    /// `kv` side is missing or stale; opening re-applies them, in order.
    #[test]
    fn recover_reapplies_a_torn_group() -> Result<(), Box<dyn std::error::Error>> {
        let db = sled::Config::new().temporary(true).open()?;
        let (kv, log, meta, index) = (
            db.open_tree("kv")?,
            db.open_tree("log")?,
            db.open_tree("meta")?,
            db.open_tree("history")?,
        );
        let old = stored(1, 1, 1, b"old");
        kv.insert("a", old.encode())?;
        kv.insert("gone", old.encode())?;
        log.insert(codec::encode_u64(1), codec::encode_record("a", Some(&old)))?;
        meta.insert(codec::META_LAST, &codec::encode_u64(1))?;
        // Revision 1 as stores before write groups kept it (a bare record); then a
        // torn group of revisions 2..=4 of which only 2 reached kv.
        let two = stored(1, 2, 2, b"new");
        let mut group = codec::GroupRecord::new();
        group.push("a", Some(&two));
        group.push("b", Some(&stored(3, 3, 1, b"born")));
        group.push("gone", None);
        log.insert(codec::encode_u64(2), group.finish())?;
        kv.insert("a", two.encode())?;

        assert_eq!(recover(&kv, &log, &meta, &index)?, 4);
        let get = |key: &str| -> Result<Option<Stored>, Error> {
            kv.get(key)
                .or_storage()?
                .map(|bytes| Stored::decode(&bytes))
                .transpose()
        };
        assert_eq!(get("a")?, Some(two));
        let b = get("b")?.ok_or_else(|| Error::Corrupt("b was not recovered".into()))?;
        assert_eq!((b.create_revision, b.mod_revision, b.version), (3, 3, 1));
        assert_eq!(b.value, b"born");
        assert_eq!(get("gone")?, None);
        let last = meta.get(codec::META_LAST)?.map(|b| codec::decode_u64(&b));
        assert_eq!(last.transpose()?, Some(4));
        // The history items of the torn group are written too, whatever kv showed.
        let at = |key: &str, r| history::get_at(&mut history::Reader::new(&index, &log), key, r);
        assert_eq!(at("a", 2)?.map(|e| e.value), Some(b"new".to_vec()));
        assert_eq!(at("b", 3)?.map(|e| e.version), Some(1));
        assert!(index.contains_key(history::item_key(b"gone", 4))?);
        assert_eq!(at("gone", 4)?, None);
        // Nothing left to do the second time.
        assert_eq!(recover(&kv, &log, &meta, &index)?, 4);
        Ok(())
    }
}
