//! The single writer: numbers writes, commits them in groups, flushes once per group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Stored};
use super::events::SequencerHandle;
use super::{Error, Precondition, SyncMode};
use crate::wire::{DeleteResult, Entry, EventKind, PutResult};

/// Most writes committed in one group (one flush, one `log` item).
const MAX_GROUP: usize = 256;
/// Value bytes after which a group takes no more writes (a group's `log` item
/// holds all its values, and every history read of it decodes them all).
const MAX_GROUP_BYTES: usize = 4 << 20;
/// Log items (write groups) removed per compaction step (kept small so a step
/// never stalls writes).
const COMPACT_STEP: usize = 1024;

pub(super) enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
}

pub(super) enum Outcome {
    Put(PutResult),
    Delete(DeleteResult),
}

pub(super) enum Request {
    Write {
        op: Op,
        reply: oneshot::Sender<Result<Outcome, Error>>,
    },
    /// Answered with the last assigned revision once every earlier write is committed.
    Barrier { reply: oneshot::Sender<u64> },
    /// Part of a restore: entries written as they are, with their revisions. The
    /// first part requires an empty store and sets the store revision to `revision`.
    Import {
        entries: Vec<Entry>,
        revision: u64,
        first: bool,
        reply: oneshot::Sender<Result<usize, Error>>,
    },
}

impl Request {
    /// Bytes of value this request writes.
    fn value_len(&self) -> usize {
        match self {
            Request::Write {
                op: Op::Put { value, .. },
                ..
            } => value.len(),
            _ => 0,
        }
    }
}

pub(super) struct Writer {
    pub db: sled::Db,
    pub kv: sled::Tree,
    pub log: sled::Tree,
    pub meta: sled::Tree,
    pub last: u64,
    pub sync: SyncMode,
    pub retain: u64,
    pub sequencer: SequencerHandle,
    /// Number of keys in the store, kept up to date by this writer.
    pub keys: Arc<AtomicU64>,
    /// The last durable revision, raised before any write of a group is answered.
    pub durable: Arc<tokio::sync::watch::Sender<u64>>,
    /// A group failed after its `log` item was written (see `Writer::repair`).
    pub torn: bool,
}

impl Writer {
    pub fn spawn(self, rx: mpsc::Receiver<Request>) -> Result<std::thread::JoinHandle<()>, Error> {
        std::thread::Builder::new()
            .name("kvstore-writer".into())
            .spawn(move || self.run(rx))
            .map_err(|e| Error::Storage(sled::Error::Io(e)))
    }

    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut held = None;
        while let Some(first) = held.take().or_else(|| rx.blocking_recv()) {
            if let Request::Import {
                entries,
                revision,
                first,
                reply,
            } = first
            {
                // Imports go alone, between groups.
                let _ = reply.send(self.import(entries, revision, first));
                continue;
            }
            let mut bytes = first.value_len();
            group.push(first);
            while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(request @ Request::Import { .. }) => {
                        held = Some(request);
                        break;
                    }
                    Ok(request) => {
                        bytes += request.value_len();
                        group.push(request);
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
                Request::Barrier { .. } | Request::Import { .. } => None,
            })
            .collect();
        let mut results: Vec<Result<Outcome, Error>> = Vec::new();
        if !ops.is_empty() {
            let started = Instant::now();
            let applied = match self.repair() {
                Ok(()) => self.apply_group(&ops),
                Err(error) => Applied {
                    results: Vec::new(),
                    last: self.last,
                    failure: Some(error),
                    torn: false,
                },
            };
            self.torn |= applied.torn;
            if applied.failure.is_none() {
                self.count_keys(&applied.results);
            }
            let failure = match applied.failure {
                Some(e) => Some(e),
                // Nothing new to flush (every write refused, no earlier failure).
                None if applied.last == *self.durable.borrow() => None,
                None => self.make_durable(),
            };
            metrics::histogram!("kvstore_commit_group_size").record(ops.len() as f64);
            metrics::histogram!("kvstore_commit_seconds").record(started.elapsed().as_secs_f64());
            // Revisions taken stay taken, even by a failed group: its change records
            // may be in the log.
            self.last = applied.last;
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
        for request in group.drain(..) {
            match request {
                Request::Write { reply, .. } => {
                    let result = results.next().unwrap_or(Err(Error::Closed));
                    // The requester may have gone away; nothing to do then.
                    let _ = reply.send(result);
                }
                Request::Barrier { reply } => {
                    let _ = reply.send(self.last);
                }
                Request::Import { reply, .. } => {
                    let _ = reply.send(Err(Error::Closed));
                }
            }
        }
    }

    /// Follows the number of keys: a put at version 1 created one, a delete removed one.
    fn count_keys(&self, outcomes: &[Result<Outcome, Error>]) {
        for outcome in outcomes {
            match outcome {
                Ok(Outcome::Put(put)) if put.version == 1 => {
                    self.keys.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Delete(_)) => {
                    self.keys.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }

    /// After a group failed between writing its `log` item and its end, brings `kv`
    /// and `meta` up to the log (as on open) before any other write: until then
    /// every write fails.
    fn repair(&mut self) -> Result<(), sled::Error> {
        if !self.torn {
            return Ok(());
        }
        recover(&self.kv, &self.log, &self.meta).map_err(|e| match e {
            Error::Storage(e) => e,
            other => sled::Error::Unsupported(other.to_string()),
        })?;
        self.keys.store(self.kv.len() as u64, Ordering::Relaxed);
        self.torn = false;
        log::warn!("the store caught up with its change history after a failed write");
        Ok(())
    }

    /// Flushes the group when writes are durable, timing the flush.
    fn make_durable(&self) -> Option<sled::Error> {
        if self.sync == SyncMode::None {
            return None;
        }
        let started = Instant::now();
        let flushed = self.db.flush();
        metrics::histogram!("kvstore_flush_seconds").record(started.elapsed().as_secs_f64());
        flushed.err()
    }

    /// Applies `ops` in order, numbering them after `self.last`, with plain sled
    /// writes: the group's change records as one `log` item first, then each key it
    /// changed into `kv` (once, in its final state), then the last revision into
    /// `meta`.
    ///
    /// A sled transaction or batch would make the group atomic, but each one seals
    /// and writes sled's log buffer twice, which costs more than the writes. sled
    /// recovers a prefix of its log after a crash, so a torn group can only leave a
    /// `log` item past `meta`'s revision whose `kv` side is missing or stale;
    /// [`recover`] re-applies it on open. One `log` item per group (not per write)
    /// also means one sled event for the feed and one removal at compaction.
    fn apply_group(&self, ops: &[&Op]) -> Applied {
        let mut results = Vec::with_capacity(ops.len());
        let mut record = codec::GroupRecord::new();
        // Each key's state after the group's writes so far.
        let mut changed: HashMap<&str, Option<Stored>> = HashMap::new();
        let mut last = self.last;
        for op in ops {
            let (key, precondition) = match op {
                Op::Put {
                    key, precondition, ..
                }
                | Op::Delete { key, precondition } => (key.as_str(), *precondition),
            };
            let current = match changed.get(key) {
                Some(state) => state.as_ref().map(Stored::header),
                None => match self.kv.get(key.as_bytes()) {
                    Ok(Some(bytes)) => match Stored::decode_header(&bytes) {
                        Ok(header) => Some(header),
                        Err(e) => {
                            results.push(Err(e));
                            continue;
                        }
                    },
                    Ok(None) => None,
                    Err(error) => return self.failed(results, error),
                },
            };
            let current_rev = current.map(|h| h.mod_revision);
            if matches!(op, Op::Delete { .. }) && current.is_none() {
                results.push(Err(Error::KeyNotFound));
                continue;
            }
            if !precondition.holds(current_rev) {
                results.push(Err(Error::PreconditionFailed {
                    current: current_rev,
                }));
                continue;
            }
            last += 1;
            match op {
                Op::Put { value, .. } => {
                    let stored = Stored {
                        create_revision: current.map_or(last, |h| h.create_revision),
                        mod_revision: last,
                        version: current.map_or(1, |h| h.version + 1),
                        value: value.clone(),
                    };
                    record.push(key, Some(&stored));
                    results.push(Ok(Outcome::Put(PutResult {
                        revision: last,
                        create_revision: stored.create_revision,
                        version: stored.version,
                    })));
                    changed.insert(key, Some(stored));
                }
                Op::Delete { .. } => {
                    record.push(key, None);
                    results.push(Ok(Outcome::Delete(DeleteResult { revision: last })));
                    changed.insert(key, None);
                }
            }
        }
        if record.is_empty() {
            return Applied {
                results,
                last,
                failure: None,
                torn: false,
            };
        }
        let first = codec::encode_u64(self.last + 1);
        if let Err(error) = self.log.insert(first, record.finish()) {
            return self.failed(results, error);
        }
        for (key, state) in &changed {
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
                    failure: Some(error),
                    torn: true,
                };
            }
        }
        let failure = self
            .meta
            .insert(codec::META_LAST, &codec::encode_u64(last))
            .err();
        Applied {
            results,
            last,
            torn: failure.is_some(),
            failure,
        }
    }

    /// A group stopped by `error` before its change records were written: no
    /// revision taken.
    fn failed(&self, results: Vec<Result<Outcome, Error>>, error: sled::Error) -> Applied {
        Applied {
            results,
            last: self.last,
            failure: Some(error),
            torn: false,
        }
    }

    /// Writes one part of a restore (see [`Request::Import`]).
    fn import(&mut self, entries: Vec<Entry>, revision: u64, first: bool) -> Result<usize, Error> {
        if first && (self.last != 0 || !self.kv.is_empty()) {
            return Err(Error::NotEmpty);
        }
        let mut batch = sled::Batch::default();
        for entry in &entries {
            let stored = Stored {
                create_revision: entry.create_revision,
                mod_revision: entry.mod_revision,
                version: entry.version,
                value: entry.value.clone(),
            };
            batch.insert(entry.key.as_bytes(), stored.encode());
        }
        (&self.kv, &self.meta)
            .transaction(|(kv, meta)| {
                kv.apply_batch(&batch)?;
                if first {
                    meta.insert(codec::META_LAST, &codec::encode_u64(revision))?;
                }
                Ok(())
            })
            .map_err(
                |e: sled::transaction::TransactionError<sled::Error>| match e {
                    sled::transaction::TransactionError::Abort(e)
                    | sled::transaction::TransactionError::Storage(e) => Error::Storage(e),
                },
            )?;
        self.db.flush()?;
        self.keys.fetch_add(entries.len() as u64, Ordering::Relaxed);
        if first {
            self.last = revision;
            self.durable.send_replace(revision);
            self.sequencer.jump(revision);
        }
        Ok(entries.len())
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
        // Oldest first, one item at a time (a batch would cost two writes of sled's
        // log buffer): a crash part way leaves a shorter history, never a hole.
        for item in self.log.iter().take(COMPACT_STEP) {
            let outcome = item.map_err(Error::from).and_then(|(first, record)| {
                if codec::last_revision(&first, &record)? >= cutoff {
                    return Ok(false);
                }
                self.log.remove(first)?;
                Ok(true)
            });
            match outcome {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    log::warn!("compacting the change history failed: {e}");
                    return;
                }
            }
        }
    }
}

fn fail_all(n: usize, e: &sled::Error) -> Vec<Result<Outcome, Error>> {
    (0..n)
        .map(|_| Err(Error::Storage(clone_error(e))))
        .collect()
}

fn clone_error(e: &sled::Error) -> sled::Error {
    match e {
        sled::Error::Io(io) => sled::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => other.clone(),
    }
}

/// What became of a group.
struct Applied {
    /// One per write, up to the one that failed.
    results: Vec<Result<Outcome, Error>>,
    /// The last revision taken.
    last: u64,
    /// The sled error that stopped the group.
    failure: Option<sled::Error>,
    /// The group's `log` item is written but `kv` or `meta` may lag behind it.
    torn: bool,
}

/// Brings `kv` and `meta` up to the change history after a crash in the middle of a
/// group (see `Writer::apply_group`), and returns the last revision.
pub(super) fn recover(kv: &sled::Tree, log: &sled::Tree, meta: &sled::Tree) -> Result<u64, Error> {
    let applied = match meta.get(codec::META_LAST)? {
        Some(bytes) => codec::decode_u64(&bytes)?,
        None => 0,
    };
    let mut last = applied;
    for item in log.range(codec::encode_u64(applied + 1)..) {
        let (first, record) = item?;
        for event in codec::decode_group(&first, &record)? {
            let current = match kv.get(event.key.as_bytes())? {
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
                        value: event.value,
                    };
                    kv.insert(event.key.as_bytes(), stored.encode())?;
                }
                EventKind::Delete => {
                    kv.remove(event.key.as_bytes())?;
                }
            }
        }
    }
    if last != applied {
        meta.insert(codec::META_LAST, &codec::encode_u64(last))?;
        meta.flush()?;
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
            value: value.to_vec(),
        }
    }

    /// A crash inside a group leaves change records past `meta`'s revision whose
    /// `kv` side is missing or stale; opening re-applies them, in order.
    #[test]
    fn recover_reapplies_a_torn_group() -> Result<(), Error> {
        let db = sled::Config::new().temporary(true).open()?;
        let (kv, log, meta) = (
            db.open_tree("kv")?,
            db.open_tree("log")?,
            db.open_tree("meta")?,
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

        assert_eq!(recover(&kv, &log, &meta)?, 4);
        let get = |key: &str| -> Result<Option<Stored>, Error> {
            kv.get(key)?.map(|bytes| Stored::decode(&bytes)).transpose()
        };
        assert_eq!(get("a")?, Some(two));
        let b = get("b")?.ok_or_else(|| Error::Corrupt("b was not recovered".into()))?;
        assert_eq!((b.create_revision, b.mod_revision, b.version), (3, 3, 1));
        assert_eq!(b.value, b"born");
        assert_eq!(get("gone")?, None);
        let last = meta.get(codec::META_LAST)?.map(|b| codec::decode_u64(&b));
        assert_eq!(last.transpose()?, Some(4));
        // Nothing left to do the second time.
        assert_eq!(recover(&kv, &log, &meta)?, 4);
        Ok(())
    }
}
