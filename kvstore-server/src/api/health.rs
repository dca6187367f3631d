//! `/healthz`: 200 while the store answers reads.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::route::{Mount, Route};

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// The route of `/healthz`.
pub(crate) const ROUTES: &[Route] = &[Route::new::<__path_health>(
    Mount::To(|r| r.to(health)),
    &[kvstore_core::ErrorCode::StorageUnavailable],
)];

/// The answer of `/healthz`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
    /// The storage engine: `sled` or `etcd`.
    #[schema(example = "sled")]
    engine: &'static str,
    /// The store's current revision.
    revision: u64,
    /// The oldest revision a read (`?revision=`) or a watch can start from.
    oldest_revision: u64,
}

/// Whether the server is up and its store answers reads. Needs no token.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "health",
    security(()),
    responses(
        (status = 200, description = "Up", body = Health),
    )
)]
async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let status = state.store.status().await.map_err(|e| {
        let engine = state.store.engine();
        ApiError::from(e).prefixed(&format!("the {engine} store does not answer"))
    })?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ok",
        engine: status.engine,
        revision: status.revision,
        oldest_revision: status.oldest_revision,
    }))
}
