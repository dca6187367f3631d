//! `kv txn` and `kv del --prefix` against a real server, on both engines.

use kvstore_testkit as support;

use assert_cmd::Command;
use rstest::rstest;
use support::{Engine, TestServer};

fn kv(server: &TestServer) -> Command {
    let mut cmd = Command::cargo_bin("kv").expect("kv binary");
    cmd.env("KV_URL", &server.url);
    cmd
}

/// Runs `kv args` with `stdin`: (exit code, stdout, stderr).
fn run(server: &TestServer, args: &[&str], stdin: &str) -> (i32, String, String) {
    let out = kv(server)
        .args(args)
        .write_stdin(stdin)
        .output()
        .expect("kv runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[rstest]
fn txn_from_lines_and_json(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    let (code, out, _) = run(&server, &["put", "acct/1", "100"], "");
    assert_eq!(code, 0, "{out}");
    let (_, health, _) = run(&server, &["-o", "json", "health"], "");
    let health: serde_json::Value = serde_json::from_str(&health).expect("JSON health");
    let revision = health["revision"].as_u64().expect("a revision");

    // Lines: the compare holds, both puts at one revision.
    let lines = format!(
        "mod(\"acct/1\") = \"{revision}\"\n\nput acct/1 90\nput acct/2 \"one ten\"\nget acct/2\n\nget acct/1\n"
    );
    let (code, out, err) = run(&server, &["txn"], &lines);
    assert_eq!(code, 0, "{err}");
    let next = revision + 1;
    assert_eq!(
        out,
        format!("SUCCESS (revision {next})\nOK (revision {next})\nOK (revision {next})\nacct/2\none ten\n")
    );
    // The same again: the compare fails now, the failure branch reads.
    let (code, out, _) = run(&server, &["txn"], &lines);
    assert_eq!(code, 0);
    assert_eq!(out, format!("FAILURE (revision {next})\nacct/1\n90\n"));

    // JSON in, JSON out.
    let json = r#"{"compare": [{"key": "acct/2", "target": "value", "op": "==", "value": "one ten"}],
                   "success": [{"delete": {"key": "acct/2"}}]}"#;
    let (code, out, _) = run(&server, &["-o", "json", "txn"], json);
    assert_eq!(code, 0);
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(answer["succeeded"], true);
    assert_eq!(answer["results"][0]["delete"]["deleted"], 1);

    // Bad input: one line on stderr, exit 2, nothing changed.
    for bad in [
        "mod(\"acct/1\") ~ 1\n",
        "\nput acct/1\n",
        "{\"success\": [{\"put\": {\"key\": \"a\", \"value\": \"1\"}}, {\"put\": {\"key\": \"a\", \"value\": \"2\"}}]}",
    ] {
        let (code, out, err) = run(&server, &["txn"], bad);
        assert_eq!(code, 2, "{bad}: {out} {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let (_, out, _) = run(&server, &["get", "acct/1"], "");
    assert_eq!(out.trim_end(), "90");
}

#[rstest]
fn del_by_prefix(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    for key in ["tmp/a", "tmp/b", "keep"] {
        assert_eq!(run(&server, &["put", key, "v"], "").0, 0);
    }
    let (code, out, err) = run(&server, &["del", "--prefix", "tmp/"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("deleted 2 (revision "), "{out}");
    let (_, out, _) = run(&server, &["ls"], "");
    assert_eq!(out, "keep\n");
    // An empty prefix would delete everything: refused.
    let (code, _, err) = run(&server, &["del", "--prefix", ""], "");
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    let (code, _, _) = run(&server, &["del", "keep", "--prefix", "k"], "");
    assert_eq!(code, 2);
}
