//! A change as it is handed to every watcher: shared, and encoded once.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::wire::Event;

/// One change, shared by every watcher that receives it (behind an [`Arc`]), with
/// its JSON watch frame encoded on first use and then reused: a change delivered to
/// a thousand watchers is serialized once.
#[derive(Debug)]
pub struct SharedEvent {
    event: Event,
    json: OnceLock<Bytes>,
}

impl SharedEvent {
    /// Wraps `event` for sharing.
    pub fn new(event: Event) -> Arc<SharedEvent> {
        Arc::new(SharedEvent {
            event,
            json: OnceLock::new(),
        })
    }

    /// The change itself.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The change as its JSON watch frame (`{"type":"put",...}`), the same bytes for
    /// every caller.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| match serde_json::to_vec(&self.event) {
                Ok(json) => Bytes::from(json),
                // An event is strings and numbers: encoding cannot fail.
                Err(e) => {
                    log::error!(
                        "cannot encode the event at revision {}: {e}",
                        self.event.revision
                    );
                    Bytes::new()
                }
            })
            .clone()
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

impl PartialEq for SharedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event == other.event
    }
}

impl Eq for SharedEvent {}
