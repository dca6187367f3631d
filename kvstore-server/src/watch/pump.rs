//! The one watch loop: open the store's watch, give the initial state or the
//! opening progress frame, then every change the caller may read, a progress
//! frame after each quiet interval, and a last `error` frame when the watch ends
//! (`compacted`, `lagged`, `shutting_down`). Transports pull [`Frame`]s from it
//! and only frame and send them.
//!
//! A change's JSON comes from the store's shared event, encoded once for every
//! watcher that receives it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use kvstore_core::wire::Frame as WireFrame;
use kvstore_core::{ErrorCode, Storage, Watch, WatchItem, WatchOptions};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::limits::WatcherSlot;
use crate::http::metrics::WatcherGauge;
use crate::http::state::{stopping, AppState};

/// One frame ready to send.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame's `type` (the SSE event name): `put`, `delete`, `entry`,
    /// `synced`, `progress` or `error`.
    pub kind: &'static str,
    /// The revision a client resumes after (the SSE `id:`), where there is one.
    pub id: Option<u64>,
    /// The JSON frame.
    pub json: Bytes,
    /// For an `error` frame, its code; the stream ends after it.
    pub error: Option<ErrorCode>,
}

impl Frame {
    fn encoded(kind: &'static str, id: Option<u64>, frame: &WireFrame) -> Frame {
        match serde_json::to_vec(frame) {
            Ok(json) => Frame {
                kind,
                id,
                json: Bytes::from(json),
                error: None,
            },
            Err(e) => Frame::error(ApiError::internal(format!("encoding a frame: {e}"))),
        }
    }

    fn progress(revision: u64) -> Frame {
        Frame::encoded(
            "progress",
            Some(revision),
            &WireFrame::Progress { revision },
        )
    }

    fn error(error: ApiError) -> Frame {
        let mut frame = Frame::encoded("error", None, &WireFrame::Error(error.detail()));
        frame.error = Some(error.code());
        frame
    }

    /// The frame of `item`, which left the watch at `position`. An event carries
    /// its revision as the resume point only when it completes its revision (a
    /// transaction's changes share one): resuming after the others would miss the
    /// rest of it.
    fn of(item: WatchItem, position: u64, sent: &metrics::Counter) -> Frame {
        match item {
            WatchItem::Event(event) => {
                sent.increment(1);
                let kind = match event.kind {
                    kvstore_core::wire::EventKind::Put => "put",
                    kvstore_core::wire::EventKind::Delete => "delete",
                };
                Frame {
                    kind,
                    id: (position >= event.revision).then_some(event.revision),
                    json: event.json(),
                    error: None,
                }
            }
            WatchItem::Entry(entry) => Frame::encoded("entry", None, &WireFrame::Entry(entry)),
            WatchItem::Synced(revision) => {
                Frame::encoded("synced", Some(revision), &WireFrame::Synced { revision })
            }
            WatchItem::Progress(revision) => Frame::progress(revision),
        }
    }

    /// Whether the stream ends after this frame.
    pub fn is_last(&self) -> bool {
        self.error.is_some()
    }

    /// The frame as one Server-Sent Event: `id:` its revision, `event:` its type,
    /// `data:` the JSON.
    pub fn sse(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.json.len() + 48);
        if let Some(id) = self.id {
            out.extend_from_slice(format!("id: {id}\n").as_bytes());
        }
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(self.kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&self.json);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// A store error that ends a watch, as the frame's error.
fn watch_error(e: kvstore_core::Error) -> ApiError {
    if matches!(e, kvstore_core::Error::Lagged { .. }) {
        metrics::counter!("kvstore_watch_lagged_total").increment(1);
    }
    ApiError::from(e)
}

/// One watch's loop; see the module docs.
pub struct Pump {
    store: Arc<dyn Storage>,
    options: WatchOptions,
    caller: Caller,
    watch: Option<Watch>,
    /// The frame that says where the stream starts has been given.
    announced: bool,
    /// The initial state (if asked for) is delivered: progress frames may follow.
    synced: bool,
    progress: Duration,
    deadline: Instant,
    shutdown: watch::Receiver<bool>,
    done: bool,
    /// `kvstore_watch_events_sent_total`, looked up once.
    sent: metrics::Counter,
    /// Counted among the open watchers, and holding a place of its client's, for
    /// as long as the pump lives.
    _held: (WatcherGauge, WatcherSlot),
}

impl Pump {
    /// The loop of a watch with `options` for `caller`, holding `slot`.
    pub fn new(state: &AppState, options: WatchOptions, caller: Caller, slot: WatcherSlot) -> Pump {
        let progress = state.timings.progress;
        Pump {
            store: state.store.clone(),
            synced: !options.initial,
            options,
            caller,
            watch: None,
            announced: false,
            progress,
            deadline: Instant::now() + progress,
            shutdown: state.shutdown.clone(),
            done: false,
            sent: metrics::counter!("kvstore_watch_events_sent_total"),
            _held: (WatcherGauge::open(), slot),
        }
    }

    /// Opens the store's watch now, before anything is sent, so that a watch the
    /// store refuses (its history is compacted) can be the HTTP answer itself.
    /// Without it, the first [`Pump::next`] opens the watch and a refusal is the
    /// stream's one `error` frame.
    pub async fn open(&mut self) -> Result<(), ApiError> {
        if self.watch.is_none() {
            let watch = self
                .store
                .watch(self.options.clone())
                .await
                .map_err(watch_error)?;
            self.watch = Some(watch);
        }
        Ok(())
    }

    /// The next frame to send; `None` after the last one. Cancel-safe: a transport
    /// may drop the future to serve its own events and call again.
    pub async fn next(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        let frame = self.produce().await;
        self.done = frame.is_last();
        self.deadline = Instant::now() + self.progress;
        Some(frame)
    }

    async fn produce(&mut self) -> Frame {
        let mut shutdown = self.shutdown.clone();
        let watch = match &mut self.watch {
            Some(watch) => watch,
            None => {
                let opened = tokio::select! {
                    opened = self.store.watch(self.options.clone()) => opened,
                    () = stopping(&mut shutdown) => return Frame::error(ApiError::shutting_down()),
                };
                match opened {
                    Ok(watch) => self.watch.insert(watch),
                    Err(e) => return Frame::error(watch_error(e)),
                }
            }
        };
        if !self.announced {
            self.announced = true;
            // Tell the client where the stream starts, so it can resume even
            // before the first change (an initial state ends with `synced`).
            if self.synced {
                return Frame::progress(watch.position());
            }
        }
        loop {
            // Under load the next item is usually there already: take it without
            // arming the progress timer and the shutdown wait (a timer set and
            // cleared per frame and watcher, a thousand watchers an event).
            if self.synced && Instant::now() >= self.deadline {
                return Frame::progress(watch.position());
            }
            if !*self.shutdown.borrow() {
                if let Some(item) = watch.next().now_or_never() {
                    match visible(&self.caller, &mut self.synced, item, watch, &self.sent) {
                        Some(frame) => return frame,
                        None => continue,
                    }
                }
            }
            tokio::select! {
                item = watch.next() => if let Some(frame) = visible(&self.caller, &mut self.synced, item, watch, &self.sent) {
                    return frame;
                },
                () = sleep_until(self.deadline), if self.synced => {
                    return Frame::progress(watch.position());
                }
                () = stopping(&mut shutdown) => return Frame::error(ApiError::shutting_down()),
            }
        }
    }
}

/// The frame of a watch item, `None` for one `caller` does not see; `synced` is the
/// pump's, set by the `synced` item.
fn visible(
    caller: &Caller,
    synced: &mut bool,
    item: Result<WatchItem, kvstore_core::Error>,
    watch: &Watch,
    sent: &metrics::Counter,
) -> Option<Frame> {
    let item = match item {
        Ok(item) => item,
        Err(e) => return Some(Frame::error(watch_error(e))),
    };
    let visible = match &item {
        WatchItem::Event(event) => caller.can_read(&event.key),
        WatchItem::Entry(entry) => caller.can_read(&entry.key),
        WatchItem::Synced(_) => {
            *synced = true;
            true
        }
        WatchItem::Progress(_) => *synced,
    };
    visible.then(|| Frame::of(item, watch.position(), sent))
}
