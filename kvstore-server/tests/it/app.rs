//! The whole app in-process, through the app factory (`kvstore_server::app`) and
//! `actix_web::test`: no socket, no binary. Also the error table of docs/http-api.md.

use crate::support;

use std::collections::BTreeMap;

use actix_web::http::{header, Method, StatusCode};
use actix_web::test::{self, TestRequest};
use kvstore_core::ErrorCode;
use kvstore_server::AppState;
use rstest::rstest;
use serde_json::Value;
use support::{Backend, Engine, EMPTY_REVISION};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The app's state on a fresh store on `engine` (a `SledStore` or an
/// `EtcdStore`), with what holds the store's data; `None` when that engine
/// cannot run here.
fn state(engine: Engine) -> Result<Option<(AppState, Backend)>, Box<dyn std::error::Error>> {
    let Some(backend) = Backend::new(engine) else {
        return Ok(None);
    };
    let store = backend.open_store()?;
    Ok(Some((AppState::new(store), backend)))
}

#[rstest]
#[actix_web::test]
async fn the_app_serves_reads_writes_lists_and_snapshots_in_process(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    // The backend holds the store's data (or its etcd cluster): kept to the end.
    let Some((state, _backend)) = state(engine)? else {
        return Ok(());
    };
    let app = test::init_service(kvstore_server::app(state)).await;

    let put = TestRequest::put()
        .uri("/v1/kv/app/db")
        .set_payload("postgres://db")
        .to_request();
    let put: Value = test::call_and_read_body_json(&app, put).await;
    let revision = EMPTY_REVISION + 1;
    assert_eq!(put["revision"], revision);

    let get = TestRequest::get().uri("/v1/kv/app%2Fdb").to_request();
    let res = test::call_service(&app, get).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tag = format!("\"{revision}\"");
    assert_eq!(
        res.headers().get(header::ETAG).map(|v| v.as_bytes()),
        Some(tag.as_bytes())
    );
    assert_eq!(test::read_body(res).await, "postgres://db");

    let list = TestRequest::get().uri("/v1/kv?prefix=app/").to_request();
    let list: Value = test::call_and_read_body_json(&app, list).await;
    assert_eq!(list["entries"][0]["key"], "app/db");

    let snapshot = TestRequest::get().uri("/v1/snapshot").to_request();
    let body = test::call_and_read_body(&app, snapshot).await;
    let lines: Vec<Value> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines[0]["revision"], revision);
    assert_eq!(lines[1]["value"], "postgres://db");

    let delete = TestRequest::delete().uri("/v1/kv/app/db").to_request();
    assert_eq!(
        test::call_service(&app, delete).await.status(),
        StatusCode::OK
    );
    let gone = TestRequest::get().uri("/v1/kv/app/db").to_request();
    let res = test::call_service(&app, gone).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["code"], "key_not_found");
    Ok(())
}

/// `If-None-Match` with the tag a client holds: 304 while the key is unchanged,
/// with the entry's headers and no body; 200 with the value once it changed.
#[rstest]
#[actix_web::test]
async fn a_read_with_the_current_tag_answers_304_until_the_key_changes(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    // The backend holds the store's data (or its etcd cluster): kept to the end.
    let Some((state, _backend)) = state(engine)? else {
        return Ok(());
    };
    let app = test::init_service(kvstore_server::app(state)).await;
    let put = TestRequest::put()
        .uri("/v1/kv/k")
        .set_payload("one")
        .to_request();
    assert_eq!(test::call_service(&app, put).await.status(), StatusCode::OK);
    let (first, second) = (EMPTY_REVISION + 1, EMPTY_REVISION + 2);

    let read = |tags: &str| {
        TestRequest::get()
            .uri("/v1/kv/k")
            .insert_header((header::IF_NONE_MATCH, tags.to_string()))
            .to_request()
    };
    let tags_of_first = [
        format!("\"{first}\""),
        format!("W/\"{first}\""),
        format!("\"{}\", \"{first}\"", first + 5),
        "*".to_string(),
    ];
    for tags in &tags_of_first {
        let res = test::call_service(&app, read(tags)).await;
        assert_eq!(
            res.status(),
            StatusCode::NOT_MODIFIED,
            "If-None-Match: {tags}"
        );
        assert_eq!(
            res.headers().get(header::ETAG).map(|v| v.as_bytes()),
            Some(tags_of_first[0].as_bytes())
        );
        assert_eq!(
            res.headers().get("x-kv-mod-revision").map(|v| v.as_bytes()),
            Some(first.to_string().as_bytes())
        );
        assert!(test::read_body(res).await.is_empty(), "a 304 has no body");
    }
    // Another tag, or one that is not ours: the value.
    for tags in [format!("\"{second}\""), "\"one\"".into(), first.to_string()] {
        let res = test::call_service(&app, read(&tags)).await;
        assert_eq!(res.status(), StatusCode::OK, "If-None-Match: {tags}");
        assert_eq!(test::read_body(res).await, "one");
    }

    let put = TestRequest::put()
        .uri("/v1/kv/k")
        .set_payload("two")
        .to_request();
    assert_eq!(test::call_service(&app, put).await.status(), StatusCode::OK);
    let res = test::call_service(&app, read(&tags_of_first[0])).await;
    assert_eq!(res.status(), StatusCode::OK, "changed since");
    assert_eq!(
        res.headers().get(header::ETAG).map(|v| v.as_bytes()),
        Some(format!("\"{second}\"").as_bytes())
    );
    assert_eq!(test::read_body(res).await, "two");
    // An absent key is not "not modified", whatever the tag.
    let res = test::call_service(
        &app,
        TestRequest::get()
            .uri("/v1/kv/absent")
            .insert_header((header::IF_NONE_MATCH, "*"))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    Ok(())
}

/// The status and the JSON body of an answer.
async fn status_and_json<B: actix_web::body::MessageBody>(
    res: actix_web::dev::ServiceResponse<B>,
) -> (StatusCode, Value) {
    let status = res.status();
    (status, test::read_body_json(res).await)
}

/// A write's conditions take exactly the forms the OpenAPI document declares, and
/// `If-Match` beside `If-None-Match: *` (which never both hold) is `412` (RFC 9110
/// §13.2.2 evaluates one, then the other), never a write.
#[rstest]
#[actix_web::test]
async fn write_conditions_take_exactly_the_documented_forms(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((state, _backend)) = state(engine)? else {
        return Ok(());
    };
    let app = test::init_service(kvstore_server::app(state)).await;
    let write = |method: Method, key: &str, headers: &[(&str, &str)]| {
        let mut req = TestRequest::default()
            .method(method)
            .uri(&format!("/v1/kv/{key}"))
            .set_payload("v");
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        req.to_request()
    };
    let put = test::call_service(&app, write(Method::PUT, "k", &[])).await;
    let put: Value = test::read_body_json(put).await;
    let mut revision = put["revision"].as_u64().ok_or("revision")?;

    // The revision quoted (as in the ETag), weak, or bare.
    for form in ["\"{}\"", "W/\"{}\"", "{}"] {
        let tag = form.replace("{}", &revision.to_string());
        let res = test::call_service(&app, write(Method::PUT, "k", &[("if-match", &tag)])).await;
        assert_eq!(res.status(), StatusCode::OK, "If-Match: {tag}");
        let body: Value = test::read_body_json(res).await;
        revision = body["revision"].as_u64().ok_or("revision")?;
    }
    for (name, value) in [
        ("if-match", "\"1"),
        ("if-match", "1\""),
        ("if-match", "W/1"),
        ("if-match", "\"\""),
        ("if-match", "one"),
        ("if-match", "\"1\", \"2\""),
        ("if-match", "-1"),
        ("if-match", "12345678901234567890"),
        ("if-none-match", "0"),
        ("if-none-match", "\"1\""),
        ("if-none-match", "**"),
    ] {
        for method in [Method::PUT, Method::DELETE] {
            let res = test::call_service(&app, write(method.clone(), "k", &[(name, value)])).await;
            let (status, body) = status_and_json(res).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {name}: {value}");
            assert_eq!(
                body["error"]["code"], "invalid_request",
                "{method} {name}: {value}"
            );
        }
    }

    // Both: 412, naming the key's revision (none for an absent key).
    for (key, current) in [("k", Some(revision)), ("absent", None)] {
        for if_match in ["*", "\"1\"", "7"] {
            for method in [Method::PUT, Method::DELETE] {
                let headers = [("if-match", if_match), ("if-none-match", "*")];
                let res = test::call_service(&app, write(method.clone(), key, &headers)).await;
                let (status, body) = status_and_json(res).await;
                let what = format!("{method} {key} If-Match: {if_match}, If-None-Match: *");
                assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{what}");
                assert_eq!(body["error"]["code"], "precondition_failed", "{what}");
                assert_eq!(body["error"]["revision"].as_u64(), current, "{what}");
            }
        }
    }
    // Nothing of it was written.
    let health = test::call_service(&app, TestRequest::get().uri("/healthz").to_request()).await;
    let health: Value = test::read_body_json(health).await;
    assert_eq!(health["revision"], revision);
    let absent =
        test::call_service(&app, TestRequest::get().uri("/v1/kv/absent").to_request()).await;
    assert_eq!(absent.status(), StatusCode::NOT_FOUND);
    Ok(())
}

/// A watch with no `Accept` at all (anything goes) is Server-Sent Events.
#[rstest]
#[actix_web::test]
async fn a_watch_without_accept_is_server_sent_events(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((state, _backend)) = state(engine)? else {
        return Ok(());
    };
    let app = test::init_service(kvstore_server::app(state)).await;
    let res = test::call_service(&app, TestRequest::get().uri("/v1/watch").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    Ok(())
}

/// Every GET route answers HEAD with GET's status and headers.
#[rstest]
#[actix_web::test]
async fn head_answers_like_get_on_every_get_route(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((state, _backend)) = state(engine)? else {
        return Ok(());
    };
    let app = test::init_service(kvstore_server::app(state)).await;
    let put = TestRequest::put()
        .uri("/v1/kv/k")
        .set_payload("v")
        .to_request();
    test::call_service(&app, put).await;
    let routes = [
        "/healthz",
        "/v1/kv/k",
        "/v1/kv/absent",
        "/v1/kv?prefix=",
        "/v1/snapshot",
        "/kv?key=k",
        "/kv?key=absent",
        "/metrics",
        "/v1/openapi.json",
        "/v1/watch",
    ];
    for uri in routes {
        let get = test::call_service(&app, TestRequest::get().uri(uri).to_request()).await;
        let head = test::call_service(
            &app,
            TestRequest::default()
                .method(Method::HEAD)
                .uri(uri)
                .to_request(),
        )
        .await;
        assert_eq!(head.status(), get.status(), "HEAD {uri}");
        for name in [header::CONTENT_TYPE, header::ETAG] {
            assert_eq!(
                head.headers().get(&name),
                get.headers().get(&name),
                "HEAD {uri}: {name}"
            );
        }
    }
    Ok(())
}

/// The error table of docs/http-api.md (under `## Errors`) lists every code of
/// [`ErrorCode`], each with its status, and nothing else.
#[test]
fn the_readme_error_table_is_the_error_code_table() {
    let doc = include_str!("../../../docs/http-api.md");
    let table = doc
        .split("\n## Errors\n")
        .nth(1)
        .and_then(|rest| {
            rest.split("\n\n")
                .find(|block| block.starts_with("| status"))
        })
        .expect("docs/http-api.md has an error table under ## Errors");
    let mut documented = BTreeMap::new();
    for row in table.lines().skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let status: u16 = cells[1].parse().expect("a status");
        for code in cells[2].split(',') {
            let code = code.trim().trim_matches('`');
            assert!(
                documented.insert(code.to_string(), status).is_none(),
                "{code} twice in docs/http-api.md"
            );
        }
    }
    let table: BTreeMap<String, u16> = ErrorCode::ALL
        .iter()
        .map(|code| (code.as_str().to_string(), code.status()))
        .collect();
    assert_eq!(documented, table);
}

/// On the wire, an answer to HEAD carries GET's headers (its `Content-Length`
/// included) and no body: the next answer on the connection follows at once.
#[rstest]
fn head_over_a_real_connection_sends_no_body(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    use std::io::{Read, Write};
    let Some(backend) = Backend::new(engine) else {
        return Ok(());
    };
    let store = backend.open_store()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let options = <kvstore_server::Options as clap::Parser>::try_parse_from(["kvstore-server"])?;
    let server = kvstore_server::spawn(listener, None, store, None, None, options)?;
    let mut put = std::net::TcpStream::connect(server.addr())?;
    put.write_all(
        b"PUT /v1/kv/k HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nvalue",
    )?;
    let mut answer = String::new();
    put.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The HEAD answer's head, then the next request on the same connection. Not
    // pipelined: actix-http's codec takes "is this HEAD" from the last request it
    // decoded, so a request pipelined behind a HEAD whose handler awaits the store
    // (always, on etcd) gets the HEAD answered with a body.
    let mut tcp = std::net::TcpStream::connect(server.addr())?;
    tcp.write_all(b"HEAD /v1/kv/k HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut rest = String::new();
    tcp.read_to_string(&mut rest)?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("content-length: 5"), "{head}");
    let tag = format!("etag: \"{}\"", EMPTY_REVISION + 1);
    assert!(head.contains(&tag), "{head}");
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "a body came after HEAD: {rest:?}"
    );
    server.stop()?;
    Ok(())
}
