//! `kv bench soak`: a long mixed load, with the server's memory, open files and
//! threads sampled from /proc, to show what grows with time rather than with data.
//!
//! 1. Writes every key once, drops that client's connections and waits for the
//!    server's open files to settle: the starting sample.
//! 2. For `--duration` seconds, all at once:
//!    - `--clients` clients send gets (50%), puts (30%), deletes (10%) and list
//!      pages of 100 from a random key (10%) of random keys, one at a time each;
//!    - `--watchers` watchers connect (half of them with the initial state of
//!      their part of the keys), read a few events and leave, over and over;
//!    - `--slow-watchers` watchers of every key stop reading for `--slow-pause`
//!      seconds, so that the server finds them `lagged` (or, past its peer timeout,
//!      silent) and drops them; then they read what got through and start over;
//!    - `--churn` times a second a new client opens a connection for one get and
//!      drops it.
//!
//!    Every `--sample-every` seconds: VmRSS and Threads from /proc/PID/status, the
//!    entries of /proc/PID/fd.
//! 3. Drops every connection and waits (at most 30 s) for the open files and threads
//!    to come back to their starting counts: the last sample.
//!
//! The figures: RSS growth from the end of `--warmup` to the end of the load and
//! its least-squares slope; open files and threads at the start, at most and after;
//! request errors (a 404 of a get or delete is an answer, not an error). The run
//! fails (exit 3) on any request error, RSS growth of `--max-growth-mb` or more, or
//! open files or threads not back to their starting counts.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kvstore_client::{Client, Error, Update, WatchOptions};
use serde::Serialize;

use super::load::SplitMix64;
use super::report::{self, round1, round3};
use super::{Connect, SoakArgs};

/// Entries of a list page.
const PAGE: usize = 100;
/// Longest wait after the load for the server's open files and threads to settle.
const SETTLE: Duration = Duration::from_secs(30);
/// How often the sampler looks at the clock (and at Ctrl-C).
const TICK: Duration = Duration::from_millis(250);
/// The server's message for a `lagged` watch, the reason of the SDK's reconnection.
const LAGGED: &str = "fell too far behind";
/// A slow watcher still without news this long after it reads again has caught up.
const CAUGHT_UP: Duration = Duration::from_secs(5);
/// How much a slow watcher's pause changes after it caught up or was dropped.
const STALL_STEP: Duration = Duration::from_secs(5);
/// The longest pause of a slow watcher.
const MAX_STALL: Duration = Duration::from_secs(120);

/// The sizing rule of docs/performance.md: RSS at most this many MiB for an idle server...
const RULE_BASE_MB: f64 = 10.0;
/// ... plus this many times --cache-mb ...
const RULE_CACHE_FACTOR: f64 = 2.0;
/// ... plus this many bytes a key (their pages, once read back from disk) ...
const RULE_KEY_BYTES: f64 = 140.0;
/// ... plus this many KiB an open watcher ...
const RULE_WATCHER_KIB: f64 = 16.0;
/// ... plus the event ring: the server's default --event-buffer events, each
/// about this many bytes beside its key and value.
const RULE_EVENT_BYTES: f64 = 200.0;
const DEFAULT_EVENT_BUFFER: f64 = 4096.0;

/// The sizing rule's RSS bound in MiB.
fn rule_mb(cache_mb: u64, data: &super::DataArgs, watchers: u64) -> f64 {
    let key_len = data.key(0).len() as f64;
    let event = DEFAULT_EVENT_BUFFER * (RULE_EVENT_BYTES + key_len + data.value_size as f64);
    RULE_BASE_MB
        + RULE_CACHE_FACTOR * cache_mb as f64
        + (RULE_KEY_BYTES * data.keys as f64 + event) / (1024.0 * 1024.0)
        + RULE_WATCHER_KIB * watchers as f64 / 1024.0
}

/// What every task counts.
#[derive(Default)]
struct Counts {
    gets: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    lists: AtomicU64,
    /// Gets and deletes answered 404 (the key was deleted): answers, not errors.
    absent: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Watch streams opened by the watchers and the slow watchers.
    watches: AtomicU64,
    /// Events and entries the watchers read.
    watched: AtomicU64,
    /// Reconnections of the (fast) watchers: none expected.
    reconnects: AtomicU64,
    /// Slow watchers the server told `lagged`.
    lagged: AtomicU64,
    /// Slow watchers the server dropped otherwise (e.g. past its peer timeout).
    dropped: AtomicU64,
    /// Slow watchers that caught up after their pause, without a lag.
    kept_up: AtomicU64,
    /// Connections opened for one request and dropped.
    churned: AtomicU64,
}

impl Counts {
    fn requests(&self) -> u64 {
        [
            &self.gets,
            &self.puts,
            &self.deletes,
            &self.lists,
            &self.absent,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum::<u64>()
            + self.errors.load(Ordering::Relaxed)
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{what}: {e}"));
        }
    }
}

/// One look at the server process.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    /// Seconds since the load started (negative: before).
    t_s: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    /// Requests answered so far (successes, 404s and errors).
    requests: u64,
    /// Watch streams open in the soak at that moment.
    watchers_open: u64,
}

fn sample(pid: u32, t_s: f64, counts: &Counts, open: &AtomicU64) -> anyhow::Result<Sample> {
    let status = report::process_status(pid)?;
    Ok(Sample {
        t_s: round1(t_s),
        rss_kib: status.rss_kib,
        fds: report::open_fds(pid)?,
        threads: status.threads,
        requests: counts.requests(),
        watchers_open: open.load(Ordering::Relaxed),
    })
}

/// The figures of the samples.
#[derive(Debug, Serialize)]
struct Memory {
    rss_start_kib: u64,
    /// The first sample at or after the warm-up.
    rss_warm_kib: u64,
    rss_end_kib: u64,
    rss_max_kib: u64,
    /// End of the load minus the end of the warm-up.
    growth_after_warmup_mb: f64,
    /// Least-squares slope over the samples after the warm-up.
    slope_mb_per_min: f64,
    /// The sizing rule's bound (with `--cache-mb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_mb: Option<f64>,
    fds_start: u64,
    fds_max: u64,
    fds_after: u64,
    threads_start: u64,
    threads_max: u64,
    threads_after: u64,
}

#[derive(Debug, Serialize)]
struct SoakReport {
    workload: &'static str,
    duration_s: f64,
    warmup_s: f64,
    clients: u32,
    watchers: u32,
    slow_watchers: u32,
    keys: u64,
    value_size: usize,
    requests: u64,
    throughput_rps: f64,
    gets: u64,
    puts: u64,
    deletes: u64,
    lists: u64,
    absent: u64,
    errors: u64,
    watches_opened: u64,
    watched_items: u64,
    watcher_reconnects: u64,
    slow_lagged: u64,
    slow_dropped: u64,
    slow_kept_up: u64,
    connections_churned: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Memory>,
    samples: Vec<Sample>,
    /// Why the run failed its bounds (empty: it passed).
    failures: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    interrupted: bool,
}

pub async fn run(
    client: &Client,
    connect: Connect,
    args: SoakArgs,
    stop: &Arc<AtomicBool>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let tasks_total = args.clients + args.watchers + args.slow_watchers + 64;
    report::ensure_open_files(u64::from(tasks_total));
    if args.server_pid.is_none() {
        eprintln!(
            "kv bench soak: without --server-pid, only the requests are checked, \
             not the server's memory, open files and threads"
        );
    }
    client.health().await?;
    let value = args.data.value();
    {
        // Its connections close when it is dropped, before the starting sample.
        let loader = connect()?;
        args.data
            .populate(&loader, &value, args.clients as usize, stop)
            .await?;
    }
    let counts = Arc::new(Counts::default());
    let open = Arc::new(AtomicU64::new(0));
    let mut samples = Vec::new();
    if let Some(pid) = args.server_pid {
        let mut start = settle(pid, None, 0.0, &counts, &open).await?;
        start.t_s = 0.0;
        samples.push(start);
    }

    let (done_tx, done) = tokio::sync::watch::channel(false);
    let value = Arc::new(value);
    let data = Arc::new(args.data.clone());
    let load = connect()?;
    let mut tasks = Vec::new();
    for id in 0..args.clients {
        tasks.push(tokio::spawn(client_loop(
            load.clone(),
            id,
            data.clone(),
            value.clone(),
            args.rate.map_or(0.0, |r| r / f64::from(args.clients)),
            counts.clone(),
            done.clone(),
        )));
    }
    for id in 0..args.watchers {
        tasks.push(tokio::spawn(watcher(
            load.clone(),
            id,
            data.clone(),
            counts.clone(),
            open.clone(),
            done.clone(),
        )));
    }
    for _ in 0..args.slow_watchers {
        tasks.push(tokio::spawn(slow_watcher(
            load.clone(),
            data.prefix.clone(),
            Duration::from_secs_f64(args.slow_pause),
            counts.clone(),
            open.clone(),
            done.clone(),
        )));
    }
    if args.churn > 0.0 {
        tasks.push(tokio::spawn(churn(
            connect.clone(),
            args.churn,
            data.clone(),
            counts.clone(),
            done.clone(),
        )));
    }
    drop(load);

    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    let every = Duration::from_secs_f64(args.sample_every);
    let bar = report::progress(report::micros(duration) / 1_000_000, "soak");
    let mut next_sample = every;
    let mut sample_error = None;
    while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(TICK).await;
        let elapsed = started.elapsed();
        bar.set_position(elapsed.as_secs());
        bar.set_message(format!(
            "{} requests, {} errors",
            counts.requests(),
            counts.errors.load(Ordering::Relaxed)
        ));
        if elapsed >= next_sample {
            next_sample += every;
            if let Some(pid) = args.server_pid {
                match sample(pid, elapsed.as_secs_f64(), &counts, &open) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        // The server is gone: stop the load, report what there is.
                        sample_error = Some(e);
                        break;
                    }
                }
            }
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let _ = done_tx.send(true);
    for task in tasks {
        task.await?;
    }
    if let Some(e) = sample_error {
        return Err(e);
    }
    let start = samples.first().cloned();
    if let (Some(pid), Some(start)) = (args.server_pid, start) {
        let after = settle(pid, Some(&start), load_s, &counts, &open).await?;
        samples.push(after);
    }

    let requests = counts.requests();
    let mut memory = memory(&samples, args.warmup);
    let peak_watchers = samples.iter().map(|s| s.watchers_open).max().unwrap_or(0);
    if let Some(m) = &mut memory {
        m.rule_mb = args
            .cache_mb
            .map(|cache| round1(rule_mb(cache, &args.data, peak_watchers)));
    }
    let mut failures = Vec::new();
    let errors = counts.errors.load(Ordering::Relaxed);
    if errors > 0 {
        failures.push(format!("{errors} request errors"));
    }
    if let Some(m) = &memory {
        if m.growth_after_warmup_mb >= args.max_growth_mb {
            failures.push(format!(
                "RSS grew {:.1} MB after the warm-up (limit {} MB)",
                m.growth_after_warmup_mb, args.max_growth_mb
            ));
        }
        if let Some(rule) = m.rule_mb {
            let max = m.rss_max_kib as f64 / 1024.0;
            if max > rule {
                failures.push(format!(
                    "RSS reached {max:.1} MB, above the sizing rule's {rule:.1} MB"
                ));
            }
        }
        if m.fds_after > m.fds_start {
            failures.push(format!(
                "{} open files after the load, {} at the start",
                m.fds_after, m.fds_start
            ));
        }
        if m.threads_after > m.threads_start {
            failures.push(format!(
                "{} threads after the load, {} at the start",
                m.threads_after, m.threads_start
            ));
        }
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let report = SoakReport {
        workload: "soak",
        duration_s: round3(load_s),
        warmup_s: args.warmup,
        clients: args.clients,
        watchers: args.watchers,
        slow_watchers: args.slow_watchers,
        keys: args.data.keys,
        value_size: args.data.value_size,
        requests,
        throughput_rps: round1(requests as f64 / load_s.max(1e-9)),
        gets: get(&counts.gets),
        puts: get(&counts.puts),
        deletes: get(&counts.deletes),
        lists: get(&counts.lists),
        absent: get(&counts.absent),
        errors,
        watches_opened: get(&counts.watches),
        watched_items: get(&counts.watched),
        watcher_reconnects: get(&counts.reconnects),
        slow_lagged: get(&counts.lagged),
        slow_dropped: get(&counts.dropped),
        slow_kept_up: get(&counts.kept_up),
        connections_churned: get(&counts.churned),
        memory,
        samples,
        failures,
        first_error: counts.first_error.lock().ok().and_then(|e| e.clone()),
        interrupted: stop.load(Ordering::Relaxed),
    };
    print(&report, json, out)?;
    if args.slow_watchers > 0 && report.slow_lagged == 0 && !report.interrupted {
        eprintln!(
            "kv bench soak: no slow watcher was lagged; raise --slow-pause or the load \
             (the server holds --event-buffer events plus what the sockets hold)"
        );
    }
    if !report.failures.is_empty() {
        anyhow::bail!("the soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// Samples until the open files and threads are back to `start`'s counts (or, with
/// no `start`, stop changing), for at most [`SETTLE`]; returns the last sample.
async fn settle(
    pid: u32,
    start: Option<&Sample>,
    t_s: f64,
    counts: &Counts,
    open: &AtomicU64,
) -> anyhow::Result<Sample> {
    let began = Instant::now();
    let mut last = sample(pid, t_s, counts, open)?;
    loop {
        tokio::time::sleep(TICK).await;
        let now = sample(pid, t_s + began.elapsed().as_secs_f64(), counts, open)?;
        let settled = match start {
            Some(start) => now.fds <= start.fds && now.threads <= start.threads,
            None => now.fds == last.fds && now.threads == last.threads,
        };
        if settled || began.elapsed() >= SETTLE {
            return Ok(now);
        }
        last = now;
    }
}

fn memory(samples: &[Sample], warmup: f64) -> Option<Memory> {
    let (start, rest) = samples.split_first()?;
    let (after, load) = rest.split_last()?;
    let warm = load.iter().position(|s| s.t_s >= warmup)?;
    let steady = &load[warm..];
    let last = steady.last()?;
    let mb = |kib: f64| round3(kib / 1024.0);
    Some(Memory {
        rss_start_kib: start.rss_kib,
        rss_warm_kib: steady[0].rss_kib,
        rss_end_kib: last.rss_kib,
        rss_max_kib: load.iter().map(|s| s.rss_kib).max()?,
        growth_after_warmup_mb: mb(last.rss_kib as f64 - steady[0].rss_kib as f64),
        slope_mb_per_min: mb(slope(steady) * 60.0),
        rule_mb: None,
        fds_start: start.fds,
        fds_max: load.iter().map(|s| s.fds).max()?,
        fds_after: after.fds,
        threads_start: start.threads,
        threads_max: load.iter().map(|s| s.threads).max()?,
        threads_after: after.threads,
    })
}

/// Least-squares slope of RSS (KiB) over time (s); 0 with fewer than two samples.
fn slope(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.t_s).sum::<f64>() / n;
    let mean_r = samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for s in samples {
        cov += (s.t_s - mean_t) * (s.rss_kib as f64 - mean_r);
        var += (s.t_s - mean_t) * (s.t_s - mean_t);
    }
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

/// Sleeps for `d`, or less if the soak ends; `false` if it ended.
async fn pause(d: Duration, done: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = done.wait_for(|d| *d) => return false,
    }
    !*done.borrow()
}

/// One client: gets, puts, deletes and list pages, one at a time, at `rate` a
/// second (0: as fast as answered).
async fn client_loop(
    client: Client,
    id: u32,
    data: Arc<super::DataArgs>,
    value: Arc<Vec<u8>>,
    rate: f64,
    counts: Arc<Counts>,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = SplitMix64::seeded(u64::from(id));
    let mut ticks = (rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    while !*done.borrow() {
        if let Some(ticks) = &mut ticks {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = done.wait_for(|d| *d) => break,
            }
        }
        let r = rng.next();
        let key = data.key(r / 100);
        match r % 100 {
            0..50 => match client.get(&key).await {
                Ok(_) => counts.gets.fetch_add(1, Ordering::Relaxed),
                Err(Error::NotFound { .. }) => counts.absent.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    counts.failed("get", &e);
                    continue;
                }
            },
            50..80 => match client.put(&key, value.as_slice()).await {
                Ok(_) => counts.puts.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    counts.failed("put", &e);
                    continue;
                }
            },
            80..90 => match client.delete(&key).await {
                Ok(_) => counts.deletes.fetch_add(1, Ordering::Relaxed),
                Err(Error::NotFound { .. }) => counts.absent.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    counts.failed("delete", &e);
                    continue;
                }
            },
            _ => match client.list(&data.prefix, Some(&key), Some(PAGE)).await {
                Ok(_) => counts.lists.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    counts.failed("list", &e);
                    continue;
                }
            },
        };
    }
}

/// The keys a watcher watches: the block of (up to) 1,000 consecutive keys that
/// holds key `n`, e.g. `bench/003` for `bench/003456`.
fn block_prefix(data: &super::DataArgs, n: u64) -> String {
    let key = data.key(n);
    key[..key.len() - 3].to_string()
}

/// Counts an open watch stream while alive.
struct Open(Arc<AtomicU64>);

impl Open {
    fn new(open: &Arc<AtomicU64>, counts: &Counts) -> Open {
        open.fetch_add(1, Ordering::Relaxed);
        counts.watches.fetch_add(1, Ordering::Relaxed);
        Open(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One watcher: connects (every other time with the initial state), reads 20 to
/// 200 events or for 0.5 to 3 seconds, leaves, and again.
async fn watcher(
    client: Client,
    id: u32,
    data: Arc<super::DataArgs>,
    counts: Arc<Counts>,
    open: Arc<AtomicU64>,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = SplitMix64::seeded(0x5eed ^ u64::from(id));
    let mut round = 0u64;
    while !*done.borrow() {
        round += 1;
        let options = WatchOptions {
            prefix: block_prefix(&data, rng.next()),
            start_revision: None,
            initial: round % 2 == 0,
            reconnect: true,
        };
        let want = 20 + rng.next() % 180;
        let until = tokio::time::Instant::now() + Duration::from_millis(500 + rng.next() % 2500);
        let _open = Open::new(&open, &counts);
        let mut updates = Box::pin(client.watch_with(options));
        let mut read = 0;
        while read < want {
            let update = tokio::select! {
                update = updates.next() => update,
                _ = tokio::time::sleep_until(until) => break,
                _ = done.wait_for(|d| *d) => break,
            };
            match update {
                Some(Ok(Update::Reconnecting { .. })) => {
                    counts.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {
                    read += 1;
                    counts.watched.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    counts.failed("watch", &e);
                    break;
                }
                None => break,
            }
        }
    }
}

/// One slow watcher of every key: reads until connected, stops reading for a
/// while, then reads what got through until the server ends the stream, and
/// again. The server's sockets hold thousands of frames, so the first pause may
/// be too short for a lag: each time the watcher caught up instead, the next
/// pause is [`STALL_STEP`] longer; each time the server dropped it as silent,
/// shorter.
async fn slow_watcher(
    client: Client,
    prefix: String,
    mut stall: Duration,
    counts: Arc<Counts>,
    open: Arc<AtomicU64>,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    while !*done.borrow() {
        let _open = Open::new(&open, &counts);
        let mut updates = Box::pin(client.watch_with(WatchOptions {
            prefix: prefix.clone(),
            start_revision: None,
            initial: false,
            reconnect: true,
        }));
        // Connected once the first event arrives.
        let first = tokio::select! {
            update = updates.next() => update,
            _ = done.wait_for(|d| *d) => return,
        };
        match first {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                counts.failed("slow watch", &e);
                continue;
            }
            None => continue,
        }
        if !pause(stall, &mut done).await {
            return;
        }
        let caught_up = tokio::time::Instant::now() + CAUGHT_UP;
        loop {
            let update = tokio::select! {
                update = updates.next() => update,
                _ = tokio::time::sleep_until(caught_up) => {
                    counts.kept_up.fetch_add(1, Ordering::Relaxed);
                    stall = (stall + STALL_STEP).min(MAX_STALL);
                    break;
                }
                _ = done.wait_for(|d| *d) => return,
            };
            match update {
                Some(Ok(Update::Reconnecting { reason, .. })) => {
                    if reason.contains(LAGGED) {
                        counts.lagged.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        stall = stall.saturating_sub(STALL_STEP).max(STALL_STEP);
                    }
                    break;
                }
                Some(Ok(_)) => {
                    counts.watched.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    counts.failed("slow watch", &e);
                    break;
                }
                None => break,
            }
        }
    }
}

/// `rate` times a second: a new client (so a new connection), one get, dropped.
async fn churn(
    connect: Connect,
    rate: f64,
    data: Arc<super::DataArgs>,
    counts: Arc<Counts>,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = SplitMix64::seeded(0xc0ffee);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = done.wait_for(|d| *d) => return,
        }
        let client = match connect() {
            Ok(client) => client,
            Err(e) => {
                counts.failed("connect", &e);
                continue;
            }
        };
        match client.get(&data.key(rng.next())).await {
            Ok(_) => counts.gets.fetch_add(1, Ordering::Relaxed),
            Err(Error::NotFound { .. }) => counts.absent.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                counts.failed("get on a new connection", &e);
                continue;
            }
        };
        counts.churned.fetch_add(1, Ordering::Relaxed);
    }
}

fn print(r: &SoakReport, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "soak: {:.0} s, {} clients, {} watchers, {} slow watchers, {}-byte values over {} keys",
        r.duration_s, r.clients, r.watchers, r.slow_watchers, r.value_size, r.keys
    )?;
    writeln!(
        out,
        "  requests     {} ({:.1}/s): {} gets, {} puts, {} deletes, {} list pages, {} not found; {} errors",
        r.requests, r.throughput_rps, r.gets, r.puts, r.deletes, r.lists, r.absent, r.errors
    )?;
    writeln!(
        out,
        "  watches      {} opened, {} items read, {} reconnects; slow: {} lagged, {} dropped, {} caught up",
        r.watches_opened,
        r.watched_items,
        r.watcher_reconnects,
        r.slow_lagged,
        r.slow_dropped,
        r.slow_kept_up
    )?;
    writeln!(
        out,
        "  connections  {} opened for one request and dropped",
        r.connections_churned
    )?;
    if !r.samples.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "  {:>7}  {:>8}  {:>5}  {:>7}  {:>10}  {:>8}",
            "t (s)", "RSS MB", "fds", "threads", "requests", "watchers"
        )?;
        for s in rows(&r.samples, r.warmup_s) {
            writeln!(
                out,
                "  {:>7.0}  {:>8.1}  {:>5}  {:>7}  {:>10}  {:>8}",
                s.t_s,
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads,
                s.requests,
                s.watchers_open
            )?;
        }
        writeln!(out)?;
    }
    if let Some(m) = &r.memory {
        let mb = |kib: u64| kib as f64 / 1024.0;
        writeln!(
            out,
            "  RSS          {:.1} MB at the start, {:.1} after the warm-up ({} s), {:.1} at the end, {:.1} at most",
            mb(m.rss_start_kib), mb(m.rss_warm_kib), r.warmup_s, mb(m.rss_end_kib), mb(m.rss_max_kib)
        )?;
        writeln!(
            out,
            "               {:+.1} MB after the warm-up; slope {:+.3} MB/min",
            m.growth_after_warmup_mb, m.slope_mb_per_min
        )?;
        if let Some(rule) = m.rule_mb {
            writeln!(
                out,
                "               sizing rule for --cache-mb, {} keys, {} watchers: at most {rule:.1} MB",
                r.keys,
                r.samples.iter().map(|s| s.watchers_open).max().unwrap_or(0)
            )?;
        }
        writeln!(
            out,
            "  open files   {} at the start, {} at most, {} after the load",
            m.fds_start, m.fds_max, m.fds_after
        )?;
        writeln!(
            out,
            "  threads      {} at the start, {} at most, {} after the load",
            m.threads_start, m.threads_max, m.threads_after
        )?;
    } else if r.samples.len() > 2 {
        writeln!(
            out,
            "  (the load was shorter than the warm-up: no growth figures)"
        )?;
    }
    if let Some(e) = &r.first_error {
        writeln!(out, "  first error  {e}")?;
    }
    if r.interrupted {
        writeln!(out, "  (stopped early)")?;
    }
    if r.failures.is_empty() {
        writeln!(out, "  passed")?;
    } else {
        writeln!(out, "  FAILED: {}", r.failures.join("; "))?;
    }
    Ok(())
}

/// The samples worth a row: the start, the end of the warm-up, about ten during
/// the load, its end and the one after it.
fn rows(samples: &[Sample], warmup: f64) -> Vec<&Sample> {
    let n = samples.len();
    if n <= 14 {
        return samples.iter().collect();
    }
    let every = (n - 2).div_ceil(10);
    let warm = samples[1..n - 1]
        .iter()
        .position(|s| s.t_s >= warmup)
        .map(|i| i + 1);
    samples
        .iter()
        .enumerate()
        .filter(|&(i, _)| i == 0 || i + 2 >= n || i % every == 0 || Some(i) == warm)
        .map(|(_, s)| s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_s: f64, rss_kib: u64) -> Sample {
        Sample {
            t_s,
            rss_kib,
            fds: 10,
            threads: 5,
            requests: 0,
            watchers_open: 0,
        }
    }

    #[test]
    fn slope_of_a_line_and_of_a_flat_run() {
        let line: Vec<_> = (0..10).map(|i| at(i as f64 * 5.0, 1000 + i * 50)).collect();
        assert!((slope(&line) - 10.0).abs() < 1e-9);
        let flat: Vec<_> = (0..10).map(|i| at(i as f64, 2048)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&flat[..1]), 0.0);
    }

    #[test]
    fn growth_is_counted_from_the_end_of_the_warmup() {
        let mut samples = vec![at(0.0, 10_240)];
        samples.extend((1..=12).map(|i| at(i as f64 * 10.0, if i < 6 { 20_480 } else { 30_720 })));
        samples.push(at(125.0, 30_720));
        let m = memory(&samples, 60.0).expect("figures");
        assert_eq!(m.rss_start_kib, 10_240);
        assert_eq!(m.rss_warm_kib, 30_720);
        assert_eq!(m.growth_after_warmup_mb, 0.0);
        assert_eq!(m.rss_max_kib, 30_720);
        assert!(memory(&samples, 500.0).is_none());
    }

    #[test]
    fn sizing_rule_adds_cache_keys_and_watchers() {
        let data = super::super::DataArgs {
            value_size: 100,
            keys: 1_000_000,
            prefix: "bench/".into(),
        };
        // 10 + 32 + 133.5 (keys) + 1.2 (ring) + 15.6 (1000 watchers).
        let rule = rule_mb(16, &data, 1000);
        assert!((rule - 192.3).abs() < 0.1, "{rule}");
    }

    #[test]
    fn rows_keep_the_edges_and_the_end_of_the_warmup() {
        let samples: Vec<_> = (0..122).map(|i| at(i as f64 * 5.0, 1)).collect();
        let rows = rows(&samples, 62.0);
        let times: Vec<f64> = rows.iter().map(|s| s.t_s).collect();
        assert_eq!(times.first(), Some(&0.0));
        assert!(times.contains(&65.0), "{times:?}");
        assert_eq!(&times[times.len() - 2..], &[600.0, 605.0]);
        assert!(rows.len() <= 14, "{times:?}");
    }
}
