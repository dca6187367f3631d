//! A transaction on the embedded engine: run by the writer, in its order, as one
//! revision of the write group (see `stage`). Compares and reads see the store as
//! the writes before them (in the group, and in the branch) left it.

use super::lease::Leases;
use super::stage::Revision;
use crate::storage::Error;
use crate::txn::{Deleted, Got, Listed, Txn, TxnOp, TxnResponse, TxnResult, DEFAULT_LIST_LIMIT};

/// Runs `txn` in `revision` (checked beforehand: see `storage::check_txn`); a put
/// on a lease that is not live fails it whole.
pub(super) fn apply(
    revision: &mut Revision<'_, '_>,
    txn: &Txn,
    leases: &Leases,
) -> Result<TxnResponse, Error> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let entry = revision
            .get(&compare.key)?
            .map(|stored| stored.into_entry(compare.key.clone()));
        let lease = entry.as_ref().and_then(|e| e.lease).unwrap_or(0);
        if !compare.holds(entry.as_ref(), lease) {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut results = Vec::with_capacity(branch.len());
    for op in branch {
        results.push(match op {
            TxnOp::Put {
                key, value, lease, ..
            } => {
                leases.check_put(*lease)?;
                TxnResult::Put(revision.put(key, value, *lease)?)
            }
            TxnOp::Delete { key } => TxnResult::Delete(Deleted {
                deleted: usize::from(revision.delete(key)?),
            }),
            TxnOp::DeletePrefix { prefix } => TxnResult::Delete(Deleted {
                deleted: revision.delete_prefix(prefix)?,
            }),
            TxnOp::Get { key } => TxnResult::Get(Got {
                entry: revision
                    .get(key)?
                    .map(|stored| stored.into_entry(key.clone())),
            }),
            TxnOp::List { prefix, limit } => {
                let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
                let mut entries = revision
                    .under(prefix)
                    .take(limit.saturating_add(1))
                    .map(|item| item.map(|(key, stored)| stored.into_entry(key)))
                    .collect::<Result<Vec<_>, Error>>()?;
                let more = entries.len() > limit;
                entries.truncate(limit);
                TxnResult::List(Listed { entries, more })
            }
        });
    }
    Ok(TxnResponse {
        succeeded,
        revision: revision.revision - u64::from(revision.is_empty()),
        results,
    })
}
