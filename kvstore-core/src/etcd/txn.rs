//! A transaction on etcd: one etcd Txn, our keys under the engine's prefix, its
//! results read from etcd's responses (gets and lists inside it see the writes
//! before them, as etcd runs a transaction's ops in order).

use etcd_client::{
    Compare as EtcdCompare, CompareOp as EtcdOp, DeleteOptions, GetOptions, Txn as EtcdTxn,
    TxnOp as EtcdTxnOp, TxnOpResponse,
};

use super::cache::entry_of;
use super::keys::Keys;
use super::{put_options, put_result};
use crate::storage::Error;
use crate::txn::{
    Compare, CompareOp, Deleted, Got, Listed, Target, Txn, TxnOp, TxnResponse, TxnResult,
    DEFAULT_LIST_LIMIT,
};

/// `txn` as an etcd transaction.
pub(super) fn to_etcd(keys: &Keys, txn: &Txn) -> Result<EtcdTxn, Error> {
    let ops = |branch: &[TxnOp]| {
        branch
            .iter()
            .map(|op| op_of(keys, op))
            .collect::<Result<Vec<_>, Error>>()
    };
    Ok(EtcdTxn::new()
        .when(
            txn.compare
                .iter()
                .map(|c| compare_of(keys, c))
                .collect::<Vec<_>>(),
        )
        .and_then(ops(&txn.success)?)
        .or_else(ops(&txn.failure)?))
}

fn compare_of(keys: &Keys, compare: &Compare) -> EtcdCompare {
    let key = keys.etcd(&compare.key);
    let op = match compare.op {
        CompareOp::Equal => EtcdOp::Equal,
        CompareOp::NotEqual => EtcdOp::NotEqual,
        CompareOp::Less => EtcdOp::Less,
        CompareOp::Greater => EtcdOp::Greater,
    };
    // etcd's numbers are i64; a target past i64::MAX compares as the largest.
    let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    match &compare.target {
        Target::Value(value) => EtcdCompare::value(key, op, value.clone()),
        Target::Version(n) => EtcdCompare::version(key, op, number(*n)),
        Target::CreateRevision(n) => EtcdCompare::create_revision(key, op, number(*n)),
        Target::ModRevision(n) => EtcdCompare::mod_revision(key, op, number(*n)),
        Target::Lease(n) => EtcdCompare::lease(key, op, number(*n)),
    }
}

fn op_of(keys: &Keys, op: &TxnOp) -> Result<EtcdTxnOp, Error> {
    Ok(match op {
        TxnOp::Put {
            key, value, lease, ..
        } => EtcdTxnOp::put(
            keys.etcd(key),
            value.clone(),
            Some(put_options(*lease)?.with_prev_key()),
        ),
        TxnOp::Delete { key } => EtcdTxnOp::delete(keys.etcd(key), None),
        TxnOp::DeletePrefix { prefix } => {
            let (start, end) = keys.range(prefix);
            EtcdTxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
        }
        TxnOp::Get { key } => EtcdTxnOp::get(keys.etcd(key), None),
        TxnOp::List { prefix, limit } => {
            let (start, end) = keys.range(prefix);
            let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
            let options = GetOptions::new()
                .with_range(end)
                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            EtcdTxnOp::get(start, Some(options))
        }
    })
}

/// Our answer from etcd's, for `txn` whose etcd transaction it answers, at `revision`.
pub(super) fn response_of(
    keys: &Keys,
    txn: &Txn,
    answer: &etcd_client::TxnResponse,
    revision: u64,
) -> Result<TxnResponse, Error> {
    let succeeded = answer.succeeded();
    let branch = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let responses = answer.op_responses();
    if responses.len() != branch.len() {
        return Err(Error::Unavailable(format!(
            "etcd answered a transaction of {} ops with {} results",
            branch.len(),
            responses.len()
        )));
    }
    let mismatch = || Error::Unavailable("etcd answered an op with another op's result".into());
    let results = branch
        .iter()
        .zip(responses)
        .map(|(op, response)| {
            Ok(match (op, response) {
                (TxnOp::Put { .. }, TxnOpResponse::Put(put)) => {
                    TxnResult::Put(put_result(revision, put.prev_key()))
                }
                (TxnOp::Delete { .. } | TxnOp::DeletePrefix { .. }, TxnOpResponse::Delete(d)) => {
                    TxnResult::Delete(Deleted {
                        deleted: usize::try_from(d.deleted()).unwrap_or(0),
                    })
                }
                (TxnOp::Get { .. }, TxnOpResponse::Get(get)) => TxnResult::Get(Got {
                    entry: get.kvs().first().and_then(|kv| entry_of(keys, kv)),
                }),
                (TxnOp::List { .. }, TxnOpResponse::Get(get)) => TxnResult::List(Listed {
                    entries: get
                        .kvs()
                        .iter()
                        .filter_map(|kv| entry_of(keys, kv))
                        .collect(),
                    more: get.more(),
                }),
                _ => return Err(mismatch()),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(TxnResponse {
        succeeded,
        revision,
        results,
    })
}
