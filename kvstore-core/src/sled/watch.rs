//! One watcher's view of the change feed: initial state or history, then live,
//! with no seam. A revision is taken whole (from the feed, or from the history),
//! and the watch's position passes it only once every change of it under the
//! prefix is delivered.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::codec;
use super::events::Revision;
use super::export::Export;
use super::{OrStorage, SledStore};
use crate::storage::{Error, SharedEvent, Watch, WatchItem, WatchOptions, WatchStream};
use crate::wire::Event;

/// History records read from disk at a time while catching up.
const HISTORY_CHUNK: u64 = 256;

/// A watch on the sled engine.
struct SledWatch {
    prefix: String,
    live: broadcast::Receiver<Arc<Revision>>,
    log: sled::Tree,
    /// Changes to deliver, each with the position the watch is at once it is.
    queue: VecDeque<(WatchItem, u64)>,
    /// The initial state being streamed, and the revision it shows.
    initial: Option<(Export, u64)>,
    /// Next revision to read from the history, while `history_next <= history_end`.
    history_next: u64,
    history_end: u64,
    /// Every revision up to here has been delivered or passed over.
    position: u64,
}

#[async_trait::async_trait]
impl WatchStream for SledWatch {
    fn position(&self) -> u64 {
        self.position
    }

    async fn next(&mut self) -> Result<WatchItem, Error> {
        self.advance().await
    }
}

impl SledWatch {
    async fn advance(&mut self) -> Result<WatchItem, Error> {
        loop {
            if let Some((item, after)) = self.queue.pop_front() {
                self.position = self.position.max(after);
                return Ok(item);
            }
            if let Some((export, at)) = &mut self.initial {
                match export.next_entry()? {
                    Some(entry) => return Ok(WatchItem::Entry(entry)),
                    None => {
                        let at = *at;
                        self.initial = None;
                        self.position = at;
                        return Ok(WatchItem::Synced(at));
                    }
                }
            }
            if self.history_next <= self.history_end {
                self.read_history()?;
                continue;
            }
            match self.live.recv().await {
                Ok(revision) => {
                    if revision.revision > self.position {
                        self.take(revision.revision, revision.events.iter().cloned());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(Error::Lagged {
                        last: self.position,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
            }
        }
    }

    /// Queues the changes of `revision` under the prefix; the position passes the
    /// revision with the last of them (at once, if there is none).
    fn take(&mut self, revision: u64, events: impl Iterator<Item = Arc<SharedEvent>>) {
        for event in events.filter(|e| e.key.starts_with(&self.prefix)) {
            self.queue
                .push_back((WatchItem::Event(event), revision - 1));
        }
        match self.queue.back_mut() {
            // Passed once whatever is queued (of this revision or before) is delivered.
            Some(last) => last.1 = revision,
            None => self.position = revision,
        }
    }

    fn read_history(&mut self) -> Result<(), Error> {
        let end = self.history_end.min(self.history_next + HISTORY_CHUNK - 1);
        let mut events = history(&self.log, self.history_next, end)?
            .into_iter()
            .peekable();
        while let Some(first) = events.next() {
            let revision = first.revision;
            if revision != self.history_next {
                // Revisions are gap-free, so a hole means compaction got there first.
                return Err(Error::Compacted {
                    requested: self.history_next,
                    oldest: revision,
                });
            }
            let mut changes = vec![SharedEvent::new(first)];
            while let Some(more) = events.next_if(|e| e.revision == revision) {
                changes.push(SharedEvent::new(more));
            }
            self.history_next += 1;
            self.take(revision, changes.into_iter());
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
        Some(item) => item.or_storage()?.0,
        None => codec::encode_u64(from).as_slice().into(),
    };
    for item in log.range(start..=codec::encode_u64(to).as_slice().into()) {
        let (first, record) = item.or_storage()?;
        events.extend(
            codec::decode_group(&first, &record)?
                .into_iter()
                .filter(|e| (from..=to).contains(&e.revision)),
        );
    }
    Ok(events)
}

/// Opens a watch: subscribe to the live feed first, then decide what comes before it.
pub(super) async fn open(store: &SledStore, options: WatchOptions) -> Result<Watch, Error> {
    let live = store.inner.feed.subscribe();
    // Read after subscribing: every change up to it is durable and in the log, and
    // every change after it comes through `live` (the feed publishes only durable
    // changes, so it is at or behind this point).
    let durable = store.durable_revision();
    let mut watch = SledWatch {
        prefix: options.prefix,
        live,
        log: store.inner.log.clone(),
        queue: VecDeque::new(),
        initial: None,
        history_next: 1,
        history_end: 0,
        position: durable,
    };
    if options.initial {
        // The export's revision is at or after `durable`; once the initial state is
        // delivered, the position moves to it and the feed's events up to it are
        // skipped.
        let (export, at) = store.export(&watch.prefix).await?;
        watch.initial = Some((export, at));
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
            // The oldest revision holds no change when it is the one the store
            // started at (a new store's initial revision, or a restore's): the
            // history then begins with the next one.
            let logged = match store.inner.log.first().or_storage()? {
                Some((first, _)) => codec::decode_u64(&first)?,
                None => durable + 1,
            };
            let from = start.max(logged.min(oldest + 1));
            watch.history_next = from;
            watch.history_end = durable;
            watch.position = from - 1;
        } else {
            // A future revision: deliver from there on.
            watch.position = start - 1;
        }
    }
    Ok(Watch::new(watch))
}
