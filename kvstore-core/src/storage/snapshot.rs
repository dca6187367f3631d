//! Snapshots: every entry under a prefix as of one revision, as a stream.

use std::pin::Pin;

use futures_core::Stream;

use super::Error;
use crate::key::validate_key;
use crate::wire::Entry;

/// A stream of entries, in key order.
pub type EntryStream = Pin<Box<dyn Stream<Item = Result<Entry, Error>> + Send>>;

/// Every entry under a prefix as of `revision`, streamed in key order: an export
/// holds only what changes while it runs, never the whole store.
pub struct Snapshot {
    /// The store revision the entries show.
    pub revision: u64,
    /// The entries; an error ends the stream.
    pub entries: EntryStream,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Checks one entry of a snapshot taken at `revision` before it is restored: a valid
/// key, a value within `max_value_bytes`, revisions that fit the snapshot's.
pub fn check_entry(entry: &Entry, revision: u64, max_value_bytes: usize) -> Result<(), Error> {
    validate_key(&entry.key)?;
    if entry.value.len() > max_value_bytes {
        return Err(Error::ValueTooLarge {
            size: entry.value.len(),
            max: max_value_bytes,
        });
    }
    let revisions_ok = entry.version >= 1
        && entry.create_revision >= 1
        && entry.create_revision <= entry.mod_revision
        && entry.mod_revision <= revision;
    if revisions_ok {
        Ok(())
    } else {
        Err(Error::InvalidSnapshot(format!(
            "entry {:?} has inconsistent revisions for a snapshot at revision {revision}",
            entry.key
        )))
    }
}
