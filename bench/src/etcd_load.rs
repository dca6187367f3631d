//! A closed-loop load on etcd's v3 gRPC API, the same for kvstore-server's etcd API
//! (`--etcd-api-listen`) and for etcd itself: `--clients` loops, each on its own
//! connection, each sending its next request when the last is answered, for
//! `--duration` seconds after a warm-up that is not counted. Each answered request's
//! latency goes into a histogram; at the end one line of JSON on stdout:
//!
//! ```text
//! {"op":"put","clients":64,"requests":51234,"errors":0,"rps":5123.4,"p50_ms":11.9,"p99_ms":25.1,"max_ms":40.2,"server_cpu_us":66.1,"load_cpu_us":41.0}
//! ```
//!
//! `server_cpu_us` (with `--server-pid`) and `load_cpu_us` are the CPU time the
//! server and this tool used in the counted seconds, per request answered: on a
//! machine whose cores both share, what bounds the throughput.
//!
//! The operations, on the keys `PREFIX000000` to `PREFIX{keys - 1}`:
//! - `put`: a plain put (no lease, no prev_kv) of a random key with a
//!   `--value-bytes` value;
//! - `range`: a read of one random key, linearizable (etcd-client's default, as
//!   etcdctl's), from a key space filled before the clock starts.
//!
//! ```sh
//! cargo run --release -p kvstore-bench --bin etcd_load -- \
//!     --endpoint http://127.0.0.1:2379 --op range --clients 64 --duration 10
//! ETCD_LOAD_OP=put ETCD_LOAD_CLIENTS=16 cargo run --release -p kvstore-bench --bin etcd_load
//! ```
//!
//! Each flag has a twin in the environment, `ETCD_LOAD_` and its name (`--help`
//! lists them).
//!
//! Each loop has a `Client` of its own, that is a TCP connection of its own: an
//! etcd-client `Client` multiplexes its calls over one HTTP/2 connection behind a
//! queue and one connection task, so loops sharing one would measure that queue
//! and that connection (and one server-side connection task) as much as the
//! server. One connection per loop is what many processes of an application do,
//! what `etcdctl check perf` does, and what the wrk loads of `bench/` do with
//! their connections, so `--clients 64` compares with them.
//!
//! `bench/etcd-api.sh` runs it against kvstore-server and a one-member etcd.
//! Failed requests are counted in `errors` (the first one's message goes to
//! stderr), not in the latencies; the run fails when no request succeeded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use etcd_client::{Client, ConnectOptions, Txn, TxnOp};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Keys a fill transaction puts (etcd's and kvstore's `--max-txn-ops` is 128).
const FILL_BATCH: usize = 100;
/// The highest latency the histogram holds, in microseconds; above, it saturates.
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long a loop waits after a failed request before its next one, so that a
/// refused connection does not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Put,
    Range,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Range => "range",
        }
    }
}

/// A closed-loop load on etcd's v3 API: one line of JSON with req/s and latencies.
#[derive(Debug, Parser)]
#[command(name = "etcd_load")]
struct Args {
    /// The etcd API to load (http://HOST:PORT).
    #[arg(
        long,
        env = "ETCD_LOAD_ENDPOINT",
        default_value = "http://127.0.0.1:2379"
    )]
    endpoint: String,
    /// What each request does.
    #[arg(long, env = "ETCD_LOAD_OP", value_enum, default_value_t = Op::Put)]
    op: Op,
    /// Concurrent loops, each on a connection of its own.
    #[arg(long, env = "ETCD_LOAD_CLIENTS", default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    clients: u32,
    /// Seconds counted, after the warm-up.
    #[arg(long, env = "ETCD_LOAD_DURATION", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Seconds of load before the counted ones.
    #[arg(long, env = "ETCD_LOAD_WARM_UP", default_value_t = 1)]
    warm_up: u64,
    /// Bytes of each value put (and of the values a range reads).
    #[arg(long, env = "ETCD_LOAD_VALUE_BYTES", default_value_t = 100)]
    value_bytes: usize,
    /// Keys of the key space.
    #[arg(long, env = "ETCD_LOAD_KEYS", default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// The prefix of every key.
    #[arg(long, env = "ETCD_LOAD_PREFIX", default_value = "etcd-load/")]
    prefix: String,
    /// Seconds a request may take before it counts as failed.
    #[arg(long, env = "ETCD_LOAD_TIMEOUT", default_value_t = 10)]
    timeout: u64,
    /// The server's process id (on this machine): its CPU time in the counted
    /// seconds is reported per request, as `server_cpu_us` (Linux).
    #[arg(long, env = "ETCD_LOAD_SERVER_PID")]
    server_pid: Option<u32>,
}

/// Linux's clock ticks a second in `/proc/PID/stat` (`USER_HZ`, 100 on every
/// architecture it runs on).
const TICKS_PER_SECOND: u64 = 100;

/// The CPU time (user and system) process `pid` has used, in microseconds, from
/// `/proc/PID/stat`; `None` where there is no such file.
fn cpu_us(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 14th and 15th of the line, the 12th and 13th
    // of these.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ').skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    let (user, system) = (ticks()?, ticks()?);
    Some((user + system) * 1_000_000 / TICKS_PER_SECOND)
}

/// The CPU time this process and the server used in `[from, until)`.
async fn cpu_in_window(server: Option<String>, from: Instant, until: Instant) -> [Option<u64>; 2] {
    let sample = || [cpu_us("self"), server.as_deref().and_then(cpu_us)];
    tokio::time::sleep_until(from.into()).await;
    let before = sample();
    tokio::time::sleep_until(until.into()).await;
    let after = sample();
    [0, 1].map(|i| Some(after[i]?.saturating_sub(before[i]?)))
}

/// What one loop measured.
struct Tally {
    latencies_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Result<Tally> {
        Ok(Tally {
            latencies_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| anyhow!("histogram: {e}"))?,
            errors: 0,
            first_error: None,
        })
    }

    fn add(&mut self, other: Tally) -> Result<()> {
        self.latencies_us
            .add(&other.latencies_us)
            .map_err(|e| anyhow!("histogram: {e}"))?;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// The shared parts of every loop.
struct Plan {
    op: Op,
    keys: Vec<String>,
    value: Vec<u8>,
    /// Requests sent from then on are counted.
    counted_from: Instant,
    /// No request is sent from then on.
    until: Instant,
}

/// One request; `Err` with its message when it failed.
async fn request(client: &mut Client, plan: &Plan, key: &str) -> Result<(), String> {
    match plan.op {
        Op::Put => client
            .put(key, plan.value.as_slice(), None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Op::Range => match client.get(key, None).await {
            Ok(answer) if answer.kvs().is_empty() => Err(format!("{key} not found")),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// One closed loop until `plan.until`: the latency of each request sent in the
/// counted window and answered before its end.
async fn run_loop(mut client: Client, plan: Arc<Plan>, seed: u64) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut rng = SmallRng::seed_from_u64(seed);
    loop {
        let key = &plan.keys[rng.random_range(0..plan.keys.len())];
        let start = Instant::now();
        let outcome = request(&mut client, &plan, key).await;
        let end = Instant::now();
        if end >= plan.until {
            return Ok(tally);
        }
        let counted = start >= plan.counted_from;
        match outcome {
            Ok(()) if counted => {
                let us = u64::try_from(end.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                tally.latencies_us.saturating_record(us.max(1));
            }
            Ok(()) => {}
            Err(message) => {
                if counted {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(message);
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}

/// Puts every key, in transactions of [`FILL_BATCH`] puts.
async fn fill(client: &mut Client, keys: &[String], value: &[u8]) -> Result<()> {
    for batch in keys.chunks(FILL_BATCH) {
        let puts: Vec<TxnOp> = batch
            .iter()
            .map(|key| TxnOp::put(key.as_str(), value, None))
            .collect();
        let answer = client
            .txn(Txn::new().and_then(puts))
            .await
            .context("filling the key space")?;
        if !answer.succeeded() {
            bail!("filling the key space: a transaction without compares did not succeed");
        }
    }
    Ok(())
}

/// Microseconds as milliseconds.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let keys: Vec<String> = (0..args.keys)
        .map(|i| format!("{}{i:06}", args.prefix))
        .collect();
    let value = vec![b'v'; args.value_bytes];
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(args.timeout));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(
            Client::connect([args.endpoint.as_str()], Some(options.clone()))
                .await
                .with_context(|| format!("connecting to {}", args.endpoint))?,
        );
    }

    if args.op == Op::Range {
        if let Some(client) = clients.first_mut() {
            fill(client, &keys, &value).await?;
        }
    }
    // Every connection made (the client connects at its first call) and the key
    // space read through each before the clock starts.
    let probes = clients.into_iter().map(|mut client| {
        let key = keys[0].clone();
        let endpoint = args.endpoint.clone();
        tokio::spawn(async move {
            client
                .get(key, None)
                .await
                .map(|_| client)
                .with_context(|| format!("a first read through {endpoint}"))
        })
    });
    let mut clients = Vec::new();
    for probe in probes.collect::<Vec<_>>() {
        clients.push(probe.await??);
    }

    let counted_from = Instant::now() + Duration::from_secs(args.warm_up);
    let duration = Duration::from_secs(args.duration);
    let plan = Arc::new(Plan {
        op: args.op,
        keys,
        value,
        counted_from,
        until: counted_from + duration,
    });
    let cpu = tokio::spawn(cpu_in_window(
        args.server_pid.map(|pid| pid.to_string()),
        plan.counted_from,
        plan.until,
    ));
    let loops: Vec<_> = clients
        .into_iter()
        .zip(0u64..)
        .map(|(client, seed)| tokio::spawn(run_loop(client, plan.clone(), seed)))
        .collect();
    let mut total = Tally::new()?;
    for one in loops {
        total.add(one.await??)?;
    }
    let [load_cpu, server_cpu] = cpu.await?;

    let requests = total.latencies_us.len();
    if let Some(message) = &total.first_error {
        eprintln!(
            "etcd_load: {} of {} requests failed; the first: {message}",
            total.errors,
            requests + total.errors
        );
    }
    if requests == 0 {
        bail!("no request to {} succeeded", args.endpoint);
    }
    // CPU microseconds per request answered in the counted seconds.
    let per_request = |cpu: Option<u64>, name: &str| match cpu {
        Some(us) => format!(",\"{name}\":{:.1}", us as f64 / requests as f64),
        None => String::new(),
    };
    // In this order (a JSON object of serde_json's sorts its keys).
    println!(
        "{{\"op\":\"{}\",\"clients\":{},\"requests\":{requests},\"errors\":{},\"rps\":{:.1},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{}{}{}}}",
        args.op.name(),
        args.clients,
        total.errors,
        requests as f64 / duration.as_secs_f64(),
        ms(total.latencies_us.value_at_quantile(0.50)),
        ms(total.latencies_us.value_at_quantile(0.99)),
        ms(total.latencies_us.max()),
        per_request(server_cpu, "server_cpu_us"),
        per_request(load_cpu, "load_cpu_us"),
    );
    Ok(())
}
