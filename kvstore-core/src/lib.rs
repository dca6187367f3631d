//! # kvstore-core
//!
//! The data model of kvstore, the wire types its server and clients share, and the
//! storage engines behind one interface.
//!
//! - Keys are non-empty UTF-8 strings of at most 4 KiB; `/` is an ordinary character.
//! - Values are bytes (1 MiB at most by default).
//! - Every change gets a store-wide **revision** (a u64 that only grows and is never
//!   reused, also across restarts). Each key records `create_revision`,
//!   `mod_revision` and `version`, as in etcd.
//! - Changes are kept in a history so a watcher can resume from any revision still
//!   retained, and are shown to watchers only once durable, in revision order.
//!
//! Modules and features:
//!
//! | module | feature | what it holds |
//! | --- | --- | --- |
//! | [`key`], [`lease`], [`wire`], [`txn`], [`ErrorCode`], [`Condition`] | always | rules for keys and leases, JSON shapes, transactions, the error table, write conditions |
//! | [`storage`] | `storage` | the [`Storage`] interface every engine implements |
//! | `sled` | `sled` (default) | the embedded engine, [`SledStore`] |
//! | `etcd` | `etcd` | the engine on an etcd cluster, `EtcdStore` |
//!
//! A client builds this crate with `default-features = false`, so it compiles no
//! engine.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kvstore_core::{Condition, SledConfig, SledStore, Storage, WatchItem, WatchOptions};
//!
//! let store = SledStore::open(SledConfig::temporary())?;
//! let mut watch = store
//!     .watch(WatchOptions { prefix: "app/".into(), ..Default::default() })
//!     .await?;
//!
//! let first = store.put("app/mode", b"blue".to_vec(), None).await?;
//! // Compare-and-swap: only replace the value we read.
//! store
//!     .put("app/mode", b"green".to_vec(), Some(Condition::ModRevision(first.revision)))
//!     .await?;
//!
//! let WatchItem::Event(event) = watch.next().await? else { unreachable!() };
//! assert_eq!((event.key.as_str(), event.value.as_slice()), ("app/mode", &b"blue"[..]));
//! assert_eq!(event.revision, first.revision);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod condition;
mod error_code;
pub mod key;
pub mod lease;
pub mod txn;
pub mod wire;

#[cfg(feature = "storage")]
pub mod storage;

#[cfg(feature = "sled")]
mod sled;

#[cfg(feature = "etcd")]
mod etcd;

pub use condition::Condition;
pub use error_code::ErrorCode;

#[cfg(feature = "storage")]
pub use storage::{
    Error, SharedEvent, Snapshot, Status, Storage, Watch, WatchItem, WatchOptions, WatchStream,
};

#[cfg(feature = "sled")]
pub use crate::sled::{SledConfig, SledStore, SyncMode};

#[cfg(feature = "etcd")]
pub use crate::etcd::{EtcdConfig, EtcdStore, EtcdTls};
