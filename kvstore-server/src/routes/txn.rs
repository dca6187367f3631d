//! `POST /v1/txn`: a transaction (see `kvstore_core::txn` for its shape). Every
//! key a compare or a read names must be readable by the token, every key or
//! prefix a write names writable; what a `list` may not show is left out.

use actix_web::{web, HttpRequest, HttpResponse};
use kvstore_core::txn::{Txn, TxnOp, TxnResponse, TxnResult};
use kvstore_core::wire::ErrorBody;

use crate::auth::Caller;
use crate::body::read_limited;
use crate::error::ApiError;
use crate::state::AppState;

/// Body bytes a transaction may take beyond two values of the largest size (its
/// values may be base64, a third larger than their bytes).
const BODY_SLACK: usize = 1 << 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/txn", web::post().to(txn));
}

/// Run a transaction: if every `compare` holds, the `success` ops, else the
/// `failure` ops; all writes commit at one revision.
#[utoipa::path(
    post,
    path = "/v1/txn",
    tag = "kv",
    operation_id = "txn",
    request_body(content = Txn, description = "Compares and the ops of both branches. \
        Ops: `put` (`key`, `value`, `encoding`; `lease` and `ttl` are refused until \
        leases are available), `delete` (`key`, or `prefix`; the empty prefix needs \
        `\"all\": true`), `get` (`key`), `list` (`prefix`, `limit` 1 to 1000, default 100)."),
    responses(
        (status = 200, description = "The transaction ran: `succeeded` says which branch, \
            `revision` is that of its writes (the store's when it wrote nothing), `results` \
            holds one result per op of the branch", body = TxnResponse),
        (status = 400, description = "`invalid_request` (malformed, a lease or TTL asked for), \
            `invalid_key`, `too_many_ops` (over `--max-txn-ops` compares or ops in a branch) or \
            `duplicate_key` (a branch writes a key twice); nothing is changed", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token may not read or write a key the \
            transaction names", body = ErrorBody),
        (status = 413, description = "`value_too_large`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable` or `shutting_down`", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`", body = ErrorBody),
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
    let txn: Txn = crate::body::json_object(&body, "a transaction object")
        .map_err(|e| e.prefixed("malformed transaction"))?;
    txn.validate(state.max_txn_ops)
        .map_err(|e| ApiError::from(kvstore_core::Error::from(e)))?;
    check_access(&caller, &txn)?;
    let mut answer = state.store.txn(txn).await.map_err(ApiError::from)?;
    for result in &mut answer.results {
        if let TxnResult::List(listed) = result {
            listed.entries.retain(|e| caller.can_read(&e.key));
        }
    }
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
            TxnOp::List { prefix, .. } => caller.check_read_some(prefix)?,
        }
    }
    Ok(())
}
