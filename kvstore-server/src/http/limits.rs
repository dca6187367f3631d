//! Bounds on what one client can send or hold open: header size, and watch
//! streams per token (or per address on an open server).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::http::error::ApiError;

/// Counts open watch streams per client and refuses those over the limit.
#[derive(Debug)]
pub struct WatcherLimit {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open watch stream; frees its place when dropped.
#[derive(Debug)]
pub struct WatcherSlot {
    limit: Arc<WatcherLimit>,
    client: String,
}

impl WatcherLimit {
    /// At most `max` watch streams per client.
    pub fn new(max: usize) -> Arc<WatcherLimit> {
        Arc::new(WatcherLimit {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more watch stream of `client`, or 429 `too_many_watchers`.
    pub fn acquire(self: &Arc<Self>, client: String) -> Result<WatcherSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client.clone()).or_insert(0);
        if *count >= self.max {
            return Err(ApiError::new(
                kvstore_core::ErrorCode::TooManyWatchers,
                format!(
                    "this client already holds {} watch streams, the most it may",
                    self.max
                ),
            ));
        }
        *count += 1;
        Ok(WatcherSlot {
            limit: self.clone(),
            client,
        })
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Most bytes of request headers (names and values) a request may carry. actix
/// itself only refuses heads over 128 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Middleware: refuses requests whose headers exceed [`MAX_HEADER_BYTES`] with
/// 431 `headers_too_large`, before any handler runs.
pub async fn bound_headers(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            kvstore_core::ErrorCode::HeadersTooLarge,
            format!("the request headers are larger than {MAX_HEADER_BYTES} bytes"),
        )
        .into());
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_client_and_freed_on_drop() {
        let limit = WatcherLimit::new(2);
        let a1 = limit.acquire("a".into());
        let _a2 = limit.acquire("a".into());
        assert!(limit.acquire("a".into()).is_err());
        assert!(limit.acquire("b".into()).is_ok());
        drop(a1);
        assert!(limit.acquire("a".into()).is_ok());
    }
}
