//! etcd's key ranges (`key` and `range_end`) over our prefix-ordered store.
//!
//! etcd names a range by its first key and the first key past it: no `range_end`
//! is one key, `range_end = "\0"` every key from `key` on (`key = "\0"` too: every
//! key), `range_end` = `key` with its last byte raised by one a prefix. Our store
//! lists by prefix; a range is read as pages of the longest prefix its two ends
//! share, cut to the range, all at one revision.

use std::borrow::Cow;

use kvstore_core::wire::Entry;
use kvstore_core::{Error, Storage};
use tonic::Status;

use super::pb::mvccpb::KeyValue;
use super::status::key_not_provided;
use crate::auth::Caller;

/// Entries read per page while scanning a range.
const PAGE: usize = 1000;

/// Where the code points that stand for bytes that are not UTF-8 start: byte `b`
/// (0x80 to 0xFF: an ASCII byte is always UTF-8) is U+10FF00 + `b`, a private use
/// code point. A key that is UTF-8 is itself; any other is its UTF-8 parts and an
/// escape for each other byte, and etcd's clients get the same bytes back.
const ESCAPES: u32 = 0x10_FF00;

/// The byte an escape stands for.
fn escaped(c: char) -> Option<u8> {
    let n = u32::from(c);
    (ESCAPES + 0x80..=ESCAPES + 0xFF)
        .contains(&n)
        .then(|| u8::try_from(n - ESCAPES).unwrap_or(0))
}

/// The escape of byte `b`.
fn escape(b: u8) -> char {
    char::from_u32(ESCAPES + u32::from(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// A key sent as bytes, as our keys are: text. Bytes that are not UTF-8 are
/// escaped (see [`ESCAPES`]); a UTF-8 key holding an escape's code point itself
/// is refused, so that every key stands for one sequence of bytes.
pub(crate) fn text(bytes: Vec<u8>) -> Result<String, Status> {
    match String::from_utf8(bytes) {
        Ok(key) if key.chars().any(|c| escaped(c).is_some()) => Err(Status::invalid_argument(
            "kvstore: code points U+10FF80 to U+10FFFF stand for bytes that are not UTF-8 \
             in keys sent through etcd's API; send those bytes instead",
        )),
        Ok(key) => Ok(key),
        Err(e) => {
            let bytes = e.into_bytes();
            let mut key = String::with_capacity(bytes.len() * 2);
            for chunk in bytes.utf8_chunks() {
                key.push_str(chunk.valid());
                key.extend(chunk.invalid().iter().map(|b| escape(*b)));
            }
            Ok(key)
        }
    }
}

/// A key as the bytes etcd's clients sent (escapes back to their bytes).
pub(crate) fn bytes(key: &str) -> Vec<u8> {
    raw(key).into_owned()
}

fn raw(key: &str) -> Cow<'_, [u8]> {
    if !key.chars().any(|c| escaped(c).is_some()) {
        return Cow::Borrowed(key.as_bytes());
    }
    let mut out = Vec::with_capacity(key.len());
    for c in key.chars() {
        match escaped(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    Cow::Owned(out)
}

/// The longest start of `raw` no longer than `at` bytes that ends between two of
/// its keys' characters (an escape is one character): the text of that start is
/// then a prefix of the text of every key starting with it.
fn cut(raw: &[u8], at: usize) -> String {
    let mut kept = String::new();
    let mut length = 0;
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            length += c.len_utf8();
            if length > at {
                return kept;
            }
            kept.push(c);
        }
        for b in chunk.invalid() {
            length += 1;
            if length > at {
                return kept;
            }
            kept.push(escape(*b));
        }
    }
    kept
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

/// The keys a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Span {
    /// One key.
    Key(String),
    /// Every key from `start` (included) to `end` (excluded; `None`: no end).
    Range {
        /// The first key.
        start: String,
        /// The first key as etcd's client sent it.
        start_raw: Vec<u8>,
        /// The first key past the range, as sent (it need not be a key).
        end: Option<Vec<u8>>,
    },
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
        let start_raw = if key == [0] { Vec::new() } else { key };
        let start = text(start_raw.clone())?;
        let end = (range_end != [0]).then_some(range_end);
        Ok(Span::Range {
            start,
            start_raw,
            end,
        })
    }

    /// Every key under `prefix` (text).
    pub(crate) fn under(prefix: &str) -> Result<Span, Status> {
        let raw = bytes(prefix);
        let end = prefix_end(&raw);
        Span::new(if raw.is_empty() { vec![0] } else { raw }, end)
    }

    /// Whether `key` is in the span.
    pub(crate) fn contains(&self, key: &str) -> bool {
        match self {
            Span::Key(one) => one == key,
            Span::Range { start_raw, end, .. } => {
                let key = raw(key);
                *key >= **start_raw && end.as_ref().is_none_or(|end| *key < **end)
            }
        }
    }

    /// Whether `key`, and every key listed after it, is past the span's end. (Keys
    /// list in the order of their text, which is the order of their bytes but
    /// where escapes are involved: past such a key, the scan goes on.)
    fn beyond(&self, key: &str) -> bool {
        match self {
            Span::Key(one) => key > one.as_str(),
            Span::Range { end, .. } => {
                matches!(raw(key), Cow::Borrowed(key) if end.as_ref().is_some_and(|end| key >= end.as_slice()))
            }
        }
    }

    /// The longest prefix (text) every key of the span starts with.
    pub(crate) fn prefix(&self) -> Cow<'_, str> {
        match self {
            Span::Key(key) => Cow::Borrowed(key),
            Span::Range { end: None, .. } => Cow::Borrowed(""),
            Span::Range {
                start_raw,
                end: Some(end),
                ..
            } => {
                let shared = start_raw
                    .iter()
                    .zip(end)
                    .take_while(|(a, b)| a == b)
                    .count();
                Cow::Owned(cut(start_raw, shared))
            }
        }
    }

    /// The prefix the span is exactly, when it is one (`""`: every key) whose
    /// keys list together under their text.
    pub(crate) fn as_prefix(&self) -> Option<&str> {
        match self {
            Span::Key(_) => None,
            Span::Range {
                start, end: None, ..
            } => start.is_empty().then_some(""),
            Span::Range {
                start,
                start_raw,
                end: Some(end),
            } => (*end == prefix_end(start_raw) && start.as_bytes() == start_raw.as_slice())
                .then_some(start.as_str()),
        }
    }

    /// Whether every key of the span lies under one of `prefixes` (a role's).
    fn covered_by(&self, prefixes: &[String]) -> bool {
        prefixes.iter().any(|p| match self {
            Span::Key(key) => key.starts_with(p.as_str()),
            Span::Range { start_raw, end, .. } => {
                let p = raw(p);
                p.is_empty()
                    || (start_raw.starts_with(&p)
                        && end.as_ref().is_some_and(|end| *end <= prefix_end(&p)))
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
    let prefix = prefix.as_ref();
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
        key: bytes(&entry.key),
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
        assert_eq!((all.as_prefix(), all.prefix().as_ref()), (Some(""), ""));
        let from = Span::new(b"m".to_vec(), vec![0])?;
        assert!(from.contains("z") && !from.contains("a"));
        assert_eq!(from.as_prefix(), None);
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert!(Span::new(Vec::new(), Vec::new()).is_err());
        Ok(())
    }

    #[test]
    fn keys_that_are_not_utf8_come_back_as_sent() -> Result<(), Status> {
        let sent = b"perf/\xff\x00\xc3".to_vec();
        let key = text(sent.clone())?;
        assert_eq!(bytes(&key), sent);
        assert!(key.starts_with("perf/"));
        // UTF-8 stays itself; an escape's own code point sent as UTF-8 is refused.
        assert_eq!(text("caf\u{e9}".into())?, "caf\u{e9}");
        assert!(text("\u{10ff80}".to_string().into_bytes()).is_err());
        // A range's shared prefix stops before a character its ends split.
        let split = Span::new("a\u{e9}".into(), "a\u{ea}".into())?;
        assert_eq!(split.prefix(), "a");
        assert!(split.contains("a\u{e9}") && !split.contains("a\u{ea}"));
        // A prefix of bytes that are not UTF-8 is scanned as a range.
        let binary = Span::new(b"p\xfe".to_vec(), prefix_end(b"p\xfe"))?;
        assert_eq!((binary.as_prefix(), binary.prefix().as_ref()), (None, "p"));
        assert!(binary.contains(&text(b"p\xfe\x01".to_vec())?));
        assert!(!binary.contains("q"));
        Ok(())
    }
}
