//! The Maintenance and Cluster services: what etcd's tools ask of a member
//! (`etcdctl endpoint status`, `member list`, `alarm list`, `defrag`).

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::keys::Span;
use super::pb::etcdserverpb::*;
use super::status::{denied, from_store, not_served};
use super::{Api, ServerStream, MEMBER_ID};
use crate::auth::Caller;

/// The etcd version reported by `Status`: the API level served, which clients
/// check before using newer calls.
pub(crate) const ETCD_VERSION: &str = "3.5.0";

#[tonic::async_trait]
impl maintenance_server::Maintenance for Api {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        self.caller(&request)?;
        // A full disk is etcd's NOSPACE alarm: raised while the store's last write
        // failed for want of space, gone once a write is durable again (so there is
        // nothing to disarm by hand: a disarm answers what is raised still).
        let status = self.store.status().await.map_err(from_store)?;
        let alarms = match status.disk_full {
            true => vec![AlarmMember {
                member_id: MEMBER_ID,
                alarm: AlarmType::Nospace as i32,
            }],
            false => Vec::new(),
        };
        Ok(Response::new(AlarmResponse {
            header: self.header(status.revision),
            alarms,
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.caller(&request)?;
        let status = self.store.status().await.map_err(from_store)?;
        let size = super::keys::signed(status.size_on_disk.unwrap_or(0));
        let revision = status.revision;
        Ok(Response::new(StatusResponse {
            header: self.header(revision),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            db_size_in_use: size,
            leader: MEMBER_ID,
            raft_index: revision,
            raft_applied_index: revision,
            raft_term: 1,
            errors: match status.disk_full {
                true => vec![format!("memberID:{MEMBER_ID} alarm:NOSPACE ")],
                false => Vec::new(),
            },
            ..Default::default()
        }))
    }
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.caller(&request)?;
        // The engines reclaim space by themselves: there is nothing to do.
        Ok(Response::new(DefragmentResponse {
            header: self.header_now(),
        }))
    }

    type SnapshotStream = ServerStream<SnapshotResponse>;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_served(
            "Snapshot",
            "kvstore does not write etcd's bbolt format; back up with `kv export` (GET /v1/snapshot)",
        ))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let caller = self.caller(&request)?;
        let (hash, revision) = self.hash_at(&caller, None).await?;
        Ok(Response::new(HashResponse {
            header: self.header(revision),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let caller = self.caller(&request)?;
        let asked = super::keys::unsigned(request.get_ref().revision);
        let (hash, revision) = self.hash_at(&caller, asked).await?;
        let status = self.store.status().await.map_err(from_store)?;
        Ok(Response::new(HashKvResponse {
            header: self.header(status.revision),
            hash,
            compact_revision: super::keys::signed(status.oldest_revision),
            hash_revision: super::keys::signed(revision),
        }))
    }

    not_served_rpcs! {
        "a kvstore server is a cluster of one member";
        move_leader(MoveLeaderRequest) -> MoveLeaderResponse;
        downgrade(DowngradeRequest) -> DowngradeResponse;
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for Api {
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.caller(&request)?;
        Ok(Response::new(MemberListResponse {
            header: self.header_now(),
            members: vec![Member {
                id: MEMBER_ID,
                name: "kvstore".to_string(),
                client_ur_ls: vec![self.client_url.clone()],
                ..Default::default()
            }],
        }))
    }

    not_served_rpcs! {
        "a kvstore server is a cluster of one member";
        member_add(MemberAddRequest) -> MemberAddResponse;
        member_remove(MemberRemoveRequest) -> MemberRemoveResponse;
        member_update(MemberUpdateRequest) -> MemberUpdateResponse;
        member_promote(MemberPromoteRequest) -> MemberPromoteResponse;
    }
}

impl Api {
    /// A hash of every key as it was at `revision` (now when `None`), and the
    /// revision read: its key, value, revisions, version and lease, in key order,
    /// the first 4 bytes of their SHA-256. Not etcd's hash (of its own database
    /// file), but the same on every server over one store at one revision, which
    /// is what `etcdctl endpoint hashkv` compares. Like etcd's, for a caller who
    /// may read every key.
    async fn hash_at(&self, caller: &Caller, revision: Option<u64>) -> Result<(u32, u64), Status> {
        let every_key = Span::under("")?;
        if !every_key.readable_by(caller) {
            return Err(denied());
        }
        let (entries, read) = super::keys::scan(&*self.store, &every_key, revision)
            .await
            .map_err(from_store)?;
        let mut digest = Sha256::new();
        for entry in &entries {
            for number in [
                entry.key.len() as u64,
                entry.value.len() as u64,
                entry.create_revision,
                entry.mod_revision,
                entry.version,
                entry.lease.unwrap_or(0),
            ] {
                digest.update(number.to_be_bytes());
            }
            digest.update(entry.key.as_bytes());
            digest.update(&entry.value);
        }
        let sum = digest.finalize();
        let hash = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
        Ok((hash, read))
    }
}
