//! # kvstore-core
//!
//! The data model of kvstore and, with the default `store` feature, the embedded
//! store that keeps it on [sled].
//!
//! - Keys are non-empty UTF-8 strings of at most 4 KiB; `/` is an ordinary character.
//! - Values are bytes (1 MiB at most by default).
//! - Every change gets a store-wide **revision** (a u64 that only grows and is never
//!   reused, also across restarts). Each key records `create_revision`,
//!   `mod_revision` and `version`, as in etcd.
//! - Changes are kept in a history so a watcher can resume from any revision still
//!   retained, and are shown to watchers only once durable, in revision order.
//!
//! The [`wire`] and [`key`] modules hold what the server and its clients share; they
//! build without the store (`default-features = false`), so a client does not
//! compile sled.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kvstore_core::{Config, Precondition, Store, WatchItem, WatchOptions};
//!
//! let store = Store::open(Config::temporary())?;
//! let mut watch = store
//!     .watch(WatchOptions { prefix: "app/".into(), ..Default::default() })
//!     .await?;
//!
//! let first = store.put("app/mode", b"blue".to_vec(), Precondition::None).await?;
//! // Compare-and-swap: only replace the value we read.
//! store
//!     .put("app/mode", b"green".to_vec(), Precondition::ModRevision(first.revision))
//!     .await?;
//!
//! let WatchItem::Event(event) = watch.next().await? else { unreachable!() };
//! assert_eq!((event.key.as_str(), event.value.as_slice()), ("app/mode", &b"blue"[..]));
//! assert_eq!(event.revision, first.revision);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod key;
pub mod wire;

#[cfg(feature = "store")]
mod store;

#[cfg(feature = "store")]
pub use store::{Config, Error, Precondition, Store, SyncMode, Watch, WatchItem, WatchOptions};
