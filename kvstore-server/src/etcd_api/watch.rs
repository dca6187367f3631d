//! The Watch service: one bidirectional stream carries many watches, each created
//! (with a `watch_id` of the client's or one we assign), fed from a watch of the
//! store, and cancelled on request or when the stream ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use kvstore_core::wire::{Event, EventKind};
use kvstore_core::{Error, Watch as StoreWatch, WatchItem, WatchOptions};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::keys::{bytes, key_value, signed, unsigned, Span};
use super::pb::etcdserverpb::watch_create_request::FilterType;
use super::pb::etcdserverpb::watch_request::RequestUnion;
use super::pb::etcdserverpb::{
    watch_server::Watch, WatchCreateRequest, WatchRequest, WatchResponse,
};
use super::pb::mvccpb::{self, event::EventType, KeyValue};
use super::status::{COMPACTED, PERMISSION_DENIED};
use super::{stream_of, Api, ServerStream};
use crate::auth::Caller;

/// etcd's watch id of answers that belong to no one watch (a progress answer to
/// the whole stream, a refused create).
const NO_WATCH: i64 = -1;
/// Events sent in one answer at most, when many are ready at once.
const BATCH: usize = 1000;
/// How often a watch created with `progress_notify` hears of progress when
/// nothing else is sent (etcd: 10 minutes by default).
const PROGRESS_EVERY: Duration = Duration::from_secs(600);

type Answers = mpsc::Sender<Result<WatchResponse, Status>>;

/// The Watch service.
pub(crate) struct WatchService {
    api: Arc<Api>,
}

impl WatchService {
    pub(crate) fn new(api: Arc<Api>) -> WatchService {
        WatchService { api }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ServerStream<WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.api.caller(&request)?;
        let (answers, rx) = mpsc::channel(256);
        tokio::spawn(session(
            self.api.clone(),
            caller,
            request.into_inner(),
            answers,
        ));
        Ok(Response::new(stream_of(rx)))
    }
}

/// A watch of the stream: its task, and where to ask it how far it has delivered.
struct Running {
    task: tokio::task::JoinHandle<()>,
    progress: mpsc::Sender<oneshot::Sender<u64>>,
}

/// Serves one stream until the client closes it or goes away.
async fn session(
    api: Arc<Api>,
    caller: Caller,
    mut requests: Streaming<WatchRequest>,
    answers: Answers,
) {
    let mut watches: HashMap<i64, Running> = HashMap::new();
    let mut next_id: i64 = 0;
    loop {
        let request = tokio::select! {
            request = requests.message() => request,
            _ = answers.closed() => break,
        };
        let union = match request {
            Ok(Some(WatchRequest {
                request_union: Some(union),
            })) => union,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        };
        match union {
            RequestUnion::CreateRequest(create) => {
                watches.retain(|_, w| !w.task.is_finished());
                let id = match create.watch_id {
                    0 => {
                        while watches.contains_key(&next_id) {
                            next_id += 1;
                        }
                        next_id
                    }
                    id if watches.contains_key(&id) => {
                        let refused = refusal(&api, NO_WATCH, "etcdserver: duplicate watch ID");
                        if answers.send(Ok(refused)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    id => id,
                };
                if let Some(running) = create_watch(&api, &caller, id, create, &answers).await {
                    watches.insert(id, running);
                }
            }
            RequestUnion::CancelRequest(cancel) => {
                if let Some(running) = watches.remove(&cancel.watch_id) {
                    running.task.abort();
                    let answer = WatchResponse {
                        header: api.header_now(),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    if answers.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
            }
            RequestUnion::ProgressRequest(_) => {
                // The revision through which every watch of the stream has
                // delivered: each is asked, after what it has sent.
                let mut through = api.store.revision();
                for running in watches.values() {
                    let (tx, rx) = oneshot::channel();
                    if running.progress.send(tx).await.is_ok() {
                        if let Ok(position) = rx.await {
                            through = through.min(position);
                        }
                    }
                }
                let answer = WatchResponse {
                    header: api.header(through),
                    watch_id: NO_WATCH,
                    ..Default::default()
                };
                if answers.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        }
    }
    for running in watches.into_values() {
        running.task.abort();
    }
}

/// A create refused: etcd answers it created and cancelled at once, with why.
fn refusal(api: &Api, id: i64, reason: &str) -> WatchResponse {
    WatchResponse {
        header: api.header_now(),
        watch_id: id,
        created: true,
        canceled: true,
        cancel_reason: reason.to_string(),
        ..Default::default()
    }
}

/// What a watch sends, beyond its range.
#[derive(Clone, Copy)]
struct Wanted {
    puts: bool,
    deletes: bool,
    prev_kv: bool,
    progress_notify: bool,
}

/// Opens the watch `id` on the store and starts its task; answers `created` (and
/// then `canceled`, with why, when it cannot be served).
async fn create_watch(
    api: &Arc<Api>,
    caller: &Caller,
    id: i64,
    create: WatchCreateRequest,
    answers: &Answers,
) -> Option<Running> {
    let span = match Span::new(create.key, create.range_end) {
        Ok(span) => span,
        Err(status) => {
            let _ = answers.send(Ok(refusal(api, id, status.message()))).await;
            return None;
        }
    };
    if !span.readable_by(caller) {
        // etcd gives the gRPC error's own words as the reason.
        let reason = format!("rpc error: code = PermissionDenied desc = {PERMISSION_DENIED}");
        let _ = answers.send(Ok(refusal(api, id, &reason))).await;
        return None;
    }
    let options = WatchOptions {
        prefix: span.prefix().to_string(),
        start_revision: unsigned(create.start_revision),
        initial: false,
    };
    let watch = match api.store.watch(options).await {
        Ok(watch) => watch,
        Err(Error::Compacted { oldest, .. }) => {
            let created = WatchResponse {
                header: api.header_now(),
                watch_id: id,
                created: true,
                ..Default::default()
            };
            let _ = answers.send(Ok(created)).await;
            let _ = answers.send(Ok(compacted(api, id, oldest))).await;
            return None;
        }
        Err(e) => {
            let _ = answers.send(Ok(refusal(api, id, &e.to_string()))).await;
            return None;
        }
    };
    let created = WatchResponse {
        header: api.header(watch.position()),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    if answers.send(Ok(created)).await.is_err() {
        return None;
    }
    let wanted = Wanted {
        puts: !create.filters.contains(&(FilterType::Noput as i32)),
        deletes: !create.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: create.prev_kv,
        progress_notify: create.progress_notify,
    };
    let (progress, asked) = mpsc::channel(4);
    let task = tokio::spawn(forward(
        api.clone(),
        id,
        span,
        wanted,
        watch,
        asked,
        answers.clone(),
    ));
    Some(Running { task, progress })
}

/// etcd's answer to a watch whose history is gone: cancelled, with the oldest
/// revision it can start from.
fn compacted(api: &Api, id: i64, oldest: u64) -> WatchResponse {
    WatchResponse {
        header: api.header_now(),
        watch_id: id,
        canceled: true,
        compact_revision: signed(oldest),
        cancel_reason: COMPACTED.to_string(),
        ..Default::default()
    }
}

/// A change as etcd's event (a deletion's `kv` holds its key and revision only).
fn key_value_of(event: &Event) -> KeyValue {
    match event.kind {
        EventKind::Put => KeyValue {
            key: bytes(&event.key),
            create_revision: signed(event.create_revision),
            mod_revision: signed(event.revision),
            version: signed(event.version),
            value: event.value.clone(),
            lease: event.lease.map_or(0, signed),
        },
        EventKind::Delete => KeyValue {
            key: bytes(&event.key),
            mod_revision: signed(event.revision),
            ..Default::default()
        },
    }
}

/// Feeds watch `id` from the store's watch until it fails or is aborted.
async fn forward(
    api: Arc<Api>,
    id: i64,
    span: Span,
    wanted: Wanted,
    mut watch: StoreWatch,
    mut asked: mpsc::Receiver<oneshot::Sender<u64>>,
    answers: Answers,
) {
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    let mut quiet = true;
    loop {
        let first = tokio::select! {
            item = watch.next() => item,
            Some(reply) = asked.recv() => {
                let _ = reply.send(watch.position());
                continue;
            }
            _ = ticker.tick(), if wanted.progress_notify => {
                if quiet {
                    let answer = WatchResponse {
                        header: api.header(watch.position()),
                        watch_id: id,
                        ..Default::default()
                    };
                    if answers.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                quiet = true;
                continue;
            }
        };
        // Every event ready now goes in one answer.
        let mut items = vec![first];
        while items.len() < BATCH {
            match watch.next().now_or_never() {
                Some(item) => items.push(item),
                None => break,
            }
        }
        let mut events = Vec::new();
        let mut last = None;
        let mut end = None;
        for item in items {
            match item {
                Ok(WatchItem::Event(event)) => {
                    last = Some(event.revision);
                    let kind_wanted = match event.kind {
                        EventKind::Put => wanted.puts,
                        EventKind::Delete => wanted.deletes,
                    };
                    if !kind_wanted || !span.contains(&event.key) {
                        continue;
                    }
                    let prev_kv = match wanted.prev_kv {
                        true => previous(&api, &event).await,
                        false => None,
                    };
                    events.push(mvccpb::Event {
                        r#type: match event.kind {
                            EventKind::Put => EventType::Put as i32,
                            EventKind::Delete => EventType::Delete as i32,
                        },
                        kv: Some(key_value_of(&event)),
                        prev_kv,
                    });
                }
                Ok(WatchItem::Progress(_) | WatchItem::Entry(_) | WatchItem::Synced(_)) => {}
                Err(Error::Compacted { oldest, .. }) => {
                    end = Some(compacted(&api, id, oldest));
                    break;
                }
                Err(e) => {
                    end = Some(WatchResponse {
                        header: api.header_now(),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: e.to_string(),
                        ..Default::default()
                    });
                    break;
                }
            }
        }
        if !events.is_empty() {
            quiet = false;
            let answer = WatchResponse {
                header: api.header(last.unwrap_or_else(|| watch.position())),
                watch_id: id,
                events,
                ..Default::default()
            };
            if answers.send(Ok(answer)).await.is_err() {
                return;
            }
        }
        if let Some(end) = end {
            let _ = answers.send(Ok(end)).await;
            return;
        }
    }
}

/// The key as it was before `event` (none when it did not exist, or that
/// revision is compacted).
async fn previous(api: &Api, event: &Event) -> Option<KeyValue> {
    let before = event.revision.checked_sub(1)?;
    match api.store.get_at(&event.key, before).await {
        Ok(entry) => entry.map(|e| key_value(e, false)),
        Err(e) => {
            log::debug!("no prev_kv for {:?} at {}: {e}", event.key, event.revision);
            None
        }
    }
}
