//! `kv bench`: load a server and measure it, in the spirit of `redis-benchmark`
//! and `etcdctl check perf`.
//!
//! - `put`, `get`, `mixed`: `--clients` tasks, each with one request in flight at a
//!   time on its own connection, for `--requests` requests in all or `--duration`
//!   seconds; throughput and latency percentiles (HdrHistogram).
//! - `watch`: `--watchers` WebSocket watches on `--prefix` while a writer puts at
//!   `--rate`; delivered and missed events and commit-to-delivery latency, and the
//!   server's memory per watcher with `--server-pid`.

mod load;
mod report;
mod watch;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Subcommand};
use kvstore_client::Client;

/// `kv bench ...`
#[derive(Debug, Args)]
#[command(after_help = BENCH_HELP)]
pub struct Bench {
    /// What to measure.
    #[command(subcommand)]
    pub workload: Workload,
    /// Threads of the load generator. 1 (one thread, as every other `kv` command)
    /// leaves the other cores to a server on the same machine; more helps only
    /// when the server runs elsewhere.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
}

const BENCH_HELP: &str = "\
The load generator runs beside the server: on one machine they share its cores.
Every client and watcher is a socket; `kv bench` raises its own open-files limit
as far as the hard limit allows, but the server needs one too (`ulimit -n` in the
shell that starts it) for a thousand watchers and more.

Examples:
  kv bench put --clients 64 --requests 20000
  kv bench get --clients 64 --duration 10 -o json
  kv bench mixed --keys 100000 --value-size 1024
  kv bench watch --watchers 1000 --rate 200 --duration 20 --server-pid $(pidof kvstore-server)";

/// The workloads.
#[derive(Debug, Subcommand)]
pub enum Workload {
    /// Puts of --value-size bytes, over the --keys keys in turn.
    Put(LoadArgs),
    /// Gets of random keys among --keys (written first).
    Get(LoadArgs),
    /// 90% gets and 10% puts of random keys among --keys (written first).
    Mixed(LoadArgs),
    /// Watch delivery: --watchers watches on --prefix while one writer puts at --rate.
    ///
    /// Opens --watchers WebSocket watches on --prefix, waits until all are
    /// connected, then puts --rate times a second for --duration seconds. Reports
    /// delivered and missed events (expected: puts × watchers) and the latency from
    /// each put's acknowledgement (floored at 0) and, as an upper bound, from its
    /// sending to its delivery to each watcher; with --server-pid, the server's
    /// memory before, with the watchers idle, after the puts and once they closed.
    Watch(WatchArgs),
}

/// Options of `put`, `get` and `mixed`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Concurrent clients, each on its own connection with one request in flight.
    #[arg(short, long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Requests in all, shared by the clients [default: 10000 without --duration].
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Run for this many seconds instead of a number of requests.
    #[arg(short, long, value_name = "SECS", value_parser = positive_seconds)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Options of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// WebSocket watches to open.
    #[arg(short, long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub watchers: u32,
    /// Puts a second (sent on schedule, without waiting for earlier ones).
    #[arg(short, long, value_name = "PUTS_PER_SEC", default_value_t = 200.0, value_parser = positive_rate)]
    pub rate: f64,
    /// Seconds of puts.
    #[arg(short, long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_seconds)]
    pub duration: f64,
    /// The server's process id, to report its memory (VmRSS in /proc/PID/status)
    /// before the watchers, with them idle, and after the puts.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Keys and values.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Bytes in each value written.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys: PREFIX000000, PREFIX000001, ...
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Prefix of the keys written and read (and watched).
    #[arg(long, default_value = "bench/")]
    pub prefix: String,
}

impl DataArgs {
    /// The key of number `n` (modulo the key space), e.g. `bench/000123`.
    fn key(&self, n: u64) -> String {
        format!("{}{:06}", self.prefix, n % self.keys)
    }

    fn value(&self) -> Vec<u8> {
        // Printable, so watch frames carry it as a JSON string as most values are.
        (0..self.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect()
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err("expected a number of seconds above 0".into()),
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e7 => Ok(v),
        _ => Err("expected a rate above 0".into()),
    }
}

/// The runtime for `kv bench`: one thread (like the other commands) or several.
pub fn runtime_builder(bench: &Bench) -> tokio::runtime::Builder {
    if bench.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(bench.threads));
        builder
    }
}

/// Runs a benchmark and prints its figures (text, or one JSON object).
pub async fn run(
    client: &Client,
    bench: Bench,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // Ctrl-C ends the run early; the figures so far are still printed.
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let result = match bench.workload {
        Workload::Put(args) => load::run(client, load::Mix::Put, args, &stop, json, out).await,
        Workload::Get(args) => load::run(client, load::Mix::Get, args, &stop, json, out).await,
        Workload::Mixed(args) => load::run(client, load::Mix::Mixed, args, &stop, json, out).await,
        Workload::Watch(args) => watch::run(client, args, &stop, json, out).await,
    };
    stopper.abort();
    result
}
