//! `kv bench`: load a server and measure it, in the spirit of `redis-benchmark`
//! and `etcdctl check perf`.
//!
//! - `put`, `get`, `mixed`: `--clients` tasks, each with one request in flight at a
//!   time on its own connection, for `--requests` requests in all or `--duration`
//!   seconds; throughput and latency percentiles (HdrHistogram).
//! - `watch`: `--watchers` WebSocket watches on `--prefix` while a writer puts at
//!   `--rate`; delivered and missed events and commit-to-delivery latency, and the
//!   server's memory per watcher with `--server-pid`.
//! - `soak`: a long mixed load (requests, watchers coming and going, slow watchers,
//!   connections opened and dropped) while the server's memory, open files and
//!   threads are sampled; fails if any grows after the warm-up.

mod load;
mod report;
mod soak;
mod watch;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Subcommand};
use kvstore_client::Client;

/// Makes a client with the command line's settings and connections of its own.
pub type Connect = Arc<dyn Fn() -> anyhow::Result<Client> + Send + Sync>;

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
  kv bench watch --watchers 1000 --rate 200 --duration 20 --server-pid $(pidof kvstore-server)
  kv bench soak --duration 600 --server-pid $(pidof kvstore-server)";

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
    /// A long mixed load while the server's RSS, open files and threads are sampled.
    ///
    /// For --duration seconds: --clients clients sending gets, puts, deletes and list
    /// pages of random keys among --keys; --watchers watchers that connect, read a
    /// few events and leave, over and over; --slow-watchers watchers that stop
    /// reading for --slow-pause seconds so that the server finds them lagged; and
    /// --churn connections a second opened for one request and dropped. With
    /// --server-pid, samples /proc/PID every --sample-every seconds and prints them
    /// with the growth and slope of RSS after --warmup. Exits 3 on any request
    /// error, on RSS growth after the warm-up of --max-growth-mb or more, or when
    /// open files or threads are not back to their starting counts after the load.
    Soak(SoakArgs),
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

/// Options of `soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Seconds of load.
    #[arg(short, long, value_name = "SECS", default_value_t = 600.0, value_parser = positive_seconds)]
    pub duration: f64,
    /// Seconds at the start whose growth is not counted (caches and buffers fill).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub warmup: f64,
    /// Seconds between samples of the server.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = positive_seconds)]
    pub sample_every: f64,
    /// The server's process id, whose /proc/PID is sampled (the same machine).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Concurrent clients, each with one request in flight.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Requests a second, all clients together [default: as fast as answered].
    #[arg(long, value_name = "REQS_PER_SEC", value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Watchers that connect, read a few events and leave, over and over.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub watchers: u32,
    /// Watchers of every key that stop reading for --slow-pause seconds at a time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub slow_watchers: u32,
    /// Seconds a slow watcher first stops reading: 5 s more after each pause that
    /// did not get it lagged, 5 s less after each that got it dropped as silent
    /// (past the server's --peer-timeout).
    #[arg(long, value_name = "SECS", default_value_t = 20.0, value_parser = positive_seconds)]
    pub slow_pause: f64,
    /// Connections a second opened for one request and dropped (0: none).
    #[arg(long, value_name = "PER_SEC", default_value_t = 20.0)]
    pub churn: f64,
    /// RSS growth after the warm-up, in MB, from which the run fails.
    #[arg(long, value_name = "MB", default_value_t = 5.0)]
    pub max_growth_mb: f64,
    /// The server's --cache-mb: the run also fails if RSS ever exceeds the sizing
    /// rule of docs/performance.md for it, the keys and the watchers (with the server's
    /// default --event-buffer).
    #[arg(long, value_name = "MB")]
    pub cache_mb: Option<u64>,
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

    /// Writes every key once with `value`, `in_flight` puts at a time, so that the
    /// gets of a load find them; stops with an error when `stop` is set.
    async fn populate(
        &self,
        client: &Client,
        value: &[u8],
        in_flight: usize,
        stop: &AtomicBool,
    ) -> anyhow::Result<()> {
        use futures_util::StreamExt;
        let bar = report::progress(self.keys, "populate");
        let mut puts = futures_util::stream::iter(0..self.keys)
            .map(|n| {
                let key = self.key(n);
                let value = value.to_vec();
                async move { client.put(&key, value).await }
            })
            .buffer_unordered(in_flight.max(1));
        while let Some(result) = puts.next().await {
            result?;
            bar.inc(1);
            if stop.load(Ordering::Relaxed) {
                anyhow::bail!("interrupted while writing the keys");
            }
        }
        bar.finish_and_clear();
        Ok(())
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
    connect: Connect,
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
        Workload::Soak(args) => soak::run(client, connect, args, &stop, json, out).await,
    };
    stopper.abort();
    result
}
