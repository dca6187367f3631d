//! Server-Sent Events: each frame an event whose `id:` is its revision (so
//! `Last-Event-ID` resumes right after it) and whose `event:` is its type.

use actix_web::web::Bytes;
use futures_util::Stream;

use super::Pump;
use crate::http::error::ApiError;

/// The body of an SSE watch: the pump's frames, until the last one.
pub fn body(pump: Pump) -> impl Stream<Item = Result<Bytes, ApiError>> {
    futures_util::stream::unfold(pump, |mut pump| async move {
        let frame = pump.next().await?;
        Some((Ok(frame.sse()), pump))
    })
}
