//! `kv bench watch`: how fast and how completely changes reach many watchers.
//!
//! 1. Opens `--watchers` WebSocket watches on the prefix through the SDK, each
//!    starting at the revision after the store's current one. One sentinel put
//!    follows; a watch that has delivered it is connected (were it late, it still
//!    gets the sentinel from the history, so none is waited for in vain).
//! 2. With the watchers idle, reads the server's memory (`--server-pid`).
//! 3. A writer puts `--rate` times a second for `--duration` seconds, on schedule
//!    (open loop: a slow put does not delay the next), noting when each was sent
//!    and acknowledged, by revision. Each watcher notes when each revision arrives.
//! 4. Once every expected event arrived (or none came for a while), compares:
//!    delivered and missed counts, latency from acknowledgement to delivery
//!    (floored at 0: a watcher may see a change before its writer hears back) and
//!    from sending to delivery (an upper bound).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use kvstore_client::{Client, Update, WatchOptions};
use serde::Serialize;

use super::report::{self, micros, round1, round3, Latency};
use super::{DataArgs, WatchArgs};

/// Longest wait for every watcher to connect: this plus 20 ms a watcher.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the last put, give up waiting for deliveries after this long without one.
const DRAIN_IDLE: Duration = Duration::from_secs(5);
/// Puts in flight at most (beyond that the schedule slips, as the report shows).
const MAX_IN_FLIGHT: usize = 1024;

/// What the watchers share.
struct Shared {
    t0: Instant,
    sentinel: String,
    /// Watchers that delivered the sentinel.
    ready: AtomicU64,
    /// Events delivered (other than the sentinel), all watchers together.
    delivered: AtomicU64,
    /// Watchers that ended with an error.
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// What one watcher saw.
struct Watched {
    /// (revision, microseconds since t0) of each event, in arrival order.
    events: Vec<(u64, u64)>,
    reconnects: u64,
}

/// One acknowledged put.
#[derive(Clone, Copy)]
struct Put {
    sent_us: u64,
    acked_us: u64,
}

#[derive(Debug, Serialize)]
struct Rss {
    before: u64,
    idle: u64,
    after: u64,
    closed: u64,
    /// (idle − before) / watchers.
    per_watcher: f64,
}

#[derive(Debug, Serialize)]
struct WatchReport {
    workload: &'static str,
    watchers: u32,
    rate: f64,
    duration_s: f64,
    value_size: usize,
    prefix: String,
    /// Seconds until every watcher was connected.
    connect_s: f64,
    /// Reconnections of the watch streams (dropped connections, `lagged`).
    reconnects: u64,
    /// Puts acknowledged.
    puts: u64,
    put_errors: u64,
    /// Acknowledged puts a second, over the writing time.
    put_rate: f64,
    put_latency_ms: Latency,
    /// puts × watchers.
    expected: u64,
    /// Events of acknowledged puts received (each watcher, each revision once).
    delivered: u64,
    /// expected − delivered.
    missed: u64,
    /// Events that came again or out of revision order (never expected).
    duplicates: u64,
    /// Delivery time minus the put's acknowledgement time, floored at 0.
    delivery_latency_ms: Latency,
    /// Delivery time minus the put's send time (an upper bound).
    delivery_latency_from_send_ms: Latency,
    /// The server's VmRSS in KiB (with `--server-pid`).
    server_rss_kib: Option<Rss>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    interrupted: bool,
}

pub async fn run(
    client: &Client,
    args: WatchArgs,
    stop: &Arc<AtomicBool>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let watchers = u64::from(args.watchers);
    report::ensure_open_files(watchers + MAX_IN_FLIGHT as u64 + 64);
    if let Some(limit) = args.server_pid.and_then(report::open_files_limit) {
        if limit < watchers + 64 {
            eprintln!(
                "kv bench: the server may open only {limit} files; start it after \
                 `ulimit -n {}` for {watchers} watchers",
                (watchers + 1024).next_power_of_two()
            );
        }
    }
    let rss = |pid: Option<u32>| pid.map(report::rss_kib).transpose();
    let start_revision = client.health().await? + 1;
    let rss_before = rss(args.server_pid)?;

    // 1. Watchers, then the sentinel.
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        sentinel: format!("{}sentinel", args.data.prefix),
        ready: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let expected_each = (args.rate * args.duration).round().max(1.0) as u64;
    let (stop_watchers, stopped) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..args.watchers)
        .map(|_| {
            let options = WatchOptions {
                prefix: args.data.prefix.clone(),
                start_revision: Some(start_revision),
                initial: false,
                reconnect: true,
            };
            tokio::spawn(watcher(
                client.clone(),
                options,
                shared.clone(),
                stopped.clone(),
                expected_each as usize + 16,
            ))
        })
        .collect();
    let connecting = Instant::now();
    client.put(&shared.sentinel, "ready").await?;
    let bar = report::progress(watchers, "connect");
    let timeout = CONNECT_TIMEOUT + Duration::from_millis(20) * args.watchers;
    loop {
        let ready = shared.ready.load(Ordering::Relaxed);
        bar.set_position(ready);
        if ready == watchers {
            break;
        }
        if shared.failed.load(Ordering::Relaxed) > 0 {
            let error = shared.first_error.lock().ok().and_then(|e| e.clone());
            anyhow::bail!("a watch failed: {}", error.unwrap_or_default());
        }
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("interrupted with {ready} of {watchers} watchers connected");
        }
        if connecting.elapsed() > timeout {
            anyhow::bail!(
                "only {ready} of {watchers} watchers connected within {timeout:?} \
                 (is the server's open-files limit high enough?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // 2. Idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss(args.server_pid)?;

    // 3. The writer, on a thread of its own: the watchers keep this one busy, and
    //    would delay its sending and its noting of acknowledgements.
    let writer = Writer {
        client: client.clone(),
        rate: args.rate,
        duration: args.duration,
        data: args.data.clone(),
        t0: shared.t0,
        stop: stop.clone(),
    };
    let writing = Instant::now();
    let (puts, put_errors, first_put_error) = writer.run_on_own_thread().await?;
    let writing_s = writing.elapsed().as_secs_f64();

    // 4. Wait for the deliveries.
    let expected = puts.len() as u64 * watchers;
    let bar = report::progress(expected, "deliver");
    let mut last = (shared.delivered.load(Ordering::Relaxed), Instant::now());
    while last.0 < expected && last.1.elapsed() < DRAIN_IDLE && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let delivered = shared.delivered.load(Ordering::Relaxed);
        if delivered != last.0 {
            last = (delivered, Instant::now());
        }
        bar.set_position(delivered);
    }
    bar.finish_and_clear();
    let rss_after = rss(args.server_pid)?;
    let _ = stop_watchers.send(true);
    let mut seen = Vec::with_capacity(tasks.len());
    for task in tasks {
        seen.push(task.await?);
    }
    let rss_closed = match args.server_pid {
        Some(_) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss(args.server_pid)?
        }
        None => None,
    };

    // The figures.
    let mut put_latency = report::histogram();
    for put in puts.values() {
        report::record(&mut put_latency, put.acked_us.saturating_sub(put.sent_us));
    }
    let mut from_ack = report::histogram();
    let mut from_send = report::histogram();
    let (mut delivered, mut duplicates, mut reconnects) = (0u64, 0u64, 0u64);
    for watched in &seen {
        reconnects += watched.reconnects;
        let mut last_revision = 0;
        for &(revision, at) in &watched.events {
            if revision <= last_revision {
                duplicates += 1;
                continue;
            }
            last_revision = revision;
            if let Some(put) = puts.get(&revision) {
                delivered += 1;
                report::record(&mut from_ack, at.saturating_sub(put.acked_us));
                report::record(&mut from_send, at.saturating_sub(put.sent_us));
            }
        }
    }
    let first_error = first_put_error.or_else(|| shared.first_error.lock().ok()?.clone());
    let server_rss_kib = match (rss_before, rss_idle, rss_after, rss_closed) {
        (Some(before), Some(idle), Some(after), Some(closed)) => Some(Rss {
            before,
            idle,
            after,
            closed,
            per_watcher: round1(idle.saturating_sub(before) as f64 / watchers as f64),
        }),
        _ => None,
    };
    let report = WatchReport {
        workload: "watch",
        watchers: args.watchers,
        rate: args.rate,
        duration_s: args.duration,
        value_size: args.data.value_size,
        prefix: args.data.prefix.clone(),
        connect_s: round3(connect_s),
        reconnects,
        puts: puts.len() as u64,
        put_errors,
        put_rate: round1(puts.len() as f64 / writing_s.max(1e-9)),
        put_latency_ms: Latency::of(&put_latency),
        expected,
        delivered,
        missed: expected.saturating_sub(delivered),
        duplicates,
        delivery_latency_ms: Latency::of(&from_ack),
        delivery_latency_from_send_ms: Latency::of(&from_send),
        server_rss_kib,
        first_error,
        interrupted: stop.load(Ordering::Relaxed),
    };
    print(&report, json, out)
}

/// One watcher: notes the arrival time of each revision until told to stop.
async fn watcher(
    client: Client,
    options: WatchOptions,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    capacity: usize,
) -> Watched {
    let mut updates = client.watch_with(options);
    let mut watched = Watched {
        events: Vec::with_capacity(capacity),
        reconnects: 0,
    };
    let mut ready = false;
    loop {
        let update = tokio::select! {
            biased;
            _ = stop.changed() => break,
            update = updates.next() => update,
        };
        match update {
            Some(Ok(Update::Event(event))) => {
                let at = micros(shared.t0.elapsed());
                if !ready && event.key == shared.sentinel {
                    ready = true;
                    shared.ready.fetch_add(1, Ordering::Relaxed);
                } else {
                    watched.events.push((event.revision, at));
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Update::Reconnecting { .. })) => watched.reconnects += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = shared.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
                break;
            }
            None => break,
        }
    }
    watched
}

/// The acknowledged puts by revision, the failures and the first one.
type Written = (HashMap<u64, Put>, u64, Option<String>);

/// Puts `rate` times a second for `duration` seconds.
struct Writer {
    client: Client,
    rate: f64,
    duration: f64,
    data: DataArgs,
    t0: Instant,
    stop: Arc<AtomicBool>,
}

impl Writer {
    /// Runs [`Writer::write`] on a new thread with a runtime of its own.
    async fn run_on_own_thread(self) -> anyhow::Result<Written> {
        let (done, written) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kv-bench-writer".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(self.write()));
                let _ = done.send(result);
            })?;
        Ok(written.await.context("the writer thread failed")??)
    }

    /// Sends each put on schedule in a task of its own (open loop: a slow put does
    /// not delay the next), noting when it was sent and acknowledged.
    async fn write(self) -> Written {
        let total = (self.rate * self.duration).round().max(1.0) as u64;
        let bar = report::progress(total, "put");
        let value = self.data.value();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(total as usize);
        for n in 0..total {
            ticks.tick().await;
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let client = self.client.clone();
            let key = self.data.key(n);
            let value = value.clone();
            let t0 = self.t0;
            tasks.push(tokio::spawn(async move {
                let sent_us = micros(t0.elapsed());
                let result = client.put(&key, value).await;
                let acked_us = micros(t0.elapsed());
                drop(permit);
                result.map(|put| (put.revision, Put { sent_us, acked_us }))
            }));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut puts = HashMap::with_capacity(tasks.len());
        let mut errors = 0;
        let mut first_error = None;
        for task in tasks {
            let failure = match task.await {
                Ok(Ok((revision, put))) => {
                    puts.insert(revision, put);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            errors += 1;
            first_error.get_or_insert_with(|| format!("put: {failure}"));
        }
        (puts, errors, first_error)
    }
}

fn print(report: &WatchReport, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    let r = report;
    writeln!(
        out,
        "watch: {} watchers on {:?}, {} puts/s for {} s, {}-byte values",
        r.watchers, r.prefix, r.rate, r.duration_s, r.value_size
    )?;
    writeln!(
        out,
        "  connected    {} watchers in {:.3} s; {} reconnects",
        r.watchers, r.connect_s, r.reconnects
    )?;
    writeln!(
        out,
        "  puts         {} acknowledged ({:.1}/s), {} errors",
        r.puts, r.put_rate, r.put_errors
    )?;
    writeln!(out, "  put ms       {}", r.put_latency_ms.line())?;
    writeln!(
        out,
        "  delivered    {} of {}: missed {}, duplicates {}",
        r.delivered, r.expected, r.missed, r.duplicates
    )?;
    writeln!(
        out,
        "  delivery ms  {}  from ack",
        r.delivery_latency_ms.line()
    )?;
    writeln!(
        out,
        "               {}  from send",
        r.delivery_latency_from_send_ms.line()
    )?;
    if let Some(rss) = &r.server_rss_kib {
        writeln!(
            out,
            "  server RSS   {} KiB before, {} idle ({:.1} KiB a watcher), {} after the puts, {} closed",
            rss.before, rss.idle, rss.per_watcher, rss.after, rss.closed
        )?;
    }
    if let Some(e) = &r.first_error {
        writeln!(out, "  first error  {e}")?;
    }
    if r.interrupted {
        writeln!(out, "  (stopped early)")?;
    }
    Ok(())
}
