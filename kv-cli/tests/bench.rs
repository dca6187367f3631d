//! `kv bench` against a real server: the JSON figures are there and add up.
//! No assertion on speed: these run on busy CI machines.

use kvstore_testkit as support;

use assert_cmd::Command;
use serde_json::Value;
use support::TestServer;

/// The servers here run in this test process, so the soak's count of the server's
/// open files counts every test's: the soak runs alone (write), the others beside
/// each other (read).
static PROCESS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    PROCESS.read().unwrap_or_else(|e| e.into_inner())
}

/// Runs `kv bench ARGS -o json` and returns its one JSON object.
fn bench(server: &TestServer, args: &[&str]) -> Value {
    let out = Command::cargo_bin("kv")
        .expect("kv binary")
        .env("KV_URL", &server.url)
        .arg("bench")
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("kv runs");
    assert!(out.status.success(), "kv bench {args:?} failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    serde_json::from_str(&stdout).expect("JSON")
}

fn u(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

fn assert_latency(report: &Value, field: &str) {
    let latency = &report[field];
    let get = |p: &str| {
        latency[p]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}.{p} in {report}"))
    };
    let (p50, p90, p99, max) = (get("p50"), get("p90"), get("p99"), get("max"));
    assert!(
        0.0 <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{field}: {latency}"
    );
}

#[test]
fn put_get_and_mixed_report_their_figures() {
    let _process = beside_others();
    let server = TestServer::start();
    let put = bench(
        &server,
        &["put", "--requests", "200", "--clients", "4", "--keys", "50"],
    );
    assert_eq!(put["workload"], "put");
    assert_eq!(u(&put, "requests"), 200);
    assert_eq!(u(&put, "errors"), 0);
    assert_eq!(u(&put, "completed"), 200);
    assert_eq!(u(&put, "clients"), 4);
    assert_eq!(u(&put, "value_size"), 100);
    assert!(put["throughput_rps"].as_f64().expect("throughput") > 0.0);
    assert_latency(&put, "latency_ms");

    let get = bench(
        &server,
        &[
            "get",
            "--requests",
            "300",
            "--keys",
            "20",
            "--value-size",
            "10",
        ],
    );
    assert_eq!(get["workload"], "get");
    assert_eq!(u(&get, "completed"), 300);
    assert_eq!(u(&get, "errors"), 0);
    assert_latency(&get, "latency_ms");

    let mixed = bench(&server, &["mixed", "--requests", "300", "--keys", "20"]);
    assert_eq!(u(&mixed, "completed"), 300);
    assert_eq!(
        u(&mixed["get"], "requests") + u(&mixed["put"], "requests"),
        300,
        "{mixed}"
    );
    assert_latency(&mixed["get"], "latency_ms");
    assert_latency(&mixed["put"], "latency_ms");
}

#[test]
fn duration_runs_stop_by_themselves() {
    let _process = beside_others();
    let server = TestServer::start();
    let put = bench(&server, &["put", "--duration", "0.5", "--clients", "2"]);
    assert!(u(&put, "completed") > 0, "{put}");
    assert_eq!(u(&put, "errors"), 0);
}

#[test]
fn watch_delivers_every_put_to_every_watcher() {
    let _process = beside_others();
    let server = TestServer::start();
    let pid = server.pid().to_string();
    let watch = bench(
        &server,
        &[
            "watch",
            "--watchers",
            "5",
            "--rate",
            "50",
            "--duration",
            "1",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(watch["workload"], "watch");
    let puts = u(&watch, "puts");
    assert_eq!(u(&watch, "put_errors"), 0);
    assert_eq!(puts, 50);
    assert_eq!(u(&watch, "expected"), puts * 5);
    assert_eq!(u(&watch, "delivered") + u(&watch, "missed"), puts * 5);
    assert_eq!(u(&watch, "missed"), 0, "{watch}");
    assert_eq!(u(&watch, "duplicates"), 0, "{watch}");
    assert_latency(&watch, "delivery_latency_ms");
    assert_latency(&watch, "delivery_latency_from_send_ms");
    assert_latency(&watch, "put_latency_ms");
    let rss = &watch["server_rss_kib"];
    for field in ["before", "idle", "after", "closed"] {
        assert!(u(rss, field) > 0, "{field} in {watch}");
    }
    assert!(rss["per_watcher"].as_f64().is_some(), "{watch}");
}

#[test]
fn soak_samples_the_server_and_gives_its_files_back() {
    let _alone = PROCESS.write().unwrap_or_else(|e| e.into_inner());
    let server = TestServer::start();
    let pid = server.pid().to_string();
    let soak = bench(
        &server,
        &[
            "soak",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--sample-every",
            "0.5",
            "--server-pid",
            &pid,
            "--keys",
            "100",
            "--clients",
            "2",
            "--watchers",
            "2",
            "--slow-watchers",
            "1",
            "--slow-pause",
            "1",
            "--churn",
            "10",
            // Three seconds of a debug build say nothing of growth: only the
            // figures, the errors and the files given back are checked here.
            "--max-growth-mb",
            "1000",
        ],
    );
    assert_eq!(soak["workload"], "soak");
    assert_eq!(u(&soak, "errors"), 0, "{soak}");
    let answered: u64 = ["gets", "puts", "deletes", "lists", "absent"]
        .iter()
        .map(|f| u(&soak, f))
        .sum();
    assert_eq!(answered, u(&soak, "requests"), "{soak}");
    assert!(u(&soak, "puts") > 0 && u(&soak, "lists") > 0, "{soak}");
    assert!(u(&soak, "watches_opened") >= 3, "{soak}");
    assert!(u(&soak, "connections_churned") > 0, "{soak}");
    let samples = soak["samples"].as_array().expect("samples");
    assert!(samples.len() >= 4, "{soak}");
    assert!(samples
        .iter()
        .all(|s| u(s, "rss_kib") > 0 && u(s, "fds") > 0));
    let memory = &soak["memory"];
    assert!(u(memory, "fds_max") > u(memory, "fds_start"), "{soak}");
    assert!(u(memory, "fds_after") <= u(memory, "fds_start"), "{soak}");
    assert!(
        u(memory, "threads_after") <= u(memory, "threads_start"),
        "{soak}"
    );
    assert_eq!(soak["failures"].as_array().map(Vec::len), Some(0), "{soak}");
}

#[test]
fn bench_refuses_bad_options() {
    let _process = beside_others();
    let out = Command::cargo_bin("kv")
        .expect("kv binary")
        .args([
            "bench",
            "put",
            "--requests",
            "10",
            "--duration",
            "1",
            "--url",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("kv runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = Command::cargo_bin("kv")
        .expect("kv binary")
        .args(["bench", "get", "--url", "http://127.0.0.1:9"])
        .output()
        .expect("kv runs");
    assert_eq!(out.status.code(), Some(3), "unreachable server: {out:?}");
}
