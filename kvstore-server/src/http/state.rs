//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Storage;
use tokio::sync::watch;

/// Timings of watch streams.
#[derive(Debug, Clone, Copy)]
pub struct WatchTimings {
    /// A progress frame is sent after this long without any frame.
    pub progress: Duration,
    /// WebSocket ping interval.
    pub ping: Duration,
    /// A WebSocket peer silent for this long is dropped.
    pub peer_timeout: Duration,
}

impl Default for WatchTimings {
    fn default() -> Self {
        WatchTimings {
            progress: Duration::from_secs(5),
            ping: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(30),
        }
    }
}

/// Application state handed to every handler.
#[derive(Clone)]
pub struct AppState {
    /// The store, whichever engine it is on.
    pub store: Arc<dyn Storage>,
    /// Becomes `true` when the server starts shutting down; watch streams end then.
    pub shutdown: watch::Receiver<bool>,
    /// Timings of watch streams.
    pub timings: WatchTimings,
    /// Tokens and roles; `None`: the server is open to everyone.
    pub access: Option<Arc<crate::auth::AccessControl>>,
    /// Open watch streams per client, bounded.
    pub watchers: Arc<crate::http::limits::WatcherLimit>,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Log every request (`--access-log`).
    pub access_log: bool,
    /// Origins whose browser apps may call the API (`--cors-origin`); none: no CORS.
    pub cors_origins: Vec<String>,
    /// Most compares, and ops per branch, of a transaction (`--max-txn-ops`).
    pub max_txn_ops: usize,
}

impl AppState {
    /// The state of a server on `store` with the default limits and timings, open
    /// to everyone, that never shuts down by itself: for tests and embedding (see
    /// the app factory, `app`).
    pub fn new(store: Arc<dyn Storage>) -> AppState {
        AppState {
            store,
            shutdown: watch::channel(false).1,
            timings: WatchTimings::default(),
            access: None,
            watchers: crate::http::limits::WatcherLimit::new(10_000),
            body_timeout: Duration::from_secs(30),
            access_log: false,
            cors_origins: Vec::new(),
            max_txn_ops: kvstore_core::txn::DEFAULT_MAX_OPS,
        }
    }
}

/// Completes once the server starts shutting down (never, for a state whose
/// shutdown sender is gone, as in [`AppState::new`]).
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
