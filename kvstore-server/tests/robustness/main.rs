//! Robustness: the promises held under faults, the way etcd's robustness suite
//! holds its own. Clients send a random mix of requests over a small key space
//! while watchers follow it and faults strike (a server killed or stopped and
//! started again; on etcd, the leader or a follower killed); every request is
//! recorded with its outcome (ok, refused, or unknown), every watch change too.
//! Then:
//!
//! - the watchers' streams are held against a reference stream read after the
//!   faults: ordered, unique, atomic, gap-free, the same across resumes, `initial`
//!   equal to the store at its revision, nothing seen once and undone after a crash;
//! - every acknowledged write is in that stream at its revision with exactly its
//!   changes, and every change there comes from a request acknowledged at that
//!   revision or left unknown: none that no client asked for;
//! - the whole history is checked for linearizability against a model of the store
//!   (keys, values, revisions, versions) with porcupine.
//!
//! A failure prints the seed, the anomalies and the shortest part of the history
//! that shows them, and writes the history and porcupine's visualisation under
//! `target/robustness/`. `KVSTORE_ROBUSTNESS_SECONDS` (per run, default 10),
//! `KVSTORE_ROBUSTNESS_SEEDS` (comma-separated, default `1,2`),
//! `KVSTORE_ROBUSTNESS_FAULTS` (per run, default 2), `KVSTORE_ROBUSTNESS_FAULT_MIX`
//! (names of [`Fault`]s, comma-separated; default all the engine has) and
//! `KVSTORE_ROBUSTNESS_CLIENTS` (default 6) make longer runs (`bench/robustness.sh`).

use kvstore_testkit as support;

mod faults;
mod history;
mod model;
mod traffic;
mod validate;
mod watchers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvstore_client::Client;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rstest::rstest;
use support::{Engine, EMPTY_REVISION};
use tokio::sync::watch;

use faults::{Fault, System};
use history::{nanos_since, Kv, Record, Request, Response};
use traffic::{Target, PREFIX};
use validate::Verdict;
use watchers::{Pace, Start};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The key of the write that closes a run.
const END_KEY: &str = "r/zz-end";

/// How long the search for a linearization may take.
const CHECK_BUDGET: Duration = Duration::from_secs(60);

struct Settings {
    seconds: f64,
    seeds: Vec<u64>,
    faults: usize,
    clients: u32,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok();
        Settings {
            seconds: var("KVSTORE_ROBUSTNESS_SECONDS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10.0),
            seeds: var("KVSTORE_ROBUSTNESS_SEEDS")
                .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1, 2]),
            faults: var("KVSTORE_ROBUSTNESS_FAULTS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
            clients: var("KVSTORE_ROBUSTNESS_CLIENTS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(6),
        }
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recorded_histories_under_faults_keep_every_promise(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let settings = Settings::from_env();
    let mut failures = Vec::new();
    for seed in settings.seeds.clone() {
        let Some(outcome) = run(engine, seed, &settings).await? else {
            return Ok(());
        };
        if let Err(failure) = outcome {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// One seeded run: `None` when the engine cannot run here; else what it found.
async fn run(
    engine: Engine,
    seed: u64,
    settings: &Settings,
) -> Result<Option<Result<(), String>>, Box<dyn std::error::Error>> {
    let Some(system) = System::start(engine, &[]) else {
        return Ok(None);
    };
    let base = EMPTY_REVISION;
    let urls = system.urls();
    let client_for = |i: usize| -> Result<Client, kvstore_client::Error> {
        let mut rotated = urls.clone();
        rotated.rotate_left(i % urls.len());
        Client::with_urls(rotated)
    };
    let start = Instant::now();
    let duration = Duration::from_secs_f64(settings.seconds);
    let until = start + duration;

    // Watchers: two from the first revision (one resuming on purpose every few
    // changes, one on the last replica), one with the initial state a third in.
    let (done_tx, done) = watch::channel(None);
    let mut watcher_tasks = vec![
        tokio::spawn(watchers::run_watcher(
            "watcher 0 (resumes every 25 changes)".into(),
            client_for(0)?,
            base,
            Start::Beginning,
            Pace::ResumeEvery(25),
            done.clone(),
        )),
        tokio::spawn(watchers::run_watcher(
            "watcher 1".into(),
            client_for(urls.len() - 1)?,
            base,
            Start::Beginning,
            Pace::Steady,
            done.clone(),
        )),
        tokio::spawn(watchers::run_watcher(
            "watcher 4 (stalls 200 ms every 200 changes)".into(),
            client_for(0)?,
            base,
            Start::Beginning,
            Pace::StallEvery(200, Duration::from_millis(200)),
            done.clone(),
        )),
    ];
    watcher_tasks.push(tokio::spawn(watchers::run_sse_watcher(
        "watcher 3 (SSE)".into(),
        urls[urls.len() - 1].clone(),
        base,
        done.clone(),
    )));
    let initial_client = client_for(0)?;
    let initial_done = done.clone();
    watcher_tasks.push(tokio::spawn(async move {
        tokio::time::sleep(duration / 3).await;
        watchers::run_watcher(
            "watcher 2 (initial)".into(),
            initial_client,
            base,
            Start::Initial,
            Pace::Steady,
            initial_done,
        )
        .await
    }));

    let mut clients = Vec::new();
    for id in 0..settings.clients {
        let target = Target {
            sdk: client_for(id as usize)?,
            url: urls[id as usize % urls.len()].clone(),
            base,
        };
        clients.push(tokio::spawn(traffic::run_client(
            id, seed, target, start, until,
        )));
    }

    // The faults, spread over the run.
    let faults_wanted = settings.faults;
    let fault_task = tokio::task::spawn_blocking(move || {
        let mut system = system;
        let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut struck = Vec::new();
        for k in 0..faults_wanted {
            let slot = duration.as_secs_f64() / (faults_wanted as f64 + 1.0);
            let at = slot * (k as f64 + 1.0) + rng.random_range(-0.3..0.3) * slot;
            let when = start + Duration::from_secs_f64(at.max(0.0));
            std::thread::sleep(when.saturating_duration_since(Instant::now()));
            let all = Fault::mix(system.backend.engine);
            let fault = all[rng.random_range(0..all.len())];
            let at = start.elapsed();
            let what = system.strike(fault, &mut rng);
            struck.push(format!("{:.2}s {what}", at.as_secs_f64()));
        }
        (system, struck)
    });

    let mut records: Vec<Record> = Vec::new();
    for client in clients {
        records.extend(client.await?);
    }
    let (system, struck) = fault_task.await?;

    // The store after the faults, read as one more request.
    let reader = client_for(0)?;
    let final_list = loop {
        let call = nanos_since(start);
        match reader.list(PREFIX, None, Some(1000)).await {
            Ok(page) => {
                break Record {
                    client: u32::MAX,
                    call,
                    ret: nanos_since(start),
                    request: Request::List {
                        prefix: PREFIX.into(),
                    },
                    response: Response::List {
                        entries: page.entries.iter().map(|e| Kv::of(e, base)).collect(),
                        revision: page.revision.saturating_sub(base),
                    },
                }
            }
            Err(e) if start.elapsed() < duration + Duration::from_secs(60) => {
                eprintln!("final read: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("the store did not come back: {e}").into()),
        }
    };
    records.push(final_list);
    // One more write, after everything: a watcher that has seen it has seen every
    // revision before it whole (the last of the traffic may hold several changes).
    let call = nanos_since(start);
    let end = reader.put(END_KEY, "end").await?;
    let last = end.revision.saturating_sub(base);
    records.push(Record {
        client: u32::MAX,
        call,
        ret: nanos_since(start),
        request: Request::Put {
            key: END_KEY.into(),
            value: "end".into(),
            cond: history::Cond::None,
        },
        response: Response::Put {
            revision: last,
            create_revision: end.create_revision.saturating_sub(base),
            version: end.version,
        },
    });
    done_tx.send(Some(last))?;

    let mut watched = Vec::new();
    for task in watcher_tasks {
        watched.push(tokio::time::timeout(Duration::from_secs(120), task).await??);
    }
    // The reference: every change since the last compaction, read after the
    // faults, after those read before each compaction.
    let (reference_done, reference_rx) = watch::channel(Some(last));
    let kept_from = system.kept_from();
    let after = watchers::run_watcher(
        "the reference watcher (after the faults)".into(),
        client_for(0)?,
        base,
        Start::At(kept_from),
        Pace::Steady,
        reference_rx,
    );
    let mut reference = tokio::time::timeout(Duration::from_secs(60), after).await?;
    drop(reference_done);
    if !system.compactions.is_empty() {
        let mut changes: Vec<_> = system
            .compactions
            .iter()
            .flat_map(|c| c.changes.iter().cloned())
            .collect();
        changes.append(&mut reference.changes);
        reference.changes = changes;
        reference.name = format!(
            "the reference watcher (before each of {} compactions, and after the faults)",
            system.compactions.len()
        );
    }

    // Checks.
    let mut anomalies = Vec::new();
    if let Some(error) = &reference.error {
        anomalies.push(format!("{} ended with an error: {error}", reference.name));
    }
    let log = validate::reference_log(&reference, last, &mut anomalies);
    validate::check_watchers(&log, &watched, base, kept_from, &mut anomalies);
    validate::check_lists(&records, &log, &mut anomalies);
    let operations = records.len();
    let unknown = records
        .iter()
        .filter(|r| matches!(r.response, Response::Unknown(_)))
        .count();
    let writes = records.iter().filter(|r| r.request.is_write()).count();
    let mut history = records.clone();
    validate::explain_log(&mut history, &log, &mut anomalies);
    let checked_at = Instant::now();
    let verdict = validate::linearizable(&history, CHECK_BUDGET);
    let frames: usize =
        watched.iter().map(|w| w.changes.len()).sum::<usize>() + reference.changes.len();
    let verdict_line = match &verdict {
        Verdict::Linearizable => format!("linearizable (checked in {:?})", checked_at.elapsed()),
        Verdict::Undecided(budget) => format!("NOT DECIDED within {budget:?}"),
        Verdict::Violation(..) => "NOT LINEARIZABLE".into(),
    };
    support::say(&format!(
        "robustness {} seed {seed}: {operations} requests ({writes} writes, {unknown} unknown \
         outcomes), revisions 1..={last}, {} faults [{}], {frames} watch changes checked \
         ({} resumes, {} refused as compacted), {} anomalies, {verdict_line}",
        engine.name(),
        struck.len(),
        struck.join("; "),
        watched.iter().map(|w| w.resumes).sum::<usize>(),
        watched.iter().filter(|w| w.compacted.is_some()).count(),
        anomalies.len()
    ));
    drop(system);

    if let Verdict::Violation(lines, _) = &verdict {
        // The requests up to the first one that cannot be placed, on its keys.
        let shortest = validate::shortest_failing_prefix(&history, Duration::from_secs(5));
        let mut tail: Vec<String> = Vec::new();
        if let Some(last) = shortest.iter().max_by_key(|r| r.call) {
            let keys = last.request.keys();
            for r in shortest.iter().rev() {
                let touches = r.request.keys().iter().any(|k| {
                    keys.iter()
                        .any(|key| key.starts_with(k) || k.starts_with(key))
                });
                if touches && tail.len() < 30 {
                    tail.push(format!("  {}", r.describe()));
                }
            }
        }
        tail.reverse();
        anomalies.push(format!(
            "linearizability: the first {} requests sent already cannot be ordered; the last \
             of them on its keys:\n{}\n(the search's own view:\n{})",
            shortest.len(),
            tail.join("\n"),
            lines.join("\n")
        ));
    }
    if struck.len() < settings.faults.min(2) {
        anomalies.push(format!("only {} faults were struck", struck.len()));
    }
    if anomalies.is_empty() {
        return Ok(Some(Ok(())));
    }
    let files = write_report(engine, seed, &records, &history, &verdict)?;
    Ok(Some(Err(format!(
        "robustness {} seed {seed} (KVSTORE_ROBUSTNESS_SEEDS={seed} to run it again): {} \
         anomalies; history and visualisation in {}\n{}",
        engine.name(),
        anomalies.len(),
        files.display(),
        anomalies.join("\n")
    ))))
}

/// Writes the history (and porcupine's visualisation of a violation) under
/// `target/robustness/`; the folder.
fn write_report(
    engine: Engine,
    seed: u64,
    records: &[Record],
    checked: &[Record],
    verdict: &Verdict,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(&tmp).join("robustness");
    std::fs::create_dir_all(&dir)?;
    let name = format!("{}-seed{seed}", engine.name());
    // As recorded, and as checked (unknown outcomes the watchers' log settled).
    for (records, what) in [(records, "history"), (checked, "checked")] {
        let mut sorted: Vec<&Record> = records.iter().collect();
        sorted.sort_by_key(|r| r.call);
        let text: Vec<String> = sorted.iter().map(|r| r.describe()).collect();
        std::fs::write(dir.join(format!("{name}.{what}.txt")), text.join("\n"))?;
    }
    if let Verdict::Violation(_, info) = verdict {
        porcupine_rs::visualize_path::<model::StoreModel>(info, &dir.join(format!("{name}.html")))?;
    }
    Ok(dir)
}
