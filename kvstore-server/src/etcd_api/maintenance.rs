//! The Maintenance and Cluster services: what etcd's tools ask of a member
//! (`etcdctl endpoint status`, `member list`, `alarm list`, `defrag`).

use tonic::{Request, Response, Status};

use super::pb::etcdserverpb::*;
use super::status::{from_store, not_served};
use super::{Api, ServerStream, MEMBER_ID};

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

    not_served_rpcs! {
        "kvstore keeps no hash of its store in etcd's format";
        hash(HashRequest) -> HashResponse;
        hash_kv(HashKvRequest) -> HashKvResponse;
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
