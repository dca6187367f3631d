//! `GET /v1/openapi.json`: an OpenAPI 3 document of every endpoint, generated from
//! the code, which the real server keeps to: Schemathesis (from PyPI) runs every
//! check it has against the server from the document (its coverage phase, then
//! 100 fuzzed cases per operation) and finds nothing: no server error, no answer
//! off the documented schema, no valid request refused nor invalid one taken, and
//! 405 with `Allow` for every method a path does not list.
//!
//! Schemathesis is installed by this test into `target/schemathesis-venv` (python3's
//! venv and pip, the version pinned in `tests/schemathesis/requirements.txt`; kept
//! for later runs). Without python3 or its venv module the test says SKIPPED, except
//! under CI (`CI=true` or `KVSTORE_REQUIRE_PYTHON=1`), where it fails instead.
//! Its settings are in `tests/schemathesis/`: `schemathesis.toml` (412 is a valid
//! request's answer too) and `hooks.py` (the two rules an OpenAPI document cannot
//! state, said there). Knobs: `KVSTORE_SCHEMATHESIS_SECONDS` (a time budget instead,
//! over which fuzzing repeats) and `KVSTORE_SCHEMATHESIS_SEED` (replay a run's seed).

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::TestServer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every endpoint and its methods, as the pages under docs/ document them.
const ENDPOINTS: &[(&str, &[&str])] = &[
    ("/v1/kv/{key}", &["get", "head", "put", "delete"]),
    ("/v1/kv", &["get", "head", "delete"]),
    ("/v1/history/{key}", &["get", "head"]),
    ("/v1/txn", &["post"]),
    ("/v1/leases", &["post"]),
    ("/v1/leases/{id}", &["get", "head", "delete"]),
    ("/v1/leases/{id}/keepalive", &["post"]),
    ("/v1/watch", &["get", "head"]),
    ("/v1/snapshot", &["get", "head", "post"]),
    ("/healthz", &["get", "head"]),
    ("/metrics", &["get", "head"]),
    ("/kv", &["get", "head", "put"]),
    ("/v1/openapi.json", &["get", "head"]),
];

async fn fetch_document(
    url: &str,
    token: Option<&str>,
) -> Result<Value, Box<dyn std::error::Error>> {
    let mut req = reqwest::Client::new().get(format!("{url}/v1/openapi.json"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await?;
    assert_eq!(res.status(), 200);
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    Ok(res.json().await?)
}

/// Every `$ref` in `value`, e.g. `#/components/schemas/Entry`.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The value at a JSON pointer made of a `$ref` (`#/a/b`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_endpoint_and_the_error_body() -> TestResult {
    let server = TestServer::start();
    let doc = fetch_document(&server.url, None).await?;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "not OpenAPI 3: {version:?}");
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    let mut expected = BTreeSet::new();
    for (path, methods) in ENDPOINTS {
        for method in *methods {
            expected.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().ok_or("path item")?.keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert_eq!(documented, expected, "documented operations");

    // Every reference resolves.
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
    }

    // The error body: {"error": {"code", "message", "revision"?}}.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ErrorBody"]["required"],
        serde_json::json!(["error"])
    );
    let detail = &schemas["ErrorDetail"];
    assert_eq!(detail["required"], serde_json::json!(["code", "message"]));
    for field in ["code", "message", "revision"] {
        assert!(
            detail["properties"][field].is_object(),
            "ErrorDetail.{field}"
        );
    }
    // Values are strings, base64 when `encoding` says so.
    let value = &schemas["EncodedValue"];
    assert_eq!(value["properties"]["value"]["type"], "string");
    assert!(value["properties"]["encoding"].is_object());
    assert_eq!(
        schemas["ValueEncoding"]["enum"],
        serde_json::json!(["base64"])
    );
    let mut entry_refs = BTreeSet::new();
    refs(&schemas["Entry"], &mut entry_refs);
    assert!(
        entry_refs.contains("#/components/schemas/EncodedValue"),
        "{entry_refs:?}"
    );

    // Every operation documents its errors with the error body (the legacy
    // not-found answer aside), and 500 everywhere.
    let error_body = serde_json::json!({"$ref": "#/components/schemas/ErrorBody"});
    for (path, item) in paths {
        for (method, op) in item.as_object().ok_or("path item")? {
            let responses = op["responses"].as_object().ok_or("responses")?;
            assert!(responses.contains_key("500"), "{method} {path}: no 500");
            if method == "head" {
                // GET's answers, without their bodies.
                let get = item["get"]["responses"]
                    .as_object()
                    .ok_or("GET responses")?;
                assert!(
                    responses.keys().eq(get.keys()),
                    "{path}: HEAD and GET differ"
                );
                assert!(
                    responses.values().all(|r| r.get("content").is_none()),
                    "HEAD {path}"
                );
                continue;
            }
            for (status, response) in responses {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                if path == "/kv" && status == "404" {
                    continue;
                }
                assert_eq!(
                    response["content"]["application/json"]["schema"], error_body,
                    "{method} {path} {status}"
                );
            }
        }
    }

    // Media types.
    let kv = &paths["/v1/kv/{key}"];
    let got = &kv["get"]["responses"]["200"]["content"];
    assert!(got["application/octet-stream"].is_object(), "{got}");
    assert_eq!(
        got["application/json"]["schema"]["$ref"],
        "#/components/schemas/Entry"
    );
    assert!(kv["put"]["requestBody"]["content"]["application/octet-stream"].is_object());
    let headers: Vec<&str> = kv["put"]["parameters"]
        .as_array()
        .ok_or("parameters")?
        .iter()
        .filter(|p| p["in"] == "header")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(headers, ["If-Match", "If-None-Match"]);
    let list_params: Vec<&str> = paths["/v1/kv"]["get"]["parameters"]
        .as_array()
        .ok_or("parameters")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        list_params,
        ["prefix", "limit", "after", "revision", "continue"]
    );
    assert!(
        paths["/v1/watch"]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object()
    );
    assert!(paths["/v1/watch"]["get"]["responses"]["101"].is_object());
    assert!(
        paths["/v1/snapshot"]["get"]["responses"]["200"]["content"]["application/x-ndjson"]
            .is_object()
    );
    assert!(
        paths["/v1/snapshot"]["post"]["requestBody"]["content"]["application/x-ndjson"].is_object()
    );
    assert!(paths["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"].is_object());

    // The token is optional (bearer), and not asked for health and this document.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], serde_json::json!([{}, {"bearer": []}]));
    assert_eq!(
        paths["/healthz"]["get"]["security"],
        serde_json::json!([{}])
    );
    assert!(paths["/v1/kv/{key}"]["get"]["responses"]["401"].is_object());

    // Every documented operation is served: none answers "no such endpoint".
    let http = reqwest::Client::new();
    for (path, methods) in ENDPOINTS {
        if *path == "/v1/watch" {
            continue; // below, without a stream
        }
        for method in *methods {
            let url = format!("{}{}", server.url, path.replace("{key}", "probe"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())?;
            let res = http.request(method.clone(), &url).send().await?;
            let status = res.status();
            let body = res.text().await?;
            assert!(
                !body.contains("\"code\":\"not_found\"") && status != 405,
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    // A watch is SSE unless it is a WebSocket handshake (or `Accept` refuses SSE).
    let res = http.get(format!("{}/v1/watch", server.url)).send().await?;
    assert_eq!(res.status(), 200, "a plain watch");
    assert_eq!(
        res.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    drop(res);
    let res = http
        .get(format!("{}/v1/watch", server.url))
        .header("accept", "application/json")
        .send()
        .await?;
    assert_eq!(res.status(), 400, "a watch that refuses SSE");
    Ok(())
}

/// The methods `Allow` lists, in its order.
const ALLOW_ORDER: &[&str] = &[
    "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE",
];

/// A method a documented path does not list gets `405 method_not_allowed` (the JSON
/// error body) with `Allow` naming exactly the documented methods, as etcd's and
/// Consul's HTTP APIs answer, before any token check; other paths stay `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_documented_path_does_not_list_gets_405_with_allow() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = support::admin_access_file(dir.path())?;
    let server = TestServer::start_with(&["--access-file", &file]);
    let doc = fetch_document(&server.url, None).await?;
    let http = reqwest::Client::new();
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    let mut answered = 0;
    for (path, item) in paths {
        let listed: Vec<&str> = ALLOW_ORDER
            .iter()
            .copied()
            .filter(|m| item.get(m.to_lowercase()).is_some())
            .collect();
        let allow = listed.join(", ");
        let url = format!(
            "{}{}",
            server.url,
            path.replace("{key}", "some/key").replace("{id}", "1")
        );
        for method in ALLOW_ORDER.iter().chain(&["FOO"]) {
            if listed.contains(method) {
                continue;
            }
            let method = reqwest::Method::from_bytes(method.as_bytes())?;
            let res = http.request(method.clone(), &url).body("x").send().await?;
            assert_eq!(res.status(), 405, "{method} {path}");
            let got = res
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert_eq!(got, allow, "Allow of {method} {path}");
            if method == reqwest::Method::HEAD {
                // An answer to HEAD has no body (on a path that takes no GET).
                answered += 1;
                continue;
            }
            let body: Value = res.json().await?;
            assert_eq!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path}"
            );
            answered += 1;
        }
    }
    assert!(answered > 40, "only {answered} undocumented methods tried");
    for path in ["/nope", "/healthz/", "/v1/kvx", "/v1/%6Bv/x", "/kv/x"] {
        let res = http
            .request(reqwest::Method::TRACE, format!("{}{path}", server.url))
            .send()
            .await?;
        assert_eq!(res.status(), 404, "TRACE {path}");
        assert!(res.headers().get("allow").is_none(), "TRACE {path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_needs_no_token() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = support::admin_access_file(dir.path())?;
    let server = TestServer::start_with(&["--access-file", &file]);
    let without = fetch_document(&server.url, None).await?;
    let with = fetch_document(&server.url, Some(support::ADMIN_TOKEN)).await?;
    assert_eq!(without, with);
    let res = reqwest::get(format!("{}/v1/kv", server.url)).await?;
    assert_eq!(res.status(), 401, "the rest still needs a token");
    Ok(())
}

/// A venv holding the pinned Schemathesis, or `None` (having said the test
/// skipped) without python3 or its venv module.
fn schemathesis_venv() -> Option<PathBuf> {
    let requirements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/requirements.txt");
    support::venv::venv("Schemathesis", "schemathesis-venv", &requirements)
}

/// How long a Schemathesis run may take before the test gives up on it.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn schemathesis_with_every_check_finds_nothing() {
    let Some(venv) = schemathesis_venv() else {
        return;
    };
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    let settings = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args(["-m", "schemathesis.cli", "--config-file"])
        .arg(settings.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/v1/openapi.json", server.url))
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // A watch streams until the client leaves: Schemathesis would wait forever.
        .args(["--exclude-path", "/v1/watch"])
        // A fixed amount of work, not a time budget: with `--max-time` a loaded
        // machine may spend it before reaching every operation.
        .args(["--max-examples", "100"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        // One worker: with two, Hypothesis parses sources on both threads at once
        // and Python 3.11's parser sometimes fails on that ("AST constructor
        // recursion depth mismatch"), a runtime error that fails the run.
        .args(["--workers", "1"])
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", settings.join("hooks.py"))
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(seed) = std::env::var("KVSTORE_SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    if let Ok(seconds) = std::env::var("KVSTORE_SCHEMATHESIS_SECONDS") {
        cmd.args(["--max-time", &seconds]);
    }
    let mut child = cmd.spawn().expect("start schemathesis");
    // Read the output on threads so a full pipe never blocks it.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    // A safety net only: the run takes 20 to 60 s here (2 cores, shared).
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    println!("{output}");
    let status =
        status.unwrap_or_else(|| panic!("schemathesis ran over {RUN_DEADLINE:?}:\n{output}"));
    assert!(
        status.success(),
        "schemathesis found failures ({status}):\n{output}"
    );
    // It tested every operation but the watch (GET and HEAD), in both phases.
    assert!(output.contains("Tested: 26"), "{output}");
    for phase in ["✅ Coverage", "✅ Fuzzing"] {
        assert!(output.contains(phase), "no {phase:?}:\n{output}");
    }
    #[cfg(target_os = "linux")]
    assert!(
        Path::new(&format!("/proc/{}", server.pid())).exists(),
        "the server died"
    );
}
