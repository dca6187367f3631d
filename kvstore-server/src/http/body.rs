//! Reading request bodies with a size limit that answers in our error format.

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Reads the whole body, refusing (413) anything larger than `max` bytes, whether
/// announced by `Content-Length` or found while reading.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    let announced = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    log::debug!(
        "reading the body of {} {} ({} bytes announced)",
        req.method(),
        req.path(),
        announced.map_or("no length".to_string(), |n| n.to_string())
    );
    if announced.is_some_and(|n| n > max) {
        return Err(ApiError::value_too_large(max));
    }
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map_or(std::time::Duration::from_secs(30), |state| {
            state.body_timeout
        });
    let read = async {
        let mut body = Vec::with_capacity(announced.unwrap_or(0));
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::invalid_request(format!("reading the body: {e}")))?;
            if body.len() + chunk.len() > max {
                return Err(ApiError::value_too_large(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    // A client that trickles its body (slowloris) gives up its slot.
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::request_timeout())?
}

/// Reads a body that must be a JSON object: serde would also read a struct from an
/// array of its fields in order (`[30]`), a shape no endpoint documents. `shape`
/// names the expected object in the error, e.g. `{"ttl": SECONDS}`.
pub fn json_object<T: serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(ApiError::invalid_request(format!(
            "the body must be a JSON object, {shape}"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the body must be {shape}: {e}")))
}
