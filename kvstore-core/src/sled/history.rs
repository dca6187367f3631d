//! The `history` tree: each key's changes by revision, for reads of the past.
//!
//! The `log` holds every retained change, but by revision: finding a key's state at
//! a revision there means scanning it. This tree indexes the same changes by key,
//! one item per key and write group (a key written many times in one group costs
//! one item, as it costs one `kv` write):
//!
//! - item key: the key's bytes with each `0x00` written `0x00 0xFF`, then `0x00
//!   0x00`, then the revision (u64 big-endian) of the key's first change in the
//!   group. Items sort by key, in key order (the escape keeps it), and each key's
//!   by revision, together; the encoding of a prefix (without the end mark) is a
//!   prefix of the encoding of every key under it.
//! - item value: the key's changes in the group, in revision order, each `revision
//!   (u64) | length (u32) | state`, the state empty for a delete and for a put the
//!   key's state after it, encoded as in the `kv` tree; or, for a put whose record
//!   is in the `log` (all the writer's), `revision | 0xFFFFFFFF`, so that a value
//!   is written once. Compaction writes the last put of each key inline before it
//!   removes the `log` item it was in.
//!
//! A key's state at revision R is the last change at or below R of its item of the
//! largest revision at or below R (none, or a delete: absent). The writer adds a
//! group's items after its `log` item and before `kv` and `meta`, so a crash leaves
//! at most items of groups past `meta`'s revision, which `writer::recover` writes
//! again from the `log` before anything reads them. Compaction keeps, of the
//! changes older than the oldest revision kept, only each key's last one, when it
//! is a put (the key's state at every revision since); it removes the `log` item
//! first, so a crash part way only leaves changes that no read chooses.

use std::ops::Bound;

use super::codec::{Stored, Touched};
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
#[cfg(test)]
pub fn encode_state(state: Option<&Stored>) -> Vec<u8> {
    state.map(Stored::encode).unwrap_or_default()
}

/// The length of a change whose state is the record of its put in the `log`.
const IN_LOG: u32 = u32::MAX;

/// Adds the put at `revision` whose record is in the `log` to an item value.
pub fn push_in_log(item: &mut Vec<u8>, revision: u64) {
    item.extend_from_slice(&revision.to_be_bytes());
    item.extend_from_slice(&IN_LOG.to_be_bytes());
}

/// Where a change's state is.
#[derive(Clone, Copy)]
enum Slot<'a> {
    /// Encoded in the item (empty: a delete).
    Inline(&'a [u8]),
    /// In the change record of the `log`.
    InLog,
}

/// Adds the change at `revision` leaving `state` (encoded by [`encode_state`]) to
/// an item value.
pub fn push_change(item: &mut Vec<u8>, revision: u64, state: &[u8]) {
    item.extend_from_slice(&revision.to_be_bytes());
    // A state is at most a key's header and a value, far below u32::MAX.
    item.extend_from_slice(&(state.len() as u32).to_be_bytes());
    item.extend_from_slice(state);
}

/// The changes of an item value: (revision, where its state is), in revision order.
fn changes(item: &[u8]) -> Result<Vec<(u64, Slot<'_>)>, Error> {
    let corrupt = || Error::Corrupt("malformed change in the history tree".into());
    let mut out = Vec::new();
    let mut at = 0;
    while at < item.len() {
        let head = item.get(at..at + 12).ok_or_else(corrupt)?;
        let revision = u64::from_be_bytes(head[..8].try_into().map_err(|_| corrupt())?);
        let len = u32::from_be_bytes(head[8..].try_into().map_err(|_| corrupt())?);
        if len == IN_LOG {
            out.push((revision, Slot::InLog));
            at += 12;
            continue;
        }
        let len = len as usize;
        let state = item.get(at + 12..at + 12 + len).ok_or_else(corrupt)?;
        out.push((revision, Slot::Inline(state)));
        at += 12 + len;
    }
    Ok(out)
}

/// Reads states out of items, and out of the `log` for puts recorded there
/// (keeping the last `log` item decoded: the keys of a range often share one).
pub struct Reader<'t> {
    tree: &'t sled::Tree,
    log: &'t sled::Tree,
    group: Option<(u64, u64, Vec<Event>)>,
}

impl<'t> Reader<'t> {
    pub fn new(tree: &'t sled::Tree, log: &'t sled::Tree) -> Self {
        Reader {
            tree,
            log,
            group: None,
        }
    }

    /// The state `key`'s change at `revision` left. A `log` item no longer there
    /// was compacted meanwhile: [`Error::Compacted`] with no oldest revision.
    fn state(&mut self, key: &str, revision: u64, slot: Slot<'_>) -> Result<Option<Stored>, Error> {
        let Slot::InLog = slot else {
            let Slot::Inline(state) = slot else {
                return Ok(None);
            };
            return decode_state(state);
        };
        let cached =
            matches!(&self.group, Some((first, last, _)) if (*first..=*last).contains(&revision));
        if !cached {
            let gone = Error::Compacted {
                requested: revision,
                oldest: 0,
            };
            let (first, record) = match self.log.range(..=revision.to_be_bytes()).next_back() {
                Some(item) => item.or_storage()?,
                None => return Err(gone),
            };
            let last = super::codec::last_revision(&first, &record)?;
            if last < revision {
                return Err(gone);
            }
            let events = super::codec::decode_group(&first, &record)?;
            self.group = Some((super::codec::decode_u64(&first)?, last, events));
        }
        let events = self
            .group
            .as_ref()
            .map(|(_, _, e)| e.as_slice())
            .unwrap_or_default();
        let event = events
            .iter()
            .find(|e| e.revision == revision && e.key == key)
            .ok_or_else(|| {
                Error::Corrupt(format!("the log has no change of {key:?} at {revision}"))
            })?;
        Ok(stored_of(event))
    }

    /// The state an item of `key` leaves at `revision`: its last change at or
    /// below it.
    fn state_at(&mut self, key: &str, item: &[u8], revision: u64) -> Result<Option<Stored>, Error> {
        match changes(item)?
            .into_iter()
            .rev()
            .find(|(r, _)| *r <= revision)
        {
            Some((r, slot)) => self.state(key, r, slot),
            None => Ok(None),
        }
    }
}

/// The state a change leaves (`None`: a delete).
fn stored_of(event: &Event) -> Option<Stored> {
    event.entry().map(|entry| Stored {
        create_revision: entry.create_revision,
        mod_revision: entry.mod_revision,
        version: entry.version,
        lease: entry.lease,
        value: entry.value,
    })
}

/// The items of the changes `events` (a write group's, in revision order): one
/// per key, keyed by its first change in them.
pub fn group_items(events: &[Event]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut items: std::collections::BTreeMap<&str, (u64, Vec<u8>)> = Default::default();
    for event in events {
        let (_, item) = items
            .entry(event.key.as_str())
            .or_insert_with(|| (event.revision, Vec::new()));
        match event.kind {
            EventKind::Put => push_in_log(item, event.revision),
            EventKind::Delete => push_change(item, event.revision, &[]),
        }
    }
    items
        .into_iter()
        .map(|(key, (first, item))| (item_key(key.as_bytes(), first), item))
        .collect()
}

fn decode_state(bytes: &[u8]) -> Result<Option<Stored>, Error> {
    if bytes.is_empty() {
        return Ok(None);
    }
    Stored::decode(bytes).map(Some)
}

/// `key` as it was at `revision`.
pub fn get_at(reader: &mut Reader<'_>, key: &str, revision: u64) -> Result<Option<Entry>, Error> {
    let from = key_part(key.as_bytes());
    let to = item_key(key.as_bytes(), revision);
    match reader.tree.range(from..=to).next_back() {
        None => Ok(None),
        Some(item) => {
            let (_, value) = item.or_storage()?;
            Ok(reader
                .state_at(key, &value, revision)?
                .map(|s| s.into_entry(key.to_string())))
        }
    }
}

/// Up to `limit` entries under `prefix` as they were at `revision`, in key order,
/// after the key `after` when given; and whether more follow.
pub fn list_at(
    reader: &mut Reader<'_>,
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
        let Some(item) = reader.tree.range((from, Bound::Unbounded)).next() else {
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
        if let Some(item) = reader.tree.range(part.clone()..=upto).next_back() {
            let (item, value) = item.or_storage()?;
            let (key, _) = split(&item)?;
            if let Some(stored) = reader.state_at(&key, &value, revision)? {
                if entries.len() == limit {
                    return Ok((entries, true));
                }
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
    reader: &mut Reader<'_>,
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
    // From the item holding `start` (its group may begin before it).
    let part = key_part(key.as_bytes());
    let tree = reader.tree;
    let from = match tree
        .range(part..=item_key(key.as_bytes(), start))
        .next_back()
    {
        Some(item) => item.or_storage()?.0.to_vec(),
        None => item_key(key.as_bytes(), start),
    };
    let to = item_key(key.as_bytes(), through);
    let mut events = Vec::new();
    for item in tree.range(from..=to) {
        let (_, value) = item.or_storage()?;
        for (revision, slot) in changes(&value)? {
            if revision < start || revision > through {
                continue;
            }
            if events.len() == limit {
                return Ok((events, true));
            }
            let state = reader.state(key, revision, slot)?;
            events.push(event_of(key, revision, state));
        }
    }
    Ok((events, false))
}

/// The event of `key`'s change at `revision`, leaving `state` (`None`: a delete).
fn event_of(key: &str, revision: u64, state: Option<Stored>) -> Event {
    match state {
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
    }
}

/// Before the `log` item keyed by `first` is removed: writes inline, in each key's
/// item of it, the last change of the key when that is a put recorded in the
/// `log` (it stays the key's state at every later revision until the key changes).
pub fn materialize(tree: &sled::Tree, first: &[u8], record: &[u8]) -> Result<(), Error> {
    let events = super::codec::decode_group(first, record)?;
    let mut keys: std::collections::HashMap<&str, (u64, &Event)> = Default::default();
    for event in &events {
        keys.entry(event.key.as_str())
            .and_modify(|(_, last)| *last = event)
            .or_insert((event.revision, event));
    }
    for (key, (first, last)) in keys {
        let Some(state) = stored_of(last) else {
            continue;
        };
        let own = item_key(key.as_bytes(), first);
        let Some(value) = tree.get(&own).or_storage()? else {
            continue;
        };
        let changes = changes(&value)?;
        if !matches!(changes.last(), Some((r, Slot::InLog)) if *r == last.revision) {
            continue;
        }
        let mut item = Vec::with_capacity(value.len() + 24 + state.value.len());
        for (revision, slot) in &changes {
            match slot {
                Slot::Inline(bytes) => push_change(&mut item, *revision, bytes),
                Slot::InLog if *revision == last.revision => {
                    push_change(&mut item, *revision, &state.encode())
                }
                Slot::InLog => push_in_log(&mut item, *revision),
            }
        }
        tree.insert(own, item).or_storage()?;
    }
    Ok(())
}

/// Forgets what the changes `changes` (of a `log` item just removed, in revision
/// order) make useless: for each key, its earlier items, and its item of these
/// changes when the last of them is a delete. (A key's item of a removed group may
/// still hold the group's earlier changes of it: reads choose its last one.)
pub fn compact(tree: &sled::Tree, changes: &[Touched<'_>]) -> Result<(), Error> {
    // Each key's first change in the group (its item's key) and its last change.
    let mut keys: std::collections::HashMap<&[u8], (u64, EventKind)> = Default::default();
    for change in changes {
        keys.entry(change.key)
            .and_modify(|(_, last)| *last = change.kind)
            .or_insert((change.revision, change.kind));
    }
    for (key, (first, last)) in keys {
        let own = item_key(key, first);
        let older = tree
            .range(key_part(key)..own.clone())
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .or_storage()?;
        for item in older {
            tree.remove(item).or_storage()?;
        }
        if last == EventKind::Delete {
            tree.remove(own).or_storage()?;
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
        let mut item = Vec::with_capacity(12 + value.len());
        push_change(&mut item, header.mod_revision, &value);
        tree.insert(item_key(&key, header.mod_revision), item)
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
        let log = db.open_tree("log")?;
        // Groups: k at 1; k at 3 with its delete at 5 and k2's put at 4; k at 7.
        let put = |key: &str, s: &Stored| {
            let mut item = Vec::new();
            push_change(&mut item, s.mod_revision, &s.encode());
            tree.insert(item_key(key.as_bytes(), s.mod_revision), item)
        };
        put("k", &stored(1, 1, 1, "one"))?;
        let mut item = Vec::new();
        push_change(&mut item, 3, &stored(1, 3, 2, "two").encode());
        push_change(&mut item, 5, &encode_state(None));
        tree.insert(item_key(b"k", 3), item)?;
        put("k2", &stored(4, 4, 1, "other"))?;
        put("k", &stored(7, 7, 1, "again"))?;
        let value_at = |r| -> Result<Option<Vec<u8>>, Error> {
            Ok(get_at(&mut Reader::new(&tree, &log), "k", r)?.map(|e| e.value))
        };
        assert_eq!(value_at(0)?, None);
        assert_eq!(value_at(2)?, Some(b"one".to_vec()));
        assert_eq!(value_at(4)?, Some(b"two".to_vec()));
        assert_eq!(value_at(6)?, None);
        assert_eq!(value_at(9)?, Some(b"again".to_vec()));
        let keys = |r| -> Result<Vec<String>, Error> {
            Ok(list_at(&mut Reader::new(&tree, &log), "k", None, 10, r)?
                .0
                .into_iter()
                .map(|e| e.key)
                .collect())
        };
        assert_eq!(keys(1)?, ["k"]);
        assert_eq!(keys(3)?, ["k"]);
        assert_eq!(keys(4)?, ["k", "k2"]);
        assert_eq!(keys(5)?, ["k2"]);
        assert_eq!(keys(7)?, ["k", "k2"]);
        assert!(list_at(&mut Reader::new(&tree, &log), "k", None, 1, 7)?.1);
        assert_eq!(
            list_at(&mut Reader::new(&tree, &log), "k", Some("k"), 1, 7)?.0[0].key,
            "k2"
        );
        let (events, more) = history(&mut Reader::new(&tree, &log), "k", 0, 1, 10, 3)?;
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
        let (events, _) = history(&mut Reader::new(&tree, &log), "k", 3, 1, 10, 10)?;
        let seen: Vec<_> = events.iter().map(|e| e.revision).collect();
        assert_eq!(seen, [5, 7], "from inside an item");
        // Compacting the groups through revision 5: the delete and what it hides go.
        let touched = |events: &[(u64, EventKind, &'static str)]| -> Vec<Touched<'static>> {
            events
                .iter()
                .map(|&(revision, kind, key)| Touched {
                    revision,
                    kind,
                    key: key.as_bytes(),
                })
                .collect()
        };
        compact(&tree, &touched(&[(1, EventKind::Put, "k")]))?;
        compact(
            &tree,
            &touched(&[
                (3, EventKind::Put, "k"),
                (4, EventKind::Put, "k2"),
                (5, EventKind::Delete, "k"),
            ]),
        )?;
        assert_eq!(value_at(6)?, None);
        assert_eq!(value_at(7)?, Some(b"again".to_vec()));
        assert_eq!(
            get_at(&mut Reader::new(&tree, &log), "k2", 6)?.map(|e| e.value),
            Some(b"other".to_vec())
        );
        assert_eq!(tree.len(), 2);
        Ok(())
    }

    /// Puts are read from their `log` record; compaction writes a key's last put of
    /// a `log` item into its item before the item goes, and reads go on from there.
    #[test]
    fn puts_in_the_log_and_their_compaction() -> Result<(), Box<dyn std::error::Error>> {
        let db = sled::Config::new().temporary(true).open()?;
        let (tree, log) = (db.open_tree("history")?, db.open_tree("log")?);
        let mut group = super::super::codec::GroupRecord::new();
        group.push("k", Some(&stored(5, 5, 1, "five")));
        group.push("k", Some(&stored(5, 6, 2, "six")));
        group.push("j", Some(&stored(7, 7, 1, "jay")));
        let first = super::super::codec::encode_u64(5);
        let record = group.finish();
        log.insert(first, record.clone())?;
        let events = super::super::codec::decode_group(&first, &record)?;
        for (item, changes) in group_items(&events) {
            tree.insert(item, changes)?;
        }
        let value_at = |key: &str, r| -> Result<Option<Vec<u8>>, Error> {
            Ok(get_at(&mut Reader::new(&tree, &log), key, r)?.map(|e| e.value))
        };
        assert_eq!(value_at("k", 5)?, Some(b"five".to_vec()));
        assert_eq!(value_at("k", 6)?, Some(b"six".to_vec()));
        let listed = list_at(&mut Reader::new(&tree, &log), "", None, 10, 7)?.0;
        assert_eq!(listed.len(), 2);
        // Compaction: the last put of each key goes into its item, then the log item.
        materialize(&tree, &first, &record)?;
        let touched = super::super::codec::group_changes(&first, &record)?;
        log.remove(first)?;
        compact(&tree, &touched)?;
        assert_eq!(value_at("k", 8)?, Some(b"six".to_vec()));
        assert_eq!(value_at("j", 8)?, Some(b"jay".to_vec()));
        // An earlier change of the item is gone with its log item.
        assert!(matches!(
            get_at(&mut Reader::new(&tree, &log), "k", 5),
            Err(Error::Compacted { oldest: 0, .. })
        ));
        Ok(())
    }
}
