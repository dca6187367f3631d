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
use kvstore_core::Precondition;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::body::read_limited;
use crate::error::ApiError;
use crate::pyjson;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/kv", web::get().to(get))
        .route("/kv", web::put().to(put));
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

#[derive(Deserialize)]
struct GetBody {
    key: String,
}

#[derive(Deserialize)]
struct PutBody {
    key: String,
    value: serde_json::Value,
}

#[derive(Serialize)]
struct Missing {
    status_code: u16,
    error: &'static str,
}

#[derive(Serialize)]
struct Found<'a> {
    value: &'a str,
}

fn respond<T: Serialize>(status: StatusCode, body: &T) -> Result<HttpResponse, ApiError> {
    let bytes = pyjson::to_vec(body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(bytes))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("the body must be a JSON object: {e}")))
}

fn body_limit(state: &AppState) -> usize {
    // Room for the key, the JSON quoting and escapes around the largest value.
    state.store.config().max_value_bytes * 6 + kvstore_core::key::MAX_KEY_BYTES * 6 + 1024
}

async fn get(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<KeyQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {e}")))?;
    let key = match query.into_inner().key {
        Some(key) => key,
        None => {
            let body = read_limited(&req, payload, body_limit(&state)).await?;
            if body.is_empty() {
                return Err(ApiError::InvalidRequest(
                    "name the key: ?key=K or a JSON body {\"key\": K}".into(),
                ));
            }
            parse::<GetBody>(&body)?.key
        }
    };
    kvstore_core::key::validate_key(&key).map_err(|e| ApiError::InvalidKey(e.to_string()))?;
    caller.check_read(&key)?;
    match state
        .store
        .get(&key)
        .map_err(|e| ApiError::from_store(e, &key))?
    {
        None => respond(
            StatusCode::NOT_FOUND,
            &Missing {
                status_code: 404,
                error: "Key Doesn't exist",
            },
        ),
        Some(entry) => match crate::routes::kv::durable(&state, entry.mod_revision)
            .await
            .map(|()| std::str::from_utf8(&entry.value))?
        {
            Ok(value) => respond(StatusCode::OK, &Found { value }),
            Err(_) => Err(ApiError::InvalidRequest(format!(
                "the value of {key:?} is binary; read it with GET /v1/kv/{{key}}"
            ))),
        },
    }
}

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
        return Err(ApiError::InvalidRequest(
            "\"value\" must be a JSON string".into(),
        ));
    };
    state
        .store
        .put(key.as_str(), text.clone().into_bytes(), Precondition::None)
        .await
        .map_err(|e| ApiError::from_store(e, &key))?;
    let mut answer = serde_json::Map::new();
    answer.insert(key, serde_json::Value::String(text));
    respond(StatusCode::OK, &answer)
}
