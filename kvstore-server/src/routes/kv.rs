//! `/v1/kv`: get, put, delete and list.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use kvstore_core::Precondition;
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::auth::Caller;
use crate::body::read_limited;
use crate::error::ApiError;
use crate::state::AppState;

/// Response headers carrying an entry's metadata next to a raw value.
pub const CREATE_REVISION: &str = "x-kv-create-revision";
/// The key's `mod_revision` (also the `ETag`).
pub const MOD_REVISION: &str = "x-kv-mod-revision";
/// The key's version.
pub const VERSION: &str = "x-kv-version";
/// The store's current revision.
pub const STORE_REVISION: &str = "x-kv-revision";

const PATH_PREFIX: &str = "/v1/kv/";
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/kv", web::get().to(list))
        .route("/v1/kv/{key:.*}", web::get().to(get))
        .route("/v1/kv/{key:.*}", web::put().to(put))
        .route("/v1/kv/{key:.*}", web::delete().to(delete));
}

/// The key named by the request path, percent-decoded (`a%2Fb` is `a/b`).
fn key_of(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req
        .uri()
        .path()
        .strip_prefix(PATH_PREFIX)
        .ok_or_else(|| ApiError::InvalidKey("the key is missing from the path".into()))?;
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::InvalidKey("the key is not valid UTF-8 once percent-decoded".into())
        })?
        .into_owned();
    kvstore_core::key::validate_key(&key).map_err(|e| ApiError::InvalidKey(e.to_string()))?;
    Ok(key)
}

fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// The write condition from `If-Match` / `If-None-Match`.
fn precondition(req: &HttpRequest) -> Result<Precondition, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<&str>, ApiError> {
        req.headers()
            .get(&name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::InvalidRequest(format!("the {name} header is not text")))
            })
            .transpose()
    };
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (None, None) => Ok(Precondition::None),
        (None, Some("*")) => Ok(Precondition::Absent),
        (Some("*"), None) => Ok(Precondition::Exists),
        (Some(tag), None) => tag
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse()
            .map(Precondition::ModRevision)
            .map_err(|_| {
                ApiError::InvalidRequest(format!(
                    "If-Match must be a revision in quotes, like \"42\", or *; got {tag:?}"
                ))
            }),
        (None, Some(other)) => Err(ApiError::InvalidRequest(format!(
            "only If-None-Match: * (create-only) is supported; got {other:?}"
        ))),
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
            "give If-Match or If-None-Match, not both".into(),
        )),
    }
}

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// How long a read waits for the flush of a write it would show.
const DURABLE_WAIT: Duration = Duration::from_secs(5);

/// Waits until `revision` is durable, so a read never shows a write that a crash
/// could still undo.
pub async fn durable(state: &AppState, revision: u64) -> Result<(), ApiError> {
    match tokio::time::timeout(DURABLE_WAIT, state.store.wait_published(revision)).await {
        Ok(result) => result.map_err(|e| ApiError::from_store(e, "")),
        Err(_) => Err(ApiError::Storage(
            format!("revision {revision} is not durable yet; the disk may be failing"),
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        )),
    }
}

async fn get(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_of(&req)?;
    caller.check_read(&key)?;
    let entry = state
        .store
        .get(&key)
        .map_err(|e| ApiError::from_store(e, &key))?
        .ok_or_else(|| ApiError::KeyNotFound(key.clone()))?;
    durable(&state, entry.mod_revision).await?;
    let mut res = HttpResponse::Ok();
    res.insert_header((header::ETAG, format!("\"{}\"", entry.mod_revision)))
        .insert_header((CREATE_REVISION, number(entry.create_revision)))
        .insert_header((MOD_REVISION, number(entry.mod_revision)))
        .insert_header((VERSION, number(entry.version)))
        .insert_header((STORE_REVISION, number(state.store.revision())));
    if wants_json(&req) {
        Ok(res.json(entry))
    } else {
        Ok(res
            .content_type("application/octet-stream")
            .body(entry.value))
    }
}

async fn put(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_of(&req)?;
    caller.check_write(&key)?;
    let condition = precondition(&req)?;
    let value = read_limited(&req, payload, state.store.config().max_value_bytes).await?;
    let result = state
        .store
        .put(key.as_str(), value, condition)
        .await
        .map_err(|e| ApiError::from_store(e, &key))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", result.revision)))
        .json(result))
}

async fn delete(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_of(&req)?;
    caller.check_write(&key)?;
    let condition = precondition(&req)?;
    let result = state
        .store
        .delete(key.as_str(), condition)
        .await
        .map_err(|e| ApiError::from_store(e, &key))?;
    Ok(HttpResponse::Ok().json(result))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
}

async fn list(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {e}")))?;
    caller.check_read_some(&query.prefix)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let mut page = state
        .store
        .list(&query.prefix, query.after.as_deref(), limit)
        .map_err(|e| ApiError::from_store(e, &query.prefix))?;
    // What the token may not read is left out; `next` still pages past it.
    page.entries.retain(|e| caller.can_read(&e.key));
    if let Some(newest) = page.entries.iter().map(|e| e.mod_revision).max() {
        durable(&state, newest).await?;
        page.revision = page.revision.max(newest);
    }
    Ok(HttpResponse::Ok()
        .insert_header((STORE_REVISION, number(page.revision)))
        .json(page))
}
