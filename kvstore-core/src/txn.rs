//! Transactions: compares, then the `success` ops if every compare holds, else the
//! `failure` ops, all of whose writes commit at one revision (etcd's model).
//!
//! The JSON shape (`POST /v1/txn`), shared by the server and the SDK:
//!
//! ```json
//! {"compare": [{"key": "acct/1", "target": "mod_revision", "op": "==", "value": 5}],
//!  "success": [{"put": {"key": "acct/1", "value": "90"}},
//!              {"put": {"key": "acct/2", "value": "110", "ttl": 30}},
//!              {"delete": {"key": "tmp/x"}}, {"delete": {"prefix": "tmp/"}},
//!              {"get": {"key": "acct/3"}}, {"list": {"prefix": "acct/", "limit": 10}}],
//!  "failure": [{"get": {"key": "acct/1"}}]}
//! ```
//!
//! answered `{"succeeded": true, "revision": 7, "results": [...]}`, one result per
//! op of the branch that ran: `{"put": {"revision", "create_revision",
//! "version"}}`, `{"delete": {"deleted": N}}`, `{"get": {"entry": ENTRY or null}}`,
//! `{"list": {"entries": [...], "more": false}}`. Values are text, or base64 with
//! `"encoding": "base64"`, as everywhere in the JSON API.
//!
//! ```
//! use kvstore_core::txn::{Compare, CompareOp, Txn, TxnOp};
//! let txn = Txn {
//!     compare: vec![Compare::mod_revision("acct/1", CompareOp::Equal, 5)],
//!     success: vec![TxnOp::put("acct/1", "90"), TxnOp::put("acct/2", "110")],
//!     failure: vec![TxnOp::get("acct/1")],
//! };
//! txn.validate(128)?;
//! let json = serde_json::to_value(&txn)?;
//! assert_eq!(json["compare"][0]["op"], "==");
//! assert_eq!(serde_json::from_value::<Txn>(json)?, txn);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::key::{validate_key, KeyError};
use crate::lease::{check_ttl, TtlError};
use crate::wire::{value_json, Entry, PutResult};

/// Ops (or compares) a transaction takes by default, per branch, as etcd.
pub const DEFAULT_MAX_OPS: usize = 128;
/// Entries a `list` op returns when it names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The largest `limit` of a `list` op.
pub const MAX_LIST_LIMIT: usize = 1000;

/// A transaction (see the module docs).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Txn {
    /// Conditions that must all hold for `success` to run (none: it runs).
    #[serde(default)]
    pub compare: Vec<Compare>,
    /// Ops run when every compare holds.
    #[serde(default)]
    pub success: Vec<TxnOp>,
    /// Ops run otherwise.
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// A condition on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCompare", into = "RawCompare")]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// How the key's field compares with the target.
    pub op: CompareOp,
    /// The field and the value it is compared with.
    pub target: Target,
}

/// What a compare looks at, and the value it compares that with. A key that does
/// not exist has version, create and mod revisions and lease 0, and no value: a
/// compare of its value never holds (as in etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The value's bytes (ordered bytewise).
    Value(Vec<u8>),
    /// The key's version.
    Version(u64),
    /// The key's create revision.
    CreateRevision(u64),
    /// The key's mod revision.
    ModRevision(u64),
    /// The id of the key's lease (0: none).
    Lease(u64),
}

/// How a compare compares.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// `==`
    #[serde(rename = "==")]
    Equal,
    /// `!=`
    #[serde(rename = "!=")]
    NotEqual,
    /// `<`
    #[serde(rename = "<")]
    Less,
    /// `>`
    #[serde(rename = ">")]
    Greater,
}

impl CompareOp {
    /// Whether `actual op target` holds.
    pub fn holds<T: Ord + ?Sized>(self, actual: &T, target: &T) -> bool {
        match self {
            CompareOp::Equal => actual == target,
            CompareOp::NotEqual => actual != target,
            CompareOp::Less => actual < target,
            CompareOp::Greater => actual > target,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            CompareOp::Equal => "==",
            CompareOp::NotEqual => "!=",
            CompareOp::Less => "<",
            CompareOp::Greater => ">",
        }
    }
}

impl std::fmt::Display for CompareOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.symbol())
    }
}

impl Compare {
    fn new(key: &str, op: CompareOp, target: Target) -> Compare {
        Compare {
            key: key.to_string(),
            op,
            target,
        }
    }

    /// Compares the key's value.
    pub fn value(key: &str, op: CompareOp, value: impl Into<Vec<u8>>) -> Compare {
        Compare::new(key, op, Target::Value(value.into()))
    }

    /// Compares the key's version (0: absent).
    pub fn version(key: &str, op: CompareOp, version: u64) -> Compare {
        Compare::new(key, op, Target::Version(version))
    }

    /// Compares the key's create revision (0: absent).
    pub fn create_revision(key: &str, op: CompareOp, revision: u64) -> Compare {
        Compare::new(key, op, Target::CreateRevision(revision))
    }

    /// Compares the key's mod revision (0: absent).
    pub fn mod_revision(key: &str, op: CompareOp, revision: u64) -> Compare {
        Compare::new(key, op, Target::ModRevision(revision))
    }

    /// Compares the key's lease id (0: none).
    pub fn lease(key: &str, op: CompareOp, lease: u64) -> Compare {
        Compare::new(key, op, Target::Lease(lease))
    }

    /// Whether the compare holds for the key in state `entry` (`None`: absent) with
    /// lease `lease` (0: none).
    pub fn holds(&self, entry: Option<&Entry>, lease: u64) -> bool {
        let number = |f: fn(&Entry) -> u64| entry.map_or(0, f);
        match &self.target {
            Target::Value(want) => entry.is_some_and(|e| self.op.holds(e.value.as_slice(), want)),
            Target::Version(want) => self.op.holds(&number(|e| e.version), want),
            Target::CreateRevision(want) => self.op.holds(&number(|e| e.create_revision), want),
            Target::ModRevision(want) => self.op.holds(&number(|e| e.mod_revision), want),
            Target::Lease(want) => self.op.holds(&lease, want),
        }
    }
}

/// One op of a transaction branch. A put without `lease` or `ttl` makes the key
/// permanent (detached from any lease it had), as a plain put does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Sets a key. A `lease` (or a `ttl`, a lease of the key's own) attaches it to
    /// a lease.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach the key to.
        lease: Option<u64>,
        /// Seconds the key lives (a lease of its own).
        ttl: Option<u64>,
    },
    /// Deletes a key (nothing when it does not exist).
    Delete {
        /// The key.
        key: String,
    },
    /// Deletes every key under a prefix (every key, for an empty one).
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
    /// Reads a key (after the branch's writes before it).
    Get {
        /// The key.
        key: String,
    },
    /// Reads the keys under a prefix, in key order (after the branch's writes
    /// before it).
    List {
        /// The prefix.
        prefix: String,
        /// At most this many entries ([`DEFAULT_LIST_LIMIT`] when `None`).
        limit: Option<usize>,
    },
}

impl TxnOp {
    /// A put of `value` at `key` attached to `lease`.
    pub fn put_leased(key: &str, value: impl Into<Vec<u8>>, lease: u64) -> TxnOp {
        TxnOp::Put {
            key: key.to_string(),
            value: value.into(),
            lease: Some(lease),
            ttl: None,
        }
    }

    /// A put of `value` at `key` on a lease of its own of `ttl` seconds.
    pub fn put_ttl(key: &str, value: impl Into<Vec<u8>>, ttl: u64) -> TxnOp {
        TxnOp::Put {
            key: key.to_string(),
            value: value.into(),
            lease: None,
            ttl: Some(ttl),
        }
    }

    /// A put of `value` at `key`.
    pub fn put(key: &str, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Put {
            key: key.to_string(),
            value: value.into(),
            lease: None,
            ttl: None,
        }
    }

    /// A delete of `key`.
    pub fn delete(key: &str) -> TxnOp {
        TxnOp::Delete {
            key: key.to_string(),
        }
    }

    /// A delete of every key under `prefix`.
    pub fn delete_prefix(prefix: &str) -> TxnOp {
        TxnOp::DeletePrefix {
            prefix: prefix.to_string(),
        }
    }

    /// A read of `key`.
    pub fn get(key: &str) -> TxnOp {
        TxnOp::Get {
            key: key.to_string(),
        }
    }

    /// A read of the keys under `prefix`.
    pub fn list(prefix: &str, limit: Option<usize>) -> TxnOp {
        TxnOp::List {
            prefix: prefix.to_string(),
            limit,
        }
    }

    /// Whether the op writes.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            TxnOp::Put { .. } | TxnOp::Delete { .. } | TxnOp::DeletePrefix { .. }
        )
    }

    /// The key (or prefix) the op writes, and whether it is a prefix.
    fn written(&self) -> Option<(&str, bool)> {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => Some((key, false)),
            TxnOp::DeletePrefix { prefix } => Some((prefix, true)),
            TxnOp::Get { .. } | TxnOp::List { .. } => None,
        }
    }

    /// The key it reads or writes, checked.
    fn check_key(&self) -> Result<(), TxnError> {
        match self {
            TxnOp::Put {
                key, lease, ttl, ..
            } => {
                validate_key(key).map_err(TxnError::InvalidKey)?;
                match (lease, ttl) {
                    (Some(_), Some(_)) => Err(TxnError::Invalid(format!(
                        "the put of {key:?} gives lease and ttl: give one (ttl grants the key a \
                         lease of its own)"
                    ))),
                    (None, Some(ttl)) => check_ttl(*ttl).map_err(TxnError::InvalidTtl),
                    _ => Ok(()),
                }
            }
            TxnOp::Delete { key } | TxnOp::Get { key } => {
                validate_key(key).map_err(TxnError::InvalidKey)
            }
            TxnOp::DeletePrefix { .. } => Ok(()),
            TxnOp::List { limit, .. } => match limit {
                Some(limit) if *limit == 0 || *limit > MAX_LIST_LIMIT => Err(TxnError::Invalid(
                    format!("a list's limit must be between 1 and {MAX_LIST_LIMIT}"),
                )),
                _ => Ok(()),
            },
        }
    }
}

/// Why a transaction is refused before it runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// A key is not acceptable.
    #[error(transparent)]
    InvalidKey(KeyError),
    /// More compares, or more ops in a branch, than the server takes.
    #[error("the transaction has {count} {what}; the limit is {max}")]
    TooManyOps {
        /// `compares` or `ops in a branch`.
        what: &'static str,
        /// How many it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More compares or ops than the store itself takes (etcd's own
    /// `--max-txn-ops`, when it is below ours).
    #[error("{0}")]
    OverStoreLimit(String),
    /// A put's `ttl` out of range.
    #[error(transparent)]
    InvalidTtl(TtlError),
    /// Two writes of one branch may touch the same key.
    #[error("{0} is written twice in one transaction branch")]
    DuplicateKey(String),
    /// Anything else wrong with it.
    #[error("{0}")]
    Invalid(String),
}

impl Txn {
    /// Checks what can be checked without the store: keys, sizes (at most
    /// `max_ops` compares, and ops per branch), and that no branch writes a key
    /// twice (a put or delete of a key under a prefix the branch deletes counts).
    pub fn validate(&self, max_ops: usize) -> Result<(), TxnError> {
        if self.compare.len() > max_ops {
            return Err(TxnError::TooManyOps {
                what: "compares",
                count: self.compare.len(),
                max: max_ops,
            });
        }
        for compare in &self.compare {
            validate_key(&compare.key).map_err(TxnError::InvalidKey)?;
        }
        for branch in [&self.success, &self.failure] {
            if branch.len() > max_ops {
                return Err(TxnError::TooManyOps {
                    what: "ops in a branch",
                    count: branch.len(),
                    max: max_ops,
                });
            }
            let mut written: Vec<(&str, bool)> = Vec::new();
            for op in branch {
                op.check_key()?;
                let Some((key, prefix)) = op.written() else {
                    continue;
                };
                let overlaps = |&(other, other_prefix): &(&str, bool)| match (prefix, other_prefix)
                {
                    (false, false) => key == other,
                    (true, false) => other.starts_with(key),
                    (false, true) => key.starts_with(other),
                    (true, true) => key.starts_with(other) || other.starts_with(key),
                };
                if written.iter().any(overlaps) {
                    let what = if prefix {
                        format!("the prefix {key:?}")
                    } else {
                        format!("the key {key:?}")
                    };
                    return Err(TxnError::DuplicateKey(what));
                }
                written.push((key, prefix));
            }
        }
        Ok(())
    }

    /// Whether any op of either branch writes.
    pub fn writes(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(TxnOp::is_write)
    }

    /// Whether any put names a TTL (a lease of the key's own, yet to be granted).
    pub fn uses_ttls(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(|op| matches!(op, TxnOp::Put { ttl: Some(_), .. }))
    }

    /// The leases the puts of `branch` attach keys to.
    pub fn leases(branch: &[TxnOp]) -> impl Iterator<Item = u64> + '_ {
        branch.iter().filter_map(|op| match op {
            TxnOp::Put { lease, .. } => *lease,
            _ => None,
        })
    }
}

/// The answer to a transaction.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every compare held (then `success` ran, else `failure`).
    pub succeeded: bool,
    /// The revision of the transaction's writes; the store revision it read when
    /// it wrote nothing.
    pub revision: u64,
    /// One result per op of the branch that ran, in order.
    pub results: Vec<TxnResult>,
}

/// The result of one op.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnResult {
    /// A put: the key's revisions after it.
    Put(PutResult),
    /// A delete (of a key or a prefix): how many keys went.
    Delete(Deleted),
    /// A get: the entry, or `null`.
    Get(Got),
    /// A list: the entries, in key order.
    List(Listed),
}

/// Keys a delete removed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// How many.
    pub deleted: usize,
}

/// What a get read.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Got {
    /// The entry; `null` when the key does not exist.
    pub entry: Option<Entry>,
}

/// What a list read.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The entries, in key order.
    pub entries: Vec<Entry>,
    /// More entries follow the last one.
    pub more: bool,
}

/// A compare as JSON: `{"key", "target", "op", "value"}` (and `encoding` for a
/// base64 `value` target).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    /// The key compared.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    key: String,
    /// The field compared.
    target: TargetName,
    /// How it compares.
    op: CompareOp,
    /// A number, or for `target: value` the value (text, or base64 with `encoding`).
    #[cfg_attr(feature = "openapi", schema(schema_with = compare_value))]
    value: serde_json::Value,
    /// `base64` when a value target is base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
}

/// The schema of a compare's `value`: a whole number, or a string (for a value
/// target).
#[cfg(feature = "openapi")]
fn compare_value() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .item(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(
            "A whole number, or for `target: value` the value (text, or base64 with `encoding`)",
        ))
        .build()
        .into()
}

/// The field a compare looks at.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TargetName {
    Value,
    Version,
    CreateRevision,
    ModRevision,
    Lease,
}

impl TryFrom<RawCompare> for Compare {
    type Error = String;

    fn try_from(raw: RawCompare) -> Result<Self, String> {
        let number = || {
            raw.value.as_u64().ok_or_else(|| {
                format!(
                    "the compare of {:?} needs a whole number as its value",
                    raw.key
                )
            })
        };
        let target = match raw.target {
            TargetName::Value => {
                let serde_json::Value::String(text) = raw.value.clone() else {
                    return Err(format!(
                        "the value compare of {:?} needs a string as its value",
                        raw.key
                    ));
                };
                Target::Value(value_json::decode(text, raw.encoding.as_deref())?)
            }
            TargetName::Version => Target::Version(number()?),
            TargetName::CreateRevision => Target::CreateRevision(number()?),
            TargetName::ModRevision => Target::ModRevision(number()?),
            TargetName::Lease => Target::Lease(number()?),
        };
        if raw.target != TargetName::Value && raw.encoding.is_some() {
            return Err("`encoding` goes only with a value compare".into());
        }
        Ok(Compare {
            key: raw.key,
            op: raw.op,
            target,
        })
    }
}

impl From<Compare> for RawCompare {
    fn from(c: Compare) -> Self {
        let (target, value, encoding) = match c.target {
            Target::Value(bytes) => {
                let (text, encoding) = encode(bytes);
                (TargetName::Value, serde_json::Value::String(text), encoding)
            }
            Target::Version(n) => (TargetName::Version, n.into(), None),
            Target::CreateRevision(n) => (TargetName::CreateRevision, n.into(), None),
            Target::ModRevision(n) => (TargetName::ModRevision, n.into(), None),
            Target::Lease(n) => (TargetName::Lease, n.into(), None),
        };
        RawCompare {
            key: c.key,
            target,
            op: c.op,
            value,
            encoding,
        }
    }
}

/// Bytes as JSON text, base64 when they are not UTF-8.
fn encode(bytes: Vec<u8>) -> (String, Option<String>) {
    use base64::Engine as _;
    match String::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            Some("base64".into()),
        ),
    }
}

/// An op as JSON: `{"put": {...}}`, `{"delete": {...}}`, `{"get": {...}}` or
/// `{"list": {...}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawOp {
    /// Sets a key.
    Put(RawPut),
    /// Deletes a key (`key`) or every key under a prefix (`prefix`; an empty
    /// prefix needs `"all": true`).
    Delete(RawDelete),
    /// Reads a key.
    Get(RawGet),
    /// Reads the keys under a prefix.
    List(RawList),
}

/// A put op.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPut {
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    key: String,
    /// Text, or base64 with `encoding`.
    value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
    /// A lease id to attach the key to (absent, with no `ttl`: the key is
    /// permanent, detached from any lease it had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    lease: Option<u64>,
    /// Seconds the key lives, on a lease of its own (not with `lease`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31536000))]
    ttl: Option<u64>,
}

/// A delete op.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelete {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// Confirms an empty prefix (every key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
}

/// A get op.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGet {
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    key: String,
}

/// A list op.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    prefix: String,
    /// 1 to 1000; 100 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    limit: Option<usize>,
}

impl TryFrom<RawOp> for TxnOp {
    type Error = String;

    fn try_from(raw: RawOp) -> Result<Self, String> {
        Ok(match raw {
            RawOp::Put(p) => TxnOp::Put {
                value: value_json::decode(p.value, p.encoding.as_deref())?,
                key: p.key,
                lease: p.lease,
                ttl: p.ttl,
            },
            RawOp::Delete(d) => match (d.key, d.prefix) {
                (Some(key), None) if !d.all => TxnOp::Delete { key },
                (None, Some(prefix)) if !prefix.is_empty() || d.all => {
                    TxnOp::DeletePrefix { prefix }
                }
                (None, Some(_)) => {
                    return Err(
                        "a delete of the empty prefix deletes every key: say \"all\": true".into(),
                    )
                }
                _ => return Err("a delete names a `key` or a `prefix`".into()),
            },
            RawOp::Get(g) => TxnOp::Get { key: g.key },
            RawOp::List(l) => TxnOp::List {
                prefix: l.prefix,
                limit: l.limit,
            },
        })
    }
}

impl From<TxnOp> for RawOp {
    fn from(op: TxnOp) -> Self {
        match op {
            TxnOp::Put {
                key,
                value,
                lease,
                ttl,
            } => {
                let (value, encoding) = encode(value);
                RawOp::Put(RawPut {
                    key,
                    value,
                    encoding,
                    lease,
                    ttl,
                })
            }
            TxnOp::Delete { key } => RawOp::Delete(RawDelete {
                key: Some(key),
                prefix: None,
                all: false,
            }),
            TxnOp::DeletePrefix { prefix } => RawOp::Delete(RawDelete {
                all: prefix.is_empty(),
                key: None,
                prefix: Some(prefix),
            }),
            TxnOp::Get { key } => RawOp::Get(RawGet { key }),
            TxnOp::List { prefix, limit } => RawOp::List(RawList { prefix, limit }),
        }
    }
}

impl Serialize for TxnOp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawOp::from(self.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TxnOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TxnOp::try_from(RawOp::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The OpenAPI schema of a typed form is that of its JSON form.
#[cfg(feature = "openapi")]
macro_rules! schema_as {
    ($typed:ty, $raw:ty) => {
        impl utoipa::PartialSchema for $typed {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                <$raw as utoipa::PartialSchema>::schema()
            }
        }

        impl utoipa::ToSchema for $typed {
            fn name() -> std::borrow::Cow<'static, str> {
                <$raw as utoipa::ToSchema>::name()
            }

            fn schemas(
                schemas: &mut Vec<(
                    String,
                    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
                )>,
            ) {
                <$raw as utoipa::ToSchema>::schemas(schemas);
            }
        }
    };
}

#[cfg(feature = "openapi")]
schema_as!(TxnOp, RawOp);
#[cfg(feature = "openapi")]
schema_as!(Compare, RawCompare);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_of_the_issue_reads() -> Result<(), serde_json::Error> {
        let txn: Txn = serde_json::from_str(
            r#"{"compare": [{"key": "acct/1", "target": "mod_revision", "op": "==", "value": 5}],
                "success": [{"put": {"key": "acct/1", "value": "90"}},
                            {"put": {"key": "acct/2", "value": "AAE=", "encoding": "base64"}},
                            {"delete": {"key": "tmp/x"}}, {"get": {"key": "acct/3"}}],
                "failure": [{"get": {"key": "acct/1"}}]}"#,
        )?;
        assert_eq!(
            txn.compare,
            [Compare::mod_revision("acct/1", CompareOp::Equal, 5)]
        );
        assert_eq!(txn.success[1], TxnOp::put("acct/2", vec![0, 1]));
        assert_eq!(txn.validate(DEFAULT_MAX_OPS), Ok(()));
        let again: Txn = serde_json::from_value(serde_json::to_value(&txn)?)?;
        assert_eq!(again, txn);
        Ok(())
    }

    #[test]
    fn malformed_transactions_are_refused() {
        for bad in [
            r#"{"compare": [{"key": "a", "target": "version", "op": "=", "value": 1}]}"#,
            r#"{"compare": [{"key": "a", "target": "version", "op": "==", "value": "1"}]}"#,
            r#"{"compare": [{"key": "a", "target": "colour", "op": "==", "value": 1}]}"#,
            r#"{"success": [{"put": {"key": "a"}}]}"#,
            r#"{"success": [{"put": {"key": "a", "value": "x", "extra": 1}}]}"#,
            r#"{"success": [{"delete": {}}]}"#,
            r#"{"success": [{"delete": {"prefix": ""}}]}"#,
            r#"{"success": [{"rename": {"key": "a"}}]}"#,
            r#"{"sucess": []}"#,
        ] {
            assert!(serde_json::from_str::<Txn>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_that_overlap_in_a_branch_are_refused() {
        let branch = |ops: Vec<TxnOp>| Txn {
            success: ops,
            ..Txn::default()
        };
        let dup = |txn: Txn| matches!(txn.validate(128), Err(TxnError::DuplicateKey(_)));
        assert!(dup(branch(vec![
            TxnOp::put("a", "1"),
            TxnOp::put("a", "2")
        ])));
        assert!(dup(branch(vec![TxnOp::put("a", "1"), TxnOp::delete("a")])));
        assert!(dup(branch(vec![
            TxnOp::delete_prefix("a/"),
            TxnOp::put("a/b", "1")
        ])));
        assert!(!dup(branch(vec![TxnOp::put("a", "1"), TxnOp::get("a")])));
        assert!(!dup(branch(vec![
            TxnOp::put("a/b", "1"),
            TxnOp::delete_prefix("b/")
        ])));
        let both = Txn {
            success: vec![TxnOp::put("a", "1")],
            failure: vec![TxnOp::put("a", "2")],
            ..Txn::default()
        };
        assert_eq!(both.validate(128), Ok(()));
        let many = branch((0..3).map(|i| TxnOp::put(&format!("k{i}"), "v")).collect());
        assert!(matches!(
            many.validate(2),
            Err(TxnError::TooManyOps { count: 3, .. })
        ));
    }

    #[test]
    fn a_put_takes_a_lease_or_a_ttl_in_range() {
        let one = |op: TxnOp| Txn {
            success: vec![op],
            ..Txn::default()
        };
        assert_eq!(one(TxnOp::put_leased("a", "1", 7)).validate(128), Ok(()));
        assert_eq!(one(TxnOp::put_ttl("a", "1", 30)).validate(128), Ok(()));
        for ttl in [0, crate::lease::MAX_TTL + 1] {
            assert_eq!(
                one(TxnOp::put_ttl("a", "1", ttl)).validate(128),
                Err(TxnError::InvalidTtl(TtlError(ttl)))
            );
        }
        let both = TxnOp::Put {
            key: "a".into(),
            value: b"1".to_vec(),
            lease: Some(7),
            ttl: Some(30),
        };
        assert!(matches!(one(both).validate(128), Err(TxnError::Invalid(_))));
        let txn = one(TxnOp::put_ttl("a", "1", 30));
        assert!(txn.uses_ttls());
        assert!(!one(TxnOp::put_leased("a", "1", 7)).uses_ttls());
        assert_eq!(
            Txn::leases(&[TxnOp::put_leased("a", "1", 7), TxnOp::get("a")]).collect::<Vec<_>>(),
            [7]
        );
    }

    #[test]
    fn compares_follow_etcd_on_absent_keys() {
        let entry = Entry {
            key: "a".into(),
            value: b"m".to_vec(),
            create_revision: 2,
            mod_revision: 4,
            version: 3,
            lease: None,
        };
        assert!(Compare::value("a", CompareOp::Greater, "a").holds(Some(&entry), 0));
        assert!(!Compare::value("a", CompareOp::NotEqual, "x").holds(None, 0));
        assert!(Compare::version("a", CompareOp::Equal, 0).holds(None, 0));
        assert!(Compare::mod_revision("a", CompareOp::Less, 5).holds(Some(&entry), 0));
        assert!(Compare::create_revision("a", CompareOp::Equal, 2).holds(Some(&entry), 0));
        assert!(Compare::lease("a", CompareOp::Equal, 0).holds(Some(&entry), 0));
    }
}
