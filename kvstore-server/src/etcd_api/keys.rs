//! etcd's key ranges (`key` and `range_end`) over our prefix-ordered store.
//!
//! etcd names a range by its first key and the first key past it: no `range_end`
//! is one key, `range_end = "\0"` every key from `key` on (`key = "\0"` too: every
//! key), `range_end` = `key` with its last byte raised by one a prefix. Our store
//! lists by prefix; a range is read as pages of the longest prefix its two ends
//! share, cut to the range, all at one revision.

use kvstore_core::wire::Entry;
use kvstore_core::{Error, Storage};
use tonic::Status;

use super::pb::mvccpb::KeyValue;
use super::status::key_not_provided;
use crate::auth::Caller;

/// Entries read per page while scanning a range.
const PAGE: usize = 1000;

/// The keys a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Span {
    /// One key.
    Key(String),
    /// Every key from `start` (included) to `end` (excluded; `None`: no end).
    Range {
        /// The first key.
        start: String,
        /// The first key past the range, as bytes (it need not be UTF-8).
        end: Option<Vec<u8>>,
    },
}

/// A key sent as bytes, as our keys are: UTF-8 text.
pub(crate) fn text(bytes: Vec<u8>) -> Result<String, Status> {
    String::from_utf8(bytes)
        .map_err(|_| Status::invalid_argument("kvstore: keys are UTF-8 text; this key is not"))
}

/// etcd's end of the range of keys that start with `prefix` (`"\0"`, every key
/// from `prefix` on, when no byte of it can be raised).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Span {
    /// The keys of etcd's `key` and `range_end`.
    pub(crate) fn new(key: Vec<u8>, range_end: Vec<u8>) -> Result<Span, Status> {
        if range_end.is_empty() {
            if key.is_empty() {
                return Err(key_not_provided());
            }
            return Ok(Span::Key(text(key)?));
        }
        let start = if key == [0] {
            String::new()
        } else {
            text(key)?
        };
        let end = (range_end != [0]).then_some(range_end);
        Ok(Span::Range { start, end })
    }

    /// Whether `key` is in the span.
    pub(crate) fn contains(&self, key: &str) -> bool {
        match self {
            Span::Key(one) => one == key,
            Span::Range { start, end } => {
                key >= start.as_str()
                    && end
                        .as_ref()
                        .is_none_or(|end| key.as_bytes() < end.as_slice())
            }
        }
    }

    /// Whether `key`, and every key after it, is past the span's end.
    fn beyond(&self, key: &str) -> bool {
        match self {
            Span::Key(one) => key > one.as_str(),
            Span::Range { end, .. } => end
                .as_ref()
                .is_some_and(|end| key.as_bytes() >= end.as_slice()),
        }
    }

    /// The longest prefix every key of the span starts with (cut to whole
    /// characters).
    pub(crate) fn prefix(&self) -> &str {
        match self {
            Span::Key(key) => key,
            Span::Range { end: None, .. } => "",
            Span::Range {
                start,
                end: Some(end),
            } => {
                let mut shared = start.bytes().zip(end).take_while(|(a, b)| a == *b).count();
                while !start.is_char_boundary(shared) {
                    shared -= 1;
                }
                &start[..shared]
            }
        }
    }

    /// The prefix the span is exactly, when it is one (`""`: every key).
    pub(crate) fn as_prefix(&self) -> Option<&str> {
        match self {
            Span::Key(_) => None,
            Span::Range { start, end: None } => start.is_empty().then_some(""),
            Span::Range {
                start,
                end: Some(end),
            } => (*end == prefix_end(start.as_bytes())).then_some(start.as_str()),
        }
    }

    /// Whether every key of the span lies under one of `prefixes` (a role's).
    fn covered_by(&self, prefixes: &[String]) -> bool {
        prefixes.iter().any(|p| match self {
            Span::Key(key) => key.starts_with(p.as_str()),
            Span::Range { start, end } => {
                p.is_empty()
                    || (start.starts_with(p.as_str())
                        && end
                            .as_ref()
                            .is_some_and(|end| *end <= prefix_end(p.as_bytes())))
            }
        })
    }

    /// Whether `caller` may read every key of the span (etcd's RBAC grants whole
    /// ranges; so do our roles, by prefix).
    pub(crate) fn readable_by(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Open => true,
            Caller::Token(role) => self.covered_by(role.read_prefixes()),
        }
    }

    /// Whether `caller` may write every key of the span.
    pub(crate) fn writable_by(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Open => true,
            Caller::Token(role) => self.covered_by(role.write_prefixes()),
        }
    }
}

/// Every entry of `span`, in key order, as of `revision` (`None`: now), and the
/// revision read.
pub(crate) async fn scan(
    store: &dyn Storage,
    span: &Span,
    revision: Option<u64>,
) -> Result<(Vec<Entry>, u64), Error> {
    let (start, prefix) = match span {
        Span::Key(key) => {
            let entry = match revision {
                Some(revision) => store.get_at(key, revision).await?,
                None => store.get(key).await?,
            };
            let read = revision.unwrap_or_else(|| store.revision());
            return Ok((entry.into_iter().collect(), read));
        }
        Span::Range { start, .. } => (start.as_str(), span.prefix()),
    };
    // A first key past the shared prefix is read on its own at the listing's
    // revision; the listing goes on after it.
    let start_alone = start != prefix;
    let mut after = start_alone.then(|| start.to_string());
    let mut at = revision;
    let mut entries = Vec::new();
    loop {
        let page = match at {
            Some(revision) => {
                store
                    .list_at(prefix, after.as_deref(), PAGE, revision)
                    .await?
            }
            None => store.list(prefix, after.as_deref(), PAGE).await?,
        };
        at = Some(page.revision);
        let mut past_end = false;
        for entry in page.entries {
            if span.beyond(&entry.key) {
                past_end = true;
                break;
            }
            if span.contains(&entry.key) {
                entries.push(entry);
            }
        }
        match page.next {
            Some(next) if !past_end => after = Some(next),
            _ => break,
        }
    }
    let read = at.unwrap_or_else(|| store.revision());
    if start_alone {
        if let Some(first) = store.get_at(start, read).await? {
            entries.insert(0, first);
        }
    }
    Ok((entries, read))
}

/// An entry as etcd's `KeyValue` (without its value when `keys_only`).
pub(crate) fn key_value(entry: Entry, keys_only: bool) -> KeyValue {
    KeyValue {
        key: entry.key.into_bytes(),
        create_revision: signed(entry.create_revision),
        mod_revision: signed(entry.mod_revision),
        version: signed(entry.version),
        value: if keys_only { Vec::new() } else { entry.value },
        lease: entry.lease.map_or(0, signed),
    }
}

/// A revision, id or count on etcd's signed wire.
pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A revision or id from etcd's signed wire (`None` for 0 or less).
pub(crate) fn unsigned(n: i64) -> Option<u64> {
    u64::try_from(n).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_etcd_names_them() -> Result<(), Status> {
        let prefix = Span::new(b"app/".to_vec(), b"app0".to_vec())?;
        assert_eq!(prefix.as_prefix(), Some("app/"));
        assert_eq!(prefix.prefix(), "app");
        assert!(prefix.contains("app/x") && !prefix.contains("app0") && !prefix.contains("apq"));
        let all = Span::new(vec![0], vec![0])?;
        assert_eq!((all.as_prefix(), all.prefix()), (Some(""), ""));
        let from = Span::new(b"m".to_vec(), vec![0])?;
        assert!(from.contains("z") && !from.contains("a"));
        assert_eq!(from.as_prefix(), None);
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert!(Span::new(Vec::new(), Vec::new()).is_err());
        Ok(())
    }
}
