//! The replica's copy of the store, kept current by one etcd watch.
//!
//! As kube-apiserver's watch cache does, one task reads every key under the
//! store's prefix at one revision, then watches the prefix from the next revision
//! and applies each change. The copy serves reads (once it has reached the revision
//! a read must show, see `barrier`), and its changes feed every live watcher of
//! this replica through one broadcast ring, with a short history of recent batches
//! for watchers that resume. A watch that breaks (its member died) is opened again
//! from the next revision; one that etcd cancels because the revision it needs is
//! compacted makes the copy reload, and the watchers it fed are told to resume.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions as EtcdWatchOptions};
use tokio::sync::{broadcast, mpsc, watch};

use super::client::{Connection, Retry};
use super::keys::Keys;
use super::route::Target;
use crate::storage::{Error, SharedEvent};
use crate::wire::{Entry, Event, EventKind};

/// Keys read per page while loading.
const LOAD_PAGE: i64 = 1000;

/// The changes of one revision or more, in order, as one watch answer brought them
/// (etcd never splits a revision between answers).
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Arc<SharedEvent>>,
    /// Every change through this revision is in this batch or an earlier one.
    pub revision: u64,
}

/// What the copy holds.
pub struct State {
    pub entries: BTreeMap<String, Entry>,
    /// The last batches, for watchers that resume: every change after `floor` is
    /// in them.
    pub history: VecDeque<Arc<Batch>>,
    pub floor: u64,
    /// Changes kept in `history`, at most the event buffer.
    history_events: usize,
    /// Live watchers read from here; replaced (so its receivers close) when the
    /// copy reloads.
    pub feed: broadcast::Sender<Arc<Batch>>,
    /// The copy holds the store as of its revision.
    pub loaded: bool,
    /// The revision the copy shows (as `Cache::revision`, but read with the rest).
    pub revision: u64,
    /// Counts reloads: a watcher fed by an older feed must resume.
    pub generation: u64,
}

/// See the module docs.
pub struct Cache {
    pub state: RwLock<State>,
    /// The revision the copy shows (raised after each batch is published).
    pub revision: watch::Sender<u64>,
    /// Asks the watch for a progress notification (coalesced).
    progress: mpsc::Sender<()>,
    capacity: usize,
}

impl Cache {
    /// Starts loading and watching the keys under `keys`' prefix, on the current
    /// runtime.
    pub fn start(connection: Connection, keys: Keys, capacity: usize) -> Arc<Cache> {
        let capacity = capacity.max(1);
        let (progress, wanted) = mpsc::channel(1);
        let cache = Arc::new(Cache {
            state: RwLock::new(State {
                entries: BTreeMap::new(),
                history: VecDeque::new(),
                floor: 0,
                history_events: 0,
                feed: broadcast::channel(capacity).0,
                loaded: false,
                revision: 0,
                generation: 0,
            }),
            revision: watch::channel(0).0,
            progress,
            capacity,
        });
        tokio::spawn(run(Arc::downgrade(&cache), connection, keys, wanted));
        cache
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision the copy shows.
    pub fn current(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits (at most `wait`) until the copy shows `revision` or later, asking
    /// etcd to tell the watch where it is when no change brings it there.
    pub async fn reach(&self, revision: u64, wait: Duration) -> Result<(), Error> {
        self.wait_for(revision, wait, true).await
    }

    /// As `reach`, for a revision a change is known to bring (`ask` false: etcd is
    /// not asked for its progress).
    async fn wait_for(&self, revision: u64, wait: Duration, ask: bool) -> Result<(), Error> {
        if self.current() >= revision && self.read().loaded {
            return Ok(());
        }
        let mut revisions = self.revision.subscribe();
        let reached = async {
            loop {
                let asked = async {
                    if ask {
                        let _ = self.progress.try_send(());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    reached = revisions.wait_for(|&r| r >= revision) => {
                        if reached.is_err() {
                            return Err(Error::Closed);
                        }
                        if self.read().loaded {
                            return Ok(());
                        }
                    }
                    () = asked => {}
                }
            }
        };
        match tokio::time::timeout(wait, reached).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(format!(
                "etcd: this replica's copy has not reached revision {revision} (it is at {})",
                self.current()
            ))),
        }
    }

    /// The key's create revision and version after a put of it at `revision`, as
    /// the copy tells once it holds every change before that revision (waiting at
    /// most `wait`); `None` when it cannot tell.
    ///
    /// Before the put reaches the copy, the key's entry is its state before the
    /// put; after, the put's own change is the entry, or in the history. The put's
    /// change is on its way to the copy, so etcd is not asked for progress.
    pub async fn after_put(&self, key: &str, revision: u64, wait: Duration) -> Option<(u64, u64)> {
        self.wait_for(revision.saturating_sub(1), wait, false)
            .await
            .ok()?;
        let state = self.read();
        if state.revision < revision {
            return Some(match state.entries.get(key) {
                Some(entry) => (entry.create_revision, entry.version + 1),
                None => (revision, 1),
            });
        }
        if let Some(entry) = state
            .entries
            .get(key)
            .filter(|e| e.mod_revision == revision)
        {
            return Some((entry.create_revision, entry.version));
        }
        let from = state
            .history
            .partition_point(|batch| batch.revision < revision);
        state
            .history
            .range(from..)
            .flat_map(|batch| batch.events.iter())
            .find(|event| event.revision == revision && event.key == key)
            .filter(|event| event.kind == EventKind::Put)
            .map(|event| (event.create_revision, event.version))
    }

    /// Applies one watch answer's changes and publishes them.
    fn apply(&self, events: Vec<Event>, revision: u64) {
        let mut state = self.write();
        for event in &events {
            match event.entry() {
                Some(entry) => {
                    state.entries.insert(entry.key.clone(), entry);
                }
                None => {
                    state.entries.remove(&event.key);
                }
            }
        }
        if !events.is_empty() {
            let batch = Arc::new(Batch {
                events: events.into_iter().map(SharedEvent::new).collect(),
                revision,
            });
            state.history_events += batch.events.len();
            state.history.push_back(batch.clone());
            while state.history_events > self.capacity {
                let Some(old) = state.history.pop_front() else {
                    break;
                };
                state.history_events -= old.events.len();
                state.floor = old.revision;
            }
            // No receivers is fine.
            let _ = state.feed.send(batch);
        }
        state.revision = state.revision.max(revision);
        drop(state);
        self.revision.send_if_modified(|current| {
            let raised = revision > *current;
            if raised {
                *current = revision;
            }
            raised
        });
    }

    /// Replaces the copy with `entries` as of `revision` (a load).
    fn reload(&self, entries: BTreeMap<String, Entry>, revision: u64) {
        let mut state = self.write();
        state.entries = entries;
        state.history.clear();
        state.history_events = 0;
        state.floor = revision;
        // The watchers fed so far cannot be told what changed: they resume.
        state.feed = broadcast::channel(self.capacity).0;
        state.loaded = true;
        state.revision = revision;
        state.generation += 1;
        drop(state);
        self.revision.send_replace(revision);
    }
}

/// An etcd key-value as our entry (`None` for a key that is not ours).
pub fn entry_of(keys: &Keys, kv: &etcd_client::KeyValue) -> Option<Entry> {
    Some(Entry {
        key: keys.ours(kv.key())?,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision().max(0) as u64,
        mod_revision: kv.mod_revision().max(0) as u64,
        version: kv.version().max(0) as u64,
        lease: lease_of(kv),
    })
}

/// The lease of an etcd key-value (etcd's 0 is none).
fn lease_of(kv: &etcd_client::KeyValue) -> Option<u64> {
    (kv.lease() > 0).then_some(kv.lease() as u64)
}

/// An etcd watch event as ours.
pub fn event_of(keys: &Keys, event: &etcd_client::Event) -> Option<Event> {
    let kv = event.kv()?;
    let key = keys.ours(kv.key())?;
    let revision = kv.mod_revision().max(0) as u64;
    Some(match event.event_type() {
        EventType::Put => Event {
            kind: EventKind::Put,
            key,
            value: kv.value().to_vec(),
            revision,
            create_revision: kv.create_revision().max(0) as u64,
            version: kv.version().max(0) as u64,
            lease: lease_of(kv),
        },
        EventType::Delete => Event {
            kind: EventKind::Delete,
            key,
            value: Vec::new(),
            revision,
            create_revision: 0,
            version: 0,
            lease: None,
        },
    })
}

/// Whether etcd shows the copy as it is at revision `at`: no key under the prefix
/// written from `next` on, and as many keys as the copy's `held` (so none
/// deleted). Then a progress answer at `at` can be taken: reads see nothing the
/// copy lacks. Any doubt (an error) is a no: the changes come, or reads go to etcd.
///
/// etcd counts a range before it applies `min_mod_revision`, so the keys written
/// since `next` are read (keys only; etcd scans the prefix to filter them), and the
/// keys held are counted apart.
async fn unchanged(connection: &Connection, keys: &Keys, held: usize, next: u64, at: u64) -> bool {
    let (start, end) = keys.range("");
    let get = |options: GetOptions| {
        let start = start.clone();
        async move {
            connection
                .call("a check of the copy", Retry::Read, |mut client| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { client.get(start, Some(options)).await }
                })
                .await
        }
    };
    let at_revision = GetOptions::new().with_range(end).with_revision(at as i64);
    let written = get(at_revision
        .clone()
        .with_min_mod_revision(next as i64)
        .with_keys_only())
    .await;
    if !written.is_ok_and(|answer| answer.kvs().is_empty()) {
        return false;
    }
    get(at_revision.with_count_only())
        .await
        .is_ok_and(|answer| usize::try_from(answer.count()) == Ok(held))
}

/// Waits until the leader found is another than `target` (never, once no one
/// finds it any more).
async fn moved_from(moves: &mut watch::Receiver<Target>, target: Target) {
    loop {
        let now = *moves.borrow_and_update();
        if matches!(now, Target::Leader(_)) && now != target {
            return;
        }
        if moves.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Every key under `keys`' prefix as of one revision, read a page at a time.
pub async fn load(
    connection: &Connection,
    keys: &Keys,
) -> Result<(BTreeMap<String, Entry>, u64), Error> {
    let (start, end) = keys.range("");
    let mut entries = BTreeMap::new();
    let mut from = start;
    let mut at = None;
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(LOAD_PAGE);
        if let Some(at) = at {
            options = options.with_revision(at);
        }
        let page = connection
            .call("loading the keys", Retry::Read, |mut client| {
                let (from, options) = (from.clone(), options.clone());
                async move { client.get(from, Some(options)).await }
            })
            .await?;
        let revision = page.header().map_or(0, |h| h.revision().max(0));
        let at = *at.get_or_insert(revision);
        for kv in page.kvs() {
            if let Some(entry) = entry_of(keys, kv) {
                entries.insert(entry.key.clone(), entry);
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((entries, at.max(0) as u64)),
        }
    }
}

/// The cache's task: load, watch, apply; again after a break.
async fn run(
    cache: std::sync::Weak<Cache>,
    connection: Connection,
    keys: Keys,
    mut wanted: mpsc::Receiver<()>,
) {
    let (start, end) = keys.range("");
    let mut pause = Duration::from_millis(50);
    'load: loop {
        let (entries, revision) = match load(&connection, &keys).await {
            Ok(loaded) => loaded,
            Err(e) => {
                log::warn!("cannot load the keys from etcd (trying again): {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        match cache.upgrade() {
            Some(cache) => cache.reload(entries, revision),
            None => return,
        }
        let mut next = revision + 1;
        loop {
            // From the revision before `next`, whose changes the copy holds: a
            // delete at the revision etcd compacts at may be dropped (etcd issue
            // #18089), so a start right at a compaction must be refused, and it
            // is when the revision before it is compacted too.
            let options = EtcdWatchOptions::new()
                .with_range(end.clone())
                .with_start_revision((next - 1).max(1) as i64)
                .with_progress_notify();
            // On the leader, which knows first that a change is committed.
            let (client, target) = connection.members().stream_client();
            let mut moves = connection.members().moves();
            let mut stream = match client.clone().watch(start.clone(), Some(options)).await {
                Ok(stream) => stream,
                Err(e) => {
                    log::debug!("cannot watch etcd (trying again): {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    () = moved_from(&mut moves, target) => {
                        log::debug!("the etcd leader moved; watching through it from {next}");
                        pause = Duration::ZERO;
                        break;
                    }
                    asked = wanted.recv() => {
                        if asked.is_none() {
                            return;
                        }
                        if let Err(e) = stream.request_progress().await {
                            log::debug!("cannot ask etcd for progress: {e}");
                        }
                        continue;
                    }
                };
                let Some(cache) = cache.upgrade() else {
                    return;
                };
                match message {
                    Ok(Some(answer)) if answer.canceled() => {
                        if answer.compact_revision() > 0 {
                            log::warn!(
                                "the revisions this replica's copy needs are compacted (oldest {}); reloading",
                                answer.compact_revision()
                            );
                            continue 'load;
                        }
                        log::debug!("etcd canceled the watch: {}", answer.cancel_reason());
                        break;
                    }
                    Ok(Some(answer)) => {
                        pause = Duration::from_millis(50);
                        let mut events: Vec<Event> = answer
                            .events()
                            .iter()
                            .filter_map(|e| event_of(&keys, e))
                            .collect();
                        let sent = events.len();
                        events.retain(|e| e.revision >= next);
                        let through = match events.last() {
                            Some(last) => last.revision,
                            // The answer that says the watch is created tells the
                            // cluster's revision, not how far the watch has come.
                            None if answer.created() => continue,
                            // Changes before `next`, the copy's already (the
                            // watch starts a revision early).
                            None if sent > 0 => continue,
                            // A progress notification: everything through it is
                            // seen, once etcd confirms it.
                            //
                            // etcd before 3.4.24 and 3.5.8 answers a progress
                            // request at once with its current revision, possibly
                            // before changes of that revision still queued for the
                            // watch, or not yet read from its history for a watch
                            // that is catching up (etcd issue #15220): the copy
                            // would claim a revision whose changes it does not hold
                            // yet, and a read right after a write could miss it.
                            None => {
                                let at = answer.header().map_or(0, |h| h.revision().max(0) as u64);
                                if at < next {
                                    log::debug!("etcd's progress at {at}: behind {next}");
                                    continue;
                                }
                                let held = cache.read().entries.len();
                                if !unchanged(&connection, &keys, held, next, at).await {
                                    log::debug!("etcd's progress at {at} is not confirmed yet");
                                    continue;
                                }
                                at
                            }
                        };
                        if !events.is_empty() || through >= next {
                            next = next.max(through + 1);
                            cache.apply(events, through);
                        }
                    }
                    Ok(None) | Err(_) => {
                        log::debug!("the etcd watch broke; watching again from {next}");
                        break;
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
        }
    }
}
