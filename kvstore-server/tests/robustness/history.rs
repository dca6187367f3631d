//! What the clients asked and what they were told: one [`Record`] per request,
//! with the times it was sent and answered.

use std::collections::BTreeMap;
use std::time::Instant;

use kvstore_client::Entry;

/// A key as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kv {
    pub value: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The key's lease (0: none).
    pub lease: u64,
}

impl Kv {
    /// The model's view of an entry the server showed, its revisions less `base`.
    pub fn of(entry: &Entry, base: u64) -> (String, Kv) {
        (
            entry.key.clone(),
            Kv {
                value: String::from_utf8_lossy(&entry.value).into_owned(),
                create_revision: entry.create_revision.saturating_sub(base),
                mod_revision: entry.mod_revision.saturating_sub(base),
                version: entry.version,
                lease: entry.lease.unwrap_or(0),
            },
        )
    }
}

/// What a write asks of the key first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    None,
    /// The key is at this mod revision (`If-Match`).
    ModRevision(u64),
    /// The key does not exist (`If-None-Match: *`).
    Absent,
}

impl Cond {
    pub fn holds(self, current: Option<&Kv>) -> bool {
        match self {
            Cond::None => true,
            Cond::ModRevision(rev) => current.is_some_and(|kv| kv.mod_revision == rev),
            Cond::Absent => current.is_none(),
        }
    }
}

/// A request, its revisions (in conditions) relative to the store's first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get {
        key: String,
    },
    List {
        prefix: String,
    },
    Put {
        key: String,
        value: String,
        cond: Cond,
    },
    /// A put on a lease the client was granted.
    PutLeased {
        key: String,
        value: String,
        lease: u64,
    },
    /// A put on a lease of its own (`?ttl=`): the lease it gets is known from the
    /// change the watchers saw (0 until then).
    PutTtl {
        key: String,
        value: String,
        lease: u64,
    },
    Grant,
    Revoke {
        lease: u64,
    },
    Delete {
        key: String,
        cond: Cond,
    },
    DeletePrefix {
        prefix: String,
    },
    /// Read-modify-write of two keys: if both are still at the mod revisions read
    /// (0: absent), put both; else read both.
    Txn {
        keys: [String; 2],
        expect: [u64; 2],
        values: [String; 2],
    },
}

impl Request {
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. } | Request::List { .. })
    }

    /// The keys it may change or read (prefixes for prefix requests).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Request::Get { key }
            | Request::Put { key, .. }
            | Request::PutLeased { key, .. }
            | Request::PutTtl { key, .. }
            | Request::Delete { key, .. } => vec![key],
            // Any key may be on the lease.
            Request::Grant | Request::Revoke { .. } => vec![""],
            Request::List { prefix } | Request::DeletePrefix { prefix } => vec![prefix],
            Request::Txn { keys, .. } => keys.iter().map(String::as_str).collect(),
        }
    }
}

/// What the server answered, revisions relative to the store's first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A read: the entry (none: 404) and the store revision the answer names, at
    /// or above the one the read saw (a 404 names none).
    Get {
        kv: Option<Kv>,
        revision: Option<u64>,
    },
    List {
        entries: BTreeMap<String, Kv>,
        revision: u64,
    },
    /// A put's revision, and the key's create revision and version after it.
    Put {
        revision: u64,
        create_revision: u64,
        version: u64,
    },
    Deleted {
        revision: u64,
    },
    DeletedPrefix {
        revision: u64,
        deleted: usize,
    },
    /// 404 for a delete.
    NotFound,
    /// 412.
    PreconditionFailed,
    Txn {
        succeeded: bool,
        revision: u64,
        reads: [Option<Kv>; 2],
    },
    Granted {
        lease: u64,
    },
    /// A revoke: the revision its keys were deleted at (the store's when none).
    Revoked {
        revision: u64,
    },
    /// 404 `lease_not_found`.
    LeaseNotFound,
    /// Sent, and no answer says whether it was applied: it may take effect at any
    /// moment after it was sent, or never.
    Unknown(String),
}

/// One request of one client.
#[derive(Debug, Clone)]
pub struct Record {
    pub client: u32,
    /// Nanoseconds since the run began.
    pub call: i64,
    /// Nanoseconds since the run began; `i64::MAX` for an unknown outcome.
    pub ret: i64,
    pub request: Request,
    pub response: Response,
}

impl Record {
    pub fn describe(&self) -> String {
        let ret = if self.ret == i64::MAX {
            "∞".to_string()
        } else {
            format!("{:.3}", self.ret as f64 / 1e9)
        };
        format!(
            "[client {} {:.3}s → {ret}s] {:?} ⇒ {:?}",
            self.client,
            self.call as f64 / 1e9,
            self.request,
            self.response
        )
    }
}

/// Nanoseconds since `start`.
pub fn nanos_since(start: Instant) -> i64 {
    i64::try_from(start.elapsed().as_nanos()).unwrap_or(i64::MAX - 1)
}
