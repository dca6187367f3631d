//! The web console at `/ui/`, in a real browser: headless Chromium driven over
//! WebDriver (chromedriver) against the real server binary, with changes made
//! meanwhile by the real `kv` binary. Plus the console's login cookie and CORS,
//! checked over plain HTTP.
//!
//! Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`): when
//! they are missing the test installs them with apt-get (it must run as root).
//! Where that is not possible the browser tests say SKIPPED (on stdout and stderr,
//! past the test harness's capture) and pass; with `KVSTORE_REQUIRE_BROWSER=1` that
//! is a failure instead. `KVSTORE_CHROMIUM` and `KVSTORE_CHROMEDRIVER` name other
//! binaries. Screenshots of the main views go to `target/console-screenshots/`.
//!
//! Every wait polls the page for a condition, with a deadline; none sleeps a fixed time.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use futures_util::StreamExt;
use kvstore_client::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{say, TestServer};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// The most any one page condition may take (a healthy run stays far below).
const WAIT: Duration = Duration::from_secs(20);
/// chromedriver's start, and an apt-get install, get longer.
const DRIVER_START: Duration = Duration::from_secs(60);

// ---------- the browser ----------

/// Chromium and its driver, found or installed once per test run.
#[derive(Clone)]
struct Tools {
    chromium: PathBuf,
    driver: PathBuf,
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(support::program)
}

/// Each as an absolute path: chromedriver is handed Chromium's as a file.
fn find_tools() -> Option<Tools> {
    let pick = |var: &str, names: &[&str]| match std::env::var_os(var) {
        Some(given) => support::program(given),
        None => on_path(names),
    };
    Some(Tools {
        chromium: pick(
            "KVSTORE_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?,
        driver: pick("KVSTORE_CHROMEDRIVER", &["chromedriver"])?,
    })
}

fn run_quiet(cmd: &mut Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))
}

/// `apt-get install chromium chromium-driver`, refreshing the package lists once
/// if the first try fails.
fn install_tools() -> Result<(), String> {
    let uid = run_quiet(Command::new("id").arg("-u"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root, so it cannot apt-get install chromium chromium-driver".into());
    }
    if on_path(&["apt-get"]).is_none() {
        return Err("no apt-get to install chromium and chromium-driver with".into());
    }
    say("installing chromium and chromium-driver with apt-get (once)");
    let install = || {
        run_quiet(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(["chromium", "chromium-driver"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let first = install()?;
    if first.status.success() {
        return Ok(());
    }
    let update = run_quiet(Command::new("apt-get").arg("update"))?;
    let second = install()?;
    if second.status.success() {
        return Ok(());
    }
    Err(format!(
        "apt-get install chromium chromium-driver failed (update: {}): {}",
        update.status,
        String::from_utf8_lossy(&second.stderr).trim()
    ))
}

fn tools() -> Result<Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| match find_tools() {
            Some(tools) => Ok(tools),
            None => {
                install_tools()
                    .map_err(|why| format!("no chromium and chromedriver on PATH, and {why}"))?;
                find_tools().ok_or_else(|| {
                    "chromium or chromedriver is still missing after apt-get install".into()
                })
            }
        })
        .clone()
}

/// Browser tests run one at a time: two Chromiums on two cores make every wait slow.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromedriver (in a process group of its own, with the Chromium it starts) and
/// one browser session on it.
struct Browser {
    driver: Child,
    web: Option<WebDriver>,
    shots: PathBuf,
    _one: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// A fresh headless browser; `None` (said as SKIPPED) when there is none to be
    /// had and `KVSTORE_REQUIRE_BROWSER` is not `1`.
    async fn open(test: &str) -> Fallible<Option<Browser>> {
        let tools = match tools() {
            Ok(tools) => tools,
            Err(why) => {
                let required = std::env::var("KVSTORE_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
                assert!(!required, "KVSTORE_REQUIRE_BROWSER=1 but {why}");
                say(&format!("SKIPPED console browser test {test}: {why}"));
                return Ok(None);
            }
        };
        let one = ONE_BROWSER.lock().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut driver = {
            use std::os::unix::process::CommandExt;
            Command::new(&tools.driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()?
        };
        // Ready when it says so on stdout; the rest of its output is drained.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = driver.stdout.take().ok_or("chromedriver stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut browser = Browser {
            driver,
            web: None,
            shots: screenshot_dir(),
            _one: one,
        };
        ready_rx
            .recv_timeout(DRIVER_START)
            .map_err(|_| "chromedriver did not start")?;
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--lang=en-US",
                    // Loopback only: no name resolves, nothing runs in the background.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    "--no-first-run", "--no-default-browser-check", "--disable-sync",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let web = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await?;
        browser.web = Some(web);
        Ok(Some(browser))
    }

    fn web(&self) -> &WebDriver {
        self.web.as_ref().expect("a browser session")
    }

    async fn close(mut self) {
        if let Some(web) = self.web.take() {
            let _ = web.close().await;
        }
    }

    async fn goto(&self, url: &str) -> TestResult {
        Ok(self.web().goto(url).await?)
    }

    /// Runs `script` (a function body; may return a promise) in the page.
    async fn js(&self, script: &str) -> Fallible<Value> {
        Ok(self.web().execute(script, vec![]).await?)
    }

    /// Waits until the JavaScript expression `condition` is true in the page.
    async fn until(&self, what: &str, condition: &str) -> TestResult {
        let deadline = Instant::now() + WAIT;
        let script = format!("try {{ return !!({condition}); }} catch (e) {{ return false; }}");
        loop {
            if self.js(&script).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let name = format!(
                    "timeout-{}",
                    what.replace(|c: char| !c.is_alphanumeric(), "-")
                );
                let _ = self.shot(&name).await;
                let text = self
                    .js("return document.body.innerText.slice(0, 3000)")
                    .await?;
                return Err(format!(
                    "timed out waiting for {what} ({condition}); the page said:\n{}",
                    text.as_str().unwrap_or_default()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) -> TestResult {
        Ok(self.web().find(Locator::Css(css)).await?.click().await?)
    }

    /// Clicks the link or button whose text is `text`.
    async fn click_text(&self, text: &str) -> TestResult {
        let xpath = format!("//*[self::a or self::button][normalize-space(.)={text:?}]");
        Ok(self
            .web()
            .find(Locator::XPath(&xpath))
            .await?
            .click()
            .await?)
    }

    async fn type_into(&self, css: &str, text: &str) -> TestResult {
        Ok(self
            .web()
            .find(Locator::Css(css))
            .await?
            .send_keys(text)
            .await?)
    }

    async fn replace_text(&self, css: &str, text: &str) -> TestResult {
        let field = self.web().find(Locator::Css(css)).await?;
        field.clear().await?;
        Ok(field.send_keys(text).await?)
    }

    /// Keys typed into whatever has the focus.
    async fn keys(&self, keys: &str) -> TestResult {
        Ok(self.web().active_element().await?.send_keys(keys).await?)
    }

    async fn text(&self, css: &str) -> Fallible<String> {
        let value = self
            .js(&format!(
                "return document.querySelector({css:?})?.textContent ?? ''"
            ))
            .await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    async fn visible(&self, css: &str) -> Fallible<bool> {
        let value = self
            .js(&format!(
                "const e = document.querySelector({css:?}); return !!e && e.checkVisibility()"
            ))
            .await?;
        Ok(value == Value::Bool(true))
    }

    /// The names in the key list, in order.
    async fn rows(&self) -> Fallible<Vec<String>> {
        let value = self
            .js("return [...document.querySelectorAll('#rows tr')].map(r => r.dataset.name)")
            .await?;
        Ok(serde_json::from_value(value)?)
    }

    /// The breadcrumbs, from the top.
    async fn crumbs(&self) -> Fallible<Vec<String>> {
        let value = self
            .js("return [...document.querySelectorAll('#crumbs li')].map(li => li.textContent)")
            .await?;
        Ok(serde_json::from_value(value)?)
    }

    /// Saves a screenshot as `target/console-screenshots/NAME.png`.
    async fn shot(&self, name: &str) -> Fallible<PathBuf> {
        let png = self.web().screenshot().await?;
        std::fs::create_dir_all(&self.shots)?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium it started, also after a
        // failed test that never reached `close`.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

/// Runs `scenario` in a fresh browser, or says SKIPPED when there is none.
async fn in_browser(test: &str, scenario: impl AsyncFnOnce(&Browser) -> TestResult) -> TestResult {
    let Some(browser) = Browser::open(test).await? else {
        return Ok(());
    };
    let result = scenario(&browser).await;
    browser.close().await;
    result
}

fn screenshot_dir() -> PathBuf {
    support::target_dir().join("console-screenshots")
}

// ---------- the kv binary ----------

fn kv_bin() -> PathBuf {
    let kv = support::server_bin()
        .parent()
        .expect("target dir")
        .join(format!("kv{}", std::env::consts::EXE_SUFFIX));
    assert!(
        kv.exists(),
        "{} is missing: build it first (`cargo build -p kv-cli`, or run `cargo test --workspace`)",
        kv.display()
    );
    kv
}

/// Runs `kv --url URL ARGS`; (exit code, stdout).
fn kv(url: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(kv_bin())
        .args(["--url", url])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
    )
}

fn kv_ok(url: &str, args: &[&str]) -> String {
    let (code, out) = kv(url, args);
    assert_eq!(code, 0, "kv {args:?} failed: {out}");
    out
}

/// The `kv put` answer's revision (`-o json`).
fn kv_put(url: &str, extra: &[&str], key: &str, value: &str) -> u64 {
    let mut args = vec!["-o", "json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["put", key, value]);
    let out = kv_ok(url, &args);
    let put: Value = serde_json::from_str(&out).expect("kv put -o json");
    put["revision"].as_u64().expect("a revision")
}

// ---------- browser tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_folders_with_breadcrumbs_filter_paging_and_the_keyboard() -> TestResult {
    in_browser("browse", browse).await
}

async fn browse(b: &Browser) -> TestResult {
    let server = TestServer::start_with(&["--sync", "none"]);
    let client = Client::new(&server.url)?;
    client.put("app/db/url", "postgres://db").await?;
    client.put("app/db/user", "admin").await?;
    client
        .put("app/mode", r#"{"color":"blue","replicas":3}"#)
        .await?;
    client.put("app/blob", vec![0u8, 1, 2, 0xff]).await?;
    client.put("readme", "hello").await?;
    // More keys in one folder than one page of the list API holds.
    let puts = (0..1200).map(|i| {
        let client = client.clone();
        async move { client.put(&format!("big/k{i:04}"), "x").await }
    });
    let mut pending = futures_util::stream::iter(puts).buffer_unordered(32);
    while let Some(put) = pending.next().await {
        put?;
    }

    b.goto(&format!("{}/ui/", server.url)).await?;
    b.until(
        "the top folder",
        "document.querySelectorAll('#rows tr').length === 3",
    )
    .await?;
    assert_eq!(b.rows().await?, ["app/", "big/", "readme"]);
    b.until(
        "the live badge",
        "document.querySelector('#conn').dataset.state === 'live'",
    )
    .await?;

    // Into a folder: breadcrumbs, folders split on '/', revision/version/size columns.
    b.click("#rows tr[data-name='app/'] a").await?;
    b.until("the app/ folder", "document.querySelectorAll('#rows tr').length === 3 && document.querySelector('#crumbs').textContent.includes('app/')").await?;
    assert_eq!(b.rows().await?, ["blob", "db/", "mode"]);
    assert_eq!(b.crumbs().await?, ["All keys", "app/"]);
    let mode_row = b.text("#rows tr[data-name='mode']").await?;
    assert!(mode_row.contains("29 bytes"), "{mode_row}");

    // A JSON value is shown formatted; Text shows it as stored.
    b.click("#rows tr[data-name='mode'] a").await?;
    b.until(
        "the JSON view",
        "document.querySelector('#view-value').textContent.includes('\"color\": \"blue\"')",
    )
    .await?;
    assert!(b.text("#view-value").await?.contains("\n  \"replicas\": 3"));
    b.shot("value-json").await?;
    b.click_text("Text").await?;
    b.until("the text view", "document.querySelector('#view-value').textContent === '{\"color\":\"blue\",\"replicas\":3}'").await?;

    // A binary value: hex and base64 only.
    b.click("#rows tr[data-name='blob'] a").await?;
    b.until(
        "the hex view",
        "document.querySelector('#view-value').textContent.startsWith('00000000  00 01 02 ff')",
    )
    .await?;
    let modes = b.text("#view-modes").await?;
    assert_eq!(modes, "HexBase64");
    b.click_text("Base64").await?;
    b.until(
        "the base64 view",
        "document.querySelector('#view-value').textContent === 'AAEC/w=='",
    )
    .await?;

    // Back up with the breadcrumb, into a folder of 1,200 keys: paged.
    b.click_text("All keys").await?;
    // The app/ folder also shows 3 rows (db/, mode, blob): wait for the top's own.
    b.until(
        "the top folder again",
        "document.querySelectorAll('#rows tr').length === 3 \
         && document.querySelector(\"#rows tr[data-name='big/']\") !== null",
    )
    .await?;
    b.click("#rows tr[data-name='big/'] a").await?;
    b.until(
        "the first page",
        "document.querySelectorAll('#rows tr').length === 1000",
    )
    .await?;
    assert!(b.visible("#more").await?);
    assert!(b.text("#list-status").await?.contains("more below"));
    b.click("#more").await?;
    b.until(
        "the second page",
        "document.querySelectorAll('#rows tr').length === 1200",
    )
    .await?;
    assert!(!b.visible("#more").await?);
    b.shot("browse-paged").await?;

    // Without the mouse: the skip link, "/" to the filter, Tab to the first match,
    // arrows, Enter.
    b.js("document.querySelector('.skip').focus()").await?;
    b.keys(&Key::Enter.to_string()).await?;
    b.until("the list focused", "document.activeElement.id === 'list-region' && document.querySelectorAll('#rows tr').length === 1200").await?;
    b.js("document.activeElement.blur()").await?;
    b.keys("/").await?;
    b.until(
        "the filter focused",
        "document.activeElement.id === 'filter'",
    )
    .await?;
    b.keys("k119").await?;
    b.until(
        "ten matches",
        "document.querySelectorAll('#rows tr').length === 10",
    )
    .await?;
    assert!(b.text("#list-status").await?.contains("10 items of 1,200"));
    b.keys(&format!("{}{}{}", Key::Tab, Key::Tab, Key::Tab))
        .await?;
    b.until(
        "the first match focused",
        "document.activeElement.closest('tr')?.dataset.name === 'k1190'",
    )
    .await?;
    b.keys(&Key::Down.to_string()).await?;
    b.until(
        "the next match focused",
        "document.activeElement.closest('tr')?.dataset.name === 'k1191'",
    )
    .await?;
    b.keys(&Key::Enter.to_string()).await?;
    b.until(
        "k1191 open",
        "document.querySelector('#view-key').textContent === 'big/k1191'",
    )
    .await?;

    // Readable at 200 % zoom: a 1280 px window at 200 % is 640 CSS px wide; one
    // column, nothing wider than the window.
    b.click_text("All keys").await?;
    b.until(
        "the top folder",
        "document.querySelectorAll('#rows tr').length === 3",
    )
    .await?;
    b.click("#rows tr[data-name='app/'] a").await?;
    // The top folder also shows 3 rows: wait for app/'s own.
    b.until(
        "app/",
        "document.querySelectorAll('#rows tr').length === 3 \
         && document.querySelector(\"#rows tr[data-name='mode']\") !== null",
    )
    .await?;
    b.click("#rows tr[data-name='mode'] a").await?;
    b.until(
        "mode open",
        "document.querySelector('#view-key').textContent === 'app/mode'",
    )
    .await?;
    b.shot("browse").await?;
    b.web().set_window_size(640, 900).await?;
    b.until(
        "one column",
        "document.querySelector('#detail').getBoundingClientRect().top > document.querySelector('#list-region').getBoundingClientRect().bottom",
    )
    .await?;
    let overflow = b
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await?;
    assert_eq!(overflow, json!(0), "the page scrolls sideways at 200 %");
    b.shot("zoom-200").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_edit_with_a_conflict_from_kv_put_and_delete_with_confirmation() -> TestResult {
    in_browser("edit", edit).await
}

async fn edit(b: &Browser) -> TestResult {
    let server = TestServer::start_with(&["--sync", "none"]);
    let url = &server.url;
    b.goto(&format!("{url}/ui/")).await?;
    b.until(
        "an empty store",
        "document.querySelector('#list-status').textContent === 'No keys yet.'",
    )
    .await?;

    // A folder, then its first key.
    b.click("#new-folder").await?;
    b.until(
        "the folder dialog",
        "document.querySelector('#folder-dialog').open",
    )
    .await?;
    b.type_into("#folder-name", "app").await?;
    b.keys(&Key::Enter.to_string()).await?;
    b.until("the new key form", "!document.querySelector('#editor').hidden && document.querySelector('#editor-key').value === 'app/'").await?;
    b.type_into("#editor-key", "config").await?;
    b.type_into("#editor-value", r#"{"color":"blue"}"#).await?;
    b.click("#save").await?;
    b.until("the saved key", "document.querySelector('#view-key').textContent === 'app/config' && !document.querySelector('#view').hidden").await?;
    b.until(
        "its row",
        "document.querySelector(\"#rows tr[data-name='config']\")",
    )
    .await?;
    assert_eq!(b.crumbs().await?, ["All keys", "app/"]);
    assert_eq!(kv_ok(url, &["get", "app/config"]), r#"{"color":"blue"}"#);

    // Creating a key that exists is refused (If-None-Match: *), showing the one there.
    b.click("#new-key").await?;
    b.until("the new key form", "!document.querySelector('#editor').hidden && document.querySelector('#editor-key').value === 'app/'").await?;
    b.type_into("#editor-key", "config").await?;
    b.type_into("#editor-value", "a second one").await?;
    b.click("#save").await?;
    b.until("the refusal", "!document.querySelector('#conflict').hidden && document.querySelector('#conflict-title').textContent === 'That key already exists'").await?;
    assert_eq!(b.text("#conflict-theirs").await?, r#"{"color":"blue"}"#);
    b.click_text("Take theirs, drop mine").await?;
    b.until("the existing value", "!document.querySelector('#view').hidden && document.querySelector('#view-value').textContent.includes('blue')").await?;
    assert_eq!(kv_ok(url, &["get", "app/config"]), r#"{"color":"blue"}"#);

    // Edit; meanwhile someone else changes it with `kv put`.
    b.click("#edit").await?;
    b.until("the editor", "!document.querySelector('#editor').hidden")
        .await?;
    b.replace_text("#editor-value", r#"{"color":"green"}"#)
        .await?;
    let theirs = kv_put(url, &[], "app/config", r#"{"color":"red"}"#);
    b.until(
        "the change noticed while editing",
        "!document.querySelector('#editor-notice').hidden",
    )
    .await?;
    b.click("#save").await?;
    b.until(
        "the conflict",
        "!document.querySelector('#conflict').hidden",
    )
    .await?;
    // Both versions shown; nothing overwritten; what was typed is still there.
    assert_eq!(b.text("#conflict-theirs").await?, r#"{"color":"red"}"#);
    assert_eq!(b.text("#conflict-mine").await?, r#"{"color":"green"}"#);
    assert!(b
        .text("#conflict-text")
        .await?
        .contains(&format!("revision {theirs}")));
    let typed = b
        .js("return document.querySelector('#editor-value').value")
        .await?;
    assert_eq!(typed, json!(r#"{"color":"green"}"#));
    assert_eq!(kv_ok(url, &["get", "app/config"]), r#"{"color":"red"}"#);
    b.shot("conflict").await?;

    // Saving again, knowingly, replaces exactly the version that was shown.
    assert_eq!(
        b.text("#save").await?,
        format!("Save mine over revision {theirs}")
    );
    b.click("#save").await?;
    b.until("the saved edit", "!document.querySelector('#view').hidden && document.querySelector('#view-value').textContent.includes('green')").await?;
    assert_eq!(kv_ok(url, &["get", "app/config"]), r#"{"color":"green"}"#);

    // Delete asks first; Cancel keeps the key.
    b.click("#delete").await?;
    b.until(
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await?;
    assert!(b.text("#confirm-text").await?.contains("app/config"));
    b.shot("delete-confirm").await?;
    b.click("#confirm-cancel").await?;
    b.until(
        "the dialog closed",
        "!document.querySelector('#confirm').open",
    )
    .await?;
    assert_eq!(kv_ok(url, &["get", "app/config"]), r#"{"color":"green"}"#);
    b.click("#delete").await?;
    b.until(
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await?;
    b.click("#confirm-ok").await?;
    b.until("the row gone", "!document.querySelector(\"#rows tr[data-name='config']\") && document.querySelector('#notice-message-text').textContent.includes('Deleted')").await?;
    let (code, _) = kv(url, &["get", "app/config"]);
    assert_eq!(code, 1, "kv get of the deleted key");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_with_kv_put_appear_without_reload_and_the_feed_pauses() -> TestResult {
    in_browser("live", live).await
}

async fn live(b: &Browser) -> TestResult {
    let server = TestServer::start_with(&["--sync", "none"]);
    let url = &server.url;
    kv_ok(url, &["put", "app/mode", "blue"]);
    kv_ok(url, &["put", "app/db/url", "postgres://db:5432/app"]);
    kv_ok(url, &["put", "app/limits", r#"{"rps":500,"burst":50}"#]);
    b.goto(&format!("{url}/ui/#?p=app%2F&k=app%2Fmode")).await?;
    b.until(
        "the value",
        "document.querySelector('#view-value').textContent === 'blue'",
    )
    .await?;
    b.until(
        "the live badge",
        "document.querySelector('#conn').dataset.state === 'live'",
    )
    .await?;
    // Proves below that nothing reloaded the page.
    b.js("window.stillHere = true").await?;

    let rev = kv_put(url, &[], "app/mode", "green");
    b.until(
        "the open value updated",
        "document.querySelector('#view-value').textContent === 'green'",
    )
    .await?;
    b.until(
        "the change in the feed",
        &format!("document.querySelector('#feed-list li')?.dataset.revision === '{rev}'"),
    )
    .await?;
    assert_eq!(b.text("#feed-list li").await?, format!("#{rev}putapp/mode"));
    b.until(
        "the row's revision",
        &format!(
            "document.querySelector(\"#rows tr[data-name='mode'] td.num\").textContent === '{rev}'"
        ),
    )
    .await?;

    kv_ok(url, &["put", "app/new", "1"]);
    b.until(
        "the new row",
        "document.querySelector(\"#rows tr[data-name='new']\")",
    )
    .await?;
    kv_ok(url, &["put", "app/sub/deep", "1"]);
    b.until(
        "the new folder row",
        "document.querySelector(\"#rows tr[data-name='sub/']\")",
    )
    .await?;
    let deleted = {
        kv_ok(url, &["del", "app/new"]);
        kv_ok(url, &["-o", "json", "get", "app/mode"]);
        server_revision(url).await?
    };
    b.until(
        "the row gone",
        "!document.querySelector(\"#rows tr[data-name='new']\")",
    )
    .await?;
    b.until(
        "the delete in the feed",
        &format!("document.querySelector('#feed-list li')?.dataset.revision === '{deleted}' && document.querySelector('#feed-list li').dataset.kind === 'delete'"),
    )
    .await?;
    b.shot("live").await?;

    // Paused: the panel holds still (the list and the value go on following).
    b.click("#feed-pause").await?;
    let paused = kv_put(url, &[], "app/mode", "while-paused");
    b.until(
        "the value still follows",
        "document.querySelector('#view-value').textContent === 'while-paused'",
    )
    .await?;
    b.until(
        "the waiting count",
        "document.querySelector('#feed-state').textContent.includes('1 change waiting')",
    )
    .await?;
    let top = b
        .js("return document.querySelector('#feed-list li').dataset.revision")
        .await?;
    assert_eq!(top, json!(deleted.to_string()));
    b.click("#feed-pause").await?;
    b.until(
        "the held change shown",
        &format!("document.querySelector('#feed-list li')?.dataset.revision === '{paused}'"),
    )
    .await?;
    assert_eq!(b.js("return window.stillHere === true").await?, json!(true));
    Ok(())
}

async fn server_revision(url: &str) -> Fallible<u64> {
    Ok(Client::new(url)?.health().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_sees_no_edit_controls_and_its_writes_are_refused() -> TestResult {
    in_browser("read-only", read_only).await
}

const ACCESS: &str = r#"
[roles.reader]
read = ["app/"]
[roles.admin]
read = [""]
write = [""]
[[tokens]]
name = "reader"
role = "reader"
token = "reader-token"
[[tokens]]
name = "admin"
role = "admin"
token = "admin-token"
"#;

fn secured_server(dir: &Path, extra: &[&str]) -> Fallible<TestServer> {
    let file = dir.join("access.toml");
    std::fs::write(&file, ACCESS)?;
    let file = file.to_string_lossy().into_owned();
    let mut args = vec!["--sync", "none", "--access-file", &file];
    args.extend_from_slice(extra);
    Ok(TestServer::start_with(&args))
}

async fn read_only(b: &Browser) -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = secured_server(dir.path(), &[])?;
    let url = &server.url;
    let admin = ["--token", "admin-token"];
    kv_put(url, &admin, "app/mode", "blue");
    kv_put(url, &admin, "secret/key", "hidden");

    b.goto(&format!("{url}/ui/")).await?;
    b.until("the login form", "!document.querySelector('#login').hidden")
        .await?;
    b.type_into("#token", "wrong-token").await?;
    b.keys(&Key::Enter.to_string()).await?;
    b.until(
        "the refusal",
        "document.querySelector('#login-error').textContent.includes('not known')",
    )
    .await?;
    b.shot("login").await?;
    b.replace_text("#token", "reader-token").await?;
    b.keys(&Key::Enter.to_string()).await?;
    b.until("the keys", "!document.querySelector('#app').hidden && document.querySelectorAll('#rows tr').length === 1").await?;
    // Only what the token may read.
    assert_eq!(b.rows().await?, ["app/"]);
    assert_eq!(b.text("#who").await?, "token reader");
    assert!(b.visible("#readonly").await?);
    assert!(!b.visible("#new-key").await? && !b.visible("#new-folder").await?);
    // The token lives in an HttpOnly cookie: script on the page cannot see it.
    assert_eq!(b.js("return document.cookie").await?, json!(""));

    b.click("#rows tr[data-name='app/'] a").await?;
    b.until(
        "app/",
        "document.querySelector(\"#rows tr[data-name='mode']\")",
    )
    .await?;
    b.click("#rows tr[data-name='mode'] a").await?;
    b.until(
        "the value",
        "document.querySelector('#view-value').textContent === 'blue'",
    )
    .await?;
    assert!(!b.visible("#edit").await? && !b.visible("#delete").await?);

    // The live feed authenticates with the cookie too.
    kv_put(url, &admin, "app/mode", "green");
    b.until(
        "the live update",
        "document.querySelector('#view-value').textContent === 'green'",
    )
    .await?;
    b.shot("read-only").await?;

    // The server refuses the token's writes, whatever the page shows.
    let status = |method: &str, header: bool| {
        format!(
            "return fetch('/v1/kv/app/mode', {{method: '{method}', body: {body}, headers: {headers}}}).then(r => r.status)",
            body = if method == "PUT" { "'x'" } else { "undefined" },
            headers = if header { "{'x-kv-console': '1'}" } else { "{}" },
        )
    };
    assert_eq!(b.js(&status("PUT", true)).await?, json!(403));
    assert_eq!(b.js(&status("DELETE", true)).await?, json!(403));
    // Without the console's header the cookie does not count for a write.
    assert_eq!(b.js(&status("PUT", false)).await?, json!(401));
    assert_eq!(
        kv_ok(url, &["--token", "admin-token", "get", "app/mode"]),
        "green"
    );

    // Log out: the cookie is gone, nothing read with it stays, and the page asks again.
    b.click("#logout").await?;
    b.until("the login form", "!document.querySelector('#login').hidden")
        .await?;
    let left = b
        .js("return document.querySelectorAll('#rows tr, #feed-list li').length + document.querySelector('#view-value').textContent.length")
        .await?;
    assert_eq!(left, json!(0));
    assert_eq!(
        b.js("return fetch('/v1/kv/app/mode').then(r => r.status)")
            .await?,
        json!(401)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_the_server_is_unreachable_and_resumes_the_feed() -> TestResult {
    in_browser("unreachable", unreachable_server).await
}

async fn unreachable_server(b: &Browser) -> TestResult {
    let dir = tempfile::tempdir()?;
    // The restart keeps the address the page knows through a port the test holds:
    // no parallel test can take it while the server is down.
    let held = support::HeldAddress::new()?;
    let mut server = held.start(dir.path(), &[])?;
    let url = held.url.clone();
    kv_ok(&url, &["put", "app/mode", "blue"]);
    b.goto(&format!("{url}/ui/#?p=app%2F&k=app%2Fmode")).await?;
    b.until(
        "the live badge",
        "document.querySelector('#conn').dataset.state === 'live'",
    )
    .await?;

    held.kill(&mut server);
    b.until(
        "the feed notice",
        "!document.querySelector('#notice-feed').hidden",
    )
    .await?;
    b.until("the unreachable notice", "!document.querySelector('#notice-unreachable').hidden && document.querySelector('#conn').dataset.state === 'offline'").await?;
    b.shot("unreachable").await?;

    // Back on the same address and data; a change made before the page reconnects
    // still arrives, as the feed resumes after the last revision it saw.
    let _server = held.start(dir.path(), &[])?;
    let rev = kv_put(&url, &[], "app/mode", "after-restart");
    b.until(
        "the value after the restart",
        "document.querySelector('#view-value').textContent === 'after-restart'",
    )
    .await?;
    b.until(
        "the change in the feed",
        &format!("[...document.querySelectorAll('#feed-list li')].some(li => li.dataset.revision === '{rev}')"),
    )
    .await?;
    b.until("the notices gone", "document.querySelector('#notice-unreachable').hidden && document.querySelector('#notice-feed').hidden && document.querySelector('#conn').dataset.state === 'live'").await?;
    Ok(())
}

// ---------- over plain HTTP ----------

fn http() -> reqwest::Client {
    kvstore_client::install_crypto_provider();
    reqwest::Client::new()
}

async fn login(url: &str, token: &str) -> Fallible<reqwest::Response> {
    Ok(http()
        .post(format!("{url}/ui/login"))
        .header("x-kv-console", "1")
        .json(&json!({ "token": token }))
        .send()
        .await?)
}

async fn error_code(res: reqwest::Response) -> Fallible<(StatusCode, String)> {
    let status = res.status();
    let body: Value = res.json().await?;
    Ok((
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_no_outside_resource() -> TestResult {
    let server = TestServer::start();
    let res = http().get(format!("{}/ui/", server.url)).send().await?;
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res
        .headers()
        .get("content-security-policy")
        .ok_or("a CSP")?
        .to_str()?
        .to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    assert!(res.text().await?.contains("/ui/app.js"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let res = http().get(format!("{}{path}", server.url)).send().await?;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let content_type = res.headers()[reqwest::header::CONTENT_TYPE].to_str()?;
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
    }
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(format!("{}/ui", server.url))
        .send()
        .await?;
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirect.headers()["location"], "/ui/");
    // An open server: the page may do everything.
    let session: Value = http()
        .get(format!("{}/ui/session", server.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        session,
        json!({"access_control": false, "token": null, "read": [""], "write": [""]})
    );
    Ok(())
}

#[tokio::test]
async fn login_sets_an_http_only_strict_cookie_that_reads_watches_and_writes_only_with_the_console_header(
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = secured_server(dir.path(), &[])?;
    let url = &server.url;

    // Not from the console, or an unknown token: refused, in the JSON error format.
    let res = http()
        .post(format!("{url}/ui/login"))
        .json(&json!({"token": "admin-token"}))
        .send()
        .await?;
    assert_eq!(
        error_code(res).await?,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    assert_eq!(
        error_code(login(url, "nope").await?).await?,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );

    let res = login(url, "reader-token").await?;
    assert_eq!(res.status(), StatusCode::OK);
    let set_cookie = res.headers()["set-cookie"].to_str()?.to_string();
    for part in [
        "kv_token=reader%2Dtoken",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(set_cookie.contains(part), "{set_cookie} lacks {part}");
    }
    // Plain HTTP: a Secure cookie would never be sent back.
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let session: Value = res.json().await?;
    assert_eq!(
        session,
        json!({"access_control": true, "token": "reader", "read": ["app/"], "write": []})
    );
    let cookie = set_cookie.split(';').next().ok_or("a cookie")?.to_string();

    Client::new(url)?
        .with_token("admin-token")?
        .put("app/mode", "blue")
        .await?;
    let get = |path: &str| http().get(format!("{url}{path}")).header("cookie", &cookie);
    assert_eq!(get("/v1/kv/app/mode").send().await?.text().await?, "blue");
    let watch = get("/v1/watch")
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(watch.status(), StatusCode::OK);
    drop(watch);
    // Writes: 403 for this read-only token with the console's header, and the
    // cookie alone does not authenticate a write at all.
    let put = |header: bool| {
        let req = http()
            .put(format!("{url}/v1/kv/app/mode"))
            .header("cookie", &cookie)
            .body("x");
        if header {
            req.header("x-kv-console", "1")
        } else {
            req
        }
    };
    assert_eq!(
        error_code(put(true).send().await?).await?,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(
        error_code(put(false).send().await?).await?,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );

    // An admin's cookie writes (with the header).
    let admin = login(url, "admin-token").await?;
    let admin_cookie = admin.headers()["set-cookie"]
        .to_str()?
        .split(';')
        .next()
        .ok_or("a cookie")?
        .to_string();
    let res = http()
        .put(format!("{url}/v1/kv/app/mode"))
        .header("cookie", &admin_cookie)
        .header("x-kv-console", "1")
        .body("green")
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::OK);

    // Logout removes the cookie.
    let res = http()
        .post(format!("{url}/ui/logout"))
        .header("x-kv-console", "1")
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let removal = res.headers()["set-cookie"].to_str()?;
    assert!(
        removal.starts_with("kv_token=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    Ok(())
}

#[tokio::test]
async fn over_tls_the_login_cookie_is_secure() -> TestResult {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let server = secured_server(
        dir.path(),
        &[
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
        ],
    )?;
    assert!(server.url.starts_with("https://"));
    kvstore_client::install_crypto_provider();
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            certified.cert.pem().as_bytes(),
        )?])
        .build()?;
    let res = https
        .post(format!("{}/ui/login", server.url))
        .header("x-kv-console", "1")
        .json(&json!({ "token": "reader-token" }))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    let set_cookie = res.headers()["set-cookie"].to_str()?;
    assert!(
        set_cookie.contains("Secure") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    Ok(())
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_preflights_for_the_listed_origins() -> TestResult {
    let preflight = |url: &str, origin: &str| {
        http()
            .request(reqwest::Method::OPTIONS, format!("{url}/v1/kv/app/mode"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "authorization, if-match")
            .send()
    };

    let plain = TestServer::start();
    let res = preflight(&plain.url, "http://app.test").await?;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let res = http()
        .get(format!("{}/healthz", plain.url))
        .header("origin", "http://app.test")
        .send()
        .await?;
    assert!(res.headers().get("access-control-allow-origin").is_none());

    let server = TestServer::start_with(&[
        "--cors-origin",
        "http://app.test",
        "--cors-origin",
        "http://other.test:8080",
    ]);
    for origin in ["http://app.test", "http://other.test:8080"] {
        let res = preflight(&server.url, origin).await?;
        assert_eq!(res.status(), StatusCode::OK, "{origin}");
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        let methods = h["access-control-allow-methods"].to_str()?;
        assert!(
            methods.contains("PUT") && methods.contains("DELETE"),
            "{methods}"
        );
        let headers = h["access-control-allow-headers"].to_str()?;
        assert!(headers.contains("if-match") && headers.contains("authorization"));
        // Cookies never cross origins: other apps send a bearer token.
        assert!(h.get("access-control-allow-credentials").is_none());
    }
    // The actual request: allowed, with the metadata headers readable.
    Client::new(&server.url)?.put("app/mode", "blue").await?;
    let res = http()
        .get(format!("{}/v1/kv/app/mode", server.url))
        .header("origin", "http://app.test")
        .send()
        .await?;
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://app.test"
    );
    let exposed = res.headers()["access-control-expose-headers"].to_str()?;
    assert!(exposed.contains("etag") && exposed.contains("x-kv-mod-revision"));
    // Another origin's preflight is refused in the JSON error format.
    assert_eq!(
        error_code(preflight(&server.url, "http://evil.test").await?).await?,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );

    // A malformed origin stops the server at start, with a reason.
    let dir = tempfile::tempdir()?;
    let bad = TestServer::try_start_in(dir.path(), &["--cors-origin", "app.test"]);
    let Err(why) = bad else {
        panic!("the server started with --cors-origin app.test");
    };
    assert!(why.contains("expected an origin"), "{why}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_versions_show_under_its_value_each_viewable_with_its_difference() -> TestResult {
    in_browser("versions", versions).await
}

/// The value panel lists the key's versions (revision, put or delete, oldest
/// first), shows any of them, and the difference between one and the one before
/// it; a change made meanwhile with `kv` joins the list.
async fn versions(b: &Browser) -> TestResult {
    let server = TestServer::start_with(&["--sync", "none"]);
    let url = &server.url;
    let first = kv_put(url, &[], "cfg/app", "host=a\nport=1\nmode=blue");
    let second = kv_put(url, &[], "cfg/app", "host=a\nport=2\nmode=blue");
    kv_ok(url, &["del", "cfg/app"]);
    let deleted = server_revision(url).await?;
    let again = kv_put(url, &[], "cfg/app", "host=b\nport=2\nmode=blue");
    b.goto(&format!("{url}/ui/#?p=cfg%2F&k=cfg%2Fapp")).await?;
    b.until(
        "four versions",
        "document.querySelectorAll('#versions-rows tr').length === 4",
    )
    .await?;
    let rows = b
        .js("return [...document.querySelectorAll('#versions-rows tr')].map(r => [r.dataset.revision, r.children[1].textContent])")
        .await?;
    assert_eq!(
        rows,
        json!([
            [first.to_string(), "put"],
            [second.to_string(), "put"],
            [deleted.to_string(), "delete"],
            [again.to_string(), "put"]
        ])
    );
    b.until(
        "the live badge",
        "document.querySelector('#conn').dataset.state === 'live'",
    )
    .await?;

    // The first version itself.
    b.click(&format!(
        "#versions-rows tr[data-revision='{first}'] .version-view"
    ))
    .await?;
    b.until(
        "the first version shown",
        "document.querySelector('#version-value').textContent === 'host=a\\nport=1\\nmode=blue'",
    )
    .await?;
    // The second against the first: one line changed.
    b.click(&format!(
        "#versions-rows tr[data-revision='{second}'] .version-diff"
    ))
    .await?;
    b.until(
        "the difference",
        "document.querySelectorAll('#version-value .removed').length === 1",
    )
    .await?;
    let diff = b
        .js("return [...document.querySelectorAll('#version-value span')].map(s => [s.className, s.textContent])")
        .await?;
    assert_eq!(
        diff,
        json!([
            ["same", "  host=a"],
            ["removed", "- port=1"],
            ["added", "+ port=2"],
            ["same", "  mode=blue"]
        ])
    );
    b.shot("versions").await?;

    // A change made meanwhile joins the list.
    let latest = kv_put(url, &[], "cfg/app", "host=c");
    b.until(
        "the new version",
        &format!("document.querySelector(\"#versions-rows tr[data-revision='{latest}']\")"),
    )
    .await?;
    Ok(())
}
