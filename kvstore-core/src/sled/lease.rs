//! Leases on sled: the table of live leases, and the timer that ends them.
//!
//! A lease's id and granted TTL are kept in the `leases` tree (written by the
//! writer, flushed before a grant is answered); which keys are attached to it is
//! in each key's stored entry, and kept in memory here as an index. Deadlines are
//! in memory only: on open, every lease's TTL restarts in full, as etcd does after
//! a leader change, so that holders get a whole TTL to reconnect after a restart
//! instead of losing their keys to the time the server was down. So a keep-alive
//! writes nothing.
//!
//! Expiry runs in the writer's order: the timer thread sleeps until the nearest
//! deadline (an ordered set of deadlines, no poll of every lease) and hands the
//! lease to the writer, which deletes the keys still attached to it in one group
//! and checks again, in its own order, that the lease was not kept alive meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::codec::{self, Stored};
use super::OrStorage;
use crate::storage::Error;
use crate::wire::{Lease, LeaseInfo};

/// One live lease.
#[derive(Debug)]
struct Live {
    ttl: u64,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Table {
    leases: HashMap<u64, Live>,
    /// The lease of each key on one.
    key_lease: HashMap<String, u64>,
    /// Each lease's deadline, nearest first.
    deadlines: BTreeSet<(Instant, u64)>,
    stopped: bool,
}

impl Table {
    /// Adds a live lease of `ttl` seconds from `now`.
    fn add(&mut self, id: u64, ttl: u64, now: Instant) {
        let deadline = now + Duration::from_secs(ttl);
        let keys = BTreeSet::new();
        self.leases.insert(
            id,
            Live {
                ttl,
                deadline,
                keys,
            },
        );
        self.deadlines.insert((deadline, id));
    }

    fn set_deadline(&mut self, id: u64, deadline: Instant) {
        if let Some(live) = self.leases.get_mut(&id) {
            self.deadlines.remove(&(live.deadline, id));
            live.deadline = deadline;
            self.deadlines.insert((deadline, id));
        }
    }
}

/// The live leases, shared by the store, its writer and the timer.
#[derive(Debug, Default)]
pub(super) struct Leases {
    table: Mutex<Table>,
    wake: Condvar,
}

/// Whole seconds left until `deadline`, rounded up (a live lease never shows 0).
fn seconds_left(deadline: Instant, now: Instant) -> u64 {
    let left = deadline.saturating_duration_since(now);
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

impl Leases {
    /// The leases of the `leases` tree, each with its TTL restarted in full, and
    /// the keys of `kv` attached to them.
    pub fn load(leases: &sled::Tree, kv: &sled::Tree) -> Result<Leases, Error> {
        let now = Instant::now();
        let mut table = Table::default();
        for item in leases.iter() {
            let (id, ttl) = item.or_storage()?;
            table.add(codec::decode_u64(&id)?, codec::decode_u64(&ttl)?, now);
        }
        if !table.leases.is_empty() {
            for item in kv.iter() {
                let (key, bytes) = item.or_storage()?;
                let Some(lease) = Stored::decode_header(&bytes)?.lease else {
                    continue;
                };
                // A key whose lease is gone (its expiry cut short by a crash) is
                // left to no lease: it is deleted when that lease's record is.
                if let Some(live) = table.leases.get_mut(&lease) {
                    live.keys.insert(String::from_utf8_lossy(&key).into_owned());
                }
            }
        }
        Ok(Leases {
            table: Mutex::new(table),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere cannot leave the table half-changed in a way that
        // matters more than stopping expiry: go on with it.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a lease just granted.
    pub fn insert(&self, id: u64, ttl: u64) {
        self.lock().add(id, ttl, Instant::now());
        self.wake.notify_all();
    }

    /// Whether the lease exists and has not reached its deadline.
    pub fn is_live(&self, id: u64) -> bool {
        let now = Instant::now();
        self.lock()
            .leases
            .get(&id)
            .is_some_and(|live| live.deadline > now)
    }

    /// Checks that a put may attach a key to `lease` (`None`: permanent).
    pub fn check_put(&self, lease: Option<u64>) -> Result<(), Error> {
        match lease {
            Some(id) if !self.is_live(id) => Err(Error::LeaseNotFound(id)),
            _ => Ok(()),
        }
    }

    /// Whether the lease has passed its deadline (so an expiry may go ahead).
    pub fn is_expired(&self, id: u64) -> bool {
        let now = Instant::now();
        self.lock()
            .leases
            .get(&id)
            .is_some_and(|live| live.deadline <= now)
    }

    /// Restarts the lease's TTL; not found once its deadline has passed (its
    /// expiry is then under way).
    pub fn keepalive(&self, id: u64) -> Result<Lease, Error> {
        let now = Instant::now();
        let mut table = self.lock();
        let ttl = match table.leases.get(&id) {
            Some(live) if live.deadline > now => live.ttl,
            _ => return Err(Error::LeaseNotFound(id)),
        };
        table.set_deadline(id, now + Duration::from_secs(ttl));
        drop(table);
        self.wake.notify_all();
        Ok(Lease { id, ttl })
    }

    /// The lease's state.
    pub fn info(&self, id: u64) -> Result<LeaseInfo, Error> {
        let now = Instant::now();
        let table = self.lock();
        match table.leases.get(&id) {
            Some(live) if live.deadline > now => Ok(LeaseInfo {
                id,
                ttl: seconds_left(live.deadline, now),
                granted_ttl: live.ttl,
                keys: live.keys.iter().cloned().collect(),
            }),
            _ => Err(Error::LeaseNotFound(id)),
        }
    }

    /// The ids of the live leases, in order.
    pub fn ids(&self) -> Vec<u64> {
        let now = Instant::now();
        let mut ids: Vec<u64> = self
            .lock()
            .leases
            .iter()
            .filter(|(_, live)| live.deadline > now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Records that `key` is now on `lease` (`None`: permanent, or deleted).
    pub fn set_key(&self, key: &str, lease: Option<u64>) {
        let mut table = self.lock();
        if lease.is_none() && table.key_lease.is_empty() {
            return;
        }
        let before = match lease {
            Some(lease) => table.key_lease.insert(key.to_string(), lease),
            None => table.key_lease.remove(key),
        };
        if before == lease {
            return;
        }
        if let Some(live) = before.and_then(|id| table.leases.get_mut(&id)) {
            live.keys.remove(key);
        }
        if let Some(live) = lease.and_then(|id| table.leases.get_mut(&id)) {
            live.keys.insert(key.to_string());
        }
    }

    /// Removes the lease, with the keys attached to it.
    pub fn remove(&self, id: u64) -> Option<BTreeSet<String>> {
        let mut table = self.lock();
        let live = table.leases.remove(&id)?;
        table.deadlines.remove(&(live.deadline, id));
        for key in &live.keys {
            if table.key_lease.get(key) == Some(&id) {
                table.key_lease.remove(key);
            }
        }
        Some(live.keys)
    }

    /// Stops the timer.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }

    /// Starts the timer thread, which hands each lease to `expire` when its
    /// deadline passes (the writer ends it), until `expire` says the writer is
    /// gone (`false`) or [`Leases::stop`].
    pub fn start_timer(
        self: &Arc<Self>,
        expire: impl Fn(u64) -> bool + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>, Error> {
        let leases = self.clone();
        std::thread::Builder::new()
            .name("kvstore-leases".into())
            .spawn(move || leases.run_timer(expire))
            .map_err(|e| Error::Unavailable(format!("cannot start the lease timer: {e}")))
    }

    fn run_timer(&self, expire: impl Fn(u64) -> bool) {
        let mut table = self.lock();
        loop {
            if table.stopped {
                return;
            }
            let now = Instant::now();
            match table.deadlines.first().copied() {
                None => {
                    table = self
                        .wake
                        .wait(table)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                Some((deadline, _)) if deadline > now => {
                    table = self
                        .wake
                        .wait_timeout(table, deadline - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                Some(due @ (_, id)) => {
                    table.deadlines.remove(&due);
                    drop(table);
                    if !expire(id) {
                        return;
                    }
                    table = self.lock();
                }
            }
        }
    }
}
