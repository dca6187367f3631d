//! Watches: what a caller asks for, and what it gets.

use std::sync::Arc;

use super::{Error, SharedEvent};
use crate::wire::Entry;

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
    Event(Arc<SharedEvent>),
    /// An entry of the initial state.
    Entry(Entry),
    /// The initial state is complete as of this revision.
    Synced(u64),
    /// Nothing under the prefix changed through this revision.
    Progress(u64),
}

/// What an engine implements to serve one watch; callers use it through [`Watch`],
/// which keeps the first error: an engine need not remember that it failed.
#[async_trait::async_trait]
pub trait WatchStream: Send {
    /// The next item. Must be cancel-safe: a caller may drop the future (to serve a
    /// timer or a shutdown) and call again without losing an item.
    async fn next(&mut self) -> Result<WatchItem, Error>;

    /// The revision through which this watch has delivered (or passed over, for
    /// other prefixes) every change: resuming at `position() + 1` misses nothing.
    fn position(&self) -> u64;
}

/// A subscription to changes under a prefix, in revision order, with no gap and no
/// duplicate; see [`crate::Storage::watch`].
pub struct Watch {
    inner: Box<dyn WatchStream>,
    /// Set once the watch failed: it stays failed, never skipping ahead.
    failed: Option<Error>,
}

impl Watch {
    /// Wraps an engine's watch.
    pub fn new(inner: impl WatchStream + 'static) -> Watch {
        Watch {
            inner: Box::new(inner),
            failed: None,
        }
    }

    /// The next item. Cancel-safe. Fails with [`Error::Lagged`] when the watcher fell
    /// further behind than the store's event buffer, with [`Error::Compacted`] when
    /// the history it needs is gone; every error ends the watch.
    pub async fn next(&mut self) -> Result<WatchItem, Error> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let item = self.inner.next().await;
        if let Err(error) = &item {
            log::debug!("a watch from position {} ends: {error}", self.position());
            self.failed = Some(error.clone());
        }
        item
    }

    /// See [`WatchStream::position`].
    pub fn position(&self) -> u64 {
        self.inner.position()
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}
