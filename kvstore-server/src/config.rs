//! Command-line flags, each with an environment variable twin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, ValueEnum};
use kvstore_core::{SledConfig, SledStore, Storage, SyncMode};

use crate::state::WatchTimings;

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sync {
    /// Acknowledge a write once flushed to disk (concurrent writes share a flush).
    Always,
    /// Acknowledge once in memory; a crash loses up to the last 500 ms of writes.
    None,
}

/// Parses `--max-value-bytes`: 1 byte to [`kvstore_core::key::MAX_VALUE_BYTES_LIMIT`].
fn value_limit(text: &str) -> Result<usize, String> {
    let max = kvstore_core::key::MAX_VALUE_BYTES_LIMIT;
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of bytes from 1 to {max}")),
    }
}

/// The kvstore server: a key-value store with numbered changes and watches.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvstore-server", version)]
pub struct Options {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "KVSTORE_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,
    /// Folder of the data files (created if missing).
    #[arg(long, env = "KVSTORE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Durability of acknowledged writes.
    #[arg(long, env = "KVSTORE_SYNC", value_enum, default_value_t = Sync::Always)]
    pub sync: Sync,
    /// Largest value accepted, in bytes (at most 1 GiB).
    #[arg(long, env = "KVSTORE_MAX_VALUE_BYTES", default_value_t = kvstore_core::key::DEFAULT_MAX_VALUE_BYTES, value_parser = value_limit)]
    pub max_value_bytes: usize,
    /// Page cache size, in MiB (RSS is at most about 10 MB + 2 × this + 140 bytes a key;
    /// see the sizing rule in the README).
    #[arg(long, env = "KVSTORE_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,
    /// How many past revisions (at least) the change history keeps for resuming watches.
    #[arg(long, env = "KVSTORE_RETAIN_REVISIONS", default_value_t = 100_000)]
    pub retain_revisions: u64,
    /// Events buffered for watchers; a watcher further behind is sent `lagged`.
    #[arg(long, env = "KVSTORE_EVENT_BUFFER", default_value_t = 4096)]
    pub event_buffer: usize,
    /// Seconds without a frame after which a watch gets a progress frame.
    #[arg(long, env = "KVSTORE_PROGRESS_INTERVAL", default_value_t = 5.0)]
    pub progress_interval: f64,
    /// Seconds between WebSocket pings.
    #[arg(long, env = "KVSTORE_PING_INTERVAL", default_value_t = 10.0)]
    pub ping_interval: f64,
    /// Seconds of silence after which a WebSocket watcher is dropped.
    #[arg(long, env = "KVSTORE_PEER_TIMEOUT", default_value_t = 30.0)]
    pub peer_timeout: f64,
    /// Access file (TOML) of bearer tokens and their roles; without it the server
    /// is open to anyone who reaches it.
    #[arg(long, env = "KVSTORE_ACCESS_FILE")]
    pub access_file: Option<PathBuf>,
    /// Serve HTTPS and WSS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "KVSTORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "KVSTORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most connections each worker thread accepts at once.
    #[arg(long, env = "KVSTORE_MAX_CONNECTIONS", default_value_t = 25_000)]
    pub max_connections: usize,
    /// Most watch streams one token (or one address, without an access file) may
    /// hold open.
    #[arg(
        long,
        env = "KVSTORE_MAX_WATCHERS_PER_CLIENT",
        default_value_t = 10_000
    )]
    pub max_watchers_per_client: usize,
    /// Seconds a request's headers, and separately its body, may take to arrive
    /// (slow clients get 408).
    #[arg(long, env = "KVSTORE_REQUEST_TIMEOUT", default_value_t = 30.0)]
    pub request_timeout: f64,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "KVSTORE_WORKERS")]
    pub workers: Option<usize>,
    /// Log one line per request (at info, target `kvstore_server::access`).
    #[arg(long, env = "KVSTORE_ACCESS_LOG")]
    pub access_log: bool,
    /// An origin (`https://app.example.com`, or `*` for any) whose browser apps may
    /// call the API, with a bearer token; repeatable, comma-separated in the
    /// variable. None by default: no CORS headers, and the console needs none.
    #[arg(long, env = "KVSTORE_CORS_ORIGIN", value_delimiter = ',', value_parser = crate::cors::parse_origin)]
    pub cors_origin: Vec<String>,
}

impl Options {
    /// Opens the store these flags describe: the one place the engine is chosen.
    pub fn open_store(&self) -> Result<Arc<dyn Storage>, kvstore_core::Error> {
        Ok(Arc::new(SledStore::open(self.sled_config())?))
    }

    /// Where the data is, for the start-up line and errors.
    pub fn describe_store(&self) -> String {
        format!("data dir {}", self.data_dir.display())
    }

    /// The configuration of the embedded (sled) store these flags describe.
    pub fn sled_config(&self) -> SledConfig {
        let mut config = SledConfig::new(&self.data_dir);
        config.sync = match self.sync {
            Sync::Always => SyncMode::Always,
            Sync::None => SyncMode::None,
        };
        config.max_value_bytes = self.max_value_bytes;
        config.cache_capacity = self.cache_mb * 1024 * 1024;
        config.retain_revisions = self.retain_revisions;
        config.event_buffer = self.event_buffer;
        config
    }

    /// The timings of watch streams.
    pub fn timings(&self) -> WatchTimings {
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.01));
        WatchTimings {
            progress: secs(self.progress_interval),
            ping: secs(self.ping_interval),
            peer_timeout: secs(self.peer_timeout),
        }
    }
}
