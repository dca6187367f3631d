//! JSON shapes shared by the server and the client.
//!
//! Values are bytes. In JSON a value is shown as a plain string when it is valid
//! UTF-8, and otherwise as base64 with `"encoding": "base64"` beside it:
//!
//! ```json
//! {"key": "greeting", "value": "hello", ...}
//! {"key": "blob", "value": "AAEC/w==", "encoding": "base64", ...}
//! ```
//!
//! A reader takes `value` literally unless `encoding` says `base64`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub use crate::error_code::ErrorCode;

/// A key with its value and the revisions that describe its history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value's bytes.
    #[serde(flatten, with = "value_json")]
    #[cfg_attr(feature = "openapi", schema(value_type = value_json::EncodedValue))]
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last put to the key.
    pub mod_revision: u64,
    /// Number of puts since the key was created (1 after the first put).
    pub version: u64,
    /// The lease the key is attached to (it is deleted when the lease ends);
    /// absent for a permanent key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub lease: Option<u64>,
}

/// What a change did to its key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted.
    Delete,
}

/// One numbered change to the store.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The key that changed.
    pub key: String,
    /// The new value (empty for a delete).
    #[serde(flatten, with = "value_json")]
    #[cfg_attr(feature = "openapi", schema(value_type = value_json::EncodedValue))]
    pub value: Vec<u8>,
    /// The store revision of this change.
    pub revision: u64,
    /// The key's create revision after the change (0 for a delete).
    pub create_revision: u64,
    /// The key's version after the change (0 for a delete).
    pub version: u64,
    /// The lease the key is attached to after a put; absent for a permanent key
    /// and for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub lease: Option<u64>,
}

impl Event {
    /// The entry this put leaves behind, or `None` for a delete.
    pub fn entry(&self) -> Option<Entry> {
        match self.kind {
            EventKind::Put => Some(Entry {
                key: self.key.clone(),
                value: self.value.clone(),
                create_revision: self.create_revision,
                mod_revision: self.revision,
                version: self.version,
                lease: self.lease,
            }),
            EventKind::Delete => None,
        }
    }
}

/// Answer to a successful put.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    /// Store revision of the put (the key's new `mod_revision`).
    pub revision: u64,
    /// The key's create revision.
    pub create_revision: u64,
    /// The key's version after the put.
    pub version: u64,
}

/// A lease as granted or kept alive (`POST /v1/leases`, `.../keepalive`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease's id, to put keys with (`?lease=ID`) and keep it alive.
    pub id: u64,
    /// Seconds the lease lives from now without a keep-alive (what the engine
    /// granted: it may be more than was asked).
    pub ttl: u64,
}

/// A lease's state (`GET /v1/leases/ID`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease's id.
    pub id: u64,
    /// Seconds left before it expires, unless kept alive.
    pub ttl: u64,
    /// The TTL it was granted with, which each keep-alive restores.
    pub granted_ttl: u64,
    /// The keys attached to it, in key order.
    pub keys: Vec<String>,
}

/// Answer to a lease revoke (`DELETE /v1/leases/ID`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResult {
    /// The revision at which the lease's keys were deleted (the store's revision
    /// when it had none).
    pub revision: u64,
}

/// Answer to a successful delete.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    /// Store revision of the delete.
    pub revision: u64,
}

/// Answer to a delete by prefix (`DELETE /v1/kv?prefix=P`): every key under the
/// prefix went at one revision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePrefixResult {
    /// Keys deleted.
    pub deleted: usize,
    /// The revision of the deletes; the store revision when there was nothing to
    /// delete (no revision is taken then).
    pub revision: u64,
}

/// One page of a listing.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// Entries in key order.
    pub entries: Vec<Entry>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub next: Option<String>,
    /// The revision the page shows: the store's when the page was read, or the one
    /// asked for (`revision`, or the revision a `continue` token carries).
    pub revision: u64,
    /// Pass as `continue` to get the next page at this page's `revision` (absent on
    /// the last page): the pages of one listing together show the store as it was
    /// at one revision. Opaque.
    #[serde(rename = "continue", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub continue_token: Option<String>,
    /// The store's current revision (a page read at a past revision shows an
    /// older one in `revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub current_revision: Option<u64>,
}

/// A key as it was at a revision (`GET /v1/kv/KEY?revision=R` with `Accept:
/// application/json`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryAt {
    /// The key as it was then.
    #[serde(flatten)]
    pub entry: Entry,
    /// The revision the key was read at.
    pub read_revision: u64,
    /// The store's current revision.
    pub current_revision: u64,
}

/// One page of a key's history (`GET /v1/history/KEY`): its changes within the
/// retained window, oldest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The changes, oldest first: each a put (with the value, version and lease it
    /// left) or a delete.
    pub events: Vec<Event>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub next: Option<u64>,
    /// The revision the history runs to: no change of the key after `next` (or the
    /// last event) up to it is left out.
    pub revision: u64,
    /// The oldest revision the history holds.
    pub oldest_revision: u64,
}

/// The first line of a snapshot (`GET /v1/snapshot`); every further line is one
/// [`Entry`] as JSON.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Always [`SnapshotHeader::FORMAT`].
    pub format: String,
    /// The store revision the entries show.
    pub revision: u64,
}

impl SnapshotHeader {
    /// The format name of this version of snapshots.
    pub const FORMAT: &'static str = "kvstore.snapshot.v1";
}

/// Answer to a restore (`POST /v1/snapshot`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResult {
    /// Entries restored.
    pub restored: usize,
    /// The store revision after the restore.
    pub revision: u64,
}

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// A machine-readable code and a sentence for people.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code, e.g. `key_not_found`, `precondition_failed`, `compacted`
    /// (the table is [`ErrorCode`]).
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
    /// A revision the error refers to (the key's current `mod_revision` for
    /// `precondition_failed`, the oldest kept revision for `compacted`, the last
    /// delivered revision for `lagged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub revision: Option<u64>,
}

/// One frame of a watch stream (a WebSocket text frame, or an SSE event's data).
///
/// Every frame is a JSON object whose `type` names it: `put` and `delete` are
/// changes (an [`Event`]); `entry`, `synced`, `progress` and `error` are the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "FrameRepr", from = "FrameRepr")]
pub enum Frame {
    /// A change: a put or a delete.
    Event(Event),
    /// A key's state at the start of the watch (only with `initial=true`).
    Entry(Entry),
    /// The initial entries are complete; they show the store at `revision`, and every
    /// change after it follows.
    Synced {
        /// The revision the initial entries were read at.
        revision: u64,
    },
    /// Nothing for this watch since the last frame; the store is at `revision`.
    Progress {
        /// Current (durable) store revision.
        revision: u64,
    },
    /// The watch ends with this error (`compacted`, `lagged`, `shutting_down`, ...).
    Error(ErrorDetail),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum FrameRepr {
    Event(Event),
    Control(Control),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Entry {
        #[serde(flatten)]
        entry: Entry,
    },
    Synced {
        revision: u64,
    },
    Progress {
        revision: u64,
    },
    Error {
        #[serde(flatten)]
        error: ErrorDetail,
    },
}

impl From<Frame> for FrameRepr {
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::Event(event) => FrameRepr::Event(event),
            Frame::Entry(entry) => FrameRepr::Control(Control::Entry { entry }),
            Frame::Synced { revision } => FrameRepr::Control(Control::Synced { revision }),
            Frame::Progress { revision } => FrameRepr::Control(Control::Progress { revision }),
            Frame::Error(error) => FrameRepr::Control(Control::Error { error }),
        }
    }
}

impl From<FrameRepr> for Frame {
    fn from(repr: FrameRepr) -> Self {
        match repr {
            FrameRepr::Event(event) => Frame::Event(event),
            FrameRepr::Control(Control::Entry { entry }) => Frame::Entry(entry),
            FrameRepr::Control(Control::Synced { revision }) => Frame::Synced { revision },
            FrameRepr::Control(Control::Progress { revision }) => Frame::Progress { revision },
            FrameRepr::Control(Control::Error { error }) => Frame::Error(error),
        }
    }
}

/// Serde helpers for the binary-safe value encoding described in the module docs.
pub mod value_json {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize)]
    struct Out<'a> {
        value: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        encoding: Option<&'static str>,
    }

    /// The schema of a value in JSON, for the OpenAPI document: the `value` and
    /// `encoding` pair that entries and events carry beside their other fields.
    #[cfg(feature = "openapi")]
    #[derive(utoipa::ToSchema)]
    pub struct EncodedValue {
        /// The value: its bytes as text when they are valid UTF-8, otherwise their
        /// standard base64 (then `encoding` is `base64`).
        pub value: String,
        /// `base64` when `value` is base64; absent when `value` is the text itself.
        #[schema(nullable = false)]
        pub encoding: Option<ValueEncoding>,
    }

    /// How a JSON `value` is encoded when it is not the text itself.
    #[cfg(feature = "openapi")]
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum ValueEncoding {
        /// Standard base64 with padding.
        Base64,
    }

    #[derive(Deserialize)]
    struct In {
        #[serde(default)]
        value: String,
        #[serde(default)]
        encoding: Option<String>,
    }

    /// Writes `value` (and `encoding` when the bytes are not UTF-8).
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Out {
                value: text,
                encoding: None,
            }
            .serialize(s),
            Err(_) => Out {
                value: &base64::engine::general_purpose::STANDARD.encode(bytes),
                encoding: Some("base64"),
            }
            .serialize(s),
        }
    }

    /// Reads `value`, decoding it when `encoding` is `base64`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let raw = In::deserialize(d)?;
        decode(raw.value, raw.encoding.as_deref()).map_err(serde::de::Error::custom)
    }

    /// Turns a JSON `value` and its optional `encoding` back into bytes.
    pub fn decode(value: String, encoding: Option<&str>) -> Result<Vec<u8>, String> {
        match encoding {
            None | Some("utf8") | Some("utf-8") => Ok(value.into_bytes()),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .map_err(|e| format!("invalid base64 value: {e}")),
            Some(other) => Err(format!("unknown value encoding {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &[u8]) -> Entry {
        Entry {
            key: "k".into(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 2,
            lease: None,
        }
    }

    #[test]
    fn text_values_are_plain_strings() -> Result<(), serde_json::Error> {
        let json = serde_json::to_value(entry(b"hello"))?;
        assert_eq!(json["value"], "hello");
        assert!(json.get("encoding").is_none());
        Ok(())
    }

    #[test]
    fn binary_values_round_trip_as_base64() -> Result<(), serde_json::Error> {
        let e = entry(&[0, 1, 2, 255]);
        let json = serde_json::to_value(&e)?;
        assert_eq!(json["encoding"], "base64");
        assert_eq!(json["value"], "AAEC/w==");
        assert_eq!(serde_json::from_value::<Entry>(json)?, e);
        Ok(())
    }

    #[test]
    fn frames_are_tagged_by_type() -> Result<(), serde_json::Error> {
        let frame = Frame::Event(Event {
            kind: EventKind::Delete,
            key: "a".into(),
            value: vec![],
            revision: 7,
            create_revision: 0,
            version: 0,
            lease: None,
        });
        let text = serde_json::to_string(&frame)?;
        assert!(text.contains(r#""type":"delete""#), "{text}");
        assert_eq!(serde_json::from_str::<Frame>(&text)?, frame);
        let progress: Frame = serde_json::from_str(r#"{"type":"progress","revision":3}"#)?;
        assert_eq!(progress, Frame::Progress { revision: 3 });
        Ok(())
    }
}
