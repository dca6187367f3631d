//! # kvstore-client
//!
//! A typed async client of the kvstore HTTP API, on reqwest and tokio. It shares
//! its wire types with the server through `kvstore-core` built without the store,
//! so depending on it compiles neither sled nor actix.
//!
//! - [`Client::get`], [`Client::get_entry`], [`Client::put`], [`Client::put_if`]
//!   (compare-and-swap), [`Client::delete`], [`Client::list`].
//! - [`Client::watch`] streams changes; the stream reconnects by itself and
//!   resumes from the last revision it delivered, so each change arrives once.
//! - [`Error`] tells not-found, failed preconditions, bad requests, server errors
//!   and connection failures apart.
//!
//! # Example
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), kvstore_client::Error> {
//! use futures_util::StreamExt;
//! use kvstore_client::{Client, Condition, Error};
//!
//! let client = Client::new("http://localhost:5000")?;
//! let mut changes = client.watch("app/");
//!
//! let put = client.put("app/mode", "blue").await?;
//! assert_eq!(client.get("app/mode").await?, b"blue");
//!
//! // Compare-and-swap: fails if someone wrote in between.
//! match client.put_if("app/mode", "green", Condition::ModRevision(put.revision)).await {
//!     Ok(_) | Err(Error::PreconditionFailed { .. }) => {}
//!     Err(e) => return Err(e),
//! }
//!
//! let event = changes.next().await.expect("the watch is open")?;
//! assert_eq!(event.key, "app/mode");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod client;
mod error;
mod tls;

pub use tls::install_crypto_provider;
mod watch;

pub use client::Client;
pub use error::Error;
pub use kvstore_core::wire::{
    self, DeleteResult, Entry, Event, EventKind, ListPage, PutResult, RestoreResult,
};
pub use kvstore_core::{Condition, ErrorCode};
pub use watch::{Events, Update, Watch, WatchOptions};
