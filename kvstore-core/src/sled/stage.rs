//! What the writer sees while it builds a write group: each key's state after the
//! group's changes so far ([`View`], over `kv`), and the changes of the one
//! revision under way ([`Revision`], over the view). A revision holds one change or
//! several (a transaction, a delete by prefix); it reaches the view whole, or not
//! at all when its op fails.

use std::collections::btree_map::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use super::codec::{Header, Stored};
use super::export::Exports;
use super::OrStorage;
use crate::storage::Error;
use crate::wire::PutResult;

/// Entries under a prefix, in key order.
pub(super) type Entries<'a> = Box<dyn Iterator<Item = Result<(String, Stored), Error>> + 'a>;

/// Each key's state (`None`: deleted) after the changes above a layer.
type Layer = BTreeMap<String, Option<Stored>>;

/// A write group's view of the store.
pub(super) struct View<'a> {
    kv: &'a sled::Tree,
    /// Exports under way, told each key's state before its first change.
    exports: Option<&'a Exports>,
    /// Each key the group changed, in its state after the group so far.
    pub changed: Layer,
    /// Keys the group created, less those it deleted.
    pub keys_delta: i64,
}

impl<'a> View<'a> {
    pub fn new(kv: &'a sled::Tree, exports: Option<&'a Exports>) -> Self {
        View {
            kv,
            exports,
            changed: BTreeMap::new(),
            keys_delta: 0,
        }
    }

    fn header(&self, key: &str) -> Result<Option<Header>, Error> {
        match self.changed.get(key) {
            Some(state) => Ok(state.as_ref().map(Stored::header)),
            None => self
                .kv
                .get(key.as_bytes())
                .or_storage()?
                .as_deref()
                .map(Stored::decode_header)
                .transpose(),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Stored>, Error> {
        match self.changed.get(key) {
            Some(state) => Ok(state.clone()),
            None => self
                .kv
                .get(key.as_bytes())
                .or_storage()?
                .as_deref()
                .map(Stored::decode)
                .transpose(),
        }
    }

    fn under<'s>(&'s self, prefix: &'s str) -> Entries<'s> {
        let stored = self.kv.scan_prefix(prefix.as_bytes()).map(|item| {
            let (key, value) = item.or_storage()?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| Error::Corrupt("a stored key is not UTF-8".into()))?;
            Ok((key, Stored::decode(&value)?))
        });
        overlay(Box::new(stored), &self.changed, prefix)
    }

    /// Takes in the changes of a finished revision, in order.
    pub fn stage(&mut self, changes: &[Change]) -> Result<(), Error> {
        for change in changes {
            if let Some(exports) = self.exports {
                if !self.changed.contains_key(&change.key) {
                    let before = self.kv.get(change.key.as_bytes()).or_storage()?;
                    exports.record(change.key.as_bytes(), before.as_ref());
                }
            }
            self.keys_delta += i64::from(change.state.is_some()) - i64::from(change.existed);
            self.changed
                .insert(change.key.clone(), change.state.clone());
        }
        Ok(())
    }
}

/// One change of a revision: a key's state after it (`None`: deleted), and whether
/// the key existed before the revision.
pub(super) struct Change {
    pub key: String,
    pub state: Option<Stored>,
    pub existed: bool,
}

/// The revision under way: its changes so far, over the group's view. Reads see
/// them (as etcd's transactions do).
pub(super) struct Revision<'v, 'a> {
    view: &'v View<'a>,
    /// The revision this one takes if it changes anything.
    pub revision: u64,
    pending: Layer,
    /// The changes in the order they were made (each key at most once).
    order: Vec<(String, bool)>,
}

impl<'v, 'a> Revision<'v, 'a> {
    pub fn new(view: &'v View<'a>, revision: u64) -> Self {
        Revision {
            view,
            revision,
            pending: BTreeMap::new(),
            order: Vec::new(),
        }
    }

    pub fn header(&self, key: &str) -> Result<Option<Header>, Error> {
        match self.pending.get(key) {
            Some(state) => Ok(state.as_ref().map(Stored::header)),
            None => self.view.header(key),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Stored>, Error> {
        match self.pending.get(key) {
            Some(state) => Ok(state.clone()),
            None => self.view.get(key),
        }
    }

    /// The entries under `prefix` as this revision leaves them so far.
    pub fn under<'s>(&'s self, prefix: &'s str) -> Entries<'s> {
        overlay(self.view.under(prefix), &self.pending, prefix)
    }

    fn set(&mut self, key: &str, existed: bool, state: Option<Stored>) {
        if !self.pending.contains_key(key) {
            self.order.push((key.to_string(), existed));
        }
        self.pending.insert(key.to_string(), state);
    }

    /// Puts `value` at `key`, on `lease` (`None`: permanent).
    pub fn put(&mut self, key: &str, value: &[u8], lease: Option<u64>) -> Result<PutResult, Error> {
        let current = self.header(key)?;
        let stored = Stored {
            create_revision: current.map_or(self.revision, |h| h.create_revision),
            mod_revision: self.revision,
            version: current.map_or(1, |h| h.version + 1),
            lease,
            value: value.to_vec(),
        };
        let result = PutResult {
            revision: self.revision,
            create_revision: stored.create_revision,
            version: stored.version,
        };
        self.set(key, current.is_some(), Some(stored));
        Ok(result)
    }

    /// Deletes `key`; false when it does not exist (nothing changes).
    pub fn delete(&mut self, key: &str) -> Result<bool, Error> {
        if self.header(key)?.is_none() {
            return Ok(false);
        }
        self.set(key, true, None);
        Ok(true)
    }

    /// Deletes every key under `prefix`; how many there were.
    pub fn delete_prefix(&mut self, prefix: &str) -> Result<usize, Error> {
        let keys = self
            .under(prefix)
            .map(|item| item.map(|(key, _)| key))
            .collect::<Result<Vec<_>, Error>>()?;
        for key in &keys {
            self.set(key, true, None);
        }
        Ok(keys.len())
    }

    /// Whether the revision changes anything (else it takes no revision).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The revision's changes, in the order they were made.
    pub fn finish(mut self) -> Vec<Change> {
        let order = std::mem::take(&mut self.order);
        order
            .into_iter()
            .map(|(key, existed)| {
                let state = self.pending.remove(&key).flatten();
                Change {
                    key,
                    state,
                    existed,
                }
            })
            .collect()
    }
}

/// `base` (entries under `prefix`, in key order) with the changes of `layer` on top.
fn overlay<'s>(base: Entries<'s>, layer: &'s Layer, prefix: &'s str) -> Entries<'s> {
    let over: LayerIter<'s> = Box::new(
        layer
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix)),
    );
    Box::new(Overlay {
        base: base.peekable(),
        over: over.peekable(),
    })
}

type LayerIter<'s> = Box<dyn Iterator<Item = (&'s String, &'s Option<Stored>)> + 's>;

struct Overlay<'s> {
    base: Peekable<Entries<'s>>,
    over: Peekable<LayerIter<'s>>,
}

impl Iterator for Overlay<'_> {
    type Item = Result<(String, Stored), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Some(same key in base) when the layer's next key comes first.
            let from_layer = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => None,
                (None, Some(_)) => Some(false),
                (Some(Ok((base, _))), Some((over, _))) => {
                    (over.as_str() <= base.as_str()).then(|| over.as_str() == base.as_str())
                }
            };
            let Some(same) = from_layer else {
                return self.base.next();
            };
            if same {
                self.base.next();
            }
            if let Some((key, Some(stored))) = self.over.next() {
                return Some(Ok((key.clone(), stored.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(revision: u64, value: &str) -> Stored {
        Stored {
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
            value: value.as_bytes().to_vec(),
        }
    }

    /// Reads of a revision see, in order: `kv`, the group's earlier revisions, and
    /// the revision's own changes.
    #[test]
    fn reads_see_every_layer_in_key_order() -> Result<(), Box<dyn std::error::Error>> {
        let db = sled::Config::new().temporary(true).open()?;
        let kv = db.open_tree("kv")?;
        for key in ["p/a", "p/b", "p/c", "q"] {
            kv.insert(key, stored(1, key).encode())?;
        }
        let mut view = View::new(&kv, None);
        let mut first = Revision::new(&view, 2);
        first.delete("p/b")?;
        first.put("p/bb", b"2", None)?;
        let changes = first.finish();
        view.stage(&changes)?;
        let mut second = Revision::new(&view, 3);
        assert!(!second.delete("p/b")?);
        second.put("p/0", b"3", None)?;
        second.delete("p/c")?;
        let keys: Vec<String> = second
            .under("p/")
            .map(|e| e.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        assert_eq!(keys, ["p/0", "p/a", "p/bb"]);
        assert_eq!(second.delete_prefix("p/")?, 3);
        assert_eq!(second.under("p/").count(), 0);
        assert_eq!(second.get("q")?.map(|s| s.value), Some(b"q".to_vec()));
        let changes = second.finish();
        let order: Vec<_> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(order, ["p/0", "p/c", "p/a", "p/bb"]);
        view.stage(&changes)?;
        // Created p/bb and p/0 (then deleted), deleted p/a, p/b and p/c.
        assert_eq!(view.keys_delta, -3);
        Ok(())
    }
}
