//! A program's configuration kept current from kvstore: every key under a prefix,
//! then each change as it happens. The watch reconnects by itself after a dropped
//! connection or a server restart and resumes after the last revision it
//! delivered, so no change is missed or applied twice.
//!
//! ```sh
//! KV_URL=http://localhost:5000 cargo run -p kvstore-client --example config_watcher -- app/
//! kv put app/mode blue      # in another terminal
//! ```

use std::collections::BTreeMap;

use futures_util::StreamExt;
use kvstore_client::{Client, EventKind, Update, WatchOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KV_URL").unwrap_or_else(|_| "http://localhost:5000".into());
    let prefix = std::env::args().nth(1).unwrap_or_else(|| "app/".into());
    let client = Client::new(&url)?;

    // The entries as of one revision, then every change after it.
    let mut config: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut updates = client.watch_with(WatchOptions {
        prefix: prefix.clone(),
        initial: true,
        ..WatchOptions::default()
    });
    while let Some(update) = updates.next().await {
        match update? {
            Update::Entry(entry) => {
                config.insert(entry.key, entry.value);
            }
            Update::Synced { revision } => {
                println!(
                    "{} keys under {prefix:?} as of revision {revision}",
                    config.len()
                );
            }
            Update::Event(event) => {
                match event.kind {
                    EventKind::Put => config.insert(event.key.clone(), event.value),
                    EventKind::Delete => config.remove(&event.key),
                };
                println!("revision {}: {} changed", event.revision, event.key);
            }
            Update::Reconnecting { reason, delay } => {
                eprintln!("connection lost ({reason}); resuming in {delay:?}");
            }
            _ => {}
        }
    }
    Ok(())
}
