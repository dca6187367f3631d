//! `kv bench put|get|mixed`: closed-loop load from `--clients` concurrent clients.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kvstore_client::{Client, Error};
use serde::Serialize;

use super::report::{self, micros, round1, round3, Latency};
use super::{DataArgs, LoadArgs};

/// Requests when neither `--requests` nor `--duration` is given.
const DEFAULT_REQUESTS: u64 = 10_000;

/// Which requests a workload sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Puts, over the keys in turn.
    Put,
    /// Gets of random keys.
    Get,
    /// 90% gets, 10% puts, of random keys.
    Mixed,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Put => "put",
            Mix::Get => "get",
            Mix::Mixed => "mixed",
        }
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Requests(u64),
    Duration(Duration),
}

/// What the clients share.
struct Shared {
    mix: Mix,
    plan: Plan,
    data: DataArgs,
    value: Vec<u8>,
    start: Instant,
    /// Tickets: the number of the next request.
    next: AtomicU64,
    /// Requests answered, with success or not.
    done: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn failed(&self, e: &Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| e.to_string());
        }
        if matches!(e, Error::Connection(_)) {
            // The server is gone: stop rather than spin on refused connections.
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The figures of one kind of request.
#[derive(Debug, Serialize)]
struct OpReport {
    requests: u64,
    latency_ms: Latency,
}

#[derive(Debug, Serialize)]
struct LoadReport {
    workload: &'static str,
    clients: u32,
    value_size: usize,
    keys: u64,
    /// Requests sent and answered (`completed + errors`).
    requests: u64,
    completed: u64,
    errors: u64,
    elapsed_s: f64,
    throughput_rps: f64,
    latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    get: Option<OpReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    put: Option<OpReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    /// Stopped early by Ctrl-C or a lost server.
    interrupted: bool,
}

pub async fn run(
    client: &Client,
    mix: Mix,
    args: LoadArgs,
    stop: &Arc<AtomicBool>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    report::ensure_open_files(u64::from(args.clients) + 64);
    // Fail fast, with the client's own error, when the server is not there.
    client.health().await?;
    let plan = match (args.requests, args.duration) {
        (_, Some(secs)) => Plan::Duration(Duration::from_secs_f64(secs)),
        (requests, None) => Plan::Requests(requests.unwrap_or(DEFAULT_REQUESTS)),
    };
    let value = args.data.value();
    if mix != Mix::Put {
        args.data
            .populate(client, &value, args.clients as usize, stop)
            .await?;
    }

    let shared = Arc::new(Shared {
        mix,
        plan,
        data: args.data,
        value,
        start: Instant::now(),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        stop: stop.clone(),
    });
    let tasks: Vec<_> = (0..args.clients)
        .map(|id| tokio::spawn(client_loop(client.clone(), id, shared.clone())))
        .collect();
    let bar = match plan {
        Plan::Requests(n) => report::progress(n, mix.name()),
        Plan::Duration(d) => report::progress(micros(d) / 1000, mix.name()),
    };
    let ticker = {
        let shared = shared.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = shared.done.load(Ordering::Relaxed);
                let secs = shared.start.elapsed().as_secs_f64();
                match shared.plan {
                    Plan::Requests(_) => bar.set_position(done),
                    Plan::Duration(_) => bar.set_position((secs * 1000.0) as u64),
                }
                bar.set_message(format!("{:.0} req/s", done as f64 / secs.max(1e-3)));
            }
        })
    };

    let mut gets = report::histogram();
    let mut puts = report::histogram();
    for task in tasks {
        let (g, p) = task.await?;
        gets.add(&g)?;
        puts.add(&p)?;
    }
    let elapsed = shared.start.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();

    let completed = gets.len() + puts.len();
    let errors = shared.errors.load(Ordering::Relaxed);
    let mut all = gets.clone();
    all.add(&puts)?;
    let op = |h: &Histogram<u64>| {
        Some(OpReport {
            requests: h.len(),
            latency_ms: Latency::of(h),
        })
    };
    let report = LoadReport {
        workload: mix.name(),
        clients: args.clients,
        value_size: shared.data.value_size,
        keys: shared.data.keys,
        requests: completed + errors,
        completed,
        errors,
        elapsed_s: round3(elapsed),
        throughput_rps: round1(completed as f64 / elapsed.max(1e-9)),
        latency_ms: Latency::of(&all),
        get: if mix == Mix::Mixed { op(&gets) } else { None },
        put: if mix == Mix::Mixed { op(&puts) } else { None },
        first_error: shared.first_error.lock().ok().and_then(|e| e.clone()),
        interrupted: stop.load(Ordering::Relaxed),
    };
    print(&report, json, out)?;
    if completed == 0 && errors > 0 {
        anyhow::bail!("every request failed");
    }
    Ok(())
}

/// One client: one request at a time until the plan is done.
async fn client_loop(
    client: Client,
    id: u32,
    shared: Arc<Shared>,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut gets = report::histogram();
    let mut puts = report::histogram();
    let mut rng = SplitMix64::seeded(u64::from(id));
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        match shared.plan {
            Plan::Requests(total) if n >= total => break,
            Plan::Duration(d) if shared.start.elapsed() >= d => break,
            _ => {}
        }
        let (put, key) = match shared.mix {
            Mix::Put => (true, shared.data.key(n)),
            Mix::Get => (false, shared.data.key(rng.next())),
            Mix::Mixed => {
                let r = rng.next();
                (r % 100 < 10, shared.data.key(r / 100))
            }
        };
        let sent = Instant::now();
        let result = if put {
            client.put(&key, shared.value.clone()).await.map(drop)
        } else {
            client.get(&key).await.map(drop)
        };
        let us = micros(sent.elapsed());
        match result {
            Ok(()) if put => report::record(&mut puts, us),
            Ok(()) => report::record(&mut gets, us),
            Err(e) => shared.failed(&e),
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    (gets, puts)
}

fn print(report: &LoadReport, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: {} clients, {}-byte values over {} keys{}",
        report.workload,
        report.clients,
        report.value_size,
        report.keys,
        if report.workload == "mixed" {
            " (90% get, 10% put)"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "  throughput   {:.1} req/s ({} requests in {:.3} s, {} errors)",
        report.throughput_rps, report.completed, report.elapsed_s, report.errors
    )?;
    writeln!(out, "  latency ms   {}", report.latency_ms.line())?;
    for (name, op) in [("get", &report.get), ("put", &report.put)] {
        if let Some(op) = op {
            writeln!(
                out,
                "    {name} ms     {} ({} requests)",
                op.latency_ms.line(),
                op.requests
            )?;
        }
    }
    if let Some(e) = &report.first_error {
        writeln!(out, "  first error  {e}")?;
    }
    if report.interrupted {
        writeln!(out, "  (stopped early)")?;
    }
    Ok(())
}

/// A small, fast pseudo-random generator (SplitMix64): uniform enough for keys.
pub(super) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator of its own for `seed` (e.g. a client's number).
    pub(super) fn seeded(seed: u64) -> SplitMix64 {
        SplitMix64(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9))
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
