//! # kvstore-client
//!
//! A typed async client of the kvstore HTTP API, on reqwest and tokio. It shares
//! its wire types with the server through `kvstore-core` built without the store,
//! so depending on it compiles neither sled nor actix.
//!
//! - [`Client::get`], [`Client::get_entry`], [`Client::put`], [`Client::put_if`]
//!   (compare-and-swap), [`Client::delete`], [`Client::list`].
//! - [`Client::transaction`] (or [`Client::txn`]): compares, then writes and reads
//!   at one revision; [`Client::delete_prefix`].
//! - [`Client::watch`] streams changes; the stream reconnects by itself and
//!   resumes from the last revision it delivered, so each change arrives once.
//! - [`Client::with_urls`] (or a comma-separated [`Client::new`]) takes several
//!   replicas of one store and moves to the next when one cannot be reached,
//!   watches included: see [Several servers](Client#several-servers).
//! - Leases: [`Client::grant`], [`Client::put_with_lease`], [`Client::put_with_ttl`],
//!   [`Client::keep_alive`] (a background task that says when the lease is lost),
//!   [`Client::revoke`]; and [`Client::lock`], a lock held on a lease, granted in
//!   the order it was asked for.
//! - [`Error`] tells not-found, failed preconditions, bad requests, server errors
//!   and connection failures apart.
//!
//! Whole programs are in `examples/`: `config_watcher` (a configuration kept current
//! through reconnects), `leader` (leader election with [`Client::lock`]) and
//! `cas_counter` (increments that never get lost, by compare-and-swap); run one with
//! `cargo run -p kvstore-client --example NAME` against a server at `KV_URL`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A real server in this process, on a free port (the example's localhost:5000).
//! # let store = std::sync::Arc::new(kvstore_core::SledStore::open(kvstore_core::SledConfig::temporary())?);
//! # let options = <kvstore_server::Options as clap::Parser>::try_parse_from(["kvstore-server"])?;
//! # let server = kvstore_server::spawn(std::net::TcpListener::bind("127.0.0.1:0")?, None, store, None, None, options)?;
//! # let url = format!("http://{}", server.addr());
//! use futures_util::StreamExt;
//! use kvstore_client::{Client, Condition, Error, Update, WatchOptions};
//!
//! let client = Client::new(&url)?; // e.g. "http://localhost:5000"
//! // Every change after the store's current revision, even those made before the
//! // watch has connected.
//! let from = client.health().await? + 1;
//! let mut changes = client.watch_with(WatchOptions {
//!     prefix: "app/".into(),
//!     start_revision: Some(from),
//!     ..WatchOptions::default()
//! });
//!
//! let put = client.put("app/mode", "blue").await?;
//! assert_eq!(client.get("app/mode").await?, b"blue");
//!
//! // Compare-and-swap: fails if someone wrote in between.
//! match client.put_if("app/mode", "green", Condition::ModRevision(put.revision)).await {
//!     Ok(_) | Err(Error::PreconditionFailed { .. }) => {}
//!     Err(e) => return Err(e.into()),
//! }
//!
//! let Some(Ok(Update::Event(event))) = changes.next().await else {
//!     panic!("the watch ended")
//! };
//! assert_eq!((event.key.as_str(), event.revision), ("app/mode", put.revision));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod client;
mod endpoints;
mod error;
mod history;
mod lease;
mod lock;
mod tls;
pub mod txn;

pub use tls::install_crypto_provider;
mod watch;

pub use client::Client;
pub use error::Error;
pub use kvstore_core::wire::{
    self, DeletePrefixResult, DeleteResult, Entry, EntryAt, Event, EventKind, HistoryPage, Lease,
    LeaseInfo, ListPage, PutResult, RestoreResult, RevokeResult,
};
pub use kvstore_core::{Condition, ErrorCode};
pub use lease::{KeepAlive, LeaseLost};
pub use lock::LockGuard;
pub use txn::TxnBuilder;
pub use watch::{Events, Update, Watch, WatchOptions};

/// The Rust examples of the docs, compiled as doctests of this crate (`cargo test
/// --doc -p kvstore-client`) so that they stay true to the SDK.
#[cfg(doctest)]
mod docs {
    #[doc = include_str!("../../docs/sdk.md")]
    struct Sdk;
    #[doc = include_str!("../../docs/http-api.md")]
    struct HttpApi;
    #[doc = include_str!("../../docs/leases-and-locks.md")]
    struct LeasesAndLocks;
    #[doc = include_str!("../../docs/etcd-engine.md")]
    struct EtcdEngine;
}
