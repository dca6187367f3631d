//! etcd's Lock and Election services (`etcdctl lock`, `etcdctl elect`), on the
//! same keys as etcd's own: a contender is the key `NAME/LEASE` (the lease in
//! hex) created with its lease, and holds the lock (or leads) once every key under
//! `NAME/` created before it is gone. A contender whose lease ends leaves the
//! line with its key.

use kvstore_core::txn::{Compare, CompareOp, Txn, TxnOp, TxnResult};
use kvstore_core::wire::Entry;
use kvstore_core::{Storage, WatchItem, WatchOptions};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::keys::{bytes, key_value, scan, signed, text, unsigned, Span};
use super::pb::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest,
    LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use super::pb::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use super::status::{denied, from_store};
use super::{stream_of, Api, ServerStream};
use crate::auth::Caller;

/// The prefix of the contenders for `name`.
fn line_of(name: Vec<u8>, caller: &Caller) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    let prefix = format!("{}/", text(name)?);
    let span = Span::under(&prefix)?;
    if !span.writable_by(caller) || !span.readable_by(caller) {
        return Err(denied());
    }
    Ok(prefix)
}

/// Joins the line under `prefix` with the key of `lease` (keeping it, and setting
/// its value, when it is there already): the key and its create revision.
async fn join(
    store: &dyn Storage,
    prefix: &str,
    lease: i64,
    value: Vec<u8>,
) -> Result<(String, u64), Status> {
    let lease = unsigned(lease).ok_or_else(|| Status::not_found(super::status::LEASE_NOT_FOUND))?;
    let key = format!("{prefix}{lease:x}");
    let put = TxnOp::Put {
        key: key.clone(),
        value,
        lease: Some(lease),
        ttl: None,
    };
    let answer = store
        .txn(Txn {
            compare: vec![Compare::create_revision(&key, CompareOp::Equal, 0)],
            success: vec![put],
            failure: vec![TxnOp::get(&key)],
        })
        .await
        .map_err(from_store)?;
    let created = match answer.results.into_iter().next() {
        Some(TxnResult::Put(put)) => put.create_revision,
        Some(TxnResult::Get(got)) => got.entry.map_or(answer.revision, |e| e.create_revision),
        _ => answer.revision,
    };
    Ok((key, created))
}

/// The contender created first under `prefix`, and the revision read.
async fn first(store: &dyn Storage, prefix: &str) -> Result<(Option<Entry>, u64), Status> {
    let span = Span::under(prefix)?;
    let (entries, read) = scan(store, &span, None).await.map_err(from_store)?;
    Ok((entries.into_iter().min_by_key(|e| e.create_revision), read))
}

/// Waits until no key under `prefix` was created before `created`; the revision
/// at which that was seen.
async fn wait_turn(store: &dyn Storage, prefix: &str, created: u64) -> Result<u64, Status> {
    loop {
        let span = Span::under(prefix)?;
        let (entries, read) = scan(store, &span, None).await.map_err(from_store)?;
        if entries.iter().all(|e| e.create_revision >= created) {
            return Ok(read);
        }
        wait_change(store, prefix, read).await?;
    }
}

/// Waits for a change under `prefix` after revision `read`.
async fn wait_change(store: &dyn Storage, prefix: &str, read: u64) -> Result<(), Status> {
    let mut watch = store
        .watch(WatchOptions {
            prefix: prefix.to_string(),
            start_revision: Some(read + 1),
            initial: false,
        })
        .await
        .map_err(from_store)?;
    loop {
        match watch.next().await.map_err(from_store)? {
            WatchItem::Event(_) => return Ok(()),
            WatchItem::Entry(_) | WatchItem::Synced(_) | WatchItem::Progress(_) => {}
        }
    }
}

/// Deletes a contender's key if it is still the one created at `created` (0:
/// whatever it is).
async fn leave(store: &dyn Storage, key: &str, created: u64) -> Result<u64, Status> {
    let compare = match created {
        0 => Vec::new(),
        created => vec![Compare::create_revision(key, CompareOp::Equal, created)],
    };
    let answer = store
        .txn(Txn {
            compare,
            success: vec![TxnOp::delete(key)],
            failure: Vec::new(),
        })
        .await
        .map_err(from_store)?;
    Ok(answer.revision)
}

/// Leaves the line when a wait for a turn is given up (the caller went away).
struct LeaveIfDropped {
    store: std::sync::Arc<dyn Storage>,
    key: Option<(String, u64)>,
}

impl Drop for LeaveIfDropped {
    fn drop(&mut self) {
        if let Some((key, created)) = self.key.take() {
            let store = self.store.clone();
            // Dropped as the server stops, there may be no runtime left to do it
            // on: the key's lease ends it then.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if let Err(e) = leave(&*store, &key, created).await {
                    log::warn!("cannot remove the abandoned contender {key:?}: {e}");
                }
            });
        }
    }
}

impl Api {
    /// Joins the line of `name` and waits for its turn: the key, its create
    /// revision and the revision at which the turn came.
    async fn take_turn(
        &self,
        caller: &Caller,
        name: Vec<u8>,
        lease: i64,
        value: Vec<u8>,
    ) -> Result<(String, u64, u64), Status> {
        let prefix = line_of(name, caller)?;
        let (key, created) = join(&*self.store, &prefix, lease, value).await?;
        let mut guard = LeaveIfDropped {
            store: self.store.clone(),
            key: Some((key.clone(), created)),
        };
        let at = wait_turn(&*self.store, &prefix, created).await?;
        guard.key = None;
        Ok((key, created, at))
    }
}

#[tonic::async_trait]
impl Lock for Api {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let (key, _, at) = self.take_turn(&caller, r.name, r.lease, Vec::new()).await?;
        Ok(Response::new(LockResponse {
            header: self.header(at),
            key: bytes(&key),
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = self.caller(&request)?;
        let key = text(request.into_inner().key)?;
        if !Span::Key(key.clone()).writable_by(&caller) {
            return Err(denied());
        }
        let revision = leave(&*self.store, &key, 0).await?;
        Ok(Response::new(UnlockResponse {
            header: self.header(revision),
        }))
    }
}

/// etcd's answer when a leader key no longer leads.
fn not_leader() -> Status {
    Status::failed_precondition("election: not leader")
}

/// A leader key's name, key and create revision, checked against `caller`.
fn leader_key(leader: Option<LeaderKey>, caller: &Caller) -> Result<(String, u64), Status> {
    let leader = leader.ok_or_else(not_leader)?;
    line_of(leader.name, caller)?;
    let key = text(leader.key)?;
    let created = unsigned(leader.rev).ok_or_else(not_leader)?;
    Ok((key, created))
}

#[tonic::async_trait]
impl Election for Api {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let name = r.name.clone();
        let (key, created, at) = self.take_turn(&caller, r.name, r.lease, r.value).await?;
        Ok(Response::new(CampaignResponse {
            header: self.header(at),
            leader: Some(LeaderKey {
                name,
                key: bytes(&key),
                rev: signed(created),
                lease: r.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let lease = r.leader.as_ref().and_then(|l| unsigned(l.lease));
        let (key, created) = leader_key(r.leader, &caller)?;
        let answer = self
            .store
            .txn(Txn {
                compare: vec![Compare::create_revision(&key, CompareOp::Equal, created)],
                success: vec![TxnOp::Put {
                    key,
                    value: r.value,
                    lease,
                    ttl: None,
                }],
                failure: Vec::new(),
            })
            .await
            .map_err(from_store)?;
        if !answer.succeeded {
            return Err(not_leader());
        }
        Ok(Response::new(ProclaimResponse {
            header: self.header(answer.revision),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = self.caller(&request)?;
        let prefix = line_of(request.into_inner().name, &caller)?;
        let (leader, read) = first(&*self.store, &prefix).await?;
        let leader = leader.ok_or_else(|| Status::not_found("election: no leader"))?;
        Ok(Response::new(LeaderResponse {
            header: self.header(read),
            kv: Some(key_value(leader, false)),
        }))
    }

    type ObserveStream = ServerStream<LeaderResponse>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = self.caller(&request)?;
        let prefix = line_of(request.into_inner().name, &caller)?;
        let store = self.store.clone();
        let (answers, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Each leader, and each value it proclaims, once.
            let mut last: Option<(String, u64)> = None;
            loop {
                let (leader, read) = match first(&*store, &prefix).await {
                    Ok(found) => found,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        return;
                    }
                };
                if let Some(leader) = leader {
                    let now = Some((leader.key.clone(), leader.mod_revision));
                    if now != last {
                        last = now;
                        let answer = LeaderResponse {
                            header: super::header(read),
                            kv: Some(key_value(leader, false)),
                        };
                        if answers.send(Ok(answer)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = wait_change(&*store, &prefix, read) => {
                        if let Err(status) = changed {
                            let _ = answers.send(Err(status)).await;
                            return;
                        }
                    }
                    _ = answers.closed() => return,
                }
            }
        });
        Ok(Response::new(stream_of(rx)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = self.caller(&request)?;
        let (key, created) = leader_key(request.into_inner().leader, &caller)?;
        let revision = leave(&*self.store, &key, created).await?;
        Ok(Response::new(ResignResponse {
            header: self.header(revision),
        }))
    }
}
