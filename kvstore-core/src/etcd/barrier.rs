//! The cluster's current revision, read by quorum, shared by every request that
//! waits for it.
//!
//! A consistent read from the cache must show every write acknowledged before the
//! read arrived: it asks etcd for its current revision (a linearizable read of one
//! key, answered through the leader) and waits for the cache to reach it, as
//! kube-apiserver's consistent reads from cache do. One such call serves every
//! request that arrived before it started: a task takes all the waiters there are,
//! makes one call, answers them all, and requests that arrive meanwhile wait for the
//! next call (one that starts after they arrived, as linearizability needs).

use std::sync::{Arc, Mutex};

use etcd_client::GetOptions;
use tokio::sync::{oneshot, Notify};

use super::client::{Connection, Retry};
use crate::storage::Error;

type Waiter = oneshot::Sender<Result<u64, Error>>;

/// See the module docs.
pub struct Barrier {
    waiters: Mutex<Vec<Waiter>>,
    wake: Notify,
}

impl Barrier {
    /// Starts the task that answers waiters, asking `probe` (an etcd key) through
    /// `connection`, on the current runtime (the engine's: the task ends with it).
    pub fn start(connection: Connection, probe: Vec<u8>) -> Arc<Barrier> {
        let barrier = Arc::new(Barrier {
            waiters: Mutex::new(Vec::new()),
            wake: Notify::new(),
        });
        let task = barrier.clone();
        tokio::spawn(async move {
            loop {
                let waiters = std::mem::take(&mut *task.lock());
                if waiters.is_empty() {
                    task.wake.notified().await;
                    continue;
                }
                let answer = current_revision(&connection, &probe).await;
                for waiter in waiters {
                    let _ = waiter.send(answer.clone());
                }
            }
        });
        barrier
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster's current revision, as of some moment after this call.
    pub async fn revision(&self) -> Result<u64, Error> {
        let (tx, rx) = oneshot::channel();
        self.lock().push(tx);
        self.wake.notify_one();
        rx.await
            .map_err(|_| Error::Unavailable("etcd: the revision reader stopped".into()))?
    }
}

/// One linearizable read that returns nothing but the header's revision.
async fn current_revision(connection: &Connection, probe: &[u8]) -> Result<u64, Error> {
    let answer = connection
        .call("reading the current revision", Retry::Read, |mut client| {
            let probe = probe.to_vec();
            async move {
                client
                    .get(probe, Some(GetOptions::new().with_count_only()))
                    .await
            }
        })
        .await?;
    answer
        .header()
        .map(|h| h.revision().max(0) as u64)
        .ok_or_else(|| Error::Unavailable("etcd: an answer without a header".into()))
}
