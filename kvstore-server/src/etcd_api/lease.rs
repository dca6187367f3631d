//! The Lease service: Grant, Revoke, KeepAlive (a stream), TimeToLive, Leases.

use kvstore_core::Error;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::keys::{signed, unsigned};
use super::pb::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use super::status::{from_store, not_served, LEASE_NOT_FOUND};
use super::{stream_of, Api, ServerStream};

/// A lease id from the wire; etcd's "not found" for one that cannot exist.
fn lease_id(id: i64) -> Result<u64, Status> {
    unsigned(id).ok_or_else(|| Status::not_found(LEASE_NOT_FOUND))
}

#[tonic::async_trait]
impl Lease for Api {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.caller(&request)?;
        let r = request.into_inner();
        if r.id != 0 {
            return Err(not_served(
                "leases of an id the client chooses",
                "grant with ID 0 and use the id answered",
            ));
        }
        let ttl = u64::try_from(r.ttl)
            .unwrap_or(0)
            .max(kvstore_core::lease::MIN_TTL);
        let lease = self.store.grant(ttl).await.map_err(from_store)?;
        Ok(Response::new(LeaseGrantResponse {
            header: self.header_now(),
            id: signed(lease.id),
            ttl: signed(lease.ttl),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.caller(&request)?;
        let id = lease_id(request.into_inner().id)?;
        let revoked = self.store.revoke(id).await.map_err(from_store)?;
        Ok(Response::new(LeaseRevokeResponse {
            header: self.header(revoked.revision),
        }))
    }

    type LeaseKeepAliveStream = ServerStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.caller(&request)?;
        let mut requests = request.into_inner();
        let (answers, rx) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Ok(Some(asked)) = requests.message().await {
                // A lease that ended is answered with TTL 0, as etcd does.
                let ttl = match unsigned(asked.id) {
                    Some(id) => match store.keepalive(id).await {
                        Ok(lease) => signed(lease.ttl),
                        Err(Error::LeaseNotFound(_)) => 0,
                        Err(e) => {
                            let _ = answers.send(Err(from_store(e))).await;
                            return;
                        }
                    },
                    None => 0,
                };
                let answer = LeaseKeepAliveResponse {
                    header: super::header(store.revision()),
                    id: asked.id,
                    ttl,
                };
                if answers.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream_of(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.caller(&request)?;
        let r = request.into_inner();
        // A lease that does not exist is answered with TTL -1, as etcd does.
        let gone = LeaseTimeToLiveResponse {
            header: self.header_now(),
            id: r.id,
            ttl: -1,
            ..Default::default()
        };
        let Some(id) = unsigned(r.id) else {
            return Ok(Response::new(gone));
        };
        match self.store.lease(id).await {
            Ok(info) => Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.header_now(),
                id: r.id,
                ttl: signed(info.ttl),
                granted_ttl: signed(info.granted_ttl),
                keys: match r.keys {
                    true => info
                        .keys
                        .iter()
                        .map(|key| super::keys::bytes(key))
                        .collect(),
                    false => Vec::new(),
                },
            })),
            Err(Error::LeaseNotFound(_)) => Ok(Response::new(gone)),
            Err(e) => Err(from_store(e)),
        }
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.caller(&request)?;
        let ids = self.store.leases().await.map_err(from_store)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header_now(),
            leases: ids
                .into_iter()
                .map(|id| LeaseStatus { id: signed(id) })
                .collect(),
        }))
    }
}
