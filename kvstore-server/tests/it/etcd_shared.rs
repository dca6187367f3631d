//! An etcd cluster shared with other programs: their writes, outside our
//! `--etcd-prefix`, move the cluster's revision without a change the replica's copy
//! sees. Reads must still be served from the copy, once etcd confirms it current.
//! And etcd as a user has it installed: on the PATH, found by the test support as a
//! path that scripts can copy.

use crate::support;

use std::time::Duration;

use kvstore_client::Client;
use support::{Backend, Engine, TestServer};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The line the engine logs when its copy cannot show a read's revision.
const FALLBACK: &str = "reading etcd itself";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_on_the_copy_while_other_programs_write_to_the_cluster() -> TestResult {
    let Some(mut backend) = Backend::new(Engine::Etcd) else {
        return Ok(());
    };
    let server = TestServer::on(&backend, &[]);
    let client = Client::new(&server.url)?;
    client.put("app/mode", "blue").await?;
    assert_eq!(client.get("app/mode").await?, b"blue");

    // Another program writes to the cluster, outside our prefix, through etcd's
    // JSON gateway ("other/key" = "x", base64).
    let member = backend.cluster().ok_or("no cluster")?.endpoints()[0].clone();
    let http = reqwest::Client::new();
    for _ in 0..3 {
        http.post(format!("{member}/v3/kv/put"))
            .body(r#"{"key":"b3RoZXIva2V5","value":"eA=="}"#)
            .send()
            .await?
            .error_for_status()?;
        for _ in 0..3 {
            assert_eq!(client.get("app/mode").await?, b"blue");
        }
    }
    // The engine logs the fallback before it answers, so by now the line would be
    // on its way; the short wait only covers the pipe.
    let server = tokio::task::spawn_blocking(move || {
        assert!(
            !server.wait_for_log(FALLBACK, Duration::from_millis(500)),
            "a read after another program's write went to etcd: the copy was never \
             confirmed current"
        );
        server
    })
    .await?;
    drop(server);
    Ok(())
}

/// The test support finds `etcd` on the PATH as an absolute path (a bare name once
/// reached `docker/build-local.sh`, which copies it as a file), whichever way this
/// machine has etcd.
#[test]
fn etcd_on_the_path_is_handed_on_as_an_absolute_path() -> TestResult {
    let etcd = match support::etcd::etcd_bin() {
        Ok(etcd) => etcd,
        Err(why) => {
            support::skip("KVSTORE_REQUIRE_ETCD", "etcd_on_the_path", &why);
            return Ok(());
        }
    };
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&etcd, dir.path().join("etcd"))?;
    let path = std::env::join_paths([dir.path(), std::path::Path::new("/nonexistent")])?;
    let found = support::etcd::on_path(Some(&path)).ok_or("etcd on the PATH not found")?;
    assert_eq!(found, dir.path().join("etcd"));
    assert!(found.is_absolute(), "{}", found.display());
    // So is a name given in KVSTORE_ETCD_BIN.
    let given = support::resolve_program("etcd".as_ref(), Some(&path));
    assert_eq!(given.as_deref(), Some(found.as_path()));
    Ok(())
}
