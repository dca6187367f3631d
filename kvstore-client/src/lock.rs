//! Locks on leases, the etcd recipe: each waiter puts a key of its own under the
//! lock's name, on its lease, and waits for the deletion of the one created just
//! before it (by `create_revision`): waiters are served in the order they came,
//! and each release wakes one waiter only. A holder that dies stops keeping its
//! lease alive, and its key goes when the TTL runs out: the lock frees itself.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let store = std::sync::Arc::new(kvstore_core::SledStore::open(kvstore_core::SledConfig::temporary())?);
//! # let options = <kvstore_server::Options as clap::Parser>::try_parse_from(["kvstore-server"])?;
//! # let server = kvstore_server::spawn(std::net::TcpListener::bind("127.0.0.1:0")?, None, store, None, None, options)?;
//! # let url = format!("http://{}", server.addr());
//! let client = kvstore_client::Client::new(&url)?;
//! let guard = client.lock("locks/report").await?;
//! // ... only one holder at a time here ...
//! guard.unlock().await?;
//! # Ok(()) }
//! ```

use futures_util::StreamExt;
use kvstore_core::wire::Entry;

use crate::lease::KeepAlive;
use crate::watch::{Update, WatchOptions};
use crate::{Client, Error, EventKind, LeaseLost};

/// The TTL of a lock's lease unless told otherwise, in seconds: how long a lock
/// whose holder died stays held.
pub const DEFAULT_LOCK_TTL: u64 = 10;

impl Client {
    /// Takes the lock `name` (on a lease of [`DEFAULT_LOCK_TTL`]), waiting for the
    /// holders and waiters before this one.
    pub async fn lock(&self, name: &str) -> Result<LockGuard, Error> {
        self.lock_with_ttl(name, DEFAULT_LOCK_TTL).await
    }

    /// [`Client::lock`] on a lease of `ttl` seconds.
    pub async fn lock_with_ttl(&self, name: &str, ttl: u64) -> Result<LockGuard, Error> {
        let lease = self.grant(ttl).await?;
        let prefix = format!("{name}/");
        // Fixed width: no waiter's key is a prefix of another's.
        let key = format!("{prefix}{:016x}", lease.id);
        let mut guard = LockGuard {
            key,
            alive: Some(self.keep_alive(lease)),
        };
        let mine = self
            .put_with_lease(&guard.key, "", lease.id)
            .await?
            .revision;
        loop {
            let (entries, revision) = self.waiters(&prefix).await?;
            let before = entries
                .into_iter()
                .filter(|e| e.create_revision < mine && e.key != guard.key)
                .max_by_key(|e| e.create_revision);
            let Some(before) = before else {
                return Ok(guard);
            };
            log::debug!("lock {name}: waiting for {} to go", before.key);
            let alive = guard.alive.as_ref().ok_or(Error::LeaseLost(
                "the lock's lease is no longer kept alive".into(),
            ))?;
            tokio::select! {
                gone = self.deleted(&before.key, revision + 1) => gone?,
                lost = alive.lost() => {
                    guard.alive = None;
                    return Err(Error::LeaseLost(lost.to_string()));
                }
            }
        }
    }

    /// Every waiter's key under `prefix`, and the revision of the first page read.
    async fn waiters(&self, prefix: &str) -> Result<(Vec<Entry>, u64), Error> {
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        let mut first = None;
        loop {
            let page = self.list(prefix, after.as_deref(), Some(1000)).await?;
            first.get_or_insert(page.revision);
            entries.extend(page.entries);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok((entries, first.unwrap_or(0))),
            }
        }
    }

    /// Waits until `key` is deleted at or after revision `from`.
    async fn deleted(&self, key: &str, from: u64) -> Result<(), Error> {
        let mut watch = self.watch_with(WatchOptions {
            prefix: key.to_string(),
            start_revision: Some(from),
            ..WatchOptions::default()
        });
        while let Some(update) = watch.next().await {
            if let Update::Event(event) = update? {
                if event.key == key && event.kind == EventKind::Delete {
                    return Ok(());
                }
            }
        }
        Err(Error::Connection(
            "the watch for the lock ended before the lock was free".into(),
        ))
    }
}

/// A held lock; see [`Client::lock`]. Dropping it releases the lock in the
/// background (inside a tokio runtime); [`LockGuard::unlock`] releases it now.
#[derive(Debug)]
pub struct LockGuard {
    key: String,
    alive: Option<KeepAlive>,
}

impl LockGuard {
    /// The holder's key (`NAME/<lease id in hex>`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the lock is held on.
    pub fn lease(&self) -> Option<u64> {
        self.alive.as_ref().map(KeepAlive::id)
    }

    /// Waits until the lock is lost (its lease expired or was revoked): from then
    /// on another may hold it.
    pub async fn lost(&self) -> LeaseLost {
        match &self.alive {
            Some(alive) => alive.lost().await,
            None => LeaseLost::Expired,
        }
    }

    /// Whether the lock is lost.
    pub fn is_lost(&self) -> bool {
        self.alive.as_ref().is_none_or(KeepAlive::is_lost)
    }

    /// Releases the lock: revokes its lease, which deletes the holder's key and
    /// wakes the next waiter.
    pub async fn unlock(mut self) -> Result<(), Error> {
        match self.alive.take() {
            Some(alive) => match alive.revoke().await {
                Ok(_) => Ok(()),
                // Gone already: the lock is free.
                Err(e) if e.code() == Some(kvstore_core::ErrorCode::LeaseNotFound) => Ok(()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(alive) = self.alive.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = alive.revoke().await {
                    log::warn!("releasing a lock: {e}");
                }
            });
        }
        // Without a runtime, the lease expires after its TTL.
    }
}
