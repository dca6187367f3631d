//! Leases on etcd: etcd's own (grant, keep-alive, revoke, time-to-live). etcd
//! deletes a lease's keys itself when it ends, at one revision, and this replica's
//! copy sees the deletions through its watch like any other change.

use etcd_client::{LeaseGrantOptions, LeaseTimeToLiveOptions};

use super::client::Retry;
use super::EtcdStore;
use crate::lease::check_ttl;
use crate::storage::Error;
use crate::wire::{Lease, LeaseInfo, RevokeResult};

/// Whether etcd's answer says the lease does not exist (expired or revoked).
fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Unavailable(m) if m.contains("lease not found"))
}

/// `e`, or [`Error::LeaseNotFound`] when etcd says so.
fn lease_error(id: u64, e: Error) -> Error {
    if is_not_found(&e) {
        Error::LeaseNotFound(id)
    } else {
        e
    }
}

/// etcd's id for ours: ids are positive i64s there. One above is no lease of etcd's.
fn etcd_id(id: u64) -> Result<i64, Error> {
    i64::try_from(id)
        .ok()
        .filter(|&id| id > 0)
        .ok_or(Error::LeaseNotFound(id))
}

impl EtcdStore {
    pub(super) async fn grant_lease(&self, ttl: u64) -> Result<Lease, Error> {
        check_ttl(ttl)?;
        let answer = self
            .inner
            .connection
            .call("a lease grant", Retry::Write, |mut client| async move {
                client
                    .lease_grant(ttl as i64, None::<LeaseGrantOptions>)
                    .await
            })
            .await?;
        if !answer.error().is_empty() {
            return Err(Error::Unavailable(format!("etcd: {}", answer.error())));
        }
        Ok(Lease {
            id: answer.id().max(0) as u64,
            ttl: answer.ttl().max(0) as u64,
        })
    }

    pub(super) async fn keepalive_lease(&self, id: u64) -> Result<Lease, Error> {
        let lease = etcd_id(id)?;
        // A keep-alive is safe to repeat: it only restarts the TTL.
        let ttl = self
            .inner
            .connection
            .call("a lease keep-alive", Retry::Read, |mut client| async move {
                let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok(answers.message().await?.map_or(0, |a| a.ttl()))
            })
            .await
            .map_err(|e| lease_error(id, e))?;
        if ttl <= 0 {
            return Err(Error::LeaseNotFound(id));
        }
        Ok(Lease {
            id,
            ttl: ttl as u64,
        })
    }

    pub(super) async fn revoke_lease(&self, id: u64) -> Result<RevokeResult, Error> {
        let lease = etcd_id(id)?;
        let answer = self
            .inner
            .connection
            .call("a lease revoke", Retry::Write, |mut client| async move {
                client.lease_revoke(lease).await
            })
            .await
            .map_err(|e| lease_error(id, e))?;
        Ok(RevokeResult {
            revision: self.answered(answer.header())?,
        })
    }

    /// The ids of the cluster's leases (etcd keeps no owner: every program's).
    pub(super) async fn lease_ids(&self) -> Result<Vec<u64>, Error> {
        let answer = self
            .inner
            .connection
            .call("a lease list", Retry::Read, |mut client| async move {
                client.leases().await
            })
            .await?;
        let mut ids: Vec<u64> = answer
            .leases()
            .iter()
            .filter_map(|l| u64::try_from(l.id()).ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    pub(super) async fn lease_info(&self, id: u64) -> Result<LeaseInfo, Error> {
        let lease = etcd_id(id)?;
        let answer = self
            .inner
            .connection
            .call("a lease read", Retry::Read, |mut client| async move {
                client
                    .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
                    .await
            })
            .await
            .map_err(|e| lease_error(id, e))?;
        // etcd answers -1 for a lease that is gone.
        if answer.ttl() < 0 {
            return Err(Error::LeaseNotFound(id));
        }
        let mut keys: Vec<String> = answer
            .keys()
            .iter()
            .filter_map(|k| self.inner.keys.ours(k))
            .collect();
        keys.sort();
        Ok(LeaseInfo {
            id,
            ttl: answer.ttl() as u64,
            granted_ttl: answer.granted_ttl().max(0) as u64,
            keys,
        })
    }
}
