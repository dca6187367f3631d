//! Puts with a lease of their own (`?ttl=`): the lease is granted first and the
//! key put on it; when the put does not happen the lease is revoked, unless the
//! put may or may not have been applied.

use super::{Error, Storage};
use crate::condition::Condition;
use crate::txn::{Txn, TxnOp, TxnResponse};
use crate::wire::PutResult;

/// See [`Storage::put_with_ttl`].
pub(super) async fn put<S: Storage + ?Sized>(
    store: &S,
    key: &str,
    value: Vec<u8>,
    condition: Option<Condition>,
    ttl: u64,
) -> Result<(PutResult, u64), Error> {
    let lease = store.grant(ttl).await?.id;
    match store.put_leased(key, value, condition, Some(lease)).await {
        Ok(put) => Ok((put, lease)),
        Err(e) => {
            release(store, lease, Some(&e)).await;
            Err(e)
        }
    }
}

/// See [`Storage::txn_with_ttls`].
pub(super) async fn txn<S: Storage + ?Sized>(
    store: &S,
    mut txn: Txn,
) -> Result<TxnResponse, Error> {
    // Each lease granted, with whether its put is in the `success` branch.
    let mut own: Vec<(bool, u64)> = Vec::new();
    for (in_success, branch) in [(true, &mut txn.success), (false, &mut txn.failure)] {
        for op in branch.iter_mut() {
            let TxnOp::Put { lease, ttl, .. } = op else {
                continue;
            };
            let Some(seconds) = ttl.take() else {
                continue;
            };
            match store.grant(seconds).await {
                Ok(granted) => {
                    *lease = Some(granted.id);
                    own.push((in_success, granted.id));
                }
                Err(e) => {
                    for (_, id) in own {
                        release(store, id, None).await;
                    }
                    return Err(e);
                }
            }
        }
    }
    let answer = store.txn(txn).await;
    for (in_success, id) in own {
        match &answer {
            Ok(a) if a.succeeded != in_success => release(store, id, None).await,
            Ok(_) => {}
            Err(e) => release(store, id, Some(e)).await,
        }
    }
    answer
}

/// Revokes lease `id`, granted as a key's own for a put that did not happen (a
/// failure is logged: the lease then expires with no key). After a write that
/// failed with `error`, only when the store refused it: when it may or may not
/// have been applied the lease is kept and ends with its TTL, since revoking it
/// would delete the key if the write was applied, a delete no client asked for,
/// at a revision no client was given.
async fn release<S: Storage + ?Sized>(store: &S, id: u64, error: Option<&Error>) {
    if let Some(error) = error.filter(|e| !e.refused()) {
        log::warn!(
            "lease {id} is kept until its TTL ends: the write on it may have been \
             applied ({error})"
        );
        return;
    }
    if let Err(e) = store.revoke(id).await {
        log::warn!("revoking lease {id} of a put that did not happen: {e}");
    }
}
