//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use kvstore_core::txn::{self, Compare, CompareOp, Target, Txn, TxnOp, TxnResult};
use kvstore_core::wire::Entry;
use kvstore_core::{Condition, Error};
use tonic::{Request, Response, Status};

use super::keys::{key_value, scan, signed, text, unsigned, Span};
use super::pb::etcdserverpb::compare::{CompareResult, TargetUnion};
use super::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use super::pb::etcdserverpb::{
    kv_server::Kv, request_op, response_op, CompactionRequest, CompactionResponse,
    Compare as PbCompare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RangeStreamResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use super::status::{denied, from_store, key_not_provided, not_served, too_many_ops};
use super::Api;
use crate::auth::Caller;

/// The part of a range's answer its options shape: filters, order, limit, and
/// whether values or only the count are sent. `count` is every key of the range,
/// as etcd counts it, before filters and limit.
fn shape(mut entries: Vec<Entry>, r: &RangeRequest) -> RangeResponse {
    let count = entries.len();
    let at_least = |min: i64, n: u64| unsigned(min).is_none_or(|min| n >= min);
    let at_most = |max: i64, n: u64| unsigned(max).is_none_or(|max| n <= max);
    entries.retain(|e| {
        at_least(r.min_mod_revision, e.mod_revision)
            && at_most(r.max_mod_revision, e.mod_revision)
            && at_least(r.min_create_revision, e.create_revision)
            && at_most(r.max_create_revision, e.create_revision)
    });
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None) {
        // etcd sorts ascending when a target other than the key is named alone.
        SortOrder::None if target != SortTarget::Key => SortOrder::Ascend,
        order => order,
    };
    match target {
        // Entries come in key order already.
        SortTarget::Key => {}
        SortTarget::Version => entries.sort_by_key(|e| e.version),
        SortTarget::Create => entries.sort_by_key(|e| e.create_revision),
        SortTarget::Mod => entries.sort_by_key(|e| e.mod_revision),
        SortTarget::Value => entries.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        entries.reverse();
    }
    let limit = usize::try_from(r.limit).unwrap_or(0);
    let more = limit > 0 && entries.len() > limit;
    if more {
        entries.truncate(limit);
    }
    if r.count_only {
        entries.clear();
    }
    RangeResponse {
        header: None,
        kvs: entries
            .into_iter()
            .map(|e| key_value(e, r.keys_only))
            .collect(),
        more,
        count: signed(count as u64),
    }
}

/// How often a call answered by reading, then writing only if what was read is
/// unchanged, tries again when another write came between.
const TRIES: usize = 100;

/// etcd's clients retry `Unavailable`: what a call says when other writes kept
/// winning every one of its [`TRIES`].
fn contended() -> Status {
    Status::unavailable("kvstore: the keys this call reads kept changing; try again")
}

/// Reads the current entry of `key` and puts it again with what the put keeps
/// (`ignore_value`, `ignore_lease`), as one compare-and-swap, retried when
/// another write came between.
async fn put_keeping(api: &Api, key: &str, r: &PutRequest) -> Result<(u64, Entry), Status> {
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    for _ in 0..TRIES {
        let current = api
            .store
            .get(key)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Status::not_found("etcdserver: key not found"))?;
        let value = match r.ignore_value {
            true => current.value.clone(),
            false => r.value.clone(),
        };
        let lease = match r.ignore_lease {
            true => current.lease,
            false => unsigned(r.lease),
        };
        let condition = Some(Condition::ModRevision(current.mod_revision));
        match api.store.put_leased(key, value, condition, lease).await {
            Ok(put) => return Ok((put.revision, current)),
            Err(Error::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(from_store(e)),
        }
    }
    Err(contended())
}

/// How one etcd op of a transaction became ours, to build its answer from our
/// results.
enum Planned {
    /// A read, shaped by the request: of one `get` or `list` result, or of the
    /// entries read before the transaction when it names a past revision
    /// ([`Past`]).
    Range(RangeRequest, Option<Vec<Entry>>),
    /// A put, after a `get` of the key when `prev_kv`.
    Put { prev_kv: bool },
    /// A delete, after a `get` (a key) or `list` (a prefix) when `prev_kv`.
    Delete { prev_kv: bool },
    /// A nested transaction: whether its compares held, and the plan of the
    /// branch that ran.
    Txn { succeeded: bool, plan: Vec<Planned> },
}

/// How the compares of nested transactions are decided: against the store as
/// the whole transaction found it (etcd decides every nested compare before any
/// op runs).
type Holds<'a> = &'a dyn Fn(&[Compare]) -> bool;

/// A transaction's compare as ours.
fn compare(c: PbCompare, caller: &Caller) -> Result<Compare, Status> {
    if !c.range_end.is_empty() {
        return Err(not_served(
            "compares over a range",
            "a compare names one key",
        ));
    }
    if c.key.is_empty() {
        return Err(key_not_provided());
    }
    let key = text(c.key)?;
    if !Span::Key(key.clone()).readable_by(caller) {
        return Err(denied());
    }
    let op = match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => CompareOp::Equal,
        CompareResult::NotEqual => CompareOp::NotEqual,
        CompareResult::Less => CompareOp::Less,
        CompareResult::Greater => CompareOp::Greater,
    };
    let number = |n: i64| u64::try_from(n).unwrap_or(0);
    let target = match c.target_union {
        Some(TargetUnion::Version(n)) => Target::Version(number(n)),
        Some(TargetUnion::CreateRevision(n)) => Target::CreateRevision(number(n)),
        Some(TargetUnion::ModRevision(n)) => Target::ModRevision(number(n)),
        Some(TargetUnion::Value(value)) => Target::Value(value),
        Some(TargetUnion::Lease(n)) => Target::Lease(number(n)),
        // No value given: the target's zero, as etcd reads it.
        None => match c.target {
            1 => Target::CreateRevision(0),
            2 => Target::ModRevision(0),
            3 => Target::Value(Vec::new()),
            4 => Target::Lease(0),
            _ => Target::Version(0),
        },
    };
    Ok(Compare { key, op, target })
}

/// The reads at a past revision of a transaction's ops (both branches, nested
/// ones too), by key, range end and revision, each with what it read or why it
/// was refused (compacted, or a revision still to come): read before the
/// transaction runs. What the store held at a revision does not change, so such a
/// read gives the same before the transaction as in it (etcd reads them in it).
/// A refused read refuses the transaction when it is on the path taken (as etcd
/// checks only that path), before anything is written.
type Past = std::collections::HashMap<(Vec<u8>, Vec<u8>, i64), Result<Vec<Entry>, Status>>;

/// Whether a read names a past revision (etcd reads the present at 0 and below).
fn in_the_past(r: &RangeRequest) -> bool {
    r.revision > 0
}

/// Every read at a past revision of the branches `branches`, at any depth.
async fn read_past(
    api: &Api,
    branches: [&[RequestOp]; 2],
    caller: &Caller,
) -> Result<Past, Status> {
    let mut past = Past::new();
    let mut pending = Vec::from(branches);
    while let Some(ops) = pending.pop() {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) if in_the_past(r) => {
                    let span = Span::new(r.key.clone(), r.range_end.clone())?;
                    // Every op's permission is checked, on both paths, as etcd does.
                    if !span.readable_by(caller) {
                        return Err(denied());
                    }
                    let read = scan(&*api.store, &span, unsigned(r.revision))
                        .await
                        .map(|(entries, _)| entries)
                        .map_err(from_store);
                    past.insert((r.key.clone(), r.range_end.clone(), r.revision), read);
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    pending.push(&nested.success);
                    pending.push(&nested.failure);
                }
                _ => {}
            }
        }
    }
    Ok(past)
}

/// A branch of etcd ops as ours, and the plan to answer it; its reads at a past
/// revision are in `past`.
fn branch(
    ops: Vec<RequestOp>,
    caller: &Caller,
    holds: Option<Holds<'_>>,
    past: &Past,
) -> Result<(Vec<TxnOp>, Vec<Planned>), Status> {
    let mut ours = Vec::with_capacity(ops.len());
    let mut plan = Vec::with_capacity(ops.len());
    for op in ops {
        match op.request {
            Some(request_op::Request::RequestRange(r)) => {
                let span = Span::new(r.key.clone(), r.range_end.clone())?;
                if !span.readable_by(caller) {
                    return Err(denied());
                }
                if in_the_past(&r) {
                    let entries = match past.get(&(r.key.clone(), r.range_end.clone(), r.revision))
                    {
                        Some(Ok(entries)) => entries.clone(),
                        Some(Err(refused)) => return Err(refused.clone()),
                        None => return Err(Status::internal("a read at a revision was not made")),
                    };
                    plan.push(Planned::Range(r, Some(entries)));
                    continue;
                }
                match (&span, span.as_prefix()) {
                    (Span::Key(key), _) => ours.push(TxnOp::get(key)),
                    (_, Some(prefix)) => ours.push(TxnOp::list(prefix, Some(txn::MAX_LIST_LIMIT))),
                    _ => {
                        return Err(not_served(
                            "ranges other than a key or a prefix inside a transaction",
                            "read such a range with Range",
                        ))
                    }
                }
                plan.push(Planned::Range(r, None));
            }
            Some(request_op::Request::RequestPut(r)) => {
                if r.key.is_empty() {
                    return Err(key_not_provided());
                }
                let key = text(r.key)?;
                if !Span::Key(key.clone()).writable_by(caller) {
                    return Err(denied());
                }
                if r.ignore_value || r.ignore_lease {
                    return Err(not_served(
                        "ignore_value and ignore_lease inside a transaction",
                        "send such a put on its own",
                    ));
                }
                if r.prev_kv {
                    ours.push(TxnOp::get(&key));
                }
                ours.push(TxnOp::Put {
                    key,
                    value: r.value,
                    lease: unsigned(r.lease),
                    ttl: None,
                });
                plan.push(Planned::Put { prev_kv: r.prev_kv });
            }
            Some(request_op::Request::RequestDeleteRange(r)) => {
                let span = Span::new(r.key, r.range_end)?;
                if !span.writable_by(caller) {
                    return Err(denied());
                }
                match (&span, span.as_prefix()) {
                    (Span::Key(key), _) => {
                        if r.prev_kv {
                            ours.push(TxnOp::get(key));
                        }
                        ours.push(TxnOp::delete(key));
                    }
                    (_, Some(prefix)) => {
                        if r.prev_kv {
                            ours.push(TxnOp::list(prefix, Some(txn::MAX_LIST_LIMIT)));
                        }
                        ours.push(TxnOp::delete_prefix(prefix));
                    }
                    _ => {
                        return Err(not_served(
                            "deletes of ranges other than a key or a prefix inside a transaction",
                            "delete such a range with DeleteRange",
                        ))
                    }
                }
                plan.push(Planned::Delete { prev_kv: r.prev_kv });
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                let Some(holds) = holds else {
                    return Err(Status::internal("a nested transaction was not resolved"));
                };
                let compares = nested
                    .compare
                    .into_iter()
                    .map(|c| compare(c, caller))
                    .collect::<Result<Vec<_>, _>>()?;
                let succeeded = holds(&compares);
                let chosen = if succeeded {
                    nested.success
                } else {
                    nested.failure
                };
                let (inner, plan_inner) = branch(chosen, caller, Some(holds), past)?;
                ours.extend(inner);
                plan.push(Planned::Txn {
                    succeeded,
                    plan: plan_inner,
                });
            }
            None => {
                return Err(Status::invalid_argument(
                    "etcdserver: a request op is empty",
                ))
            }
        }
    }
    Ok((ours, plan))
}

/// The entries a `get` or `list` result holds.
fn read(result: Option<TxnResult>) -> Vec<Entry> {
    match result {
        Some(TxnResult::Get(got)) => got.entry.into_iter().collect(),
        Some(TxnResult::List(listed)) => listed.entries,
        _ => Vec::new(),
    }
}

/// The header of a response inside a transaction's: the revision only, as etcd.
fn inner_header(revision: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: signed(revision),
        ..Default::default()
    })
}

/// etcd's answers to a branch from our results, following the plan.
fn answers(
    plan: Vec<Planned>,
    results: &mut impl Iterator<Item = TxnResult>,
    revision: u64,
) -> Vec<ResponseOp> {
    let mut answered = Vec::with_capacity(plan.len());
    for planned in plan {
        let response = match planned {
            Planned::Range(r, past) => {
                let entries = past.unwrap_or_else(|| read(results.next()));
                let mut range = shape(entries, &r);
                range.header = inner_header(revision);
                response_op::Response::ResponseRange(range)
            }
            Planned::Put { prev_kv } => {
                let prev = if prev_kv {
                    read(results.next())
                } else {
                    Vec::new()
                };
                results.next();
                response_op::Response::ResponsePut(PutResponse {
                    header: inner_header(revision),
                    prev_kv: prev.into_iter().next().map(|e| key_value(e, false)),
                })
            }
            Planned::Delete { prev_kv } => {
                let prev = if prev_kv {
                    read(results.next())
                } else {
                    Vec::new()
                };
                let deleted = match results.next() {
                    Some(TxnResult::Delete(d)) => d.deleted,
                    _ => 0,
                };
                response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                    header: inner_header(revision),
                    deleted: signed(deleted as u64),
                    prev_kvs: prev.into_iter().map(|e| key_value(e, false)).collect(),
                })
            }
            Planned::Txn { succeeded, plan } => response_op::Response::ResponseTxn(TxnResponse {
                header: inner_header(revision),
                succeeded,
                responses: answers(plan, results, revision),
            }),
        };
        answered.push(ResponseOp {
            response: Some(response),
        });
    }
    answered
}

/// Whether any op of `ops` is a nested transaction.
fn nests(ops: &[RequestOp]) -> bool {
    ops.iter()
        .any(|op| matches!(op.request, Some(request_op::Request::RequestTxn(_))))
}

/// The keys every compare of `ops`' nested transactions names, at any depth.
fn nested_compare_keys(ops: &[RequestOp], keys: &mut std::collections::BTreeSet<Vec<u8>>) {
    for op in ops {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            keys.extend(nested.compare.iter().map(|c| c.key.clone()));
            nested_compare_keys(&nested.success, keys);
            nested_compare_keys(&nested.failure, keys);
        }
    }
}

#[tonic::async_trait]
impl Kv for Api {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let span = Span::new(r.key.clone(), r.range_end.clone())?;
        if !span.readable_by(&caller) {
            return Err(denied());
        }
        let (entries, read) = scan(&*self.store, &span, unsigned(r.revision))
            .await
            .map_err(from_store)?;
        let mut answer = shape(entries, &r);
        // The store's revision, as etcd answers, even for a read of the past.
        answer.header = self.header(read.max(self.store.revision()));
        Ok(Response::new(answer))
    }

    type RangeStreamStream = super::ServerStream<RangeStreamResponse>;

    async fn range_stream(
        &self,
        _request: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(not_served("RangeStream", "read with Range (and limit)"))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(key_not_provided());
        }
        let key = text(r.key.clone())?;
        if !Span::Key(key.clone()).writable_by(&caller) {
            return Err(denied());
        }
        let (revision, prev) = if r.ignore_value || r.ignore_lease {
            let (revision, prev) = put_keeping(self, &key, &r).await?;
            (revision, Some(prev))
        } else if r.prev_kv {
            let txn = Txn {
                compare: Vec::new(),
                success: vec![
                    TxnOp::get(&key),
                    TxnOp::Put {
                        key: key.clone(),
                        value: r.value,
                        lease: unsigned(r.lease),
                        ttl: None,
                    },
                ],
                failure: Vec::new(),
            };
            let answer = self.store.txn(txn).await.map_err(from_store)?;
            let prev = read(answer.results.into_iter().next()).into_iter().next();
            (answer.revision, prev)
        } else {
            let put = self
                .store
                .put_leased(&key, r.value, None, unsigned(r.lease))
                .await
                .map_err(from_store)?;
            (put.revision, None)
        };
        Ok(Response::new(PutResponse {
            header: self.header(revision),
            prev_kv: prev.filter(|_| r.prev_kv).map(|e| key_value(e, false)),
        }))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let span = Span::new(r.key, r.range_end)?;
        if !span.writable_by(&caller) {
            return Err(denied());
        }
        let (revision, deleted, prev) = match (&span, span.as_prefix()) {
            (Span::Key(key), _) => {
                let mut success = Vec::new();
                if r.prev_kv {
                    success.push(TxnOp::get(key));
                }
                success.push(TxnOp::delete(key));
                let txn = Txn {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                };
                let answer = self.store.txn(txn).await.map_err(from_store)?;
                let mut results = answer.results.into_iter();
                let prev = if r.prev_kv {
                    read(results.next())
                } else {
                    Vec::new()
                };
                let deleted = match results.next() {
                    Some(TxnResult::Delete(d)) => d.deleted,
                    _ => 0,
                };
                (answer.revision, deleted, prev)
            }
            (_, Some(prefix)) if !r.prev_kv => {
                let done = self.store.delete_prefix(prefix).await.map_err(from_store)?;
                (done.revision, done.deleted, Vec::new())
            }
            _ => delete_scanned(self, &span).await?,
        };
        Ok(Response::new(DeleteRangeResponse {
            header: self.header(revision),
            deleted: signed(deleted as u64),
            prev_kvs: match r.prev_kv {
                true => prev.into_iter().map(|e| key_value(e, false)).collect(),
                false => Vec::new(),
            },
        }))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let max = self.max_txn_ops;
        if r.compare.len() > max || r.success.len() > max || r.failure.len() > max {
            return Err(too_many_ops());
        }
        let past = read_past(self, [&r.success, &r.failure], &caller).await?;
        // A refused read matters only on the path taken: decide it first.
        if nests(&r.success) || nests(&r.failure) || past.values().any(Result::is_err) {
            return self.nested_txn(r, &caller, past).await.map(Response::new);
        }
        let compare = r
            .compare
            .into_iter()
            .map(|c| compare(c, &caller))
            .collect::<Result<Vec<_>, _>>()?;
        let (success, success_plan) = branch(r.success, &caller, None, &past)?;
        let (failure, failure_plan) = branch(r.failure, &caller, None, &past)?;
        let answer = self
            .store
            .txn(Txn {
                compare,
                success,
                failure,
            })
            .await
            .map_err(from_store)?;
        let plan = match answer.succeeded {
            true => success_plan,
            false => failure_plan,
        };
        Ok(Response::new(TxnResponse {
            header: self.header(answer.revision),
            succeeded: answer.succeeded,
            responses: answers(plan, &mut answer.results.into_iter(), answer.revision),
        }))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // The history of every key goes: only a token that may write every key.
        let caller = self.caller(&request)?;
        if !Span::under("")?.writable_by(&caller) {
            return Err(denied());
        }
        let revision = unsigned(request.into_inner().revision)
            .ok_or_else(|| Status::out_of_range(super::status::COMPACTED))?;
        let now = self.store.compact(revision).await.map_err(from_store)?;
        Ok(Response::new(CompactionResponse {
            header: self.header(now),
        }))
    }
}

impl Api {
    /// A transaction with nested ones. etcd decides every compare, nested ones
    /// included, against the store as the transaction finds it; our transactions
    /// do not nest. So the keys compared are read at one revision, every compare
    /// decided on what was read, and the ops of the path taken run as one
    /// transaction that holds only if none of those keys changed since (else all
    /// again): the same outcome, at one revision. Also the way for a transaction
    /// with a read at a past revision that was refused ([`Past`]): it refuses the
    /// transaction only on the path taken.
    async fn nested_txn(
        &self,
        r: TxnRequest,
        caller: &Caller,
        past: Past,
    ) -> Result<TxnResponse, Status> {
        let mut keys = std::collections::BTreeSet::new();
        keys.extend(r.compare.iter().map(|c| c.key.clone()));
        nested_compare_keys(&r.success, &mut keys);
        nested_compare_keys(&r.failure, &mut keys);
        let keys = keys
            .into_iter()
            .map(text)
            .collect::<Result<Vec<String>, _>>()?;
        for _ in 0..TRIES {
            let read = self
                .store
                .txn(Txn {
                    compare: Vec::new(),
                    success: keys.iter().map(|k| TxnOp::get(k)).collect(),
                    failure: Vec::new(),
                })
                .await
                .map_err(from_store)?;
            let found: std::collections::HashMap<&str, Option<Entry>> = keys
                .iter()
                .map(String::as_str)
                .zip(
                    read.results
                        .into_iter()
                        .map(|result| read_one(Some(result))),
                )
                .collect();
            let holds = |compares: &[Compare]| {
                compares.iter().all(|c| {
                    let entry = found.get(c.key.as_str()).cloned().flatten();
                    let lease = entry.as_ref().and_then(|e| e.lease).unwrap_or(0);
                    c.holds(entry.as_ref(), lease)
                })
            };
            let top = r
                .compare
                .iter()
                .cloned()
                .map(|c| compare(c, caller))
                .collect::<Result<Vec<_>, _>>()?;
            let succeeded = holds(&top);
            let chosen = if succeeded {
                r.success.clone()
            } else {
                r.failure.clone()
            };
            let (ops, plan) = branch(chosen, caller, Some(&holds), &past)?;
            let unchanged = found
                .iter()
                .map(|(key, entry)| {
                    let at = entry.as_ref().map_or(0, |e| e.mod_revision);
                    Compare::mod_revision(key, CompareOp::Equal, at)
                })
                .collect();
            let answer = self
                .store
                .txn(Txn {
                    compare: unchanged,
                    success: ops,
                    failure: Vec::new(),
                })
                .await
                .map_err(from_store)?;
            if answer.succeeded {
                return Ok(TxnResponse {
                    header: self.header(answer.revision),
                    succeeded,
                    responses: answers(plan, &mut answer.results.into_iter(), answer.revision),
                });
            }
        }
        Err(contended())
    }
}

/// The one entry a `get` result holds.
fn read_one(result: Option<TxnResult>) -> Option<Entry> {
    read(result).into_iter().next()
}

/// Deletes a range that is no single key or prefix (or a prefix whose deleted
/// entries are asked for): the keys read, then one transaction deleting them if
/// none changed meanwhile, retried otherwise. Returns the revision, how many went
/// and the entries deleted.
async fn delete_scanned(api: &Api, span: &Span) -> Result<(u64, usize, Vec<Entry>), Status> {
    for _ in 0..TRIES {
        let (entries, read) = scan(&*api.store, span, None).await.map_err(from_store)?;
        if entries.is_empty() {
            return Ok((read, 0, entries));
        }
        let txn = Txn {
            compare: entries
                .iter()
                .map(|e| Compare::mod_revision(&e.key, CompareOp::Equal, e.mod_revision))
                .collect(),
            success: entries.iter().map(|e| TxnOp::delete(&e.key)).collect(),
            failure: Vec::new(),
        };
        let answer = api.store.txn(txn).await.map_err(from_store)?;
        if answer.succeeded {
            return Ok((answer.revision, entries.len(), entries));
        }
    }
    Err(contended())
}
