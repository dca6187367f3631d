//! Integration tests of the embedded store: revisions, CAS, listing, limits, watches
//! (live, resumed, initial state, compaction, lag) and concurrency.
//!
//! Every store lives in its own `tempfile::tempdir()`. `Config::temporary()` is not
//! used on purpose: it points sled at the shared system temp directory (see
//! `temporary_config_does_not_use_the_shared_temp_dir`).
//!
//! Nothing here sleeps to wait for the store: tests wait on watch items, on write
//! answers, or on [`wait_published`]. The one sleep is the bounded retry of a reopen
//! while the previous store's writer thread still holds sled's file lock.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::key::{KeyError, MAX_KEY_BYTES};
use kvstore_core::wire::{Entry, EventKind};
use kvstore_core::{
    Condition, Error, SharedEvent, SledConfig as Config, SledStore as Store, Storage, SyncMode,
    Watch, WatchItem, WatchOptions,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A new store's revision before any write, as in etcd: its first write is
/// `EMPTY + 1`.
const EMPTY: u64 = kvstore_core::storage::INITIAL_REVISION;

/// Guard against a hang: the longest any single awaited step may take. It is a
/// failure deadline, not a synchronisation delay.
const DEADLINE: Duration = Duration::from_secs(60);

fn open(dir: &Path) -> Result<Store, Error> {
    Store::open(Config::new(dir))
}

/// Opens `config`, retrying while the lock of a just-dropped store on the same path
/// is still held.
///
/// A dropped `Store` does not release sled at once: its writer thread keeps a `Db`
/// handle (and with it sled's exclusive file lock) until it has seen its request
/// channel close and done a final flush. There is no event to wait on for that from
/// outside the store, so this retries the open a bounded number of times with a
/// short `tokio::time::sleep` between attempts. This is the only sleep in the file and
/// it is used for nothing but this lock retry.
async fn open_retrying(config: Config) -> Result<Store, Error> {
    let mut attempts = 0;
    loop {
        match Store::open(config.clone()) {
            Err(Error::Locked(_)) if attempts < 2000 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// The next item of `watch`, failing instead of hanging.
async fn next_item(watch: &mut Watch) -> Result<WatchItem, Box<dyn std::error::Error>> {
    Ok(tokio::time::timeout(DEADLINE, watch.next()).await??)
}

/// The next item of `watch`, which must be an event.
async fn next_event(watch: &mut Watch) -> Result<Arc<SharedEvent>, Box<dyn std::error::Error>> {
    match next_item(watch).await? {
        WatchItem::Event(event) => Ok(event),
        other => Err(format!("expected an event, got {other:?}").into()),
    }
}

/// Waits until every write answered so far is published to watchers, and returns
/// the revision it waited for.
///
/// It relies on the documented initial-state watch: its `Synced` revision covers
/// every write committed before the watch was opened, and the watch only opens once
/// that revision is visible to watchers (durable and published). The prefix matches
/// no key, so no entries come first.
async fn wait_published(store: &Store) -> Result<u64, Box<dyn std::error::Error>> {
    let options = WatchOptions {
        prefix: "\u{0}wait-published/".into(),
        initial: true,
        ..Default::default()
    };
    let mut watch = tokio::time::timeout(DEADLINE, store.watch(options)).await??;
    match next_item(&mut watch).await? {
        WatchItem::Synced(at) => {
            assert!(
                store.revision() >= at,
                "Synced({at}) but the store is at {}",
                store.revision()
            );
            Ok(at)
        }
        other => Err(format!("expected Synced, got {other:?}").into()),
    }
}

/// Makes sure the writer thread has finished everything it started for earlier
/// requests, including the history compaction it runs after each group: a delete of
/// a missing key goes through the writer (its own group, changing nothing, so its own
/// compaction step is a no-op) and is answered only after the previous group's work.
async fn writer_barrier(store: &Store) -> TestResult {
    match store.delete("\u{0}writer-barrier/missing", None).await {
        Err(Error::KeyNotFound) => Ok(()),
        other => Err(format!("expected KeyNotFound from the barrier delete, got {other:?}").into()),
    }
}

fn watch_prefix(prefix: &str) -> WatchOptions {
    WatchOptions {
        prefix: prefix.into(),
        ..Default::default()
    }
}

fn watch_from(prefix: &str, start_revision: u64) -> WatchOptions {
    WatchOptions {
        prefix: prefix.into(),
        start_revision: Some(start_revision),
        ..Default::default()
    }
}

/// 1. Revisions are gap-free, strictly increasing, and continue after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_strictly_increase_and_continue_after_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut last = EMPTY;
    let expected: Vec<Entry>;
    {
        let store = open(dir.path())?;
        assert_eq!(store.revision(), EMPTY);
        for i in 0..12u32 {
            let put = store
                .put(&format!("k/{}", i % 5), format!("v{i}").into_bytes(), None)
                .await?;
            assert_eq!(put.revision, last + 1, "put {i}");
            last = put.revision;
        }
        for key in ["k/0", "k/3"] {
            let deleted = store.delete(key, None).await?;
            assert_eq!(deleted.revision, last + 1, "delete of {key}");
            last = deleted.revision;
        }
        // A put after the deletes, so the last revision is a put.
        last = store.put("k/9", b"after".to_vec(), None).await?.revision;
        assert_eq!(last, EMPTY + 15);
        expected = store.list("", None, 100).await?.entries;
        assert_eq!(expected.len(), 4);
        drop(store);
    }

    let store = open_retrying(Config::new(dir.path())).await?;
    assert_eq!(
        store.revision(),
        last,
        "the reopened store starts at the last revision"
    );
    assert_eq!(store.list("", None, 100).await?.entries, expected);
    for entry in &expected {
        assert_eq!(store.get(&entry.key).await?.as_ref(), Some(entry));
    }
    assert_eq!(store.get("k/0").await?, None);
    assert_eq!(store.get("k/3").await?, None);
    assert_eq!(
        store.get("k/4").await?.map(|e| e.value),
        Some(b"v9".to_vec())
    );

    let put = store.put("k/0", b"again".to_vec(), None).await?;
    assert_eq!(put.revision, last + 1, "revisions continue after reopen");
    let put2 = store.put("k/1", b"again".to_vec(), None).await?;
    assert_eq!(put2.revision, last + 2);

    // The history survived too, and is seamless with the new writes: from revision 1
    // (the store before its first write) it starts with the first write.
    let mut watch = store.watch(watch_from("", 1)).await?;
    for rev in EMPTY + 1..=last + 2 {
        assert_eq!(next_event(&mut watch).await?.revision, rev);
    }
    Ok(())
}

/// 2. create_revision / mod_revision / version behave as in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_mod_revision_and_version_follow_etcd() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    // Something else first, so revisions and versions differ.
    store.put("other", b"x".to_vec(), None).await?;

    let first = store.put("k", b"1".to_vec(), None).await?;
    assert_eq!(first.version, 1);
    assert_eq!(first.create_revision, first.revision);
    let entry = store.get("k").await?.ok_or("k missing")?;
    assert_eq!(
        (entry.create_revision, entry.mod_revision, entry.version),
        (first.revision, first.revision, 1)
    );

    let second = store.put("k", b"2".to_vec(), None).await?;
    assert_eq!(second.version, 2);
    assert_eq!(second.create_revision, first.revision);
    assert!(second.revision > first.revision);
    let entry = store.get("k").await?.ok_or("k missing")?;
    assert_eq!(
        (
            entry.create_revision,
            entry.mod_revision,
            entry.version,
            entry.value.as_slice()
        ),
        (first.revision, second.revision, 2, &b"2"[..])
    );

    let deleted = store.delete("k", None).await?;
    assert_eq!(deleted.revision, second.revision + 1);
    assert_eq!(store.get("k").await?, None);

    let third = store.put("k", b"3".to_vec(), None).await?;
    assert_eq!(third.version, 1, "a re-created key starts at version 1");
    assert_eq!(
        third.create_revision, third.revision,
        "and gets a new create_revision"
    );
    assert_eq!(third.revision, deleted.revision + 1);
    let entry = store.get("k").await?.ok_or("k missing")?;
    assert_eq!(
        (entry.create_revision, entry.mod_revision, entry.version),
        (third.revision, third.revision, 1)
    );
    Ok(())
}

/// 3. Compare-and-swap and the other preconditions; failed writes use no revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions_and_compare_and_swap() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;

    let created = store
        .put("k", b"a".to_vec(), Some(Condition::Absent))
        .await?;
    let swapped = store
        .put(
            "k",
            b"b".to_vec(),
            Some(Condition::ModRevision(created.revision)),
        )
        .await?;
    assert_eq!(swapped.revision, created.revision + 1);
    assert_eq!(store.get("k").await?.map(|e| e.value), Some(b"b".to_vec()));

    // Stale revision: fails and reports the actual mod_revision.
    match store
        .put(
            "k",
            b"c".to_vec(),
            Some(Condition::ModRevision(created.revision)),
        )
        .await
    {
        Err(Error::PreconditionFailed { current }) => assert_eq!(current, Some(swapped.revision)),
        other => return Err(format!("stale CAS: {other:?}").into()),
    }
    // Create-only on an existing key.
    match store.put("k", b"c".to_vec(), Some(Condition::Absent)).await {
        Err(Error::PreconditionFailed { current }) => assert_eq!(current, Some(swapped.revision)),
        other => return Err(format!("Absent on existing key: {other:?}").into()),
    }
    // Exists on a missing key.
    match store
        .put("missing", b"c".to_vec(), Some(Condition::Exists))
        .await
    {
        Err(Error::PreconditionFailed { current: None }) => {}
        other => return Err(format!("Exists on missing key: {other:?}").into()),
    }
    // CAS on a missing key.
    match store
        .put(
            "missing",
            b"c".to_vec(),
            Some(Condition::ModRevision(created.revision)),
        )
        .await
    {
        Err(Error::PreconditionFailed { current: None }) => {}
        other => return Err(format!("CAS on missing key: {other:?}").into()),
    }
    assert_eq!(store.get("missing").await?, None);
    // Delete of a missing key.
    match store.delete("missing", None).await {
        Err(Error::KeyNotFound) => {}
        other => return Err(format!("delete of missing key: {other:?}").into()),
    }
    // Delete with a stale revision.
    match store
        .delete("k", Some(Condition::ModRevision(created.revision)))
        .await
    {
        Err(Error::PreconditionFailed { current }) => assert_eq!(current, Some(swapped.revision)),
        other => return Err(format!("stale CAS delete: {other:?}").into()),
    }
    assert_eq!(
        store.get("k").await?.map(|e| e.value),
        Some(b"b".to_vec()),
        "nothing changed"
    );

    // Successful conditional writes, and no revision was spent by the failures.
    let exists = store
        .put("k", b"d".to_vec(), Some(Condition::Exists))
        .await?;
    assert_eq!(
        exists.revision,
        swapped.revision + 1,
        "failed writes use no revision"
    );
    let deleted = store
        .delete("k", Some(Condition::ModRevision(exists.revision)))
        .await?;
    assert_eq!(deleted.revision, exists.revision + 1);
    assert_eq!(store.get("k").await?, None);
    assert_eq!(wait_published(&store).await?, deleted.revision);
    assert_eq!(store.revision(), deleted.revision);
    Ok(())
}

/// 4. Listing pages through a prefix in key order and nothing outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_a_prefix() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    store.put("o", b"out".to_vec(), None).await?;
    store.put("q", b"out".to_vec(), None).await?;
    // Written out of order (7 is coprime with 25, so this visits every i once).
    for n in 0..25u32 {
        let i = (n * 7) % 25;
        store
            .put(&format!("p/{i:02}"), format!("v{i}").into_bytes(), None)
            .await?;
    }
    store.put("p", b"not under p/".to_vec(), None).await?;
    store.put("p0", b"not under p/".to_vec(), None).await?;
    // `store.revision()` may trail the last acknowledged write (see
    // `revision_includes_acknowledged_writes`), so wait for it first.
    let revision = wait_published(&store).await?;
    assert_eq!(store.revision(), revision);

    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.list("p/", after.as_deref(), 10).await?;
        pages += 1;
        assert!(pages <= 3, "too many pages");
        assert!(page.entries.len() <= 10);
        assert_eq!(page.revision, revision);
        for entry in &page.entries {
            assert_eq!(store.get(&entry.key).await?.as_ref(), Some(entry));
        }
        keys.extend(page.entries.iter().map(|e| e.key.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(page.entries.len(), 10, "only full pages have a next");
                assert_eq!(Some(&next), keys.last());
                after = Some(next);
            }
            None => {
                assert_eq!(page.entries.len(), 5, "the last page holds the rest");
                break;
            }
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(pages, 3);

    // One page holding everything has no next.
    let all = store.list("p/", None, 25).await?;
    assert_eq!(all.entries.len(), 25);
    assert_eq!(all.next, None);
    // Everything, across prefixes.
    assert_eq!(store.list("", None, 1000).await?.entries.len(), 29);
    // `after` past the prefix's range, and before it.
    assert!(store.list("p/", Some("p/99"), 10).await?.entries.is_empty());
    assert_eq!(
        store
            .list("p/", Some("a"), 1)
            .await?
            .entries
            .first()
            .map(|e| e.key.as_str()),
        Some("p/00")
    );
    // Limit 0 counts as 1, so a pager never mistakes it for the end.
    let one = store.list("p/", None, 0).await?;
    assert_eq!(one.entries.len(), 1);
    assert_eq!(one.next.as_deref(), Some("p/00"));
    Ok(())
}

/// 5. Invalid keys and oversized values are refused before reaching the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_and_oversized_values_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path());
    config.max_value_bytes = 64;
    let store = Store::open(config)?;
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert_eq!(long.len(), 4097);

    match store.put("", b"v".to_vec(), None).await {
        Err(Error::InvalidKey(KeyError::Empty)) => {}
        other => return Err(format!("put of empty key: {other:?}").into()),
    }
    match store.put(&long.clone(), b"v".to_vec(), None).await {
        Err(Error::InvalidKey(KeyError::TooLong(4097))) => {}
        other => return Err(format!("put of a 4097-byte key: {other:?}").into()),
    }
    assert!(matches!(store.get("").await, Err(Error::InvalidKey(_))));
    assert!(matches!(store.get(&long).await, Err(Error::InvalidKey(_))));
    assert!(matches!(
        store.delete("", None).await,
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        store.delete(&long.clone(), None).await,
        Err(Error::InvalidKey(_))
    ));

    match store.put("k", vec![0; 65], None).await {
        Err(Error::ValueTooLarge { size: 65, max: 64 }) => {}
        other => return Err(format!("put of a 65-byte value: {other:?}").into()),
    }
    assert_eq!(store.revision(), EMPTY, "refused writes use no revision");

    // The limits themselves are accepted.
    let at_limit = "k".repeat(MAX_KEY_BYTES);
    let put = store.put(&at_limit.clone(), vec![7; 64], None).await?;
    assert_eq!(put.revision, EMPTY + 1);
    assert_eq!(
        store.get(&at_limit).await?.map(|e| e.value),
        Some(vec![7; 64])
    );
    store.put("empty-value", Vec::new(), None).await?;
    assert_eq!(
        store.get("empty-value").await?.map(|e| e.value),
        Some(Vec::new())
    );
    Ok(())
}

/// 6. A watch sees the changes under its prefix, in revision order, with values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_changes_under_its_prefix_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    store
        .put("a/old", b"before the watch".to_vec(), None)
        .await?;
    // Without this wait, the watches could start before "a/old" is published and
    // deliver it (see `live_watch_skips_writes_acknowledged_before_it`).
    wait_published(&store).await?;
    let mut watch = store.watch(watch_prefix("a/")).await?;
    let mut all = store.watch(watch_prefix("")).await?;
    let start = store.revision();
    assert_eq!(start, EMPTY + 1);

    // (key, Some(value) for a put / None for a delete)
    let ops: Vec<(&str, Option<&[u8]>)> = vec![
        ("a/1", Some(b"one")),
        ("b/1", Some(b"other prefix")),
        ("a/2", Some(b"two")),
        ("a", Some(b"not under a/")),
        ("ab/1", Some(b"not under a/")),
        ("a/1", None),
        ("a/2", Some(b"two again")),
        ("b/1", None),
        ("a/old", None),
        ("a/3", Some(&[0, 255, 1])),
    ];
    let mut expected = Vec::new();
    let mut revisions = Vec::new();
    for (key, value) in &ops {
        let (kind, revision) = match value {
            Some(value) => (
                EventKind::Put,
                store.put(key, value.to_vec(), None).await?.revision,
            ),
            None => (EventKind::Delete, store.delete(key, None).await?.revision),
        };
        revisions.push(revision);
        if key.starts_with("a/") {
            expected.push((
                kind,
                key.to_string(),
                value.unwrap_or_default().to_vec(),
                revision,
            ));
        }
    }
    assert_eq!(
        revisions,
        (start + 1..=start + ops.len() as u64).collect::<Vec<_>>()
    );

    for (kind, key, value, revision) in &expected {
        let event = next_event(&mut watch).await?;
        assert_eq!(
            (event.kind, &event.key, &event.value, event.revision),
            (*kind, key, value, *revision)
        );
        match kind {
            EventKind::Put => {
                let entry = event.entry().ok_or("a put has an entry")?;
                assert_eq!(entry.mod_revision, *revision);
                assert!(event.version >= 1);
            }
            EventKind::Delete => assert_eq!((event.create_revision, event.version), (0, 0)),
        }
    }
    // The unfiltered watch sees every revision, contiguous.
    for revision in &revisions {
        assert_eq!(next_event(&mut all).await?.revision, *revision);
    }

    // Nothing else is queued: the next event is the next write under a/.
    store.put("b/2", b"x".to_vec(), None).await?;
    let sentinel = store.put("a/zz", b"end".to_vec(), None).await?;
    let event = next_event(&mut watch).await?;
    assert_eq!(
        (event.key.as_str(), event.revision),
        ("a/zz", sentinel.revision)
    );
    assert_eq!(watch.position(), sentinel.revision);
    Ok(())
}

/// 7. A watch resumed from a revision replays the history, then goes live, seamlessly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_revision_then_continues_live() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    let mut under_r = Vec::new();
    for i in 1..=20u64 {
        // Every third write goes elsewhere, to check filtering during the replay.
        let key = if i % 3 == 0 {
            format!("x/{i}")
        } else {
            format!("r/{}", i % 4)
        };
        let put = store
            .put(&key.clone(), format!("v{i}").into_bytes(), None)
            .await?;
        assert_eq!(put.revision, EMPTY + i);
        if key.starts_with("r/") {
            under_r.push(EMPTY + i);
        }
    }

    // Open both right after the writes: part of the range may still be on its way
    // to the live feed, which exercises the seam between history and live.
    let from = EMPTY + 5;
    let mut all = store.watch(watch_from("", from)).await?;
    let mut only_r = store.watch(watch_from("r/", from)).await?;

    for i in 5..=20 {
        let event = next_event(&mut all).await?;
        assert_eq!(event.revision, EMPTY + i);
        assert_eq!(event.value, format!("v{i}").into_bytes());
    }
    for rev in under_r.iter().filter(|&&r| r >= from) {
        let event = next_event(&mut only_r).await?;
        assert_eq!(event.revision, *rev);
        assert!(event.key.starts_with("r/"));
    }

    let live = store.put("r/live", b"21".to_vec(), None).await?;
    assert_eq!(live.revision, EMPTY + 21);
    assert_eq!(next_event(&mut all).await?.revision, EMPTY + 21);
    assert_eq!(next_event(&mut only_r).await?.revision, EMPTY + 21);

    // No duplicates and nothing skipped: the next events are exactly the next writes.
    store.put("x/22", b"22".to_vec(), None).await?;
    store.put("r/23", b"23".to_vec(), None).await?;
    assert_eq!(next_event(&mut all).await?.revision, EMPTY + 22);
    assert_eq!(next_event(&mut all).await?.revision, EMPTY + 23);
    assert_eq!(next_event(&mut only_r).await?.revision, EMPTY + 23);

    // A start in the future delivers from there on.
    let mut future = store.watch(watch_from("", EMPTY + 25)).await?;
    store.put("r/24", b"24".to_vec(), None).await?;
    store.put("r/25", b"25".to_vec(), None).await?;
    assert_eq!(next_event(&mut future).await?.revision, EMPTY + 25);
    Ok(())
}

/// 8a. The initial state comes sorted, matches get(), is marked with Synced(r), and
///     live events after r follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_initial_state_then_live_events() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    for key in ["k/c", "k/a", "other/x", "k/b", "k/d", "k"] {
        store
            .put(key, format!("value of {key}").into_bytes(), None)
            .await?;
    }
    store.put("k/a", b"updated".to_vec(), None).await?;
    store.delete("k/d", None).await?;

    let mut watch = store
        .watch(WatchOptions {
            prefix: "k/".into(),
            initial: true,
            ..Default::default()
        })
        .await?;
    let revision_at_open = store.revision();

    let mut keys = Vec::new();
    let synced = loop {
        match next_item(&mut watch).await? {
            WatchItem::Entry(entry) => {
                assert_eq!(store.get(&entry.key).await?.as_ref(), Some(&entry));
                keys.push(entry.key);
            }
            WatchItem::Synced(r) => break r,
            other => return Err(format!("{other:?} before Synced").into()),
        }
    };
    assert_eq!(keys, ["k/a", "k/b", "k/c"]);
    assert_eq!(synced, revision_at_open);
    assert_eq!(synced, store.revision());

    store.put("other/y", b"x".to_vec(), None).await?;
    let put = store.put("k/e", b"new".to_vec(), None).await?;
    let deleted = store.delete("k/a", None).await?;
    let event = next_event(&mut watch).await?;
    assert!(event.revision > synced);
    assert_eq!((event.key.as_str(), event.revision), ("k/e", put.revision));
    let event = next_event(&mut watch).await?;
    assert_eq!(
        (event.kind, event.key.as_str(), event.revision),
        (EventKind::Delete, "k/a", deleted.revision)
    );

    // An initial watch on an empty prefix is just Synced.
    let mut empty = store
        .watch(WatchOptions {
            prefix: "nothing/".into(),
            initial: true,
            ..Default::default()
        })
        .await?;
    assert_eq!(
        next_item(&mut empty).await?,
        WatchItem::Synced(store.revision())
    );
    Ok(())
}

/// 8b. Opening an initial-state watch while writers run: the entries plus the events
///     after Synced, applied in order, reproduce the final state exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_with_concurrent_writers_reproduces_the_final_state() -> TestResult {
    const WRITERS: u64 = 4;
    const OPS: u64 = 150;
    const KEYS: u64 = 30;
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    for i in 0..20 {
        store
            .put(&format!("c/{i:02}"), b"seed".to_vec(), None)
            .await?;
    }
    store.put("elsewhere", b"x".to_vec(), None).await?;

    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let mut started_tx = Some(started_tx);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let mut started = if w == 0 { started_tx.take() } else { None };
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for j in 0..OPS {
                let key = format!("c/{:02}", (w * 7 + j * 3) % KEYS);
                let revision = if j % 5 == 4 {
                    match store.delete(&key, None).await {
                        Ok(deleted) => deleted.revision,
                        Err(Error::KeyNotFound) => continue,
                        Err(e) => return Err(e),
                    }
                } else {
                    store
                        .put(&key, format!("w{w}-{j}").into_bytes(), None)
                        .await?
                        .revision
                };
                last = last.max(revision);
                if j == 20 {
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                }
            }
            Ok::<u64, Error>(last)
        }));
    }

    // Open the watch once the writers are well under way.
    started_rx.await?;
    let before_open = store.revision();
    let mut watch = store
        .watch(WatchOptions {
            prefix: "c/".into(),
            initial: true,
            ..Default::default()
        })
        .await?;

    let mut last_write = 0;
    for task in tasks {
        last_write = last_write.max(task.await??);
    }
    assert_eq!(store.list("elsewhere", None, 10).await?.entries.len(), 1);

    let mut state: BTreeMap<String, Entry> = BTreeMap::new();
    let synced = loop {
        match next_item(&mut watch).await? {
            WatchItem::Entry(entry) => {
                if let Some((last_key, _)) = state.last_key_value() {
                    assert!(*last_key < entry.key, "entries sorted by key");
                }
                assert!(entry.key.starts_with("c/"));
                state.insert(entry.key.clone(), entry);
            }
            WatchItem::Synced(r) => break r,
            other => return Err(format!("{other:?} before Synced").into()),
        }
    };
    assert!(synced >= before_open);
    assert!(synced <= last_write);
    // Every entry reflects a change at or before the Synced revision.
    for entry in state.values() {
        assert!(
            entry.mod_revision <= synced,
            "{entry:?} is newer than Synced({synced})"
        );
    }

    let mut previous = synced;
    while previous < last_write {
        let event = next_event(&mut watch).await?;
        assert!(event.revision > previous, "events after Synced, in order");
        assert!(event.key.starts_with("c/"));
        previous = event.revision;
        match event.entry() {
            Some(entry) => {
                state.insert(event.key.clone(), entry);
            }
            None => {
                let removed = state.remove(&event.key);
                assert!(
                    removed.is_some(),
                    "delete of {} unknown to the watcher",
                    event.key
                );
            }
        }
    }
    assert_eq!(previous, last_write, "the last write under c/ was seen");

    let final_state: BTreeMap<String, Entry> = store
        .list("c/", None, 1000)
        .await?
        .entries
        .into_iter()
        .map(|e| (e.key.clone(), e))
        .collect();
    assert_eq!(state, final_state);
    Ok(())
}

/// 9. A resume below the compacted history fails with the oldest kept revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_below_the_compacted_history_fails() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path());
    config.retain_revisions = 10;
    let store = Store::open(config)?;
    for i in 0..100u32 {
        store
            .put(&format!("c/{}", i % 7), i.to_string().into_bytes(), None)
            .await?;
    }
    // A few more groups, so compaction has run after the 100th write too.
    let mut last = 0;
    for i in 0..3u32 {
        last = store
            .put("c/more", i.to_string().into_bytes(), None)
            .await?
            .revision;
    }
    assert_eq!(last, EMPTY + 103);
    // Compaction runs on the writer thread after it answered; wait until it is done.
    writer_barrier(&store).await?;

    let oldest = store.status().await?.oldest_revision;
    assert!(oldest > 1, "the history was compacted (oldest {oldest})");
    assert!(
        oldest + 9 <= last,
        "at least retain_revisions = 10 revisions are kept (oldest {oldest}, last {last})"
    );

    match store.watch(watch_from("", 1)).await {
        Err(Error::Compacted {
            requested,
            oldest: reported,
        }) => {
            assert_eq!(requested, 1);
            assert_eq!(reported, oldest);
            assert_eq!(reported, store.status().await?.oldest_revision);
        }
        Ok(_) => return Err("watch from revision 1 opened despite compaction".into()),
        Err(other) => return Err(format!("watch from revision 1: {other:?}").into()),
    }
    assert!(matches!(
        store.watch(watch_from("", oldest - 1)).await,
        Err(Error::Compacted { .. })
    ));

    // From the oldest kept revision, the watch works and is complete.
    let mut watch = store.watch(watch_from("", oldest)).await?;
    for rev in oldest..=last {
        assert_eq!(next_event(&mut watch).await?.revision, rev);
    }
    // The current data is untouched by compaction.
    assert_eq!(store.list("c/", None, 100).await?.entries.len(), 8);
    Ok(())
}

/// 10. Concurrent CAS increments never lose an update; concurrent puts all land;
///     every revision is handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_unique_revisions_and_lose_nothing() -> TestResult {
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 200;
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;

    let mut counters = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        counters.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for _ in 0..PER_TASK {
                loop {
                    let (n, precondition) = match store.get("counter").await? {
                        None => (0u64, Some(Condition::Absent)),
                        Some(entry) => {
                            let text = String::from_utf8(entry.value)
                                .map_err(|e| Error::Corrupt(e.to_string()))?;
                            let n = text.parse().map_err(|_| Error::Corrupt(text))?;
                            (n, Some(Condition::ModRevision(entry.mod_revision)))
                        }
                    };
                    match store
                        .put("counter", (n + 1).to_string().into_bytes(), precondition)
                        .await
                    {
                        Ok(put) => {
                            revisions.push(put.revision);
                            break;
                        }
                        Err(Error::PreconditionFailed { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<Vec<u64>, Error>(revisions)
        }));
    }
    let mut revisions = Vec::new();
    for task in counters {
        revisions.extend(task.await??);
    }
    let counter = store.get("counter").await?.ok_or("counter missing")?;
    assert_eq!(counter.value, b"1600".to_vec());
    assert_eq!(counter.version, TASKS * PER_TASK);
    assert_eq!(Some(&counter.mod_revision), revisions.iter().max());

    let mut writers = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..PER_TASK {
                let put = store
                    .put(
                        &format!("d/{t}/{i:03}"),
                        format!("{t}:{i}").into_bytes(),
                        None,
                    )
                    .await?;
                assert_eq!((put.version, put.create_revision), (1, put.revision));
                revisions.push(put.revision);
            }
            Ok::<Vec<u64>, Error>(revisions)
        }));
    }
    for task in writers {
        revisions.extend(task.await??);
    }
    let entries = store.list("d/", None, 10_000).await?.entries;
    assert_eq!(entries.len() as u64, TASKS * PER_TASK);
    for t in 0..TASKS {
        for i in 0..PER_TASK {
            let entry = store
                .get(&format!("d/{t}/{i:03}"))
                .await?
                .ok_or("missing key")?;
            assert_eq!(entry.value, format!("{t}:{i}").into_bytes());
        }
    }

    let total = 2 * TASKS * PER_TASK;
    assert_eq!(revisions.len() as u64, total);
    let unique: HashSet<u64> = revisions.iter().copied().collect();
    assert_eq!(unique.len() as u64, total, "revisions are unique");
    // Failed CAS attempts use no revision, so the successes are exactly the
    // revisions after the initial one.
    let after_empty = EMPTY + 1..=EMPTY + total;
    assert_eq!(unique, after_empty.collect::<HashSet<u64>>());
    assert_eq!(wait_published(&store).await?, EMPTY + total);
    Ok(())
}

/// 11. A watcher that falls further behind than the event buffer gets Lagged with
///     the position it had reached, and can resume from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_lagged_at_its_position() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path());
    config.event_buffer = 16;
    let store = Store::open(config)?;
    store.put("before", b"x".to_vec(), None).await?;
    wait_published(&store).await?;

    let mut watch = store.watch(watch_prefix("")).await?;
    let position = watch.position();
    assert_eq!(position, EMPTY + 1);
    let mut last = 0;
    for i in 0..100u32 {
        last = store
            .put(&format!("k/{i}"), i.to_string().into_bytes(), None)
            .await?
            .revision;
    }
    // All 100 events are published (so the ring overflowed) before we read.
    assert_eq!(wait_published(&store).await?, last);

    match tokio::time::timeout(DEADLINE, watch.next()).await? {
        Err(Error::Lagged { last: lagged_at }) => assert_eq!(lagged_at, position),
        other => return Err(format!("expected Lagged, got {other:?}").into()),
    }

    // Resuming at last + 1 misses nothing.
    let mut resumed = store.watch(watch_from("", position + 1)).await?;
    for rev in position + 1..=last {
        let event = next_event(&mut resumed).await?;
        assert_eq!(event.revision, rev);
    }
    Ok(())
}

/// 12. SyncMode::None serves puts, gets and events, and keeps data across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_none_mode_works() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path());
    config.sync = SyncMode::None;
    let store = Store::open(config.clone())?;
    assert_eq!(store.config().sync, SyncMode::None);
    let mut watch = store.watch(watch_prefix("s/")).await?;

    let first = store.put("s/a", b"1".to_vec(), None).await?;
    let second = store
        .put(
            "s/a",
            b"2".to_vec(),
            Some(Condition::ModRevision(first.revision)),
        )
        .await?;
    let third = store
        .put("s/b", b"3".to_vec(), Some(Condition::Absent))
        .await?;
    let deleted = store.delete("s/b", None).await?;
    assert_eq!(
        [
            first.revision,
            second.revision,
            third.revision,
            deleted.revision
        ],
        [2, 3, 4, 5]
    );
    let entry = store.get("s/a").await?.ok_or("s/a missing")?;
    assert_eq!((entry.value.as_slice(), entry.version), (&b"2"[..], 2));

    for (kind, key, rev) in [
        (EventKind::Put, "s/a", 2),
        (EventKind::Put, "s/a", 3),
        (EventKind::Put, "s/b", 4),
        (EventKind::Delete, "s/b", 5),
    ] {
        let event = next_event(&mut watch).await?;
        assert_eq!(
            (event.kind, event.key.as_str(), event.revision),
            (kind, key, rev)
        );
    }
    store.flush().await?;
    drop(watch);
    drop(store);

    let store = open_retrying(config).await?;
    assert_eq!(store.revision(), 5);
    assert_eq!(
        store.get("s/a").await?.map(|e| e.value),
        Some(b"2".to_vec())
    );
    assert_eq!(store.get("s/b").await?, None);
    assert_eq!(store.put("s/c", b"5".to_vec(), None).await?.revision, 6);
    Ok(())
}

/// `Config::temporary()` hands sled the system temp directory itself as the database
/// folder, with `temporary = true`. sled 0.34.7 keeps its files directly in that
/// folder and, when the last handle drops, runs `remove_dir_all` on it (it only
/// generates a private path when the path is left at its default). So dropping a
/// temporary store deletes the whole temp directory, and two temporary stores
/// collide on one lock. Checked without opening such a store, on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_config_does_not_use_the_shared_temp_dir() -> TestResult {
    let config = Config::temporary();
    assert!(config.temporary);
    assert_ne!(
        config.path,
        std::env::temp_dir(),
        "a temporary store would be created in, and on drop remove, the whole temp dir"
    );
    Ok(())
}

/// Read-your-writes for the store revision: once `put` has answered with revision
/// `n`, `store.revision()` (documented as the last durable change) and the revision
/// stamped on a listing must be at least `n`.
///
/// FAILS on the current core: `put` answers as soon as the writer has flushed and
/// sent `durable(n)` to the sequencer, but `revision()` is the sequencer's published
/// watermark, which only moves once the drainer thread has also forwarded the log
/// record from sled's subscriber. So for a short while after the answer,
/// `revision()` and `ListPage::revision` are below the caller's own write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_includes_acknowledged_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    for i in 0..300u32 {
        let put = store
            .put(&format!("k/{}", i % 10), i.to_string().into_bytes(), None)
            .await?;
        let revision = store.revision();
        let listed = store.list("k/", None, 100).await?;
        assert!(
            revision >= put.revision,
            "after put {i} answered revision {}, store.revision() is {revision}",
            put.revision
        );
        assert!(
            listed.revision >= put.revision,
            "after put {i} answered revision {}, a listing (which shows the value) is \
             stamped revision {}",
            put.revision,
            listed.revision
        );
    }
    Ok(())
}

/// A watch opened without `start_revision` delivers "only changes after the watch
/// starts"; a write whose `put` answered before `watch()` was called is not one.
///
/// FAILS on the current core, for the same reason as
/// `revision_includes_acknowledged_writes`: the watch starts at the published
/// revision, which can still be below the write just acknowledged, so that write is
/// delivered to the new watch as if it happened after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_watch_skips_writes_acknowledged_before_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path())?;
    for i in 0..300u32 {
        let before = store
            .put("w/before", i.to_string().into_bytes(), None)
            .await?;
        let mut watch = store.watch(watch_prefix("w/")).await?;
        let after = store
            .put("w/after", i.to_string().into_bytes(), None)
            .await?;
        let event = next_event(&mut watch).await?;
        assert_eq!(
            (event.key.as_str(), event.revision),
            ("w/after", after.revision),
            "round {i}: the watch opened after revision {} was acknowledged delivered it",
            before.revision
        );
    }
    Ok(())
}

/// A revision of several changes (a delete by prefix) is one revision everywhere:
/// in the answer, in the keys' count, to live and resumed watchers (whose position
/// passes it only once all of it is delivered), and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_by_prefix_is_one_revision_everywhere() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (revision, before) = {
        let store = open(dir.path())?;
        for key in ["a/1", "a/2", "a/3", "b/1"] {
            store.put(key, key.as_bytes().to_vec(), None).await?;
        }
        let before = store.revision();
        let mut live = store.watch(watch_prefix("a/")).await?;
        let mut everything = store.watch(watch_prefix("")).await?;
        let deleted = store.delete_prefix("a/").await?;
        assert_eq!((deleted.deleted, deleted.revision), (3, before + 1));
        assert_eq!(store.revision(), before + 1);
        assert_eq!(store.status().await?.keys, 1);
        for watch in [&mut live, &mut everything] {
            let mut keys = Vec::new();
            for n in 0..3 {
                let event = next_event(watch).await?;
                assert_eq!(
                    (event.kind, event.revision),
                    (EventKind::Delete, before + 1)
                );
                keys.push(event.key.clone());
                // Not past the revision until its last change is delivered.
                let expected = if n < 2 { before } else { before + 1 };
                assert_eq!(watch.position(), expected);
            }
            assert_eq!(keys, ["a/1", "a/2", "a/3"]);
        }
        // Nothing to delete: no revision taken.
        let none = store.delete_prefix("a/").await?;
        assert_eq!((none.deleted, none.revision), (0, before + 1));
        store.put("b/2", b"x".to_vec(), None).await?;
        (deleted.revision, before)
    };
    let store = open_retrying(Config::new(dir.path())).await?;
    assert_eq!(store.revision(), revision + 1);
    assert_eq!(store.get("a/1").await?, None);
    assert_eq!(store.status().await?.keys, 2);
    // Resumed from the history, after the reopen: the whole revision, then the next.
    let mut resumed = store.watch(watch_from("", before)).await?;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let event = next_event(&mut resumed).await?;
        seen.push((event.revision, event.key.clone()));
    }
    let expected: Vec<(u64, String)> = [
        (before, "b/1"),
        (revision, "a/1"),
        (revision, "a/2"),
        (revision, "a/3"),
        (revision + 1, "b/2"),
    ]
    .iter()
    .map(|&(r, k)| (r, k.to_string()))
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(resumed.position(), revision + 1);
    Ok(())
}
