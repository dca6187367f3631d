//! On-disk layout of the three sled trees.
//!
//! - `kv`: key bytes -> `create_revision | mod_revision | version | value` (u64s
//!   big-endian); for a key on a lease, `version` has its top bit set
//!   ([`LEASED`]) and the lease id follows it: `... | version | lease | value`.
//! - `log`: one item per write group, keyed by the group's first revision (u64
//!   big-endian): `REVISIONS | revisions (u32)`, then for each of the group's
//!   consecutive revisions `changes (u32, at least 1) | records`, each record
//!   `length (u32) | kind | create_revision | version | key length (u32) | key |
//!   value` (kind 1 a put, 2 a delete, 3 a put on a lease, whose lease id follows
//!   `version`). A revision holds several changes (a transaction, a delete by
//!   prefix, a lease's end), all in one item, so none is ever read, published or
//!   recovered in part. Older items are still read: `GROUP | count (u32) |
//!   records`, one change per revision, and before that one bare record per
//!   revision (`kind | ...`).
//! - `meta`: `last_revision`, the last revision applied to `kv`, as a u64 (1 in a
//!   new store, written when it is created: see `writer::start_new`; the `log` can
//!   be ahead of it after a crash: see `writer::recover`); `next_lease`, the id the
//!   next lease gets.
//! - `leases`: lease id (u64 big-endian) -> its granted TTL in seconds (u64).

use super::Error;
use crate::wire::{Entry, Event, EventKind};

const HEADER: usize = 24;

/// `meta` key of the last revision applied to `kv`.
pub const META_LAST: &[u8] = b"last_revision";

/// `meta` key of the id of the next lease.
pub const META_NEXT_LEASE: &[u8] = b"next_lease";

/// Top bit of a stored `version`: a lease id follows it. (Stores written before
/// leases never set it: a version is far below 2^63.)
const LEASED: u64 = 1 << 63;

/// A stored entry's revisions, without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: Option<u64>,
}

/// The stored form of one key's state, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: Option<u64>,
    pub value: Vec<u8>,
}

impl Stored {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 + self.value.len());
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.mod_revision.to_be_bytes());
        match self.lease {
            None => out.extend_from_slice(&self.version.to_be_bytes()),
            Some(lease) => {
                out.extend_from_slice(&(self.version | LEASED).to_be_bytes());
                out.extend_from_slice(&lease.to_be_bytes());
            }
        }
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (header, at) = Stored::header_and_len(bytes)?;
        Ok(Stored {
            create_revision: header.create_revision,
            mod_revision: header.mod_revision,
            version: header.version,
            lease: header.lease,
            value: bytes[at..].to_vec(),
        })
    }

    /// The entry's revisions and lease.
    pub fn header(&self) -> Header {
        Header {
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    /// The [`Stored::header`] of an encoded entry, without copying its value.
    pub fn decode_header(bytes: &[u8]) -> Result<Header, Error> {
        Stored::header_and_len(bytes).map(|(header, _)| header)
    }

    /// The header of an encoded entry and where its value starts.
    fn header_and_len(bytes: &[u8]) -> Result<(Header, usize), Error> {
        if bytes.len() < HEADER {
            return Err(Error::Corrupt("short entry in the kv tree".into()));
        }
        let version = u64_at(bytes, 16)?;
        let (lease, at) = if version & LEASED == 0 {
            (None, HEADER)
        } else {
            (Some(u64_at(bytes, HEADER)?), HEADER + 8)
        };
        let header = Header {
            create_revision: u64_at(bytes, 0)?,
            mod_revision: u64_at(bytes, 8)?,
            version: version & !LEASED,
            lease,
        };
        Ok((header, at))
    }

    pub fn into_entry(self, key: String) -> Entry {
        Entry {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// Decodes a `kv` tree item into an [`Entry`].
pub fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, Error> {
    let key = String::from_utf8(key.to_vec())
        .map_err(|_| Error::Corrupt("a stored key is not UTF-8".into()))?;
    Ok(Stored::decode(value)?.into_entry(key))
}

pub fn encode_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64, Error> {
    u64_at(bytes, 0)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, Error> {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| Error::Corrupt("truncated number".into()))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, Error> {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Corrupt("truncated number".into()))
}

/// Encodes a change record for the `log` tree (its revision is the tree key).
/// `stored` is the key's state after a put, `None` for a delete.
pub fn encode_record(key: &str, stored: Option<&Stored>) -> Vec<u8> {
    let key = key.as_bytes();
    let (kind, create_revision, version, lease, value) = match stored {
        Some(s) if s.lease.is_some() => (3, s.create_revision, s.version, s.lease, &s.value[..]),
        Some(s) => (1, s.create_revision, s.version, None, s.value.as_slice()),
        None => (2, 0, 0, None, &[][..]),
    };
    let mut out = Vec::with_capacity(1 + 24 + 4 + key.len() + value.len());
    out.push(kind);
    out.extend_from_slice(&create_revision.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    if let Some(lease) = lease {
        out.extend_from_slice(&lease.to_be_bytes());
    }
    // Keys are at most MAX_KEY_BYTES, far below u32::MAX.
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

/// First byte of a group item of one change per revision (no longer written; a bare
/// record starts with its kind, 1 or 2).
const GROUP: u8 = 0x10;
/// First byte of a group item whose revisions each hold one or more changes.
const REVISIONS: u8 = 0x11;

/// A `log` item under construction: the change records of one write group, a
/// revision at a time.
pub struct GroupRecord {
    bytes: Vec<u8>,
    revisions: u32,
}

impl GroupRecord {
    pub fn new() -> Self {
        GroupRecord {
            bytes: vec![REVISIONS, 0, 0, 0, 0],
            revisions: 0,
        }
    }

    /// Adds the next revision, made of `changes` (each a key and its state after a
    /// put, `None` for a delete; see [`encode_record`]), in the order given. A
    /// revision of no change takes no revision: nothing is added.
    pub fn push_revision<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a str, Option<&'a Stored>)>,
    ) {
        let count_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        let mut count: u32 = 0;
        for (key, stored) in changes {
            let record = encode_record(key, stored);
            // Records are at most a key and a value, far below u32::MAX.
            self.bytes
                .extend_from_slice(&(record.len() as u32).to_be_bytes());
            self.bytes.extend_from_slice(&record);
            count += 1;
        }
        if count == 0 {
            self.bytes.truncate(count_at);
            return;
        }
        self.bytes[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
        self.revisions += 1;
    }

    /// Adds the next revision, one change.
    #[cfg(test)]
    pub fn push(&mut self, key: &str, stored: Option<&Stored>) {
        self.push_revision([(key, stored)]);
    }

    pub fn is_empty(&self) -> bool {
        self.revisions == 0
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[1..5].copy_from_slice(&self.revisions.to_be_bytes());
        self.bytes
    }
}

/// The last revision of the `log` item keyed by `first` (see [`decode_group`]).
pub fn last_revision(first: &[u8], bytes: &[u8]) -> Result<u64, Error> {
    let first = decode_u64(first)?;
    match bytes.first() {
        Some(&GROUP | &REVISIONS) => last_of(first, u32_at(bytes, 1)?),
        _ => Ok(first),
    }
}

/// The last revision of a group of `count` revisions from `first`.
fn last_of(first: u64, count: u32) -> Result<u64, Error> {
    (u64::from(count))
        .checked_sub(1)
        .and_then(|n| first.checked_add(n))
        .ok_or_else(|| Error::Corrupt("a group in the log tree has an impossible size".into()))
}

/// Decodes a `log` item (a group, or a bare record) into its events, in revision
/// order (the changes of one revision in the order they were made).
pub fn decode_group(first: &[u8], bytes: &[u8]) -> Result<Vec<Event>, Error> {
    walk_group(first, bytes, decode_record)
}

/// A change of a `log` item without its value: revision, kind and key.
pub struct Touched<'a> {
    pub revision: u64,
    pub kind: EventKind,
    pub key: &'a [u8],
}

/// The changes of a `log` item (see [`decode_group`]) without their values, which
/// are neither decoded nor copied.
pub fn group_changes<'a>(first: &[u8], bytes: &'a [u8]) -> Result<Vec<Touched<'a>>, Error> {
    walk_group(first, bytes, |revision, record: &'a [u8]| {
        let corrupt = || Error::Corrupt("malformed record in the log tree".into());
        let (kind, at) = match record.first() {
            Some(1) => (EventKind::Put, 17),
            Some(2) => (EventKind::Delete, 17),
            Some(3) => (EventKind::Put, 25),
            _ => return Err(corrupt()),
        };
        let key_len = u32_at(record, at).map_err(|_| corrupt())? as usize;
        let key = record.get(at + 4..at + 4 + key_len).ok_or_else(corrupt)?;
        Ok(Touched {
            revision,
            kind,
            key,
        })
    })
}

/// Each record of a `log` item through `decode`, with its revision, in order.
fn walk_group<'a, T>(
    first: &[u8],
    bytes: &'a [u8],
    mut decode: impl FnMut(u64, &'a [u8]) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let corrupt = || Error::Corrupt("malformed group in the log tree".into());
    let first = decode_u64(first)?;
    let per_revision = match bytes.first() {
        Some(&GROUP) => false,
        Some(&REVISIONS) => true,
        _ => return Ok(vec![decode(first, bytes)?]),
    };
    let count = u32_at(bytes, 1)?;
    let last = last_of(first, count)?;
    // The count is not trusted for the allocation: a record takes 25 bytes at least.
    let mut events = Vec::with_capacity((count as usize).min(bytes.len() / 25));
    let mut at = 5;
    for revision in first..=last {
        let changes = if per_revision {
            let changes = u32_at(bytes, at)?;
            at += 4;
            if changes == 0 {
                return Err(corrupt());
            }
            changes
        } else {
            1
        };
        for _ in 0..changes {
            let len = u32_at(bytes, at)? as usize;
            let end = (at + 4).checked_add(len).ok_or_else(corrupt)?;
            let record = bytes.get(at + 4..end).ok_or_else(corrupt)?;
            events.push(decode(revision, record)?);
            at = end;
        }
    }
    if at != bytes.len() {
        return Err(corrupt());
    }
    Ok(events)
}

/// Decodes one change record of revision `revision`.
fn decode_record(revision: u64, bytes: &[u8]) -> Result<Event, Error> {
    let corrupt = || Error::Corrupt("malformed record in the log tree".into());
    let (kind, leased) = match bytes.first() {
        Some(1) => (EventKind::Put, false),
        Some(2) => (EventKind::Delete, false),
        Some(3) => (EventKind::Put, true),
        _ => return Err(corrupt()),
    };
    let create_revision = u64_at(bytes, 1)?;
    let version = u64_at(bytes, 9)?;
    let (lease, at) = if leased {
        (Some(u64_at(bytes, 17)?), 25)
    } else {
        (None, 17)
    };
    let key_len = u32_at(bytes, at).map_err(|_| corrupt())? as usize;
    let key = bytes.get(at + 4..at + 4 + key_len).ok_or_else(corrupt)?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
    Ok(Event {
        kind,
        key,
        value: bytes[at + 4 + key_len..].to_vec(),
        revision,
        create_revision,
        version,
        lease,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_round_trips() -> Result<(), Error> {
        let s = Stored {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: None,
            value: vec![0, 255, 7],
        };
        assert_eq!(Stored::decode(&s.encode())?, s);
        let leased = Stored {
            lease: Some(77),
            ..s.clone()
        };
        assert_eq!(Stored::decode(&leased.encode())?, leased);
        assert_eq!(Stored::decode_header(&leased.encode())?.lease, Some(77));
        assert!(Stored::decode(&[1, 2, 3]).is_err());
        Ok(())
    }

    #[test]
    fn events_round_trip() -> Result<(), Error> {
        let stored = Stored {
            create_revision: 40,
            mod_revision: 42,
            version: 2,
            lease: None,
            value: b"\x00x".to_vec(),
        };
        let put = decode_record(42, &encode_record("app/db", Some(&stored)))?;
        let expected = Event {
            kind: EventKind::Put,
            key: "app/db".into(),
            value: b"\x00x".to_vec(),
            revision: 42,
            create_revision: 40,
            version: 2,
            lease: None,
        };
        assert_eq!(put, expected);
        let leased = Stored {
            lease: Some(9),
            ..stored.clone()
        };
        let put = decode_record(42, &encode_record("app/db", Some(&leased)))?;
        assert_eq!(
            put,
            Event {
                lease: Some(9),
                ..expected
            }
        );
        let del = decode_record(43, &encode_record("app/db", None))?;
        assert_eq!(
            (del.kind, del.revision, del.value.len()),
            (EventKind::Delete, 43, 0)
        );
        assert!(decode_record(42, &[1, 0]).is_err());
        Ok(())
    }

    #[test]
    fn groups_round_trip_and_bare_records_still_read() -> Result<(), Error> {
        let stored = Stored {
            create_revision: 7,
            mod_revision: 7,
            version: 1,
            lease: None,
            value: b"v".to_vec(),
        };
        let mut group = GroupRecord::new();
        group.push("a", Some(&stored));
        group.push("b", None);
        let bytes = group.finish();
        let events = decode_group(&encode_u64(7), &bytes)?;
        let seen: Vec<_> = events
            .iter()
            .map(|e| (e.revision, e.key.as_str(), e.kind))
            .collect();
        assert_eq!(
            seen,
            [(7, "a", EventKind::Put), (8, "b", EventKind::Delete)]
        );
        assert_eq!(last_revision(&encode_u64(7), &bytes)?, 8);
        assert!(decode_group(&encode_u64(7), &bytes[..bytes.len() - 1]).is_err());
        // Trailing bytes, an empty group, and counts that overflow are corrupt.
        assert!(decode_group(&encode_u64(7), &[bytes.as_slice(), &[0]].concat()).is_err());
        assert!(decode_group(&encode_u64(7), &GroupRecord::new().finish()).is_err());
        let huge = [REVISIONS, 255, 255, 255, 255];
        assert!(decode_group(&encode_u64(u64::MAX - 1), &huge).is_err());
        assert!(last_revision(&encode_u64(u64::MAX - 1), &huge).is_err());
        assert!(decode_group(&encode_u64(1), &huge).is_err());

        // A revision of several changes, between revisions of one.
        let mut group = GroupRecord::new();
        group.push("a", Some(&stored));
        group.push_revision([("b", Some(&stored)), ("c", None), ("d", Some(&stored))]);
        group.push_revision([]);
        group.push("e", None);
        let bytes = group.finish();
        let seen: Vec<_> = decode_group(&encode_u64(7), &bytes)?
            .iter()
            .map(|e| (e.revision, e.key.clone()))
            .collect();
        let expected: Vec<_> = [(7, "a"), (8, "b"), (8, "c"), (8, "d"), (9, "e")]
            .iter()
            .map(|&(r, k)| (r, k.to_string()))
            .collect();
        assert_eq!(seen, expected);
        let touched: Vec<_> = group_changes(&encode_u64(7), &bytes)?
            .iter()
            .map(|c| (c.revision, c.key.to_vec(), c.kind))
            .collect();
        let kinds = [
            EventKind::Put,
            EventKind::Put,
            EventKind::Delete,
            EventKind::Put,
            EventKind::Delete,
        ];
        let expected_touched: Vec<_> = expected
            .iter()
            .zip(kinds)
            .map(|((r, k), kind)| (*r, k.as_bytes().to_vec(), kind))
            .collect();
        assert_eq!(touched, expected_touched);
        assert_eq!(last_revision(&encode_u64(7), &bytes)?, 9);
        let no_change = [REVISIONS, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(decode_group(&encode_u64(7), &no_change).is_err());

        // Groups of one change per revision, as stores wrote them before.
        let mut old = vec![GROUP, 0, 0, 0, 2];
        for record in [encode_record("a", Some(&stored)), encode_record("b", None)] {
            old.extend_from_slice(&(record.len() as u32).to_be_bytes());
            old.extend_from_slice(&record);
        }
        let seen: Vec<_> = decode_group(&encode_u64(7), &old)?
            .iter()
            .map(|e| (e.revision, e.kind))
            .collect();
        assert_eq!(seen, [(7, EventKind::Put), (8, EventKind::Delete)]);
        assert_eq!(last_revision(&encode_u64(7), &old)?, 8);

        let bare = encode_record("c", Some(&stored));
        let events = decode_group(&encode_u64(3), &bare)?;
        assert_eq!((events.len(), events[0].revision), (1, 3));
        assert_eq!(last_revision(&encode_u64(3), &bare)?, 3);
        Ok(())
    }
}
