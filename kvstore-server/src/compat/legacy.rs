//! `/kv`: the API of the service we replace, byte for byte, on the same store.
//!
//! - `GET /kv` with `{"key": K}` as JSON body (or `?key=K`) → `{"value": V}`, or 404
//!   with `{"status_code": 404, "error": "Key Doesn't exist"}`.
//! - `PUT /kv` with `{"key": K, "value": V}` → `{K: V}`.
//!
//! Values are JSON strings here (the old CLI only ever sent strings); a stored value
//! that is not UTF-8 cannot be shown and gets a `value_not_text` error.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use kvstore_core::ErrorCode;
use kvstore_core::ErrorCode::*;
use serde::{Deserialize, Serialize};

use super::pyjson;
use crate::api::route::{Mount, Route};
use crate::auth::Caller;
use crate::http::body::read_limited;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// The routes of `/kv`.
pub(crate) const ROUTES: &[Route] = &[
    Route::new::<__path_get>(
        Mount::To(|r| r.to(get)),
        &[
            InvalidKey,
            InvalidRequest,
            Forbidden,
            ValueNotText,
            RequestTimeout,
            ValueTooLarge,
            StorageUnavailable,
            ShuttingDown,
        ],
    ),
    Route::new::<__path_put>(
        Mount::To(|r| r.to(put)),
        &[
            InvalidKey,
            InvalidRequest,
            Forbidden,
            RequestTimeout,
            ValueTooLarge,
            StorageUnavailable,
            ShuttingDown,
            InsufficientStorage,
        ],
    ),
];

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct KeyQuery {
    /// The key (else it is read from the JSON body). Required with HEAD, which
    /// carries no body.
    #[param(nullable = false, min_length = 1)]
    key: Option<String>,
}

/// The body of a legacy get (when `?key=` is absent).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = LegacyGetBody)]
struct GetBody {
    /// The key: non-empty, at most 4 KiB of UTF-8.
    #[schema(min_length = 1)]
    key: String,
}

/// The body of a legacy put.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = LegacyPutBody)]
struct PutBody {
    /// The key: non-empty, at most 4 KiB of UTF-8.
    #[schema(min_length = 1)]
    key: String,
    /// The value: a JSON string (any other JSON type gets `400 invalid_request`).
    #[schema(value_type = String)]
    value: serde_json::Value,
}

/// The legacy answer for an absent key.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LegacyMissing)]
struct Missing {
    /// Always 404.
    #[schema(example = 404)]
    status_code: u16,
    /// Always `Key Doesn't exist`.
    #[schema(example = "Key Doesn't exist")]
    error: &'static str,
}

/// The legacy answer of a get.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LegacyValue)]
struct Found<'a> {
    /// The value (a text value; a binary one cannot be read through `/kv`).
    value: &'a str,
}

fn respond<T: Serialize>(status: StatusCode, body: &T) -> Result<HttpResponse, ApiError> {
    let bytes = pyjson::to_vec(body).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(bytes))
}

/// Reads a body that must be a JSON object. serde would also read the struct from an
/// array of its fields in order (`["k", "v"]`), a shape the legacy API never had:
/// that is refused like any other body that is not an object.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "the body must be a JSON object, like {\"key\": K}",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the body must be a JSON object: {e}")))
}

fn body_limit(state: &AppState) -> usize {
    // Room for the key, the JSON quoting and escapes around the largest value.
    state.store.max_value_bytes() * 6 + kvstore_core::key::MAX_KEY_BYTES * 6 + 1024
}

/// Legacy read (the API of the service kvstore replaces): the key comes from `?key=`
/// or from a JSON body `{"key": K}`.
#[utoipa::path(
    get,
    path = "/kv",
    tag = "legacy",
    operation_id = "legacy_get",
    params(KeyQuery),
    request_body(
        description = "`{\"key\": K}`: names the key when `?key=` is absent; beside `?key=`, \
            which names the key then, a body must still be `{\"key\": K}`",
        content((Option<GetBody> = "application/json")),
    ),
    responses(
        (status = 200, description = "`{\"value\": V}` (Python `json.dumps` style, then a \
            newline)", body = Found),
        (status = 404, description = "The legacy not-found body, not the usual error body",
         body = Missing),
    )
)]
async fn get(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<KeyQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?;
    // A body, when one is sent, must be `{"key": K}` even beside `?key=` (which
    // names the key then): a request is taken whole or refused, never half read.
    let body = read_limited(&req, payload, body_limit(&state)).await?;
    let in_body = if body.is_empty() {
        None
    } else {
        let GetBody { key } = parse(&body)?;
        kvstore_core::key::validate_key(&key).map_err(|e| ApiError::invalid_key(e.to_string()))?;
        Some(key)
    };
    let key = query.into_inner().key.or(in_body).ok_or_else(|| {
        ApiError::invalid_request("name the key: ?key=K or a JSON body {\"key\": K}")
    })?;
    kvstore_core::key::validate_key(&key).map_err(|e| ApiError::invalid_key(e.to_string()))?;
    caller.check_read(&key)?;
    match state
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &key))?
    {
        None => respond(
            StatusCode::NOT_FOUND,
            &Missing {
                status_code: 404,
                error: "Key Doesn't exist",
            },
        ),
        Some(entry) => match std::str::from_utf8(&entry.value) {
            Ok(value) => respond(StatusCode::OK, &Found { value }),
            Err(_) => Err(ApiError::new(
                ErrorCode::ValueNotText,
                format!("the value of {key:?} is binary; read it with GET /v1/kv/{{key}}"),
            )),
        },
    }
}

/// Legacy write: `{"key": K, "value": V}` with a string value.
#[utoipa::path(
    put,
    path = "/kv",
    tag = "legacy",
    operation_id = "legacy_put",
    request_body(content((PutBody = "application/json"))),
    responses(
        (status = 200, description = "`{K: V}` (Python `json.dumps` style, then a newline)",
         body = std::collections::HashMap<String, String>),
    )
)]
async fn put(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, body_limit(&state)).await?;
    let PutBody { key, value } = parse(&body)?;
    caller.check_write(&key)?;
    let serde_json::Value::String(text) = value else {
        return Err(ApiError::invalid_request("\"value\" must be a JSON string"));
    };
    state
        .store
        .put(&key, text.clone().into_bytes(), None)
        .await
        .map_err(|e| ApiError::from_store(e, &key))?;
    let mut answer = serde_json::Map::new();
    answer.insert(key, serde_json::Value::String(text));
    respond(StatusCode::OK, &answer)
}
