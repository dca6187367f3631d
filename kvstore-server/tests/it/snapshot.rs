//! Exports under load: `GET /v1/snapshot` shows the store as of the one revision its
//! header names, however many writes land while it streams. On both engines.

use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::{Client, Entry, Error as ClientError, Update, WatchOptions};
use kvstore_core::wire::SnapshotHeader;
use rstest::rstest;
use support::Engine;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEYS: usize = 20_000;
const WRITERS: usize = 4;
/// Writes acknowledged after the export's revision before the rest of it is read.
const WRITES_DURING: usize = 300;

/// One acknowledged change: its revision, key and value (`None`: a delete).
type Change = (u64, String, Option<Vec<u8>>);

/// A small deterministic generator, so that a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn key(i: usize) -> String {
    format!("snap/{i:06}")
}

/// Puts and deletes on random keys of the export's range (and new ones) until `stop`,
/// recording each acknowledged change.
async fn write_until(
    client: Client,
    writer: usize,
    stop: Arc<AtomicBool>,
    changes: Arc<Mutex<Vec<Change>>>,
) -> Result<(), ClientError> {
    let mut rng = Lcg(writer as u64 + 1);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let k = key(rng.below(KEYS + KEYS / 10));
        let change = if n % 3 == 0 {
            match client.delete(&k).await {
                Ok(deleted) => (deleted.revision, k, None),
                Err(ClientError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        } else {
            let value = format!("writer {writer} write {n}").into_bytes();
            let put = client.put(&k, value.clone()).await?;
            (put.revision, k, Some(value))
        };
        changes.lock().expect("no writer panicked").push(change);
    }
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_under_concurrent_writes_is_the_store_at_its_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;

    // Seed the range through a restore (fast), then read it back as the baseline.
    let mut seed = serde_json::to_string(&SnapshotHeader {
        format: SnapshotHeader::FORMAT.into(),
        revision: KEYS as u64,
    })?;
    for i in 0..KEYS {
        let entry = Entry {
            key: key(i),
            value: format!("seed {i:0>90}").into_bytes(),
            create_revision: i as u64 + 1,
            mod_revision: i as u64 + 1,
            version: 1,
            lease: None,
        };
        seed.push('\n');
        seed.push_str(&serde_json::to_string(&entry)?);
    }
    seed.push('\n');
    client.restore(seed).await?;
    let mut state: BTreeMap<String, (Vec<u8>, u64)> = client
        .list_all("snap/")
        .await?
        .into_iter()
        .map(|e| (e.key, (e.value, e.mod_revision)))
        .collect();
    assert_eq!(state.len(), KEYS);

    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(write_until(client, w, stop.clone(), changes.clone()))
        })
        .collect();

    // Start the export, read its header, and let writes land before reading on.
    let mut export = client.export("snap/").await?;
    let mut body = Vec::new();
    while !body.contains(&b'\n') {
        let chunk = export
            .next()
            .await
            .ok_or("the export ended before its header")??;
        body.extend_from_slice(&chunk);
    }
    let header_end = body.iter().position(|&b| b == b'\n').ok_or("no header")?;
    let header: SnapshotHeader = serde_json::from_slice(&body[..header_end])?;
    let revision = header.revision;
    let mut events = client.watch_with(WatchOptions {
        prefix: "snap/".into(),
        start_revision: Some(revision + 1),
        ..WatchOptions::default()
    });
    let mut seen_after = 0;
    while seen_after < WRITES_DURING {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(Ok(Update::Event(_)))) => seen_after += 1,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => return Err("the watch ended".into()),
            Err(_) => return Err(format!("only {seen_after} writes after the export began").into()),
        }
    }
    while let Some(chunk) = export.next().await {
        body.extend_from_slice(&chunk?);
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await??;
    }

    // The store at `revision`: the baseline with every acknowledged change up to it.
    let mut changes = changes.lock().expect("no writer panicked").clone();
    changes.sort_by_key(|c| c.0);
    for (rev, k, value) in changes.iter().filter(|c| c.0 <= revision) {
        match value {
            Some(value) => state.insert(k.clone(), (value.clone(), *rev)),
            None => state.remove(k),
        };
    }
    let after = changes.iter().filter(|c| c.0 > revision).count();
    assert!(
        after >= WRITES_DURING,
        "{after} writes landed during the export"
    );

    let exported: BTreeMap<String, (Vec<u8>, u64)> = body[header_end + 1..]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let e: Entry = serde_json::from_slice(line)?;
            Ok((e.key, (e.value, e.mod_revision)))
        })
        .collect::<Result<_, serde_json::Error>>()?;
    assert_eq!(exported.len(), state.len(), "keys at revision {revision}");
    for (k, want) in &state {
        assert_eq!(exported.get(k), Some(want), "{k} at revision {revision}");
    }
    Ok(())
}
