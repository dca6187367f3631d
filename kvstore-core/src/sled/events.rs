//! From sled's `watch_prefix` on the `log` tree (one event per write group) to a
//! revision-ordered, durable feed.
//!
//! Two threads: the drainer reads sled's `Subscriber` and does nothing else (so sled
//! writers never block on it); the sequencer holds records until every revision up
//! to the durable watermark (raised by the writer after each flush) is present, then
//! publishes them in order to a bounded broadcast ring, one whole revision (all its
//! changes) per item, so no watcher ever sees part of a revision.

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::codec;
use crate::storage::SharedEvent;
use crate::wire::Event;

enum Message {
    /// The change records of one write group.
    Records(Vec<Event>),
    Durable(u64),
    /// The store revision moved to this one without changes (a restore).
    Jump(u64),
}

/// The writer's way to tell the sequencer what is durable.
pub(super) struct SequencerHandle(std_mpsc::Sender<Message>);

impl SequencerHandle {
    pub fn durable(&self, revision: u64) {
        // The sequencer only stops when the store is gone.
        let _ = self.0.send(Message::Durable(revision));
    }

    pub fn jump(&self, revision: u64) {
        let _ = self.0.send(Message::Jump(revision));
    }
}

/// Every change of one revision, in the order they were made.
pub(super) struct Revision {
    pub revision: u64,
    pub events: Vec<Arc<SharedEvent>>,
}

/// The published side: what watchers subscribe to.
pub(super) struct Feed {
    events: broadcast::Sender<Arc<Revision>>,
    sequencer: std_mpsc::Sender<Message>,
}

impl Feed {
    /// Starts the drainer and the sequencer for `log`, whose last durable revision is `last`.
    pub fn start(log: &sled::Tree, last: u64, capacity: usize) -> Feed {
        let (events, _) = broadcast::channel(capacity.max(1));
        let (tx, rx) = std_mpsc::channel();
        let subscriber = log.watch_prefix(vec![]);
        let drain_tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("kvstore-drainer".into())
            .spawn(move || drain(subscriber, drain_tx))
            .and_then(|_| {
                let events = events.clone();
                std::thread::Builder::new()
                    .name("kvstore-sequencer".into())
                    .spawn(move || sequence(rx, last, events))
            });
        if let Err(e) = spawned {
            log::error!("could not start the event threads: {e}");
        }
        Feed {
            events,
            sequencer: tx,
        }
    }

    pub fn sequencer(&self) -> SequencerHandle {
        SequencerHandle(self.sequencer.clone())
    }

    /// A receiver of every revision published after this call. Events are published
    /// only once durable, so everything after the store's durable revision read
    /// after this call comes through it (see `watch::open`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Revision>> {
        self.events.subscribe()
    }
}

fn drain(subscriber: sled::Subscriber, tx: std_mpsc::Sender<Message>) {
    for event in subscriber {
        if let sled::Event::Insert { key, value } = event {
            match codec::decode_group(&key, &value) {
                Ok(records) => {
                    if tx.send(Message::Records(records)).is_err() {
                        return;
                    }
                }
                Err(e) => log::error!("undecodable change record: {e}"),
            }
        }
    }
}

fn sequence(rx: std_mpsc::Receiver<Message>, last: u64, events: broadcast::Sender<Arc<Revision>>) {
    let mut pending: BTreeMap<u64, Vec<Arc<SharedEvent>>> = BTreeMap::new();
    let mut durable = last;
    let mut next = last + 1;
    for message in rx {
        match message {
            Message::Records(records) => {
                // A revision is never split between two `log` items.
                for event in records {
                    if event.revision >= next {
                        pending
                            .entry(event.revision)
                            .or_default()
                            .push(SharedEvent::new(event));
                    }
                }
            }
            Message::Durable(d) => durable = durable.max(d),
            Message::Jump(to) => {
                if to >= next {
                    pending.retain(|&r, _| r > to);
                    durable = durable.max(to);
                    next = to + 1;
                }
            }
        }
        while next <= durable {
            let Some(changes) = pending.remove(&next) else {
                break;
            };
            // No receivers is fine.
            let _ = events.send(Arc::new(Revision {
                revision: next,
                events: changes,
            }));
            next += 1;
        }
    }
}
