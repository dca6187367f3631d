//! What a Socket.IO client is told: the one place that reads the store's changes
//! for Socket.IO and words them as the replaced service did.
//!
//! | change | event | data |
//! | --- | --- | --- |
//! | on joining | `connected` | `{"data": "Connected", "count": 0}` |
//! | a put of a text value | `key_update` | `{"data": "Key: K set with value: V"}` |
//! | a put of a binary value | `key_update` | `{"data": "Key: K set with value: <binary, N bytes>"}` |
//! | a delete | `key_delete` | `{"data": "Key: K deleted"}` |
//!
//! The replaced service only had puts, so `key_update` keeps meaning exactly that;
//! its clients ignore events they have no handler for, such as `key_delete`.

use std::sync::Arc;

use kvstore_core::wire::{Event, EventKind};
use kvstore_core::{SharedEvent, Watch, WatchItem, WatchOptions};

use super::{engine, protocol};
use crate::auth::Caller;
use crate::http::state::AppState;

/// The `connected` event, as the replaced service sent it (keys in its order).
pub fn connected_packet() -> String {
    engine::out::message(&protocol::out::event(
        "connected",
        r#"{"data":"Connected","count":0}"#,
    ))
}

/// Every change from now on, in revision order, once durable.
pub struct Feed {
    watch: Watch,
}

impl Feed {
    /// Starts at the store's current revision: the next change is the first one.
    pub async fn open(state: &AppState) -> Result<Feed, kvstore_core::Error> {
        let watch = state.store.watch(WatchOptions::default()).await?;
        Ok(Feed { watch })
    }

    /// The next change `caller` may read (others are passed over). Cancel-safe.
    /// Fails with [`kvstore_core::Error::Lagged`] when the client fell too far behind.
    pub async fn next(&mut self, caller: &Caller) -> Result<Arc<SharedEvent>, kvstore_core::Error> {
        loop {
            if let WatchItem::Event(event) = self.watch.next().await? {
                if caller.can_read(&event.key) {
                    return Ok(event);
                }
            }
        }
    }
}

/// The Engine.IO message that tells a client of `event`.
pub fn packet(event: &Event) -> String {
    let (name, text) = match event.kind {
        EventKind::Put => {
            let text = match std::str::from_utf8(&event.value) {
                Ok(value) => format!("Key: {} set with value: {value}", event.key),
                Err(_) => format!(
                    "Key: {} set with value: <binary, {} bytes>",
                    event.key,
                    event.value.len()
                ),
            };
            ("key_update", text)
        }
        EventKind::Delete => ("key_delete", format!("Key: {} deleted", event.key)),
    };
    let data = serde_json::json!({ "data": text }).to_string();
    engine::out::message(&protocol::out::event(name, &data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, key: &str, value: &[u8]) -> Event {
        Event {
            kind,
            key: key.into(),
            value: value.to_vec(),
            revision: 7,
            create_revision: 1,
            version: 2,
            lease: None,
        }
    }

    #[test]
    fn changes_are_worded_as_the_replaced_service_did() {
        assert_eq!(
            packet(&event(EventKind::Put, "k1", b"v1")),
            r#"42["key_update",{"data":"Key: k1 set with value: v1"}]"#
        );
        assert_eq!(
            packet(&event(EventKind::Put, "a\"b", b"line\nnext")),
            r#"42["key_update",{"data":"Key: a\"b set with value: line\nnext"}]"#
        );
        assert_eq!(
            packet(&event(EventKind::Put, "bin", &[0xff, 0, 1])),
            r#"42["key_update",{"data":"Key: bin set with value: <binary, 3 bytes>"}]"#
        );
        assert_eq!(
            packet(&event(EventKind::Delete, "k1", b"")),
            r#"42["key_delete",{"data":"Key: k1 deleted"}]"#
        );
        assert_eq!(
            connected_packet(),
            r#"42["connected",{"data":"Connected","count":0}]"#
        );
    }
}
