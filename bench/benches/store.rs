//! Benchmarks of the embedded store's hot paths: get, put (per sync mode, with 1 and
//! 64 writes in flight), a 100-entry prefix list and the event fan-out from a put to
//! its delivery to every watcher.
//!
//! ```sh
//! cargo bench -p kvstore-bench --bench store             # full run
//! cargo bench -p kvstore-bench --bench store -- --quick  # a quick look
//! cargo bench -p kvstore-bench --bench store -- put/     # only the puts
//! ```
//!
//! The async paths use `iter_custom` on a tokio runtime of their own, so criterion
//! needs none of its async features. Every store is `Config::temporary()`: a fresh
//! folder under the system temp dir, removed when the store is dropped (put
//! figures with `SyncMode::Always` therefore depend on that file system's fsync).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvstore_core::{
    SledConfig as Config, SledStore as Store, Storage, SyncMode, WatchItem, WatchOptions,
};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Bytes in every value written.
const VALUE_SIZE: usize = 100;
/// Keys the puts cycle through.
const PUT_KEYS: u64 = 1000;

fn value() -> Vec<u8> {
    (0..VALUE_SIZE).map(|i| b'a' + (i % 26) as u8).collect()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn open(sync: SyncMode) -> Store {
    let mut config = Config::temporary();
    config.sync = sync;
    Store::open(config).expect("a temporary store")
}

fn sync_name(sync: SyncMode) -> &'static str {
    match sync {
        SyncMode::Always => "sync_always",
        SyncMode::None => "sync_none",
    }
}

/// `get` of an existing key (a sled read and the entry's decoding).
fn bench_get(c: &mut Criterion) {
    let rt = runtime();
    let store = open(SyncMode::None);
    rt.block_on(async {
        for i in 0..PUT_KEYS {
            store
                .put(&format!("bench/{i:06}"), value(), None)
                .await
                .expect("put");
        }
    });
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    group.bench_function("existing_key", |b| {
        b.iter(|| {
            rt.block_on(store.get(black_box("bench/000500")))
                .expect("get")
                .expect("the key exists")
        })
    });
    group.bench_function("absent_key", |b| {
        b.iter(|| {
            rt.block_on(store.get(black_box("bench/absent")))
                .expect("get")
        })
    });
    group.finish();
}

/// Puts of a 100-byte value: `iters` puts in all, by `in_flight` tasks each with one
/// put outstanding; the time per put is the inverse of the throughput.
fn timed_puts(rt: &Runtime, store: &Store, in_flight: u64, iters: u64, next: &mut u64) -> Duration {
    let base = *next;
    *next += iters;
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..in_flight {
            // Task t does puts t, t + in_flight, t + 2 * in_flight, ... below iters.
            let count = iters / in_flight + u64::from(t < iters % in_flight);
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let value = value();
                for n in 0..count {
                    let i = base + t + n * in_flight;
                    store
                        .put(&format!("bench/{:06}", i % PUT_KEYS), value.clone(), None)
                        .await
                        .expect("put");
                }
            }));
        }
        for task in tasks {
            task.await.expect("a put task");
        }
        start.elapsed()
    })
}

fn bench_put(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1));
    for sync in [SyncMode::None, SyncMode::Always] {
        if sync == SyncMode::Always {
            // Each put (or group of puts) waits for an fsync: milliseconds each.
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(5));
        }
        for in_flight in [1u64, 64] {
            let store = open(sync);
            let mut next = 0;
            group.bench_with_input(
                BenchmarkId::new(sync_name(sync), format!("in_flight_{in_flight}")),
                &in_flight,
                |b, &in_flight| {
                    b.iter_custom(|iters| timed_puts(&rt, &store, in_flight, iters, &mut next))
                },
            );
        }
    }
    group.finish();
}

/// A list of 100 entries under a prefix, among 1000 keys elsewhere.
fn bench_list(c: &mut Criterion) {
    let rt = runtime();
    let store = open(SyncMode::None);
    rt.block_on(async {
        for i in 0..100 {
            store
                .put(&format!("list/{i:03}"), value(), None)
                .await
                .expect("put");
        }
        for i in 0..1000 {
            for prefix in ["a/", "z/"] {
                store
                    .put(&format!("{prefix}{i:04}"), value(), None)
                    .await
                    .expect("put");
            }
        }
    });
    let mut group = c.benchmark_group("list");
    group.throughput(Throughput::Elements(100));
    group.bench_function("prefix_100", |b| {
        b.iter(|| {
            let page = rt
                .block_on(store.list(black_box("list/"), None, 100))
                .expect("list");
            assert_eq!(page.entries.len(), 100);
            page
        })
    });
    group.finish();
}

/// From the start of a put to its event's delivery to the last of N watchers (each a
/// task of its own awaiting `Watch::next`). Puts are `SyncMode::None`, so the figure
/// is the fan-out path (writer, event feed, broadcast ring, task wake-ups) rather
/// than the disk.
fn bench_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.sample_size(20);
    for watchers in [1usize, 100] {
        let rt = runtime();
        let store = open(SyncMode::None);
        // Every watcher reports each revision it receives.
        let (tx, mut delivered) = mpsc::unbounded_channel::<u64>();
        let mut tasks = Vec::new();
        rt.block_on(async {
            for _ in 0..watchers {
                let mut watch = store
                    .watch(WatchOptions {
                        prefix: "fan/".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("watch");
                let tx = tx.clone();
                tasks.push(tokio::spawn(async move {
                    while let Ok(item) = watch.next().await {
                        if let WatchItem::Event(event) = item {
                            if tx.send(event.revision).is_err() {
                                break;
                            }
                        }
                    }
                }));
            }
        });
        drop(tx);
        let value = Arc::new(value());
        group.bench_with_input(
            BenchmarkId::new("watchers", watchers),
            &watchers,
            |b, &n| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let start = Instant::now();
                            let put = store
                                .put("fan/key", value.to_vec(), None)
                                .await
                                .expect("put");
                            let mut seen = 0;
                            while seen < n {
                                let revision = delivered.recv().await.expect("a watcher");
                                assert_eq!(revision, put.revision, "events in order, none missed");
                                seen += 1;
                            }
                            total += start.elapsed();
                        }
                        total
                    })
                })
            },
        );
        // The watches hold the store's history tree (and so its event threads), so
        // they go first: cancelled, then awaited, before the store is dropped.
        rt.block_on(async {
            for task in tasks {
                task.abort();
                let _ = task.await;
            }
        });
        drop(store);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_get, bench_put, bench_list, bench_fanout
}
criterion_main!(benches);
