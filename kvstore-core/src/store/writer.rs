//! The single writer: numbers writes, commits them in groups, flushes once per group.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sled::transaction::{ConflictableTransactionResult, TransactionalTree};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Stored};
use super::events::SequencerHandle;
use super::{Error, Precondition, SyncMode};
use crate::wire::{DeleteResult, Entry, PutResult};

/// Most writes committed in one transaction and one flush.
const MAX_GROUP: usize = 256;
/// Log records removed per compaction step (kept small so a step never stalls writes).
const COMPACT_STEP: u64 = 4096;

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
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(request @ Request::Import { .. }) => {
                        held = Some(request);
                        break;
                    }
                    Ok(request) => group.push(request),
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
            match self.transact(&ops) {
                Ok((outcomes, last)) => {
                    self.count_keys(&outcomes);
                    let flush_started = Instant::now();
                    let durable = match self.sync {
                        SyncMode::Always => self.db.flush().map(|_| ()),
                        SyncMode::None => Ok(()),
                    };
                    if self.sync == SyncMode::Always {
                        metrics::histogram!("kvstore_flush_seconds")
                            .record(flush_started.elapsed().as_secs_f64());
                    }
                    metrics::histogram!("kvstore_commit_group_size").record(ops.len() as f64);
                    metrics::histogram!("kvstore_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    match durable {
                        Ok(()) => {
                            self.last = last;
                            self.durable.send_replace(last);
                            self.sequencer.durable(last);
                            results = outcomes;
                        }
                        Err(e) => {
                            // The group is applied in memory but its durability is
                            // unknown: say so, and publish it once a later flush works.
                            log::error!("flush failed: {e}");
                            self.last = last;
                            results = fail_all(ops.len(), &e);
                        }
                    }
                }
                Err(e) => {
                    log::error!("write transaction failed: {e}");
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

    /// Applies `ops` in one transaction, numbering them after `self.last`.
    fn transact(&self, ops: &[&Op]) -> Result<(Vec<Result<Outcome, Error>>, u64), sled::Error> {
        let start = self.last;
        (&self.kv, &self.log, &self.meta)
            .transaction(|(kv, log, meta)| apply(kv, log, meta, ops, start))
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(e)
                | sled::transaction::TransactionError::Storage(e) => e,
            })
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

    /// Trims the change history to the configured number of revisions, a step at a time.
    fn compact(&self) {
        // Keep revisions cutoff..=last: exactly `retain` of them.
        let Some(cutoff) = (self.last + 1).checked_sub(self.retain.max(1)) else {
            return;
        };
        let first = match self.log.first() {
            Ok(Some((rev, _))) => codec::decode_u64(&rev).unwrap_or(cutoff),
            _ => return,
        };
        if first >= cutoff {
            return;
        }
        let end = cutoff.min(first + COMPACT_STEP);
        let mut batch = sled::Batch::default();
        for rev in first..end {
            batch.remove(&codec::encode_u64(rev));
        }
        if let Err(e) = self.log.apply_batch(batch) {
            log::warn!("compacting the change history failed: {e}");
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

type Applied = (Vec<Result<Outcome, Error>>, u64);

fn apply(
    kv: &TransactionalTree,
    log: &TransactionalTree,
    meta: &TransactionalTree,
    ops: &[&Op],
    start: u64,
) -> ConflictableTransactionResult<Applied, sled::Error> {
    let mut rev = start;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let (key, precondition) = match op {
            Op::Put {
                key, precondition, ..
            }
            | Op::Delete { key, precondition } => (key, *precondition),
        };
        let current = match kv.get(key.as_bytes())? {
            Some(bytes) => match Stored::decode(&bytes) {
                Ok(stored) => Some(stored),
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            },
            None => None,
        };
        let current_rev = current.as_ref().map(|s| s.mod_revision);
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
        rev += 1;
        match op {
            Op::Put { value, .. } => {
                let stored = Stored {
                    create_revision: current.as_ref().map_or(rev, |s| s.create_revision),
                    mod_revision: rev,
                    version: current.as_ref().map_or(1, |s| s.version + 1),
                    value: value.clone(),
                };
                kv.insert(key.as_bytes(), stored.encode())?;
                log.insert(
                    &codec::encode_u64(rev),
                    codec::encode_record(key, Some(&stored)),
                )?;
                results.push(Ok(Outcome::Put(PutResult {
                    revision: rev,
                    create_revision: stored.create_revision,
                    version: stored.version,
                })));
            }
            Op::Delete { .. } => {
                kv.remove(key.as_bytes())?;
                log.insert(&codec::encode_u64(rev), codec::encode_record(key, None))?;
                results.push(Ok(Outcome::Delete(DeleteResult { revision: rev })));
            }
        }
    }
    if rev != start {
        meta.insert(codec::META_LAST, &codec::encode_u64(rev))?;
    }
    Ok((results, rev))
}
