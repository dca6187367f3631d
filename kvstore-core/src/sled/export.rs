//! Snapshots that stream: the `kv` tree read in key order while the writer keeps
//! the state at the snapshot's revision of every key it changes meanwhile.
//!
//! sled has no snapshots of its own. An export registers a [`Capture`] with the
//! writer, between two write groups, at the writer's last revision R. From then on,
//! before the writer changes a key under the export's prefix for the first time, it
//! records the key's state before the change (its state at R, or its absence). The
//! export walks `kv` in key order and, for each key, shows the recorded state when
//! there is one and the current one otherwise; keys deleted since R come from the
//! records, merged in key order. So the export holds only what changes while it
//! runs, never the whole store, and shows every key as it was at R.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, Weak};

use futures_util::Stream;

use super::codec::decode_entry;
use super::OrStorage;
use crate::storage::Error;
use crate::wire::Entry;

/// What one export needs the writer to keep: the state at `revision` of each key
/// under `prefix` changed since (`None`: the key did not exist then).
pub(super) struct Capture {
    revision: u64,
    prefix: Vec<u8>,
    before: Mutex<BTreeMap<Vec<u8>, Option<sled::IVec>>>,
}

impl Capture {
    /// The revision the export shows.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Option<sled::IVec>>> {
        self.before.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer's list of exports under way; an export that was dropped stops being
/// fed at the next write group.
#[derive(Default)]
pub(super) struct Exports {
    live: Vec<Weak<Capture>>,
}

impl Exports {
    /// Starts capturing for an export of `prefix` at `revision` (the writer's last).
    pub fn register(&mut self, revision: u64, prefix: Vec<u8>) -> Arc<Capture> {
        let capture = Arc::new(Capture {
            revision,
            prefix,
            before: Mutex::new(BTreeMap::new()),
        });
        self.live.push(Arc::downgrade(&capture));
        capture
    }

    /// Forgets exports that ended; true when none is left.
    pub fn prune(&mut self) -> bool {
        self.live.retain(|c| c.strong_count() > 0);
        self.live.is_empty()
    }

    /// Records `key`'s state `before` its first change since each export began.
    /// Called before the change reaches `kv`.
    pub fn record(&self, key: &[u8], before: Option<&sled::IVec>) {
        for capture in self.live.iter().filter_map(Weak::upgrade) {
            if key.starts_with(&capture.prefix) {
                capture
                    .records()
                    .entry(key.to_vec())
                    .or_insert_with(|| before.cloned());
            }
        }
    }
}

/// An export under way: see the module docs.
pub(super) struct Export {
    capture: Arc<Capture>,
    iter: sled::Iter,
    /// The next `kv` item, read but not yet shown.
    peeked: Option<(sled::IVec, sled::IVec)>,
    kv_done: bool,
    /// The last key shown.
    last: Option<Vec<u8>>,
    failed: bool,
}

impl Export {
    pub fn new(kv: sled::Tree, capture: Arc<Capture>) -> Export {
        let iter = kv.scan_prefix(&capture.prefix);
        Export {
            capture,
            iter,
            peeked: None,
            kv_done: false,
            last: None,
            failed: false,
        }
    }

    /// Whether `key` comes after the last key shown.
    fn is_new(&self, key: &[u8]) -> bool {
        self.last.as_deref().is_none_or(|last| key > last)
    }

    /// The next entry in key order, as of the export's revision.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        loop {
            if self.peeked.is_none() && !self.kv_done {
                match self.iter.next().transpose().or_storage()? {
                    Some(item) => self.peeked = Some(item),
                    None => self.kv_done = true,
                }
            }
            if let Some((key, _)) = &self.peeked {
                if !self.is_new(key) {
                    self.peeked = None;
                    continue;
                }
            }
            // The first key after the last one shown that existed at the revision
            // and has been changed (or deleted) since.
            let (recorded, kv_record) = {
                let records = self.capture.records();
                let from = match &self.last {
                    Some(last) => Bound::Excluded(last.clone()),
                    None => Bound::Unbounded,
                };
                let recorded = records
                    .range((from, Bound::Unbounded))
                    .find_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())));
                let kv_record = self
                    .peeked
                    .as_ref()
                    .and_then(|(k, _)| records.get(k.as_ref()).cloned());
                (recorded, kv_record)
            };
            let kv_first = match (&self.peeked, &recorded) {
                (Some((k, _)), Some((r, _))) => k.as_ref() < r.as_slice(),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if kv_first {
                let Some((key, value)) = self.peeked.take() else {
                    continue;
                };
                self.last = Some(key.to_vec());
                match kv_record {
                    // Changed since: show the state it had.
                    Some(Some(before)) => return decode_entry(&key, &before).map(Some),
                    // Created since.
                    Some(None) => continue,
                    None => {
                        let entry = decode_entry(&key, &value)?;
                        if entry.mod_revision > self.capture.revision {
                            // Written since but not recorded: cannot happen, as the
                            // writer records before it writes; never show it.
                            continue;
                        }
                        return Ok(Some(entry));
                    }
                }
            }
            let Some((key, before)) = recorded else {
                return Ok(None);
            };
            if self.peeked.as_ref().is_some_and(|(k, _)| k.as_ref() == key) {
                self.peeked = None;
            }
            self.last = Some(key.clone());
            return decode_entry(&key, &before).map(Some);
        }
    }

    /// The export as a stream; an error ends it.
    pub fn into_stream(self) -> impl Stream<Item = Result<Entry, Error>> + Send {
        futures_util::stream::unfold(self, |mut export| async move {
            if export.failed {
                return None;
            }
            match export.next_entry() {
                Ok(Some(entry)) => Some((Ok(entry), export)),
                Ok(None) => None,
                Err(e) => {
                    export.failed = true;
                    Some((Err(e), export))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::Stored;
    use super::*;

    fn entry_bytes(mod_revision: u64, value: &[u8]) -> Vec<u8> {
        Stored {
            create_revision: 1,
            mod_revision,
            version: mod_revision,
            lease: None,
            value: value.to_vec(),
        }
        .encode()
    }

    /// Keys changed, deleted and created after the export's revision show as they
    /// were at it, in key order.
    #[test]
    fn an_export_shows_the_state_at_its_revision() -> Result<(), Error> {
        let db = sled::Config::new().temporary(true).open().or_storage()?;
        let kv = db.open_tree("kv").or_storage()?;
        for key in ["a", "b", "c", "d"] {
            kv.insert(key, entry_bytes(1, key.as_bytes()))
                .or_storage()?;
        }
        let mut exports = Exports::default();
        let capture = exports.register(1, Vec::new());
        let mut export = Export::new(kv.clone(), capture);
        assert_eq!(export.next_entry()?.map(|e| e.key), Some("a".into()));
        // After "a" was shown: "b" changes, "c" goes, "bb" and "e" appear, and
        // "a" changes (already shown: not shown again).
        for (key, before) in [
            ("b", Some("b")),
            ("c", Some("c")),
            ("bb", None),
            ("e", None),
            ("a", Some("a")),
        ] {
            let old = before.map(|v| sled::IVec::from(entry_bytes(1, v.as_bytes())));
            exports.record(key.as_bytes(), old.as_ref());
        }
        kv.insert("b", entry_bytes(2, b"new")).or_storage()?;
        kv.remove("c").or_storage()?;
        kv.insert("bb", entry_bytes(3, b"new")).or_storage()?;
        kv.insert("e", entry_bytes(4, b"new")).or_storage()?;
        kv.insert("a", entry_bytes(5, b"new")).or_storage()?;
        let mut rest = Vec::new();
        while let Some(entry) = export.next_entry()? {
            rest.push((entry.key, entry.value, entry.mod_revision));
        }
        let expected: Vec<(String, Vec<u8>, u64)> = ["b", "c", "d"]
            .iter()
            .map(|k| (k.to_string(), k.as_bytes().to_vec(), 1))
            .collect();
        assert_eq!(rest, expected);
        Ok(())
    }
}
