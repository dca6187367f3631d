//! `POST /v1/txn`: a transaction (see `kvstore_core::txn` for its shape). Every
//! key a compare or a read names must be readable by the token (every key under a
//! `list`'s prefix), every key or prefix a write names writable.

use actix_web::{web, HttpRequest, HttpResponse};
use kvstore_core::txn::{Txn, TxnOp, TxnResponse};

use super::route::{Mount, Route};
use crate::auth::Caller;
use crate::http::body::read_limited;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use kvstore_core::ErrorCode::*;

/// Body bytes a transaction may take beyond two values of the largest size (its
/// values may be base64, a third larger than their bytes).
const BODY_SLACK: usize = 1 << 20;

/// The route of `/v1/txn`.
pub(crate) const ROUTES: &[Route] = &[Route::new::<__path_txn>(
    Mount::To(|r| r.to(txn)),
    &[
        InvalidRequest,
        InvalidTtl,
        InvalidKey,
        TooManyOps,
        DuplicateKey,
        Forbidden,
        LeaseNotFound,
        ValueTooLarge,
        StorageUnavailable,
        ShuttingDown,
        InsufficientStorage,
    ],
)];

/// Run a transaction: if every `compare` holds, the `success` ops, else the
/// `failure` ops; all writes commit at one revision.
#[utoipa::path(
    post,
    path = "/v1/txn",
    tag = "kv",
    operation_id = "txn",
    request_body(content = Txn, description = "Compares and the ops of both branches. \
        Ops: `put` (`key`, `value`, `encoding`; `lease` to attach the key to a lease, or \
        `ttl` (1 to 31536000 seconds) for a lease of its own, granted before the transaction \
        and revoked if its put does not run (kept until its TTL after a `503`, when the put may \
        have run); neither: the key is permanent), `delete` (`key`, or `prefix`; the empty prefix needs \
        `\"all\": true`), `get` (`key`), `list` (`prefix`, `limit` 1 to 1000, default 100)."),
    responses(
        (status = 200, description = "The transaction ran: `succeeded` says which branch, \
            `revision` is that of its writes (the store's when it wrote nothing), `results` \
            holds one result per op of the branch", body = TxnResponse),
    )
)]
async fn txn(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let max_body = state
        .store
        .max_value_bytes()
        .saturating_mul(2)
        .saturating_add(BODY_SLACK);
    let body = read_limited(&req, payload, max_body).await?;
    let txn: Txn = crate::http::body::json_object(&body, "a transaction object")
        .map_err(|e| e.prefixed("malformed transaction"))?;
    txn.validate(state.max_txn_ops)
        .map_err(|e| ApiError::from(kvstore_core::Error::from(e)))?;
    check_access(&caller, &txn)?;
    let answer = state.store.txn_with_ttls(txn).await?;
    Ok(HttpResponse::Ok().json(answer))
}

fn check_access(caller: &Caller, txn: &Txn) -> Result<(), ApiError> {
    for compare in &txn.compare {
        caller.check_read(&compare.key)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => caller.check_write(key)?,
            // Every key under the prefix: the prefix itself must be under one the
            // token may write.
            TxnOp::DeletePrefix { prefix } => caller.check_write(prefix)?,
            TxnOp::Get { key } => caller.check_read(key)?,
            // A list reads its whole prefix (as etcd's RBAC has a range): what it
            // says of its prefix, `more` included, must not tell of keys the token
            // may not read.
            TxnOp::List { prefix, .. } => caller.check_read_all(prefix)?,
        }
    }
    Ok(())
}
