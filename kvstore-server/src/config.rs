//! Command-line flags, each with an environment variable twin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, ValueEnum};
use kvstore_core::{SledConfig, SledStore, Storage, SyncMode};

use crate::http::state::WatchTimings;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The engine refused.
    #[error(transparent)]
    Store(#[from] kvstore_core::Error),
    /// A file the flags name could not be read.
    #[error("cannot read {0}: {1}")]
    File(String, std::io::Error),
    /// --etcd-endpoints on a build without the etcd engine.
    #[error(
        "this kvstore-server is built without the etcd engine: build it with \
         `cargo build --release -p kvstore-server --features etcd` (or --all-features)"
    )]
    NoEtcd,
}

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

/// Where etcd's API is served (`--etcd-api-listen`): an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdApiListen(pub Option<SocketAddr>);

/// Parses `--etcd-api-listen`: `off`, or an address.
fn etcd_api_address(text: &str) -> Result<EtcdApiListen, String> {
    match text {
        "off" => Ok(EtcdApiListen(None)),
        address => address
            .parse()
            .map(|address| EtcdApiListen(Some(address)))
            .map_err(|_| "expected an address (HOST:PORT) or `off`".to_string()),
    }
}

/// The kvstore server: a key-value store with numbered changes and watches.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvstore-server", version)]
pub struct Options {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "KVSTORE_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,
    /// Address of etcd's v3 gRPC API, for etcdctl and etcd's client libraries
    /// (`off`: not served; port 0 picks a free port; the address is printed).
    #[arg(long, env = "KVSTORE_ETCD_API_LISTEN", default_value = "0.0.0.0:2379", value_parser = etcd_api_address)]
    pub etcd_api_listen: EtcdApiListen,
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
    /// see the sizing rule in docs/performance.md).
    #[arg(long, env = "KVSTORE_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,
    /// How many past revisions (at least) the change history keeps for resuming watches.
    #[arg(long, env = "KVSTORE_RETAIN_REVISIONS", default_value_t = 100_000)]
    pub retain_revisions: u64,
    /// Changes buffered for watchers (on sled, revisions: a transaction's changes
    /// count once); a watcher further behind is sent `lagged`.
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
    /// Serve from this etcd cluster (client URLs, comma-separated or repeated)
    /// instead of the embedded store; --data-dir is then unused.
    #[arg(long, env = "KVSTORE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The prefix of our keys in the etcd cluster (keeps them apart from other
    /// users' keys).
    #[arg(long, env = "KVSTORE_ETCD_PREFIX", default_value = "kvstore/")]
    pub etcd_prefix: String,
    /// The etcd user, for clusters with authentication on (with --etcd-password).
    #[arg(long, env = "KVSTORE_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// The etcd user's password.
    #[arg(
        long,
        env = "KVSTORE_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,
    /// CA certificates (PEM) of the etcd members' certificates, for https://
    /// endpoints (the system's roots otherwise).
    #[arg(long, env = "KVSTORE_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for etcd, for clusters that ask for one.
    #[arg(long, env = "KVSTORE_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert-file.
    #[arg(long, env = "KVSTORE_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// Log one line per request (at info, target `kvstore_server::access`).
    #[arg(long, env = "KVSTORE_ACCESS_LOG")]
    pub access_log: bool,
    /// An origin (`https://app.example.com`, or `*` for any) whose browser apps may
    /// call the API, with a bearer token; repeatable, comma-separated in the
    /// variable. None by default: no CORS headers, and the console needs none.
    #[arg(long, env = "KVSTORE_CORS_ORIGIN", value_delimiter = ',', value_parser = crate::http::cors::parse_origin)]
    pub cors_origin: Vec<String>,
    /// Most compares, and most ops in each branch, of one transaction (on etcd,
    /// etcd's own `--max-txn-ops`, 128 by default, applies too).
    #[arg(long, env = "KVSTORE_MAX_TXN_OPS", default_value_t = kvstore_core::txn::DEFAULT_MAX_OPS,
          value_parser = txn_ops)]
    pub max_txn_ops: usize,
}

/// `--max-txn-ops`: 1 to 10,000.
fn txn_ops(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err("must be a whole number from 1 to 10000".into()),
    }
}

impl Options {
    /// Opens the store these flags describe: the one place the engine is chosen.
    /// With --etcd-endpoints the etcd engine, else the embedded sled store.
    pub fn open_store(&self) -> Result<Arc<dyn Storage>, OpenError> {
        if !self.etcd_endpoints.is_empty() {
            return self.open_etcd();
        }
        Ok(Arc::new(SledStore::open(self.sled_config())?))
    }

    #[cfg(feature = "etcd")]
    fn open_etcd(&self) -> Result<Arc<dyn Storage>, OpenError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| OpenError::File(path.display().to_string(), e))
        };
        let mut config = kvstore_core::EtcdConfig::new(self.etcd_endpoints.clone());
        config.prefix = self.etcd_prefix.clone();
        config.user = self.etcd_user.clone().zip(self.etcd_password.clone());
        config.max_value_bytes = self.max_value_bytes;
        config.event_buffer = self.event_buffer;
        if self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some() {
            config.tls = Some(kvstore_core::EtcdTls {
                ca_pem: self.etcd_ca_file.as_ref().map(read).transpose()?,
                identity: match (&self.etcd_cert_file, &self.etcd_key_file) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                },
            });
        }
        Ok(Arc::new(kvstore_core::EtcdStore::open(config)?))
    }

    #[cfg(not(feature = "etcd"))]
    fn open_etcd(&self) -> Result<Arc<dyn Storage>, OpenError> {
        Err(OpenError::NoEtcd)
    }

    /// The engine's settings, for the start-up line.
    pub fn describe_store(&self) -> String {
        if self.etcd_endpoints.is_empty() {
            format!(
                "data dir {}, sync {:?}, keeping {} revisions of history",
                self.data_dir.display(),
                self.sync,
                self.retain_revisions
            )
        } else {
            format!(
                "etcd cluster {} (keys under {:?})",
                self.etcd_endpoints.join(","),
                self.etcd_prefix
            )
        }
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
