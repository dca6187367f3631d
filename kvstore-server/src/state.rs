//! What every handler shares.

use std::time::Duration;

use kvstore_core::Store;
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
    /// The store.
    pub store: Store,
    /// Becomes `true` when the server starts shutting down; watch streams end then.
    pub shutdown: watch::Receiver<bool>,
    /// Timings of watch streams.
    pub timings: WatchTimings,
    /// Tokens and roles; `None`: the server is open to everyone.
    pub access: Option<std::sync::Arc<crate::auth::AccessControl>>,
    /// Open watch streams per client, bounded.
    pub watchers: std::sync::Arc<crate::limits::WatcherLimit>,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
}
