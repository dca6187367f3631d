//! `/healthz`: 200 while the store answers reads.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health));
}

async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .store
        .oldest_revision()
        .map_err(|e| ApiError::from_store(e, ""))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok", "revision": state.store.revision()})))
}
