//! The `history` tree: each key's changes by revision, for reads of the past.
//!
//! The `log` holds every retained change, but by revision: finding a key's state at
//! a revision there means scanning it. This tree indexes the same changes by key:
//!
//! - item key: the key's bytes with each `0x00` written `0x00 0xFF`, then `0x00
//!   0x00`, then the revision (u64 big-endian). Items sort by key, in key order
//!   (the escape keeps it), and each key's changes by revision, together; the
//!   encoding of a prefix (without the end mark) is a prefix of the encoding of
//!   every key under it.
//! - item value: empty for a delete; for a put, the key's state after it, encoded
//!   as in the `kv` tree.
//!
//! A key's state at revision R is its item of the largest revision at or below R
//! (none, or a delete: absent). The writer adds a group's items after its `log` item
//! and before `kv` and `meta`, so a crash leaves at most items of revisions past
//! `meta`'s, which `writer::recover` writes again from the `log` before anything
//! reads them. Compaction keeps, of the changes older than the oldest revision
//! kept, only each key's last one, when it is a put (the key's state at every
//! revision since); it removes the `log` item first, so a crash part way only
//! leaves items that no read chooses.

use std::ops::Bound;

use super::codec::Stored;
use super::OrStorage;
use crate::storage::Error;
use crate::wire::{Entry, Event, EventKind};

/// The end mark of an encoded key.
const END: [u8; 2] = [0, 0];

/// `meta` key of the oldest revision the `history` tree can answer for (a store
/// made before the tree existed has no history of the changes before it).
pub const META_HISTORY_FROM: &[u8] = b"history_from";

/// `key` (or a prefix) with its zero bytes escaped, without the end mark.
fn escaped(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out
}

/// The start of `key`'s items: the escaped key and its end mark.
fn key_part(key: &[u8]) -> Vec<u8> {
    let mut out = escaped(key);
    out.extend_from_slice(&END);
    out
}

/// The item key of `key`'s change at `revision`.
pub fn item_key(key: &[u8], revision: u64) -> Vec<u8> {
    let mut out = key_part(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// The key and revision of an item key.
fn split(item: &[u8]) -> Result<(String, u64), Error> {
    let corrupt = || Error::Corrupt("malformed item in the history tree".into());
    let at = item.len().checked_sub(10).ok_or_else(corrupt)?;
    if item[at..at + 2] != END {
        return Err(corrupt());
    }
    let revision = u64::from_be_bytes(item[at + 2..].try_into().map_err(|_| corrupt())?);
    let mut key = Vec::with_capacity(at);
    let mut bytes = item[..at].iter();
    while let Some(&b) = bytes.next() {
        key.push(b);
        if b == 0 && bytes.next() != Some(&0xFF) {
            return Err(corrupt());
        }
    }
    let key = String::from_utf8(key).map_err(|_| corrupt())?;
    Ok((key, revision))
}

/// The item value of a change: the state it leaves (`None`: a delete).
pub fn encode_state(state: Option<&Stored>) -> Vec<u8> {
    state.map(Stored::encode).unwrap_or_default()
}

fn decode_state(bytes: &[u8]) -> Result<Option<Stored>, Error> {
    if bytes.is_empty() {
        return Ok(None);
    }
    Stored::decode(bytes).map(Some)
}

/// `key` as it was at `revision`.
pub fn get_at(tree: &sled::Tree, key: &str, revision: u64) -> Result<Option<Entry>, Error> {
    let from = key_part(key.as_bytes());
    let to = item_key(key.as_bytes(), revision);
    match tree.range(from..=to).next_back() {
        None => Ok(None),
        Some(item) => {
            let (_, value) = item.or_storage()?;
            Ok(decode_state(&value)?.map(|s| s.into_entry(key.to_string())))
        }
    }
}

/// Up to `limit` entries under `prefix` as they were at `revision`, in key order,
/// after the key `after` when given; and whether more follow.
pub fn list_at(
    tree: &sled::Tree,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    revision: u64,
) -> Result<(Vec<Entry>, bool), Error> {
    let prefix_bytes = escaped(prefix.as_bytes());
    let mut from = match after {
        Some(after) if after >= prefix => Bound::Excluded(item_key(after.as_bytes(), u64::MAX)),
        _ => Bound::Included(prefix_bytes.clone()),
    };
    let mut entries = Vec::new();
    loop {
        // The next key with any change kept...
        let Some(item) = tree.range((from, Bound::Unbounded)).next() else {
            return Ok((entries, false));
        };
        let (first, _) = item.or_storage()?;
        if !first.starts_with(&prefix_bytes) {
            return Ok((entries, false));
        }
        let part = first
            .len()
            .checked_sub(8)
            .map(|n| first[..n].to_vec())
            .ok_or_else(|| Error::Corrupt("malformed item in the history tree".into()))?;
        // ...and its state at `revision`: its last change at or below it.
        let mut upto = part.clone();
        upto.extend_from_slice(&revision.to_be_bytes());
        if let Some(item) = tree.range(part.clone()..=upto).next_back() {
            let (item, value) = item.or_storage()?;
            if let Some(stored) = decode_state(&value)? {
                if entries.len() == limit {
                    return Ok((entries, true));
                }
                let (key, _) = split(&item)?;
                entries.push(stored.into_entry(key));
            }
        }
        let mut past = part;
        past.extend_from_slice(&u64::MAX.to_be_bytes());
        from = Bound::Excluded(past);
    }
}

/// Up to `limit` changes of `key` after revision `after` (and at or after
/// `oldest`) through `through`, oldest first; and whether more follow.
pub fn history(
    tree: &sled::Tree,
    key: &str,
    after: u64,
    oldest: u64,
    through: u64,
    limit: usize,
) -> Result<(Vec<Event>, bool), Error> {
    let start = after.saturating_add(1).max(oldest);
    if start > through {
        return Ok((Vec::new(), false));
    }
    let from = item_key(key.as_bytes(), start);
    let to = item_key(key.as_bytes(), through);
    let mut events = Vec::new();
    for item in tree.range(from..=to) {
        let (item, value) = item.or_storage()?;
        if events.len() == limit {
            return Ok((events, true));
        }
        let (_, revision) = split(&item)?;
        events.push(match decode_state(&value)? {
            Some(stored) => Event {
                kind: EventKind::Put,
                key: key.to_string(),
                value: stored.value,
                revision,
                create_revision: stored.create_revision,
                version: stored.version,
                lease: stored.lease,
            },
            None => Event {
                kind: EventKind::Delete,
                key: key.to_string(),
                value: Vec::new(),
                revision,
                create_revision: 0,
                version: 0,
                lease: None,
            },
        });
    }
    Ok((events, false))
}

/// Forgets what the changes `events` (of a `log` item just removed) make useless:
/// each key's earlier items, and the item of a delete.
pub fn compact(tree: &sled::Tree, events: &[Event]) -> Result<(), Error> {
    for event in events {
        let key = event.key.as_bytes();
        let older = tree
            .range(key_part(key)..item_key(key, event.revision))
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .or_storage()?;
        for item in older {
            tree.remove(item).or_storage()?;
        }
        if event.kind == EventKind::Delete {
            tree.remove(item_key(key, event.revision)).or_storage()?;
        }
    }
    Ok(())
}

/// Writes the `history` tree of a store made before it existed: each key's
/// present state at its `mod_revision`. Reads then go back to `last`.
pub fn build(kv: &sled::Tree, tree: &sled::Tree) -> Result<(), Error> {
    for item in kv.iter() {
        let (key, value) = item.or_storage()?;
        let header = Stored::decode_header(&value)?;
        tree.insert(item_key(&key, header.mod_revision), value)
            .or_storage()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(create_revision: u64, mod_revision: u64, version: u64, value: &str) -> Stored {
        Stored {
            create_revision,
            mod_revision,
            version,
            lease: None,
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn item_keys_sort_by_key_then_revision() -> Result<(), Error> {
        let keys = ["a", "a\0", "a\0b", "a\u{1}", "ab", "b"];
        let mut items = Vec::new();
        for key in keys {
            for revision in [1, 256, u64::MAX] {
                items.push(item_key(key.as_bytes(), revision));
            }
        }
        let mut sorted = items.clone();
        sorted.sort();
        assert_eq!(items, sorted);
        for key in keys {
            assert_eq!(split(&item_key(key.as_bytes(), 7))?, (key.to_string(), 7));
            let under_a = item_key(key.as_bytes(), 7).starts_with(&escaped(b"a"));
            assert_eq!(under_a, key.starts_with('a'), "{key:?}");
        }
        assert!(!item_key(b"b", 1).starts_with(&escaped(b"a")));
        assert!(split(b"short").is_err());
        Ok(())
    }

    #[test]
    fn reads_at_a_revision_and_compaction() -> Result<(), Box<dyn std::error::Error>> {
        let db = sled::Config::new().temporary(true).open()?;
        let tree = db.open_tree("history")?;
        let put = |key: &str, s: &Stored| {
            tree.insert(item_key(key.as_bytes(), s.mod_revision), s.encode())
        };
        put("k", &stored(1, 1, 1, "one"))?;
        put("k", &stored(1, 3, 2, "two"))?;
        tree.insert(item_key(b"k", 5), encode_state(None))?;
        put("k", &stored(7, 7, 1, "again"))?;
        put("k2", &stored(2, 2, 1, "other"))?;
        let value_at =
            |r| -> Result<Option<Vec<u8>>, Error> { Ok(get_at(&tree, "k", r)?.map(|e| e.value)) };
        assert_eq!(value_at(0)?, None);
        assert_eq!(value_at(2)?, Some(b"one".to_vec()));
        assert_eq!(value_at(4)?, Some(b"two".to_vec()));
        assert_eq!(value_at(6)?, None);
        assert_eq!(value_at(9)?, Some(b"again".to_vec()));
        let keys = |r| -> Result<Vec<String>, Error> {
            Ok(list_at(&tree, "k", None, 10, r)?
                .0
                .into_iter()
                .map(|e| e.key)
                .collect())
        };
        assert_eq!(keys(1)?, ["k"]);
        assert_eq!(keys(5)?, ["k2"]);
        assert_eq!(keys(7)?, ["k", "k2"]);
        assert!(list_at(&tree, "k", None, 1, 7)?.1);
        assert_eq!(list_at(&tree, "k", Some("k"), 1, 7)?.0[0].key, "k2");
        let (events, more) = history(&tree, "k", 0, 1, 10, 3)?;
        assert!(more);
        let seen: Vec<_> = events.iter().map(|e| (e.revision, e.kind)).collect();
        assert_eq!(
            seen,
            [
                (1, EventKind::Put),
                (3, EventKind::Put),
                (5, EventKind::Delete)
            ]
        );
        // Compacting through revision 5: the delete and what it hides go.
        let (events, _) = history(&tree, "k", 0, 1, 5, 10)?;
        compact(&tree, &events)?;
        assert_eq!(value_at(6)?, None);
        assert_eq!(value_at(7)?, Some(b"again".to_vec()));
        assert_eq!(tree.len(), 2);
        Ok(())
    }
}
