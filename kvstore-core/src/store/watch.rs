//! One watcher's view of the change feed: history, then live, with no seam.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::codec::{self, decode_entry};
use super::{Error, Store};
use crate::wire::{Entry, Event, EventKind};

/// History records read from disk at a time while catching up.
const HISTORY_CHUNK: u64 = 256;

/// Where a watch starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Only keys starting with this (empty: every key).
    pub prefix: String,
    /// Deliver every change with a revision at or after this one first (from the
    /// history), then continue live. `None`: only changes after the watch starts.
    pub start_revision: Option<u64>,
    /// First deliver the current entries under the prefix as of one revision, then a
    /// [`WatchItem::Synced`] marker, then every change after that revision.
    pub initial: bool,
}

/// What a [`Watch`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A change (shared: the same event goes to every watcher).
    Event(Arc<Event>),
    /// An entry of the initial state.
    Entry(Entry),
    /// The initial state is complete as of this revision.
    Synced(u64),
}

/// A subscription to changes under a prefix; see [`Store::watch`].
pub struct Watch {
    prefix: String,
    live: broadcast::Receiver<Arc<Event>>,
    log: sled::Tree,
    queue: VecDeque<WatchItem>,
    /// Next revision to read from the history, while `history_next <= history_end`.
    history_next: u64,
    history_end: u64,
    /// Every revision up to here has been delivered or passed over.
    position: u64,
    /// Set once the watch lagged: it stays failed, never skipping ahead.
    lagged: bool,
}

impl Watch {
    /// The revision through which this watch has delivered (or skipped, for other
    /// prefixes) every change: a watch resumed at `position() + 1` misses nothing.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next item. Cancel-safe. Fails with [`Error::Lagged`] when the watcher fell
    /// further behind than the store's event buffer, and with [`Error::Compacted`]
    /// when the history it needs is gone.
    pub async fn next(&mut self) -> Result<WatchItem, Error> {
        if self.lagged {
            return Err(Error::Lagged {
                last: self.position,
            });
        }
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Ok(item);
            }
            if self.history_next <= self.history_end {
                self.read_history()?;
                continue;
            }
            match self.live.recv().await {
                Ok(event) => {
                    if event.revision <= self.position {
                        continue;
                    }
                    self.position = event.revision;
                    if event.key.starts_with(&self.prefix) {
                        return Ok(WatchItem::Event(event));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.lagged = true;
                    return Err(Error::Lagged {
                        last: self.position,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
            }
        }
    }

    fn read_history(&mut self) -> Result<(), Error> {
        let end = self.history_end.min(self.history_next + HISTORY_CHUNK - 1);
        for event in history(&self.log, self.history_next, end)? {
            if event.revision != self.history_next {
                // Revisions are gap-free, so a hole means compaction got there first.
                return Err(Error::Compacted {
                    requested: self.history_next,
                    oldest: event.revision,
                });
            }
            self.history_next += 1;
            self.position = event.revision;
            if event.key.starts_with(&self.prefix) {
                self.queue.push_back(WatchItem::Event(Arc::new(event)));
            }
        }
        if self.history_next <= end {
            return Err(Error::Compacted {
                requested: self.history_next,
                oldest: end + 1,
            });
        }
        Ok(())
    }
}

/// The changes with revisions `from..=to` still in `log`, in order. The `log` is
/// keyed by each write group's first revision, so reading starts at the group that
/// holds `from`.
fn history(log: &sled::Tree, from: u64, to: u64) -> Result<Vec<Event>, Error> {
    let mut events = Vec::new();
    if from > to {
        return Ok(events);
    }
    let start = match log.range(..=codec::encode_u64(from)).next_back() {
        Some(item) => item?.0,
        None => codec::encode_u64(from).as_slice().into(),
    };
    for item in log.range(start..=codec::encode_u64(to).as_slice().into()) {
        let (first, record) = item?;
        events.extend(
            codec::decode_group(&first, &record)?
                .into_iter()
                .filter(|e| (from..=to).contains(&e.revision)),
        );
    }
    Ok(events)
}

/// Opens a watch: subscribe to the live feed first, then decide what comes before it.
pub(super) async fn open(store: &Store, options: WatchOptions) -> Result<Watch, Error> {
    let live = store.inner.feed.subscribe();
    // Read after subscribing: every change up to it is durable and in the log, and
    // every change after it comes through `live` (the feed publishes only durable
    // changes, so it is at or behind this point).
    let durable = store.revision();
    let mut watch = Watch {
        prefix: options.prefix,
        live,
        log: store.inner.log.clone(),
        queue: VecDeque::new(),
        history_next: 1,
        history_end: 0,
        position: durable,
        lagged: false,
    };
    if options.initial {
        let (entries, at) = snapshot(store, &watch.prefix, durable).await?;
        watch
            .queue
            .extend(entries.into_values().map(WatchItem::Entry));
        watch.queue.push_back(WatchItem::Synced(at));
        watch.position = at;
    } else if let Some(start) = options.start_revision {
        let start = start.max(1);
        if start <= durable {
            let oldest = store.oldest_revision()?;
            if start < oldest {
                return Err(Error::Compacted {
                    requested: start,
                    oldest,
                });
            }
            watch.history_next = start;
            watch.history_end = durable;
            watch.position = start - 1;
        } else {
            // A future revision: deliver from there on.
            watch.position = start - 1;
        }
    }
    Ok(watch)
}

/// The entries under `prefix` as of one durable revision, and that revision.
///
/// sled has no snapshots, so: scan (which may see some writes after `durable`),
/// ask the writer for the last revision committed by then, and replay the history
/// between the two over the scan. Every key is then as it was at that revision.
pub(super) async fn snapshot(
    store: &Store,
    prefix: &str,
    durable: u64,
) -> Result<(BTreeMap<String, Entry>, u64), Error> {
    let mut entries = BTreeMap::new();
    for item in store.inner.kv.scan_prefix(prefix.as_bytes()) {
        let (k, v) = item?;
        let entry = decode_entry(&k, &v)?;
        entries.insert(entry.key.clone(), entry);
    }
    let at = store.barrier().await?;
    let mut replayed = 0;
    for event in history(&store.inner.log, durable + 1, at)? {
        replayed += 1;
        if !event.key.starts_with(prefix) {
            continue;
        }
        match event.kind {
            EventKind::Put => {
                if let Some(entry) = event.entry() {
                    entries.insert(entry.key.clone(), entry);
                }
            }
            EventKind::Delete => {
                entries.remove(&event.key);
            }
        }
    }
    if replayed != at - durable {
        // Compaction removed part of the span we needed.
        return Err(Error::Compacted {
            requested: durable + 1,
            oldest: store.oldest_revision()?,
        });
    }
    // Show nothing that is not yet durable.
    store.wait_durable(at).await?;
    Ok((entries, at))
}
