//! Access control: 401 without a known token, 403 outside a token's prefixes,
//! watches filtered by what the token may read.

use crate::support;

use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::{Client, Error};
use reqwest::{Method, StatusCode};
use rstest::rstest;
use support::{Engine, TestServer, EMPTY_REVISION};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(10);

/// sha256("reader-token"), so the file carries no secret for the reader.
const ACCESS: &str = r#"
[roles.app-reader]
read = ["app/"]

[roles.app-writer]
read = [""]
write = ["app/"]

[roles.admin]
read = [""]
write = [""]

[[tokens]]
name = "reader"
role = "app-reader"
sha256 = "4b0e4ef8ff5e3c2e69a1a3bf7aafb7cd2e52c6de21c50a2fd5a1fa0e0cda7c7d"

[[tokens]]
name = "writer"
role = "app-writer"
token = "writer-token"

[[tokens]]
name = "admin"
role = "admin"
token = "admin-token"
"#;

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

struct Secured {
    server: TestServer,
    _dir: tempfile::TempDir,
}

/// A server on `engine` with the access file above; `None` when that engine
/// cannot run here.
fn secured_server(engine: Engine) -> Result<Option<Secured>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("access.toml");
    // Keep the hash in the file honest: it is computed here, not trusted.
    let text = ACCESS.replace(
        "4b0e4ef8ff5e3c2e69a1a3bf7aafb7cd2e52c6de21c50a2fd5a1fa0e0cda7c7d",
        &sha256_hex("reader-token"),
    );
    std::fs::write(&file, text)?;
    let file = file.to_string_lossy().into_owned();
    let Some(server) = support::serve(engine, &["--access-file", &file]) else {
        return Ok(None);
    };
    Ok(Some(Secured { server, _dir: dir }))
}

/// Sends a request with an optional token; (status, error code).
async fn call(
    url: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), Box<dyn std::error::Error>> {
    let mut req = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .body(body.to_string());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await?;
    let status = res.status();
    let code = if status.is_success() {
        String::new()
    } else {
        let body: serde_json::Value = res.json().await?;
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    Ok((status, code))
}

/// Method, path, body and headers of a request.
type Call = (
    Method,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);
/// Method, path, token, body and headers of a request.
type CallAs = (
    Method,
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

const SSE: (&str, &str) = ("accept", "text/event-stream");
const JSON: (&str, &str) = ("content-type", "application/json");

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_a_known_token(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(secured) = secured_server(engine)? else {
        return Ok(());
    };
    let url = &secured.server.url;
    let endpoints: Vec<Call> = vec![
        (Method::GET, "/v1/kv/app/x", "", vec![]),
        (Method::PUT, "/v1/kv/app/x", "v", vec![]),
        (Method::DELETE, "/v1/kv/app/x", "", vec![]),
        (Method::GET, "/v1/kv?prefix=app/", "", vec![]),
        (Method::GET, "/v1/watch?prefix=app/", "", vec![SSE]),
        (Method::GET, "/v1/snapshot", "", vec![]),
        (Method::POST, "/v1/snapshot", "", vec![]),
        (Method::GET, "/kv?key=app/x", "", vec![]),
        (Method::GET, "/metrics", "", vec![]),
        (
            Method::PUT,
            "/kv",
            r#"{"key": "app/x", "value": "v"}"#,
            vec![JSON],
        ),
    ];
    for (method, path, body, headers) in &endpoints {
        for token in [None, Some("not-a-token")] {
            let (status, code) = call(url, method.clone(), path, token, body, headers).await?;
            assert_eq!(
                (status, code.as_str()),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{method} {path} with {token:?}"
            );
        }
    }
    // The WebSocket upgrade is refused the same way.
    let ws = format!("{}/v1/watch", url.replacen("http", "ws", 1));
    match tokio_tungstenite::connect_async(ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // Health stays open.
    let (status, _) = call(url, Method::GET, "/healthz", None, "", &[]).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_act_only_within_their_prefixes(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(secured) = secured_server(engine)? else {
        return Ok(());
    };
    let url = &secured.server.url;
    let admin = Client::new(url)?.with_token("admin-token")?;
    admin.put("app/x", "1").await?;
    admin.put("other/y", "2").await?;

    let forbidden: Vec<CallAs> = vec![
        // The reader reads app/ only, and writes nothing.
        (Method::GET, "/v1/kv/other/y", "reader-token", "", vec![]),
        (Method::PUT, "/v1/kv/app/x", "reader-token", "v", vec![]),
        (Method::DELETE, "/v1/kv/app/x", "reader-token", "", vec![]),
        (
            Method::GET,
            "/v1/kv?prefix=other/",
            "reader-token",
            "",
            vec![],
        ),
        (
            Method::GET,
            "/v1/watch?prefix=other/",
            "reader-token",
            "",
            vec![SSE],
        ),
        (
            Method::GET,
            "/v1/snapshot?prefix=other/",
            "reader-token",
            "",
            vec![],
        ),
        (Method::GET, "/kv?key=other/y", "reader-token", "", vec![]),
        (
            Method::PUT,
            "/kv",
            "reader-token",
            r#"{"key": "app/x", "value": "v"}"#,
            vec![JSON],
        ),
        // The writer writes app/ only; a restore needs a token that writes everything.
        (Method::PUT, "/v1/kv/other/y", "writer-token", "v", vec![]),
        (Method::DELETE, "/v1/kv/other/y", "writer-token", "", vec![]),
        (Method::POST, "/v1/snapshot", "writer-token", "", vec![]),
    ];
    for (method, path, token, body, headers) in &forbidden {
        let (status, code) = call(url, method.clone(), path, Some(token), body, headers).await?;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path} as {token}"
        );
    }

    let reader = Client::new(url)?.with_token("reader-token")?;
    assert_eq!(reader.get("app/x").await?, b"1");
    assert!(matches!(
        reader.get("other/y").await,
        Err(Error::Forbidden { .. })
    ));
    assert!(matches!(
        reader.put("app/x", "2").await,
        Err(Error::Forbidden { .. })
    ));
    // Listing everything shows only what the reader may read.
    let keys: Vec<String> = reader
        .list_all("")
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["app/x"]);

    let writer = Client::new(url)?.with_token("writer-token")?;
    writer.put("app/x", "3").await?;
    assert_eq!(writer.get("other/y").await?, b"2");
    assert!(matches!(
        writer.put("other/y", "3").await,
        Err(Error::Forbidden { .. })
    ));
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_only_readable_keys(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(secured) = secured_server(engine)? else {
        return Ok(());
    };
    let url = &secured.server.url;
    let admin = Client::new(url)?.with_token("admin-token")?;
    let reader = Client::new(url)?.with_token("reader-token")?;
    let mut watch = Box::pin(reader.watch_with(kvstore_client::WatchOptions {
        start_revision: Some(1),
        ..Default::default()
    }));
    admin.put("other/secret", "s").await?;
    admin.put("app/a", "1").await?;
    admin.put("other/secret", "t").await?;
    admin.put("app/b", "2").await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(DEADLINE, watch.next())
            .await?
            .ok_or("watch ended")??
        {
            kvstore_client::Update::Event(event) => seen.push((event.key, event.revision)),
            _ => continue,
        }
    }
    // The second and fourth writes of the store.
    assert_eq!(
        seen,
        [
            ("app/a".to_string(), EMPTY_REVISION + 2),
            ("app/b".to_string(), EMPTY_REVISION + 4)
        ]
    );

    // A watch on a prefix the token cannot read at all is refused, and the SDK
    // ends the stream with the error instead of retrying.
    let mut refused = Box::pin(reader.watch("other/"));
    match tokio::time::timeout(DEADLINE, refused.next()).await? {
        Some(Err(Error::Forbidden { .. })) => {}
        other => panic!("expected forbidden, got {other:?}"),
    }
    Ok(())
}

#[rstest]
fn cli_takes_a_token_and_exits_4_when_denied(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(secured) = secured_server(engine)? else {
        return Ok(());
    };
    let kv = support::kv_bin();
    let run = |token: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(&kv);
        cmd.args(args)
            .env("KV_URL", &secured.server.url)
            .env_remove("KV_TOKEN");
        if let Some(token) = token {
            cmd.env("KV_TOKEN", token);
        }
        cmd.output()
    };
    let out = run(Some("admin-token"), &["put", "app/k", "v"])?;
    assert!(out.status.success(), "{out:?}");
    let out = run(None, &["get", "app/k"])?;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("kv: unauthorized"));
    let out = run(Some("reader-token"), &["put", "app/k", "w"])?;
    assert_eq!(out.status.code(), Some(4));
    let out = run(Some("reader-token"), &["get", "app/k"])?;
    assert_eq!(out.stdout, b"v");
    Ok(())
}

/// On one engine: the server stops on its access file before it opens any store.
#[test]
fn bad_access_files_stop_the_server_with_one_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("access.toml");
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"x\"\nrole = \"missing\"\ntoken = \"t\"\n",
    )?;
    let out = std::process::Command::new(support::server_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--access-file")
        .arg(&file)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown role \"missing\""), "{stderr}");
    Ok(())
}

/// A token's view of a listing: every page's entries and `next`, with the page's
/// raw JSON, followed from the first page to the last.
async fn pages_as(
    url: &str,
    token: &str,
    prefix: &str,
    limit: usize,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        // The keys here need no escaping in a query string.
        let mut query = format!("prefix={prefix}&limit={limit}");
        if let Some(after) = &after {
            query.push_str(&format!("&after={after}"));
        }
        let res = reqwest::Client::new()
            .get(format!("{url}/v1/kv?{query}"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(res.status(), StatusCode::OK);
        let mut page: serde_json::Value = res.json().await?;
        // The store's revisions are on every answer and say nothing of a key.
        let next = page["next"].as_str().map(str::to_string);
        let object = page.as_object_mut().ok_or("a page object")?;
        object.remove("revision");
        object.remove("current_revision");
        // The continue token is the page's revision and its `next`, a readable key.
        if let Some(token) = object.remove("continue") {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.as_str().ok_or("a token")?)?;
            assert_eq!(
                bytes
                    .get(8..)
                    .map(|key| String::from_utf8_lossy(key).into_owned()),
                next,
                "the continue token names another key than next"
            );
        }
        after = next;
        pages.push(page);
        if after.is_none() {
            return Ok(pages);
        }
        assert!(pages.len() < 100, "paging does not end: {pages:?}");
    }
}

/// A list answers the same pages to a token whether or not keys it may not read
/// exist: `limit` counts readable keys, and `next` never names another.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_tell_nothing_of_unreadable_keys(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(secured) = secured_server(engine)? else {
        return Ok(());
    };
    let url = &secured.server.url;
    let admin = Client::new(url)?.with_token("admin-token")?;
    for key in ["app/a", "app/b", "app/c"] {
        admin.put(key, "v").await?;
    }
    let mut views = Vec::new();
    for hidden in [
        &[][..],
        &[
            "aaa/hidden",
            "apz/hidden",
            "app",
            "other/secret",
            "zzz/hidden",
        ],
    ] {
        for key in hidden {
            admin.put(key, "secret").await?;
        }
        let mut view = Vec::new();
        for (prefix, limit) in [("", 1), ("", 2), ("a", 1), ("app/", 2), ("", 100)] {
            view.push(pages_as(url, "reader-token", prefix, limit).await?);
        }
        views.push(view);
    }
    assert_eq!(
        views[0], views[1],
        "the reader's pages changed with unreadable keys"
    );
    let first = &views[1][0];
    assert_eq!(
        first,
        &vec![
            serde_json::json!({"entries": [entry(first, 0, "app/a")], "next": "app/a"}),
            serde_json::json!({"entries": [entry(first, 1, "app/b")], "next": "app/b"}),
            serde_json::json!({"entries": [entry(first, 2, "app/c")]}),
        ]
    );
    for view in &views[1] {
        let text = serde_json::to_string(view)?;
        assert!(
            !text.contains("hidden") && !text.contains("secret"),
            "{text}"
        );
    }

    // A transaction's list reads a whole prefix: refused unless the token may read
    // all of it, so neither its entries nor its `more` tell of other keys.
    let txn = |prefix: &str| {
        format!(r#"{{"success": [{{"list": {{"prefix": "{prefix}", "limit": 1}}}}]}}"#)
    };
    let json = [("content-type", "application/json")];
    for prefix in ["", "a", "ap"] {
        let (status, code) = call(
            url,
            Method::POST,
            "/v1/txn",
            Some("reader-token"),
            &txn(prefix),
            &json,
        )
        .await?;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{prefix:?}"
        );
    }
    let listed: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v1/txn"))
        .bearer_auth("reader-token")
        .header("content-type", "application/json")
        .body(txn("app/"))
        .send()
        .await?
        .json()
        .await?;
    let result = &listed["results"][0]["list"];
    assert_eq!(result["entries"][0]["key"], "app/a");
    assert_eq!(result["more"], true);
    Ok(())
}

/// Entry `i` of the first page of `pages`, checked to be `key`.
fn entry(pages: &[serde_json::Value], i: usize, key: &str) -> serde_json::Value {
    let entry = pages[i]["entries"][0].clone();
    assert_eq!(entry["key"], key);
    entry
}

/// The console's cookie works only from the server's own pages; bearer tokens in
/// any case of the scheme; one `Authorization` header; what is public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_stay_on_their_origin_and_headers_are_read_strictly() -> TestResult {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let Some(secured) = secured_server(Engine::Sled)? else {
        return Ok(());
    };
    let url = &secured.server.url;
    let own = url.trim_end_matches('/').to_string();
    Client::new(url)?
        .with_token("admin-token")?
        .put("app/x", "1")
        .await?;
    let cookie = ("cookie", "kv_token=reader%2Dtoken");

    // A WebSocket handshake with the cookie from another origin: 403 and why.
    let ws = format!(
        "{}/v1/watch?prefix=app/&initial=true",
        own.replacen("http", "ws", 1)
    );
    for (origin, allowed) in [
        ("http://127.0.0.1:1", false),
        ("null", false),
        (own.as_str(), true),
    ] {
        let mut request = ws.as_str().into_client_request()?;
        request.headers_mut().insert("cookie", cookie.1.parse()?);
        request.headers_mut().insert("origin", origin.parse()?);
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) if allowed => {}
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) if !allowed => {
                assert_eq!(res.status().as_u16(), 403, "{origin}");
                let body =
                    String::from_utf8_lossy(res.body().as_deref().unwrap_or_default()).into_owned();
                assert!(
                    body.contains("forbidden") && body.contains(origin),
                    "{body}"
                );
            }
            other => panic!("origin {origin}: {other:?}"),
        }
    }
    // The same for SSE and a plain read; without an Origin (a same-origin GET in a
    // browser, or a program) the cookie still works.
    for (path, accept) in [
        ("/v1/watch?prefix=app/", "text/event-stream"),
        ("/v1/kv/app/x", "*/*"),
    ] {
        let (status, code) = call(
            url,
            Method::GET,
            path,
            None,
            "",
            &[cookie, ("origin", "http://evil.test"), ("accept", accept)],
        )
        .await?;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path}"
        );
        let res = reqwest::Client::new()
            .get(format!("{url}{path}"))
            .header(cookie.0, cookie.1)
            .header("accept", accept)
            .send()
            .await?;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }

    // The scheme of Authorization in any case; two headers are refused.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} reader-token");
        let (status, _) = call(
            url,
            Method::GET,
            "/v1/kv/app/x",
            None,
            "",
            &[("authorization", &auth)],
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{scheme}");
    }
    let res = reqwest::Client::new()
        .get(format!("{url}/v1/kv/app/x"))
        .header("authorization", "Bearer admin-token")
        .header("authorization", "Bearer reader-token")
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await?;
    assert_eq!(body["error"]["code"], "invalid_request");

    // The API's description is public; the store-wide metrics need a token that
    // may read every key.
    let (status, _) = call(url, Method::GET, "/v1/openapi.json", None, "", &[]).await?;
    assert_eq!(status, StatusCode::OK);
    for (token, expected) in [
        ("reader-token", StatusCode::FORBIDDEN),
        ("writer-token", StatusCode::OK),
        ("admin-token", StatusCode::OK),
    ] {
        let (status, _) = call(url, Method::GET, "/metrics", Some(token), "", &[]).await?;
        assert_eq!(status, expected, "/metrics as {token}");
    }
    Ok(())
}
