//! `/v1/kv`: get, put, delete, list, and delete by prefix.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use kvstore_core::wire::{DeletePrefixResult, DeleteResult, Entry, EntryAt, ListPage, PutResult};
use kvstore_core::Condition;
use kvstore_core::ErrorCode::*;
use serde::Deserialize;

use super::headers::{
    CREATE_REVISION, CURRENT_REVISION, LEASE, MOD_REVISION, READ_REVISION, STORE_REVISION, VERSION,
};
use super::leases::PutLease;
use super::route::{Mount, Route};
use crate::auth::Caller;
use crate::http::body::read_limited;
use crate::http::error::ApiError;
use crate::http::state::AppState;

const PATH_PREFIX: &str = "/v1/kv/";
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The metrics' route label of a key request: the pattern the key routes were once
/// mounted with, kept so that dashboards and alerts go on matching.
const KEY_ROUTE: &str = "/v1/kv/{key:.*}";

/// The routes of `/v1/kv` and `/v1/kv/{key}`.
pub(crate) const ROUTES: &[Route] = &[
    Route::new::<__path_list>(
        Mount::To(|r| r.to(list)),
        &[
            InvalidRequest,
            FutureRevision,
            Forbidden,
            Compacted,
            StorageUnavailable,
            ShuttingDown,
        ],
    ),
    Route::new::<__path_delete_prefix>(
        Mount::To(|r| r.to(delete_prefix)),
        &[
            InvalidRequest,
            Forbidden,
            StorageUnavailable,
            ShuttingDown,
            InsufficientStorage,
        ],
    ),
    Route::new::<__path_get>(
        Mount::With(mount_keys),
        &[
            InvalidKey,
            InvalidRequest,
            FutureRevision,
            Forbidden,
            KeyNotFound,
            Compacted,
            StorageUnavailable,
            ShuttingDown,
        ],
    ),
    Route::new::<__path_put>(
        Mount::WithItsPath,
        &[
            InvalidKey,
            InvalidRequest,
            InvalidTtl,
            Forbidden,
            RequestTimeout,
            LeaseNotFound,
            PreconditionFailed,
            ValueTooLarge,
            StorageUnavailable,
            ShuttingDown,
            InsufficientStorage,
        ],
    ),
    Route::new::<__path_delete>(
        Mount::WithItsPath,
        &[
            InvalidKey,
            InvalidRequest,
            Forbidden,
            KeyNotFound,
            PreconditionFailed,
            StorageUnavailable,
            ShuttingDown,
            InsufficientStorage,
        ],
    ),
];

/// Mounts `/v1/kv/{key}` without a pattern that actix would match with a regex on
/// every request: a scope (a prefix, matched on `/` boundaries, so `/v1/kvx` stays
/// unknown) whose default service takes every key path (the list's routes, mounted
/// before it, take `/v1/kv` itself).
fn mount_keys(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/v1/kv").default_service(web::to(key)));
}

/// Everything under `/v1/kv` but `GET /v1/kv`: a key path, dispatched by method to
/// [`get`] (also for HEAD), [`put`] or [`delete`], their arguments extracted in the
/// order the routes did. Another method, on a key path or on `/v1/kv` itself, gets
/// `405 method_not_allowed` with the documented methods (before any token check).
async fn key(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    if req.match_info().unprocessed().is_empty() {
        // `/v1/kv` itself with a method the list does not take.
        return Err(super::methods::unmatched(&req).into());
    }
    req.extensions_mut()
        .insert(crate::http::metrics::RouteLabel(KEY_ROUTE));
    // A standard method is a plain enum value: cloning it allocates nothing.
    let method = req.method().clone();
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return Err(super::methods::unmatched(&req).into());
    }
    let caller = Caller::extract(&req).await?;
    let state = web::Data::<AppState>::extract(&req).await?;
    let answer = match method {
        Method::PUT => put(req, caller, payload, state).await,
        Method::DELETE => delete(req, caller, state).await,
        _ => get(req, caller, state).await,
    };
    Ok(answer?)
}

/// The key named by the request path, percent-decoded (`a%2Fb` is `a/b`).
fn key_of(req: &HttpRequest) -> Result<String, ApiError> {
    super::route::key_in_path(req, PATH_PREFIX)
}

fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// A header's value as text, trimmed.
fn header_text<'a>(
    req: &'a HttpRequest,
    name: &header::HeaderName,
) -> Result<Option<&'a str>, ApiError> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::invalid_request(format!("the {name} header is not text")))
        })
        .transpose()
}

/// What a write's `If-Match` / `If-None-Match` ask for.
enum Precondition {
    /// Neither header: write unconditionally.
    None,
    /// Write only if this holds.
    Holds(Condition),
    /// Both headers: `If-Match` wants the key to exist, `If-None-Match: *` wants it
    /// absent. RFC 9110 §13.2.2 evaluates them in turn, and one of them always
    /// fails: `412`, whatever the key holds.
    Never,
}

/// A revision as `If-Match` names it: `"42"` (the `ETag`), `W/"42"`, or bare `42`,
/// at most 19 digits (the document's pattern says the same).
fn revision_tag(tag: &str) -> Option<u64> {
    let digits = tag
        .strip_prefix("W/")
        .unwrap_or(tag)
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    let well_formed =
        (1..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| digits.parse().ok()).flatten()
}

/// The write's precondition, from `If-Match` / `If-None-Match`.
fn precondition(req: &HttpRequest) -> Result<Precondition, ApiError> {
    let if_match = match header_text(req, &header::IF_MATCH)? {
        None => None,
        Some("*") => Some(Condition::Exists),
        Some(tag) => Some(
            revision_tag(tag)
                .map(Condition::ModRevision)
                .ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "If-Match must be a revision in quotes, like \"42\", or *; got {tag:?}"
                    ))
                })?,
        ),
    };
    let absent = match header_text(req, &header::IF_NONE_MATCH)? {
        None => false,
        Some("*") => true,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "only If-None-Match: * (create-only) is supported; got {other:?}"
            )))
        }
    };
    Ok(match (if_match, absent) {
        (None, false) => Precondition::None,
        (None, true) => Precondition::Holds(Condition::Absent),
        (Some(condition), false) => Precondition::Holds(condition),
        (Some(_), true) => Precondition::Never,
    })
}

/// The condition to hand the store, or the `412` of a precondition that can never
/// hold (naming the key's current revision, as the store's own `412` does).
async fn condition(
    req: &HttpRequest,
    state: &AppState,
    key: &str,
) -> Result<Option<Condition>, ApiError> {
    match precondition(req)? {
        Precondition::None => Ok(None),
        Precondition::Holds(condition) => Ok(Some(condition)),
        Precondition::Never => {
            let current = state
                .store
                .get(key)
                .await
                .map_err(|e| ApiError::from_store(e, key))?
                .map(|entry| entry.mod_revision);
            Err(
                ApiError::from(kvstore_core::Error::PreconditionFailed { current })
                    .prefixed("If-Match and If-None-Match: * never both hold"),
            )
        }
    }
}

/// Whether a read's `If-None-Match` names the entry's tag (`"<mod_revision>"`, or
/// `*`): then the client's copy is current and the answer is `304 Not Modified`.
/// Tags that are not ours never match.
fn not_modified(req: &HttpRequest, mod_revision: u64) -> Result<bool, ApiError> {
    let Some(tags) = header_text(req, &header::IF_NONE_MATCH)? else {
        return Ok(false);
    };
    Ok(tags.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag
                .trim_start_matches("W/")
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<u64>().ok())
                == Some(mod_revision)
    }))
}

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// The tag of an entry at `mod_revision`: the revision in quotes.
fn etag(mod_revision: u64) -> String {
    format!("\"{mod_revision}\"")
}

/// Read a key: its value as raw bytes, or as an [`Entry`] with `Accept: application/json`.
#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    tag = "kv",
    operation_id = "get_key",
    params(KeyParam, IfNoneMatchTag, GetQuery),
    responses(
        (status = 200,
         description = "The value: its raw bytes (`application/octet-stream`, the default), or \
            the entry as JSON when `Accept` names `application/json` (with `revision`, an \
            `EntryAt`: the entry then, `read_revision` and `current_revision`). The \
            metadata is in the headers either way.",
         content(
            (super::route::Binary = "application/octet-stream"),
            (Entry = "application/json"),
         ),
         headers(
            ("ETag" = String, description = "The key's `mod_revision` in quotes, e.g. `\"42\"`: \
                send it back as `If-Match` for a compare-and-swap"),
            ("x-kv-create-revision" = u64, description = "Revision that created the key"),
            ("x-kv-mod-revision" = u64, description = "Revision of the key's last put"),
            ("x-kv-version" = u64, description = "Puts since the key was created"),
            ("x-kv-revision" = u64, description = "The store's current revision"),
            ("x-kv-lease" = u64, description = "The lease the key is attached to; absent for \
                a permanent key"),
            ("x-kv-read-revision" = u64, description = "With `revision`: the revision the key \
                was read at (the JSON form says it too, as `read_revision`, beside \
                `current_revision`)"),
         )),
        (status = 304, description = "Not modified: `If-None-Match` names the key's current tag \
            (or is `*`); the headers are those of a 200, there is no body",
         headers(
            ("ETag" = String, description = "The key's `mod_revision` in quotes"),
            ("x-kv-mod-revision" = u64, description = "Revision of the key's last put"),
         )),
    )
)]
async fn get(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_of(&req)?;
    caller.check_read(&key)?;
    let at = web::Query::<GetQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?
        .revision
        .map(super::history::check_revision)
        .transpose()?;
    let read = match at {
        None => state.store.get(&key).await,
        Some(revision) => state.store.get_at(&key, revision).await,
    };
    let entry = read
        .map_err(|e| ApiError::from_store(e, &key))?
        .ok_or_else(|| ApiError::key_not_found(&key))?;
    let unchanged = not_modified(&req, entry.mod_revision)?;
    let mut res = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag(entry.mod_revision)))
        .insert_header((CREATE_REVISION, number(entry.create_revision)))
        .insert_header((MOD_REVISION, number(entry.mod_revision)))
        .insert_header((VERSION, number(entry.version)))
        .insert_header((STORE_REVISION, number(state.store.revision())));
    if let Some(lease) = entry.lease {
        res.insert_header((LEASE, number(lease)));
    }
    if let Some(revision) = at {
        res.insert_header((READ_REVISION, number(revision)));
    }
    if unchanged {
        Ok(res.finish())
    } else if let (true, Some(read_revision)) = (wants_json(&req), at) {
        Ok(res.json(EntryAt {
            entry,
            read_revision,
            current_revision: state.store.revision(),
        }))
    } else if wants_json(&req) {
        Ok(res.json(entry))
    } else {
        Ok(res
            .content_type("application/octet-stream")
            .body(entry.value))
    }
}

/// Write a key: the body is the value, raw. `If-Match` / `If-None-Match` make it
/// conditional (compare-and-swap, create-only). After a `503` the write may or may
/// not have been applied; with `ttl` its lease is kept then: the key, if written,
/// goes when the TTL ends.
#[utoipa::path(
    put,
    path = "/v1/kv/{key}",
    tag = "kv",
    operation_id = "put_key",
    params(KeyParam, IfMatch, IfNoneMatch, super::leases::PutLeaseQuery),
    request_body(
        description = "The value, raw bytes (at most `--max-value-bytes`, 1 MiB by default); \
            no body is the empty value",
        content((Option<super::route::Binary> = "application/octet-stream")),
    ),
    responses(
        (status = 200, description = "Written, durably", body = PutResult,
         headers(("ETag" = String, description = "The new `mod_revision` in quotes"))),
    )
)]
async fn put(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_of(&req)?;
    caller.check_write(&key)?;
    let lease = PutLease::of(&req)?;
    let condition = condition(&req, &state, &key).await?;
    let value = read_limited(&req, payload, state.store.max_value_bytes()).await?;
    let store = &state.store;
    let put = match lease {
        Some(PutLease::Own(ttl)) => store
            .put_with_ttl(&key, value, condition, ttl)
            .await
            .map(|(put, _)| put),
        Some(PutLease::Existing(id)) => store.put_leased(&key, value, condition, Some(id)).await,
        None => store.put_leased(&key, value, condition, None).await,
    };
    let result = put.map_err(|e| ApiError::from_store(e, &key))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(result.revision)))
        .json(result))
}

/// Delete a key, optionally only if it is at a given `mod_revision` (`If-Match`).
/// `If-None-Match: *` (only if the key does not exist) is a precondition too: it
/// holds only where there is nothing to delete, so such a delete answers `412` when
/// the key exists and `404` when it does not.
#[utoipa::path(
    delete,
    path = "/v1/kv/{key}",
    tag = "kv",
    operation_id = "delete_key",
    params(KeyParam, IfMatch, IfNoneMatch),
    responses(
        (status = 200, description = "Deleted, durably", body = DeleteResult),
    )
)]
async fn delete(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_of(&req)?;
    caller.check_write(&key)?;
    let condition = condition(&req, &state, &key).await?;
    let result = state
        .store
        .delete(&key, condition)
        .await
        .map_err(|e| ApiError::from_store(e, &key))?;
    Ok(HttpResponse::Ok().json(result))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only keys starting with this (absent: every key).
    #[serde(default)]
    prefix: String,
    /// Most entries in the page.
    #[param(minimum = 1, maximum = 1000, default = 100, nullable = false)]
    limit: Option<usize>,
    /// Start after this key (the `next` of the previous page).
    #[param(nullable = false)]
    after: Option<String>,
    /// Read the store as it was at this revision (absent: now).
    #[param(minimum = 1, nullable = false)]
    revision: Option<u64>,
    /// The `continue` of the previous page: the next page, read at that page's
    /// revision (alone: not with `after` or `revision`).
    #[serde(rename = "continue")]
    #[param(rename = "continue", nullable = false)]
    continue_token: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct GetQuery {
    /// Read the key as it was at this revision (absent: now).
    #[param(minimum = 1, nullable = false)]
    revision: Option<u64>,
}

/// The key in the path.
#[derive(utoipa::IntoParams)]
#[into_params(names("key"), parameter_in = Path)]
#[allow(dead_code)]
struct KeyParam(
    /// The key, percent-decoded once (`app%2Fdb` and `app/db` are the same key); `/`
    /// is an ordinary character. Non-empty, at most 4 KiB of UTF-8.
    #[param(min_length = 1)]
    String,
);

/// `If-Match`: only if the key is at this `mod_revision`.
#[derive(utoipa::IntoParams)]
#[into_params(names("If-Match"), parameter_in = Header)]
#[allow(dead_code)]
struct IfMatch(
    /// A `mod_revision` in quotes (`"42"`, as in the `ETag`; also `W/"42"` or bare
    /// `42`) for a compare-and-swap, or `*`: only if the key exists. With
    /// `If-None-Match: *` beside it the answer is always `412`: the two never both hold.
    #[param(nullable = false, pattern = r#"^(\*|(W/)?"[0-9]{1,19}"|[0-9]{1,19})$"#)]
    Option<String>,
);

/// `If-None-Match: *`: only if the key does not exist (create-only).
#[derive(utoipa::IntoParams)]
#[into_params(names("If-None-Match"), parameter_in = Header)]
#[allow(dead_code)]
struct IfNoneMatch(#[param(nullable = false, schema_with = star_only)] Option<String>);

/// The one value a write's `If-None-Match` may have: `*` (as an enum, which says
/// so to every tool; a pattern is a hint some generators bend).
fn star_only() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["*"]))
        .description(Some(
            "Only `*` is supported; any other value is `400 invalid_request`",
        ))
        .build()
}

/// `If-None-Match` on a read: the tags the client holds.
#[derive(utoipa::IntoParams)]
#[into_params(names("If-None-Match"), parameter_in = Header)]
#[allow(dead_code)]
struct IfNoneMatchTag(
    /// Tags (`"42"`, as in the `ETag`), comma-separated, or `*`: when one is the key's
    /// current tag the answer is `304 Not Modified`.
    #[param(nullable = false)]
    Option<String>,
);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeletePrefixQuery {
    /// Delete every key starting with this (non-empty). To delete every key, leave
    /// it out and send `all=true`: an empty `prefix=` is refused, as a variable
    /// left unset would send it.
    #[serde(default)]
    #[param(nullable = false, min_length = 1)]
    prefix: Option<String>,
    /// Confirms a delete of every key (no `prefix`).
    #[serde(default)]
    #[param(nullable = false)]
    all: bool,
}

/// Delete every key under a prefix, at one revision.
#[utoipa::path(
    delete,
    path = "/v1/kv",
    tag = "kv",
    operation_id = "delete_prefix",
    params(DeletePrefixQuery),
    responses(
        (status = 200, description = "Deleted, durably, at one revision (`revision` is the \
            store's when nothing matched: no revision is taken then)",
         body = DeletePrefixResult),
    )
)]
async fn delete_prefix(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<DeletePrefixQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?;
    let prefix = match query.prefix.as_deref() {
        Some("") => {
            return Err(ApiError::invalid_request(
                "the prefix is empty: name a non-empty prefix (?prefix=P), or leave it out \
                 and delete every key with ?all=true",
            ))
        }
        Some(prefix) => prefix.to_string(),
        None if query.all => String::new(),
        None => {
            return Err(ApiError::invalid_request(
                "name a non-empty prefix (?prefix=P), or delete every key with ?all=true",
            ))
        }
    };
    caller.check_write(&prefix)?;
    let result = state
        .store
        .delete_prefix(&prefix)
        .await
        .map_err(|e| ApiError::from_store(e, &prefix))?;
    Ok(HttpResponse::Ok()
        .insert_header((STORE_REVISION, number(result.revision)))
        .json(result))
}

/// List keys under a prefix, in key order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/kv",
    tag = "kv",
    operation_id = "list_keys",
    params(ListQuery),
    responses(
        (status = 200, description = "One page; pass `continue` as `continue` for the \
            following one, read at the same revision (or `next` as `after`, read now)",
         body = ListPage,
         headers(("x-kv-revision" = u64, description = "The revision the page shows"),
                 ("x-kv-current-revision" = u64, description = "The store's current revision"))),
    )
)]
async fn list(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?;
    caller.check_read_some(&query.prefix)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let from = (&query.after, query.revision, &query.continue_token);
    let page = super::history::list_page(&state, &caller, &query.prefix, from, limit).await?;
    Ok(HttpResponse::Ok()
        .insert_header((STORE_REVISION, number(page.revision)))
        .insert_header((
            CURRENT_REVISION,
            number(page.current_revision.unwrap_or(page.revision)),
        ))
        .json(page))
}
