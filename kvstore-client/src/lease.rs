//! Leases: grant, keep alive, revoke; keys put on a lease; a keep-alive task.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let store = std::sync::Arc::new(kvstore_core::SledStore::open(kvstore_core::SledConfig::temporary())?);
//! # let options = <kvstore_server::Options as clap::Parser>::try_parse_from(["kvstore-server"])?;
//! # let server = kvstore_server::spawn(std::net::TcpListener::bind("127.0.0.1:0")?, None, store, None, None, options)?;
//! # let url = format!("http://{}", server.addr());
//! use kvstore_client::Client;
//!
//! let client = Client::new(&url)?;
//! let lease = client.grant(10).await?;
//! client.put_with_lease("workers/a", "up", lease.id).await?;
//! // Kept alive in the background until dropped; the key goes when it stops.
//! let alive = client.keep_alive(lease);
//! assert!(!alive.is_lost());
//! alive.revoke().await?;
//! assert!(client.get("workers/a").await.is_err());
//! # Ok(()) }
//! ```

use std::time::Duration;

use kvstore_core::wire::{Lease, LeaseInfo, PutResult, RevokeResult};
use kvstore_core::ErrorCode;
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use crate::client::{check, decode, Resend};
use crate::{Client, Error};

/// Why a kept-alive lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLost {
    /// The server no longer knows it: it expired or was revoked by someone else.
    Expired,
    /// No keep-alive got through before its TTL ran out (the server was out of
    /// reach); the lease has expired on the server by now, or soon will.
    Unreachable(String),
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseLost::Expired => f.write_str("the lease expired or was revoked"),
            LeaseLost::Unreachable(why) => {
                write!(f, "no keep-alive reached the server within the TTL: {why}")
            }
        }
    }
}

impl Client {
    /// A request about lease `id` (`suffix`: `""` or `/keepalive`), moving on to
    /// another server as `resend` allows.
    async fn lease_request(
        &self,
        method: reqwest::Method,
        id: u64,
        suffix: &str,
        resend: Resend,
    ) -> Result<reqwest::Response, Error> {
        self.send(resend, |base| {
            self.http
                .request(method.clone(), format!("{base}/v1/leases/{id}{suffix}"))
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; the answer has the TTL granted (the server
    /// may raise a short one).
    pub async fn grant(&self, ttl: u64) -> Result<Lease, Error> {
        let body = serde_json::json!({ "ttl": ttl });
        let res = self
            .send(Resend::Write, |base| {
                self.http.post(format!("{base}/v1/leases")).json(&body)
            })
            .await?;
        decode(check(res, "").await?).await
    }

    /// Restarts the lease's TTL once.
    pub async fn keep_alive_once(&self, id: u64) -> Result<Lease, Error> {
        // Sending a keep-alive twice does no harm: it may go to the next server.
        let res = self
            .lease_request(reqwest::Method::POST, id, "/keepalive", Resend::Read)
            .await?;
        decode(check(res, "").await?).await
    }

    /// Revokes the lease: its keys are deleted, at one revision.
    pub async fn revoke(&self, id: u64) -> Result<RevokeResult, Error> {
        let res = self
            .lease_request(reqwest::Method::DELETE, id, "", Resend::Write)
            .await?;
        decode(check(res, "").await?).await
    }

    /// The lease's TTL left, granted TTL and keys.
    pub async fn lease(&self, id: u64) -> Result<LeaseInfo, Error> {
        let res = self
            .lease_request(reqwest::Method::GET, id, "", Resend::Read)
            .await?;
        decode(check(res, "").await?).await
    }

    /// Sets `key` to `value` on lease `id`: the key is deleted when the lease ends.
    pub async fn put_with_lease(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        id: u64,
    ) -> Result<PutResult, Error> {
        self.put_query(key, value.into(), &format!("lease={id}"))
            .await
    }

    /// Sets `key` to `value` on a lease of its own of `ttl` seconds.
    pub async fn put_with_ttl(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        ttl: u64,
    ) -> Result<PutResult, Error> {
        self.put_query(key, value.into(), &format!("ttl={ttl}"))
            .await
    }

    /// A put with a query string (`lease=ID`, `ttl=N`).
    async fn put_query(&self, key: &str, value: Vec<u8>, query: &str) -> Result<PutResult, Error> {
        let path = format!("{}?{query}", Client::key_path(key));
        let value = bytes::Bytes::from(value);
        let res = self
            .send(Resend::Write, |base| {
                self.http.put(format!("{base}{path}")).body(value.clone())
            })
            .await?;
        decode(check(res, key).await?).await
    }

    /// Keeps `lease` alive in the background (a keep-alive every third of its TTL)
    /// until the [`KeepAlive`] is dropped or revoked, or the lease is lost.
    /// Needs a tokio runtime.
    pub fn keep_alive(&self, lease: Lease) -> KeepAlive {
        let (tell, lost) = watch::channel(None);
        let task = tokio::spawn(keep_alive_loop(self.clone(), lease, tell));
        KeepAlive {
            client: self.clone(),
            lease,
            lost,
            task,
        }
    }
}

/// A lease kept alive by a background task; see [`Client::keep_alive`]. Dropping
/// it stops the keep-alives (the lease then expires after its TTL).
#[derive(Debug)]
pub struct KeepAlive {
    client: Client,
    lease: Lease,
    lost: watch::Receiver<Option<LeaseLost>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// The lease's id.
    pub fn id(&self) -> u64 {
        self.lease.id
    }

    /// The lease's granted TTL, in seconds.
    pub fn ttl(&self) -> u64 {
        self.lease.ttl
    }

    /// Whether the lease is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Waits until the lease is lost, and says why.
    pub async fn lost(&self) -> LeaseLost {
        let mut lost = self.lost.clone();
        let why = match lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or(LeaseLost::Expired),
            // The task ended without a word: it was stopped, so the lease goes.
            Err(_) => LeaseLost::Expired,
        };
        why
    }

    /// Stops the keep-alives and revokes the lease now (its keys go at once).
    pub async fn revoke(self) -> Result<RevokeResult, Error> {
        self.task.abort();
        self.client.revoke(self.lease.id).await
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive_loop(client: Client, lease: Lease, tell: watch::Sender<Option<LeaseLost>>) {
    let ttl = Duration::from_secs(lease.ttl.max(1));
    let every = ttl / 3;
    // When the lease ends on the server unless a keep-alive gets through.
    let mut deadline = Instant::now() + ttl;
    loop {
        sleep(every).await;
        let sent = Instant::now();
        match client.keep_alive_once(lease.id).await {
            Ok(kept) => deadline = sent + Duration::from_secs(kept.ttl.max(1)),
            Err(e) if e.code() == Some(ErrorCode::LeaseNotFound) => {
                tell.send_replace(Some(LeaseLost::Expired));
                return;
            }
            Err(e) if Instant::now() >= deadline => {
                tell.send_replace(Some(LeaseLost::Unreachable(e.to_string())));
                return;
            }
            Err(e) => log::warn!("keep-alive of lease {} failed, trying again: {e}", lease.id),
        }
    }
}
