//! Watches on the etcd engine.
//!
//! A watch that starts now, with the initial state, or from a revision the
//! replica's copy still has in its history is fed by the copy (one etcd watch for
//! every watcher of the replica). One that starts further back gets an etcd watch
//! of its own from that revision, which etcd answers from its history; it is opened
//! again from where it stopped when its member dies, and ends with `compacted` when
//! etcd no longer has what it needs.
//!
//! A revision can hold several changes (a transaction, a lease's expiry), so a
//! watch's position only passes a revision once every change of it is delivered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions as EtcdWatchOptions};
use tokio::sync::broadcast;

use super::cache::{event_of, Batch, Cache};
use super::client::{Connection, Retry};
use super::keys::Keys;
use crate::storage::{Error, SharedEvent, Watch, WatchItem, WatchStream};

/// How long an etcd watch of its own may stay quiet before it asks etcd where it is.
const QUIET: Duration = Duration::from_secs(5);

/// Queues the changes of `events` that start with `prefix` and come after
/// `position`, each with the position a watch is at once it has delivered it; the
/// last one's is `through` (the whole batch is then delivered). Returns whether
/// anything was queued.
fn enqueue<'a>(
    queue: &mut VecDeque<(WatchItem, u64)>,
    events: impl Iterator<Item = &'a Arc<SharedEvent>>,
    prefix: &str,
    position: u64,
    through: u64,
) -> bool {
    let visible: Vec<&Arc<SharedEvent>> = events
        .filter(|e| e.revision > position && e.key.starts_with(prefix))
        .collect();
    for (i, event) in visible.iter().enumerate() {
        let after = match visible.get(i + 1) {
            Some(next) => next.revision - 1,
            None => through,
        };
        queue.push_back((WatchItem::Event(Arc::clone(event)), after));
    }
    !visible.is_empty()
}

/// A watch fed by the replica's copy.
pub struct CacheWatch {
    cache: Arc<Cache>,
    prefix: String,
    live: broadcast::Receiver<Arc<Batch>>,
    generation: u64,
    queue: VecDeque<(WatchItem, u64)>,
    position: u64,
}

impl CacheWatch {
    /// A watch under `prefix` from `start` (every change after `start - 1`), if the
    /// copy's history still holds it; else `None`. With `initial`, first the
    /// copy's entries under the prefix and `synced` (`start` is then ignored).
    pub fn open(cache: &Arc<Cache>, prefix: String, start: u64, initial: bool) -> Option<Watch> {
        let state = cache.read();
        let mut queue = VecDeque::new();
        let position = if initial {
            for entry in state
                .entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, e)| e.clone())
            {
                queue.push_back((WatchItem::Entry(entry), 0));
            }
            queue.push_back((WatchItem::Synced(state.revision), state.revision));
            state.revision
        } else if start > state.revision {
            start - 1
        } else if start > state.floor {
            let events = state.history.iter().flat_map(|batch| batch.events.iter());
            if enqueue(&mut queue, events, &prefix, start - 1, state.revision) {
                start - 1
            } else {
                state.revision
            }
        } else {
            return None;
        };
        // Items before `synced` report the position at open (nothing is resumable
        // from the middle of an initial state).
        let opened_at = if initial { 0 } else { position };
        for item in queue.iter_mut() {
            if let (WatchItem::Entry(_), at) = item {
                *at = opened_at;
            }
        }
        let watch = CacheWatch {
            cache: cache.clone(),
            prefix,
            live: state.feed.subscribe(),
            generation: state.generation,
            queue,
            position: if initial { 0 } else { position },
        };
        drop(state);
        Some(Watch::new(watch))
    }

    async fn advance(&mut self) -> Result<WatchItem, Error> {
        loop {
            if let Some((item, after)) = self.queue.pop_front() {
                if !matches!(item, WatchItem::Entry(_)) {
                    self.position = self.position.max(after);
                }
                return Ok(item);
            }
            match self.live.recv().await {
                Ok(batch) => {
                    let queued = enqueue(
                        &mut self.queue,
                        batch.events.iter(),
                        &self.prefix,
                        self.position,
                        batch.revision,
                    );
                    if !queued {
                        self.position = self.position.max(batch.revision);
                    }
                }
                // Too far behind, or the copy reloaded: resume from the position.
                Err(broadcast::error::RecvError::Lagged(_))
                | Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Lagged {
                        last: self.position,
                    })
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl WatchStream for CacheWatch {
    async fn next(&mut self) -> Result<WatchItem, Error> {
        self.advance().await
    }

    fn position(&self) -> u64 {
        // Caught up with the feed: everything through the copy's revision (read
        // first: it is raised after a batch is sent) has been seen.
        let revision = self.cache.current();
        if self.queue.is_empty()
            && self.live.is_empty()
            && self.position > 0
            && self.cache.read().generation == self.generation
        {
            return self.position.max(revision);
        }
        self.position
    }
}

/// The next answer on a watch being opened, within [`QUIET`].
async fn next_answer(
    stream: &mut etcd_client::WatchStream,
) -> Result<etcd_client::WatchResponse, Error> {
    tokio::time::timeout(QUIET, stream.message())
        .await
        .map_err(|_| Error::Unavailable("etcd: no answer to a watch in time".into()))?
        .map_err(|e| super::client::error(&e))?
        .ok_or_else(|| Error::Unavailable("etcd closed the watch".into()))
}

/// A watch with an etcd watch of its own, from a revision older than the copy's
/// history.
pub struct HistoryWatch {
    connection: Connection,
    keys: Keys,
    prefix: String,
    stream: Option<etcd_client::WatchStream>,
    queue: VecDeque<(WatchItem, u64)>,
    position: u64,
}

impl HistoryWatch {
    /// Opens the etcd watch from `start` and waits for etcd to take it: a start
    /// that is compacted fails here, before anything is sent to the client.
    pub async fn open(
        connection: Connection,
        keys: Keys,
        prefix: String,
        start: u64,
    ) -> Result<Watch, Error> {
        let mut watch = HistoryWatch {
            connection,
            keys,
            prefix,
            stream: None,
            queue: VecDeque::new(),
            position: start.saturating_sub(1),
        };
        watch.connect().await?;
        Ok(Watch::new(watch))
    }

    /// Whether etcd still keeps revision `revision`: a read at a compacted one fails.
    async fn kept(&self, revision: u64) -> Result<bool, Error> {
        let (start, end) = self.keys.range(&self.prefix);
        let options = GetOptions::new()
            .with_range(end)
            .with_revision(revision as i64)
            .with_limit(1)
            .with_keys_only();
        let read = self
            .connection
            .call("a read of the history", Retry::Read, |mut client| {
                let (start, options) = (start.clone(), options.clone());
                async move { client.get(start, Some(options)).await }
            })
            .await;
        match read {
            Ok(_) => Ok(true),
            Err(Error::Compacted { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens the etcd watch from the position on, and reads its first answer.
    ///
    /// etcd takes a watch from a compacted revision (`created`) and cancels it
    /// only in a later message, the one that names the oldest revision it keeps.
    /// So a start etcd no longer keeps is found by a read at it first, and then
    /// that later message is waited for: the watch fails here, before anything
    /// reaches the client (a WebSocket's `compacted` frame, SSE's 410).
    ///
    /// etcd before 3.4.34 and 3.5.15 drops a delete made at the very revision it
    /// compacts at (etcd issue #18089), so a watch from that revision could miss
    /// it. The etcd watch starts at the position itself, one revision early (its
    /// changes there are skipped): a start right at etcd's compaction is then
    /// refused like an older one, and the oldest start named is the revision after.
    async fn connect(&mut self) -> Result<(), Error> {
        let early = self.position.max(1);
        let compacted = !self.kept(early).await?;
        let (start, end) = self.keys.range(&self.prefix);
        let options = EtcdWatchOptions::new()
            .with_range(end)
            .with_start_revision(early as i64)
            .with_progress_notify();
        // Opening a watch changes nothing: tried again, as a read, while a member
        // is out of reach (a dead leader, or one the balanced client still picks).
        let mut stream = self
            .connection
            .call("opening a watch", Retry::Read, |mut client| {
                let (start, options) = (start.clone(), options.clone());
                async move { client.watch(start, Some(options)).await }
            })
            .await?;
        self.take(next_answer(&mut stream).await?)?;
        if compacted {
            loop {
                // Fails with `Compacted` on the cancellation.
                self.take(next_answer(&mut stream).await?)?;
            }
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// Queues an answer's changes (or notes its progress).
    fn take(&mut self, answer: etcd_client::WatchResponse) -> Result<(), Error> {
        if answer.canceled() {
            return Err(if answer.compact_revision() > 0 {
                Error::Compacted {
                    requested: self.position + 1,
                    oldest: answer.compact_revision() as u64 + 1,
                }
            } else {
                Error::Unavailable(format!(
                    "etcd canceled the watch: {}",
                    answer.cancel_reason()
                ))
            });
        }
        let events: Vec<Arc<SharedEvent>> = answer
            .events()
            .iter()
            .filter_map(|e| event_of(&self.keys, e))
            .map(SharedEvent::new)
            .collect();
        let through = match events.last() {
            Some(last) => last.revision,
            None if answer.created() => return Ok(()),
            None => answer.header().map_or(0, |h| h.revision().max(0) as u64),
        };
        let queued = enqueue(
            &mut self.queue,
            events.iter(),
            &self.prefix,
            self.position,
            through,
        );
        if !queued {
            self.position = self.position.max(through);
        }
        Ok(())
    }

    async fn advance(&mut self) -> Result<WatchItem, Error> {
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some((item, after)) = self.queue.pop_front() {
                self.position = self.position.max(after);
                return Ok(item);
            }
            let Some(stream) = &mut self.stream else {
                // The member died: open it again from where it stopped, as soon as
                // etcd answers.
                match self.connect().await {
                    Ok(()) => {}
                    Err(e @ Error::Compacted { .. }) => return Err(e),
                    Err(e) => {
                        log::debug!("cannot watch etcd again yet: {e}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            let message = tokio::select! {
                message = stream.message() => message,
                () = tokio::time::sleep(QUIET) => {
                    if stream.request_progress().await.is_err() {
                        self.stream = None;
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(answer)) => self.take(answer)?,
                Ok(None) | Err(_) => self.stream = None,
            }
        }
    }
}

#[async_trait::async_trait]
impl WatchStream for HistoryWatch {
    async fn next(&mut self) -> Result<WatchItem, Error> {
        self.advance().await
    }

    fn position(&self) -> u64 {
        self.position
    }
}
