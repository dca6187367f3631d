//! `/v1/leases`: grant, keep alive, read and revoke leases; and the `lease` and
//! `ttl` parameters of a key put ([`put_lease`]).
//!
//! A lease is no key: any caller the server lets in may grant one and keep it
//! alive. Its keys are guarded as keys are: a put with a lease needs the right to
//! write the key, a lease's state lists only the keys the caller may read, and a
//! revoke (which deletes the keys) needs the right to write every one of them.

use actix_web::{web, HttpRequest, HttpResponse};
use kvstore_core::lease::{check_ttl, MAX_TTL, MIN_TTL};
use kvstore_core::wire::{Lease, LeaseInfo, RevokeResult};
use serde::Deserialize;

use super::route::{Mount, Route};
use crate::auth::Caller;
use crate::http::body::{json_object, read_limited};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use kvstore_core::ErrorCode::*;

/// The largest grant body read (`{"ttl": N}` is a few bytes).
const MAX_GRANT_BODY: usize = 4096;

/// The routes of `/v1/leases`.
pub(crate) const ROUTES: &[Route] = &[
    Route::new::<__path_grant>(
        Mount::To(|r| r.to(grant)),
        &[
            InvalidTtl,
            InvalidRequest,
            ValueTooLarge,
            StorageUnavailable,
            ShuttingDown,
        ],
    ),
    Route::new::<__path_info>(
        Mount::To(|r| r.to(info)),
        &[
            InvalidRequest,
            LeaseNotFound,
            StorageUnavailable,
            ShuttingDown,
        ],
    ),
    Route::new::<__path_revoke>(
        Mount::To(|r| r.to(revoke)),
        &[
            InvalidRequest,
            Forbidden,
            LeaseNotFound,
            StorageUnavailable,
            ShuttingDown,
        ],
    ),
    Route::new::<__path_keepalive>(
        Mount::To(|r| r.to(keepalive)),
        &[
            InvalidRequest,
            LeaseNotFound,
            StorageUnavailable,
            ShuttingDown,
        ],
    ),
];

/// The body of a grant.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Seconds the lease lives without a keep-alive (a JSON integer; `30.0` is 30).
    #[schema(value_type = u64, minimum = 1, maximum = 31536000)]
    pub ttl: serde_json::Number,
}

impl GrantRequest {
    /// The TTL asked for, in whole seconds.
    fn seconds(&self) -> Result<u64, ApiError> {
        let whole = self.ttl.as_u64().or_else(|| {
            self.ttl
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                .map(|f| f as u64)
        });
        whole.ok_or_else(|| {
            ApiError::new(
                kvstore_core::ErrorCode::InvalidTtl,
                format!(
                    "ttl is a whole number of seconds between {MIN_TTL} and {MAX_TTL}; got {}",
                    self.ttl
                ),
            )
        })
    }
}

/// The lease id in the path.
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)]
struct IdParam(
    /// The lease's id, as granted.
    #[param(minimum = 1)]
    u64,
);

/// The lease id of the path: a number, else `400 invalid_request`.
fn id_of(req: &HttpRequest) -> Result<u64, ApiError> {
    let raw = req.match_info().get("id").unwrap_or_default();
    lease_id(raw)
}

/// A lease id as text: a number from 1 to 2^63 - 1 (etcd's ids are positive
/// int64s, and so are the document's).
fn lease_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|&id| id >= 1 && i64::try_from(id).is_ok())
        .ok_or_else(|| {
            ApiError::invalid_request(format!(
                "a lease id is a number from 1 to {}, as the grant answered; got {raw:?}",
                i64::MAX
            ))
        })
}

/// Grant a lease.
#[utoipa::path(
    post,
    path = "/v1/leases",
    tag = "leases",
    operation_id = "grant_lease",
    request_body(content = GrantRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Granted; `ttl` is the TTL granted (an engine may raise \
            a short one to its minimum: etcd grants 2 s at least)", body = Lease),
    )
)]
async fn grant(
    req: HttpRequest,
    _caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, MAX_GRANT_BODY).await?;
    let asked: GrantRequest = json_object(&body, r#"{"ttl": SECONDS}"#)?;
    let lease = state.store.grant(asked.seconds()?).await?;
    Ok(HttpResponse::Ok().json(lease))
}

/// Keep a lease alive: its TTL starts again in full.
#[utoipa::path(
    post,
    path = "/v1/leases/{id}/keepalive",
    tag = "leases",
    operation_id = "keepalive_lease",
    params(IdParam),
    responses(
        (status = 200, description = "Kept alive for `ttl` more seconds", body = Lease),
    )
)]
async fn keepalive(
    req: HttpRequest,
    _caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let lease = state.store.keepalive(id_of(&req)?).await?;
    Ok(HttpResponse::Ok().json(lease))
}

/// A lease's TTL left, its granted TTL and its keys.
#[utoipa::path(
    get,
    path = "/v1/leases/{id}",
    tag = "leases",
    operation_id = "get_lease",
    params(IdParam),
    responses(
        (status = 200, description = "The lease; `keys` lists those the token may read",
         body = LeaseInfo),
    )
)]
async fn info(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut lease = state.store.lease(id_of(&req)?).await?;
    lease.keys.retain(|key| caller.can_read(key));
    Ok(HttpResponse::Ok().json(lease))
}

/// Revoke a lease: every key attached to it is deleted, all at one revision.
#[utoipa::path(
    delete,
    path = "/v1/leases/{id}",
    tag = "leases",
    operation_id = "revoke_lease",
    params(IdParam),
    responses(
        (status = 200, description = "Revoked; `revision` is that of the deletions",
         body = RevokeResult),
    )
)]
async fn revoke(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id_of(&req)?;
    if matches!(caller, Caller::Token(_)) {
        for key in state.store.lease(id).await?.keys {
            caller.check_write(&key)?;
        }
    }
    let result = state.store.revoke(id).await?;
    Ok(HttpResponse::Ok().json(result))
}

/// The lease parameters of a key put.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutLeaseQuery {
    /// Attach the key to this lease (it is deleted when the lease ends). Not with
    /// `ttl`: the two exclude each other (both is `400 invalid_request`). A put
    /// without `lease` or `ttl` makes the key permanent.
    #[param(value_type = Option<u64>, minimum = 1, nullable = false)]
    pub lease: Option<String>,
    /// Put the key on a lease of its own of this many seconds (1 to 31536000), as
    /// `POST /v1/leases` grants it. Not with `lease`: the two exclude each other
    /// (both is `400 invalid_request`).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 31536000, nullable = false)]
    pub ttl: Option<String>,
}

/// The lease a key put asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutLease {
    /// `?lease=ID`: an existing lease.
    Existing(u64),
    /// `?ttl=SECONDS`: a lease of the key's own, granted at the put.
    Own(u64),
}

impl PutLease {
    /// The lease parameters of `req`, checked (before anything else of the put, so
    /// that a malformed one is always `400`).
    pub fn of(req: &HttpRequest) -> Result<Option<PutLease>, ApiError> {
        let query = web::Query::<PutLeaseQuery>::from_query(req.query_string())
            .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?;
        match (&query.lease, &query.ttl) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ApiError::invalid_request(
                "give lease or ttl, not both: ttl grants the key a lease of its own",
            )),
            (Some(id), None) => Ok(Some(PutLease::Existing(lease_id(id)?))),
            (None, Some(ttl)) => {
                let ttl = ttl
                    .parse::<u64>()
                    .ok()
                    .filter(|&ttl| check_ttl(ttl).is_ok())
                    .ok_or_else(|| {
                        ApiError::new(
                            kvstore_core::ErrorCode::InvalidTtl,
                            format!(
                                "ttl is a whole number of seconds between {MIN_TTL} and \
                                 {MAX_TTL}; got {ttl:?}"
                            ),
                        )
                    })?;
                Ok(Some(PutLease::Own(ttl)))
            }
        }
    }
}
