//! Reads of the past: a key's changes (`GET /v1/history/{key}`), and what the key
//! and list routes share to read at a revision (`?revision=R`, the `continue`
//! token of a listing).

use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kvstore_core::wire::{HistoryPage, ListPage};
use serde::Deserialize;

use super::route::{Mount, Route};
use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use kvstore_core::ErrorCode;

const PATH_PREFIX: &str = "/v1/history/";
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The route of `/v1/history/{key}`.
pub(crate) const ROUTES: &[Route] = &[Route::new::<__path_history>(
    Mount::With(mount),
    &[
        ErrorCode::InvalidKey,
        ErrorCode::InvalidRequest,
        ErrorCode::Forbidden,
        ErrorCode::Compacted,
        ErrorCode::StorageUnavailable,
        ErrorCode::ShuttingDown,
    ],
)];

/// Mounts `/v1/history/{key}` as a scope whose default service takes every key
/// path (as the key routes are, see `kv`).
fn mount(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/v1/history").default_service(web::to(key)));
}

/// A revision named by a query: at least 1 (revisions start there).
pub fn check_revision(revision: u64) -> Result<u64, ApiError> {
    if revision == 0 || revision > MAX_REVISION {
        return Err(ApiError::invalid_request(format!(
            "revision must be between 1 (the first change) and {MAX_REVISION}"
        )));
    }
    Ok(revision)
}

/// The largest revision a query may name (etcd's are signed 64-bit numbers).
const MAX_REVISION: u64 = i64::MAX as u64;

/// The `continue` token of a list page: the page's revision and its last key,
/// so that the next page is read at the same revision, after that key.
pub fn continue_token(revision: u64, after: &str) -> String {
    let mut bytes = revision.to_be_bytes().to_vec();
    bytes.extend_from_slice(after.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The revision and key a `continue` token carries.
pub fn parse_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::invalid_request("continue: not a token of a list page's `continue`");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    if bytes.len() < 8 {
        return Err(bad());
    }
    let (revision, key) = bytes.split_at(8);
    let revision = u64::from_be_bytes(revision.try_into().map_err(|_| bad())?);
    let key = String::from_utf8(key.to_vec()).map_err(|_| bad())?;
    Ok((check_revision(revision).map_err(|_| bad())?, key))
}

/// Where a list page starts: the list query's `after`, `revision` and `continue`.
pub type ListFrom<'a> = (&'a Option<String>, Option<u64>, &'a Option<String>);

/// The page of `prefix` that `from` asks for: now, at a revision, or after a
/// `continue` token; with its own `continue` token (the next page is read at this
/// page's revision) and the store's current revision. Only what `caller` may read.
pub async fn list_page(
    state: &AppState,
    caller: &Caller,
    prefix: &str,
    (after, revision, token): ListFrom<'_>,
    limit: usize,
) -> Result<ListPage, ApiError> {
    // An empty `continue` is no token (the last page has none).
    let (at, after) = match token.as_deref().filter(|t| !t.is_empty()) {
        None => (revision, after.clone()),
        Some(_) if after.is_some() || revision.is_some() => return Err(ApiError::invalid_request(
            "continue carries the revision and the key to start after: not with after or revision",
        )),
        Some(token) => parse_continue(token).map(|(r, k)| (Some(r), Some(k)))?,
    };
    let at = at.map(check_revision).transpose()?;
    let mut page = readable_page(state, caller, prefix, after.as_deref(), limit, at)
        .await
        .map_err(|e| ApiError::from_store(e, prefix))?;
    page.continue_token = page
        .next
        .as_deref()
        .map(|next| continue_token(page.revision, next));
    page.current_revision
        .get_or_insert(state.store.revision().max(page.revision));
    Ok(page)
}

/// Up to `limit` entries under `prefix` that `caller` may read, after `after`, as
/// of revision `at` (the current one when `None`), and the key to page on from
/// when more follow. Only the ranges the caller may read are read, so nothing in
/// the page (entries, `next`, its length) depends on keys it may not read; all of
/// them at the first read's revision, so the page is one snapshot.
async fn readable_page(
    state: &AppState,
    caller: &Caller,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    mut at: Option<u64>,
) -> Result<ListPage, kvstore_core::Error> {
    let mut entries = Vec::new();
    let mut current = None;
    // One entry beyond the page says whether more follow.
    'ranges: for range in caller.readable_ranges(prefix) {
        let mut cursor = after.map(str::to_string);
        loop {
            let want = limit + 1 - entries.len();
            let page = match at {
                None => state.store.list(&range, cursor.as_deref(), want).await?,
                Some(r) => {
                    state
                        .store
                        .list_at(&range, cursor.as_deref(), want, r)
                        .await?
                }
            };
            at = Some(page.revision);
            current = current.max(page.current_revision);
            entries.extend(page.entries);
            if entries.len() > limit {
                break 'ranges;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    let next = (entries.len() > limit).then(|| {
        entries.truncate(limit);
        entries.last().map(|e| e.key.clone())
    });
    Ok(ListPage {
        entries,
        next: next.flatten(),
        revision: at.unwrap_or_else(|| state.store.revision()),
        continue_token: None,
        current_revision: current,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Only changes after this revision (the `next` of the previous page); absent:
    /// from the oldest revision kept.
    #[param(nullable = false)]
    after: Option<u64>,
    /// Most changes in the page.
    #[param(minimum = 1, maximum = 1000, default = 100, nullable = false)]
    limit: Option<usize>,
}

/// The key in the path.
#[derive(utoipa::IntoParams)]
#[into_params(names("key"), parameter_in = Path)]
#[allow(dead_code)]
struct KeyParam(
    /// The key, percent-decoded once, as in `/v1/kv/{key}`.
    #[param(min_length = 1)]
    String,
);

/// A key's changes within the retained history, oldest first, a page at a time:
/// each put with the value, version and lease it left, each delete.
#[utoipa::path(
    get,
    path = "/v1/history/{key}",
    tag = "kv",
    operation_id = "key_history",
    params(KeyParam, HistoryQuery),
    responses(
        (status = 200, description = "One page; pass `next` as `after` for the following one. \
            `revision` is the store's revision the history runs to",
         body = HistoryPage,
         headers(("x-kv-revision" = u64, description = "The revision the history runs to"))),
    )
)]
async fn history(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_of(&req)?;
    caller.check_read(&key)?;
    let query = web::Query::<HistoryQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?;
    if query.after.is_some_and(|after| after > MAX_REVISION) {
        return Err(ApiError::invalid_request(format!(
            "after must be at most {MAX_REVISION}"
        )));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let page = state
        .store
        .history(&key, query.after.unwrap_or(0), limit)
        .await
        .map_err(|e| ApiError::from_store(e, &key))?;
    Ok(HttpResponse::Ok()
        .insert_header((super::headers::STORE_REVISION, page.revision))
        .json(page))
}

/// Every path under `/v1/history`: GET (and HEAD) of a key's history; another
/// method gets `405`.
async fn key(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    use actix_web::http::Method;
    if req.match_info().unprocessed().is_empty()
        || !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return Err(super::methods::unmatched(&req).into());
    }
    req.extensions_mut()
        .insert(crate::http::metrics::RouteLabel("/v1/history/{key}"));
    let caller = Caller::extract(&req).await?;
    let state = web::Data::<AppState>::extract(&req).await?;
    Ok(history(req, caller, state).await?)
}

/// The key named by the request path, percent-decoded (`a%2Fb` is `a/b`).
fn key_of(req: &HttpRequest) -> Result<String, ApiError> {
    super::route::key_in_path(req, PATH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() -> Result<(), ApiError> {
        for key in ["", "app/x", "a\0b", "ключ"] {
            assert_eq!(
                parse_continue(&continue_token(42, key))?,
                (42, key.to_string())
            );
        }
        assert!(parse_continue("!!").is_err());
        assert!(parse_continue(&URL_SAFE_NO_PAD.encode([0u8; 8])).is_err());
        Ok(())
    }
}
