//! The test support that kvstore's integration tests share (the server's and the
//! CLI's): a real server on an ephemeral port with a temp data dir, the bound
//! address known before the first request (no sleeping); stores on either engine
//! ([`Backend`], [`serve`]); etcd clusters of the test's own ([`etcd`]); network
//! faults between processes ([`link`], [`h2cut`]); Python virtual environments
//! ([`venv`]).
//!
//! The server's own tests run the `kvstore-server` binary (they can kill it, signal
//! it, read its logs), reading the address from its first stdout line: cargo names
//! it to them in `CARGO_BIN_EXE_kvstore-server` when it runs them. Other packages'
//! tests (the CLI's) are given no such binary and start the same server in-process
//! through the library (`kvstore_server::spawn`), so `cargo test -p kv-cli` works
//! on a clean target dir. Stopping an in-process server is always graceful.
//!
//! ```no_run
//! use kvstore_testkit::{serve, Engine};
//!
//! // `None` means the engine cannot run here and the test said it skipped.
//! if let Some(server) = serve(Engine::Sled, &[]) {
//!     println!("a server at {}", server.url);
//! }
//! ```

pub mod etcd;
pub mod h2cut;
pub mod link;
pub mod venv;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The revision of a new store before any write, on both engines (as in etcd): its
/// first write is `EMPTY_REVISION + 1`.
pub const EMPTY_REVISION: u64 = kvstore_core::storage::INITIAL_REVISION;

/// The `kvstore-server` binary of this build, when cargo runs the server's own
/// tests (cargo names a package's binaries only to that package's tests).
fn given_server_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_BIN_EXE_kvstore-server").map(PathBuf::from)
}

/// The `kvstore-server` binary of this build (in the server's own tests).
pub fn server_bin() -> PathBuf {
    given_server_bin().unwrap_or_else(|| {
        panic!(
            "no CARGO_BIN_EXE_kvstore-server: the server's own tests run the kvstore-server \
             binary, and cargo 1.94 or later names it to them when `cargo test` runs them"
        )
    })
}

/// The workspace's `target` dir: the test executable is in `target/PROFILE/deps/`
/// (with `--target`, this is `target/TRIPLE`, which serves as well).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no test executable: {e}"));
    exe.ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("{} is not in a target dir", exe.display()))
        .to_path_buf()
}

/// The `kv` binary of this build, next to `kvstore-server`, for the server's tests
/// that drive the real CLI. It belongs to another package, so it is built here (a
/// no-op when it is current): `cargo test -p kvstore-server` works on a clean
/// target dir too.
pub fn kv_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let server = server_bin();
        let dir = server.parent().ok_or("no target dir")?;
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "-p", "kv-cli", "--bin", "kv"]);
        // The profile of this build: its binaries sit in target/<profile>/.
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        let kv = dir.join(format!("kv{}", std::env::consts::EXE_SUFFIX));
        if status.success() && kv.exists() {
            Ok(kv)
        } else {
            Err(format!("building {} failed ({status})", kv.display()))
        }
    });
    built.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// The program `name` as an absolute path: `name` itself when it names a file (a
/// path, relative to the current dir or not), else the first executable file of
/// that name in the directories of `path` (a `PATH` value). Tools found here are
/// handed to scripts and other programs, which may take a bare name for a path.
pub fn resolve_program(name: &std::ffi::OsStr, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let given = Path::new(name);
    let found = if given.components().count() > 1 {
        Some(given.to_path_buf()).filter(|p| executable(p))
    } else {
        std::env::split_paths(path?)
            .map(|dir| dir.join(name))
            .find(|p| executable(p))
    }?;
    std::path::absolute(found).ok()
}

/// [`resolve_program`] on this process's `PATH`.
pub fn program(name: impl AsRef<std::ffi::OsStr>) -> Option<PathBuf> {
    resolve_program(name.as_ref(), std::env::var_os("PATH").as_deref())
}

/// The storage engines the suites run on, each test once per engine (with
/// `#[rstest]` and `#[values(Engine::Sled, Engine::Etcd)] engine: Engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The embedded store, in a temp data dir.
    Sled,
    /// A one-member etcd cluster of the test's own.
    Etcd,
}

impl Engine {
    /// The engine's name, as `/healthz` and `/metrics` give it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Etcd => "etcd",
        }
    }
}

/// Where a test's data lives, outliving the servers started on it (so a server
/// restarted on it finds the data): a temp data dir, and for etcd a cluster of the
/// test's own (killed with it).
pub struct Backend {
    /// The engine.
    pub engine: Engine,
    dir: tempfile::TempDir,
    etcd: Option<etcd::EtcdCluster>,
}

impl Backend {
    /// A fresh store on `engine`; `None` (having said the test skipped) when the
    /// engine cannot run here: no etcd, without `KVSTORE_REQUIRE_ETCD=1`.
    pub fn new(engine: Engine) -> Option<Backend> {
        Self::with_members(engine, 1)
    }

    /// Like [`Backend::new`], with an etcd cluster of `members` members.
    pub fn with_members(engine: Engine, members: usize) -> Option<Backend> {
        let dir = tempfile::tempdir().expect("temp dir");
        let etcd = match engine {
            Engine::Sled => None,
            Engine::Etcd if !cfg!(feature = "etcd") => {
                let why = "built without the etcd engine (test with --all-features)";
                skip("KVSTORE_REQUIRE_ETCD", "a test on the etcd engine", why);
                return None;
            }
            Engine::Etcd => match etcd::EtcdCluster::start(members) {
                Ok(cluster) => Some(cluster),
                Err(why) => {
                    skip("KVSTORE_REQUIRE_ETCD", "a test on the etcd engine", &why);
                    return None;
                }
            },
        };
        Some(Backend { engine, dir, etcd })
    }

    /// The server flags that select this store.
    pub fn args(&self) -> Vec<String> {
        match &self.etcd {
            Some(cluster) => vec!["--etcd-endpoints".into(), cluster.endpoints_arg()],
            None => Vec::new(),
        }
    }

    /// The data dir (sled's; unused on etcd).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The etcd cluster, on that engine.
    pub fn cluster(&mut self) -> Option<&mut etcd::EtcdCluster> {
        self.etcd.as_mut()
    }

    /// The store, opened as the server opens it from [`Backend::args`] (for tests
    /// that mount the app in-process). On a thread of its own: the etcd engine
    /// starts a runtime of its own, which cannot start inside a test's runtime.
    pub fn open_store(&self) -> Result<std::sync::Arc<dyn kvstore_core::Storage>, String> {
        use clap::Parser;
        let mut argv = vec![
            "kvstore-server".to_string(),
            "--data-dir".to_string(),
            self.dir().to_string_lossy().into_owned(),
        ];
        argv.extend(self.args());
        let options = kvstore_server::Options::try_parse_from(argv).map_err(|e| e.to_string())?;
        std::thread::spawn(move || options.open_store().map_err(|e| e.to_string()))
            .join()
            .map_err(|_| "opening the store panicked".to_string())?
    }
}

/// How a test server runs.
enum Running {
    Process(Child),
    InProcess(kvstore_server::Spawned),
}

/// A running server that is killed (or, in-process, stopped) when dropped.
pub struct TestServer {
    running: Option<Running>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Where it serves etcd's gRPC API (`http://127.0.0.1:PORT`), unless it was
    /// started with `--etcd-api-listen off`.
    pub etcd_url: Option<String>,
    /// The data dir (kept when `dir` is passed in).
    pub data_dir: PathBuf,
    logs: std::sync::mpsc::Receiver<String>,
    _temp: Option<tempfile::TempDir>,
    /// The store it serves, when the server owns it ([`serve`]): dropped after the
    /// server is stopped.
    backend: Option<Backend>,
}

/// A server with `args` on a fresh store of its own on `engine`, or `None` (having
/// said the test skipped) when that engine cannot run here: the start of every
/// test that runs once per engine.
pub fn serve(engine: Engine, args: &[&str]) -> Option<TestServer> {
    let backend = Backend::new(engine)?;
    let mut server = TestServer::on(&backend, args);
    server.backend = Some(backend);
    Some(server)
}

impl TestServer {
    /// A server on a fresh temp data dir.
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// A server on `backend` with extra flags.
    pub fn on(backend: &Backend, args: &[&str]) -> TestServer {
        Self::try_on_at("127.0.0.1:0", backend, args)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// A server on `backend` listening on `listen`, or why it did not start.
    pub fn try_on_at(listen: &str, backend: &Backend, args: &[&str]) -> Result<TestServer, String> {
        let engine = backend.args();
        let all: Vec<&str> = engine
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        Self::try_start_at(listen, backend.dir(), &all)
    }

    /// A server on a fresh temp data dir with extra flags.
    pub fn start_with(args: &[&str]) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_in(temp.path(), args);
        server._temp = Some(temp);
        server
    }

    /// A server on `data_dir` (which outlives it), e.g. to restart on the same data.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> TestServer {
        Self::try_start_in(data_dir, args).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Like [`TestServer::start_in`], returning the server's stderr if it exits instead.
    pub fn try_start_in(data_dir: &Path, args: &[&str]) -> Result<TestServer, String> {
        Self::try_start_at("127.0.0.1:0", data_dir, args)
    }

    /// A server on `data_dir` listening on `listen` (e.g. the address of a server
    /// this one replaces, so clients reconnect to it).
    pub fn try_start_at(
        listen: &str,
        data_dir: &Path,
        args: &[&str],
    ) -> Result<TestServer, String> {
        // Tests talk to the server with reqwest directly too.
        kvstore_client::install_crypto_provider();
        if given_server_bin().is_none() {
            return Self::start_in_process(listen, data_dir, args);
        }
        Self::try_start_process_at(listen, data_dir, args, &[])
    }

    /// The server binary on `data_dir` listening on `listen`, with the variables
    /// `env` set (e.g. `FAILPOINTS`), or why it did not start.
    pub fn try_start_process_at(
        listen: &str,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestServer, String> {
        let mut command = Command::new(server_bin());
        command
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied());
        Self::start_process(command, data_dir)
    }

    /// Runs `command` (which ends up as the server) and waits for its first line.
    fn start_process(mut command: Command, data_dir: &Path) -> Result<TestServer, String> {
        // etcd's API on a port of its own choosing, unless the test says otherwise.
        if !command
            .get_envs()
            .any(|(name, _)| name == "KVSTORE_ETCD_API_LISTEN")
        {
            command.env("KVSTORE_ETCD_API_LISTEN", "127.0.0.1:0");
        }
        let mut child = command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| {
                    "info,kvstore_server=debug,kvstore_core=debug,actix_web=warn,actix_server=warn".into()
                }),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        // etcd's API's line comes first, when it is served.
        let etcd_url = match line.trim().strip_prefix("kvstore-server etcd API on ") {
            Some(etcd_url) => {
                let etcd_url = etcd_url.to_string();
                line.clear();
                stdout.read_line(&mut line).map_err(|e| e.to_string())?;
                Some(etcd_url)
            }
            None => None,
        };
        let Some(url) = line.trim().strip_prefix("kvstore-server listening on ") else {
            let output = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        };
        // Keep stderr flowing so the server never blocks on a full pipe, and keep
        // its lines for tests that wait on a log line.
        let (log_tx, log_rx) = std::sync::mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[server] {line}");
                    let _ = log_tx.send(line);
                }
            });
        }
        Ok(TestServer {
            running: Some(Running::Process(child)),
            url: url.to_string(),
            etcd_url,
            data_dir: data_dir.to_path_buf(),
            logs: log_rx,
            _temp: None,
            backend: None,
        })
    }

    /// The server through the library, on a thread of this process.
    fn start_in_process(
        listen: &str,
        data_dir: &Path,
        args: &[&str],
    ) -> Result<TestServer, String> {
        use clap::Parser;
        let data = data_dir.to_string_lossy();
        // etcd's API on a port of its own choosing, unless the test says otherwise.
        let etcd_api = match args.contains(&"--etcd-api-listen") {
            true => None,
            false => Some(["--etcd-api-listen", "127.0.0.1:0"]),
        };
        let argv = ["kvstore-server", "--listen", listen, "--data-dir", &*data]
            .into_iter()
            .chain(etcd_api.into_iter().flatten())
            .chain(args.iter().copied());
        let options = kvstore_server::Options::try_parse_from(argv).map_err(|e| e.to_string())?;
        let access = options
            .access_file
            .as_deref()
            .map(kvstore_server::auth::AccessControl::load)
            .transpose()
            .map_err(|e| e.to_string())?;
        // A store stopped a moment ago on the same data dir may still hold its lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = loop {
            match options.open_store() {
                Err(kvstore_server::config::OpenError::Store(kvstore_core::Error::Locked(_)))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.map_err(|e| e.to_string())?,
            }
        };
        let tls = match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => {
                Some(kvstore_server::tls::server_config(cert, key).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = std::net::TcpListener::bind(options.listen).map_err(|e| e.to_string())?;
        let etcd_api = match options.etcd_api_listen.0 {
            Some(at) => Some(std::net::TcpListener::bind(at).map_err(|e| e.to_string())?),
            None => None,
        };
        let etcd_url = match &etcd_api {
            Some(api) => Some(format!(
                "{scheme}://{}",
                api.local_addr().map_err(|e| e.to_string())?
            )),
            None => None,
        };
        let spawned = kvstore_server::spawn(listener, etcd_api, store, access, tls, options)
            .map_err(|e| e.to_string())?;
        let (_, logs) = std::sync::mpsc::channel();
        Ok(TestServer {
            url: format!("{scheme}://{}", spawned.addr()),
            etcd_url,
            running: Some(Running::InProcess(spawned)),
            data_dir: data_dir.to_path_buf(),
            logs,
            _temp: None,
            backend: None,
        })
    }

    /// The engine of the store this server owns ([`serve`]); sled otherwise.
    pub fn engine(&self) -> Engine {
        self.backend.as_ref().map_or(Engine::Sled, |b| b.engine)
    }

    /// The store this server owns ([`serve`]), e.g. its etcd cluster.
    pub fn backend(&mut self) -> Option<&mut Backend> {
        self.backend.as_mut()
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        self.url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
    }

    /// Waits (at most `timeout`) for a log line containing `text` (the server logs
    /// at info unless `RUST_LOG` says otherwise).
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(text) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        if let Some(Running::Process(child)) = &self.running {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits (at most `timeout`) for the process to exit, after a signal.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let Some(Running::Process(mut child)) = self.running.take() else {
            return None;
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id (this process's, in-process).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Some(Running::Process(child)) => child.id(),
            _ => std::process::id(),
        }
    }

    /// Kills the server with SIGKILL and waits for it (in-process: stops it).
    pub fn kill(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(Running::InProcess(spawned)) => {
                let _ = spawned.stop();
            }
            None => {}
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal_term();
        self.wait_exit(timeout)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The token [`admin_access_file`] grants read and write on every key.
pub const ADMIN_TOKEN: &str = "admin-token";

/// Writes `access.toml` in `dir`: one token, [`ADMIN_TOKEN`], that may read and
/// write every key. Returns the file's path, for `--access-file`.
pub fn admin_access_file(dir: &Path) -> std::io::Result<String> {
    let file = dir.join("access.toml");
    std::fs::write(
        &file,
        format!(
            "[roles.admin]\nread = [\"\"]\nwrite = [\"\"]\n[[tokens]]\nname = \"admin\"\nrole = \"admin\"\ntoken = \"{ADMIN_TOKEN}\"\n"
        ),
    )?;
    Ok(file.to_string_lossy().into_owned())
}

/// Says that `test` did not run because `why`, or fails it when the environment
/// variable `require` is `1` (CI sets those: a skip there is a failure).
///
/// The line goes to the process's stdout and stderr through `std::io` handles,
/// which the test harness does not capture (it captures `print!` and `eprint!`
/// only), so `cargo test` shows it even when the test passes.
#[track_caller]
pub fn skip(require: &str, test: &str, why: &str) {
    let required = std::env::var(require).is_ok_and(|v| v == "1");
    assert!(!required, "{require}=1, but {test} cannot run: {why}");
    say(&format!(
        "SKIPPED {test}: {why} (with {require}=1 this fails)"
    ));
}

/// Writes `line` to stdout and stderr past the harness's capture, so that `cargo
/// test` shows it even when the test passes.
pub fn say(line: &str) {
    use std::io::Write;
    let line = format!("{line}\n");
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A loopback address that a test holds from start to end, relaying each
/// connection to the server behind it at that moment. A server restarted behind it
/// keeps the address its clients know, and no other test can take that address
/// while the server is down (as it could take a freed port). While no server is
/// behind it, connections are accepted and closed at once, as a refused one would
/// be for a client.
pub struct HeldAddress {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    addr: std::net::SocketAddr,
    backend: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HeldAddress {
    /// Binds a fresh loopback port and starts relaying (to nothing yet).
    pub fn new() -> std::io::Result<HeldAddress> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let backend: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let backend = backend.clone();
            let stop = stop.clone();
            move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = conn else { continue };
                    let target = *backend.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(target) = target {
                        std::thread::spawn(move || relay(client, target));
                    }
                }
            }
        });
        Ok(HeldAddress {
            url: format!("http://{addr}"),
            addr,
            backend,
            stop,
        })
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Starts a server on `data_dir` and relays new connections to it.
    pub fn start(&self, data_dir: &Path, args: &[&str]) -> Result<TestServer, String> {
        self.relay_to(TestServer::try_start_in(data_dir, args)?)
    }

    /// Starts a server on `store` and relays new connections to it (in-process in
    /// other packages' tests, as [`TestServer::try_start_at`] does).
    pub fn start_on(&self, store: &Backend, args: &[&str]) -> Result<TestServer, String> {
        self.relay_to(TestServer::try_on_at("127.0.0.1:0", store, args)?)
    }

    /// Like [`HeldAddress::start_on`], the server binary's process with `env` set
    /// (the server's own tests only).
    pub fn start_on_with_env(
        &self,
        store: &Backend,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestServer, String> {
        if env.is_empty() {
            return self.start_on(store, args);
        }
        let engine = store.args();
        let all: Vec<&str> = engine
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        self.start_process(store.dir(), &all, env)
    }

    /// The server binary on `data_dir` with exactly `args` (the store's flags
    /// among them) and `env` set, relaying new connections to it.
    pub fn start_process(
        &self,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestServer, String> {
        let server = TestServer::try_start_process_at("127.0.0.1:0", data_dir, args, env)?;
        self.relay_to(server)
    }

    /// Stops relaying new connections (to a server about to stop).
    pub fn detach(&self) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn relay_to(&self, server: TestServer) -> Result<TestServer, String> {
        let target = server.addr().parse().map_err(|e| format!("{e}"))?;
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        Ok(server)
    }

    /// Stops relaying, then kills `server` with SIGKILL: no new connection can reach
    /// whatever takes its port next.
    pub fn kill(&self, server: &mut TestServer) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = None;
        server.kill();
    }
}

impl Drop for HeldAddress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// Copies bytes both ways between `client` and a new connection to `target` until
/// either side ends; then closes both, as the end of a direct connection would.
fn relay(client: std::net::TcpStream, target: std::net::SocketAddr) {
    use std::net::Shutdown;
    let Ok(server) = std::net::TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut &server, &mut &client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = upstream.join();
}

impl TestServer {
    /// A server on a fresh temp data dir whose process may write files of at most
    /// `kib` KiB (`ulimit -f`, with SIGXFSZ ignored): past that every write to its
    /// store fails with an I/O error (EFBIG) that is not a full disk.
    pub fn start_with_file_size_limit(kib: u64, args: &[&str]) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        // Through a shell that sets the limit and then becomes the server (so `pid`
        // and signals still reach it).
        kvstore_client::install_crypto_provider();
        let mut command = Command::new("bash");
        command
            .args([
                "-c",
                "trap '' XFSZ; ulimit -f \"$1\" || exit 1; shift; exec \"$@\"",
                "bash",
                &kib.to_string(),
            ])
            .arg(server_bin())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(temp.path())
            .args(args);
        let mut server = Self::start_process(command, temp.path())
            .unwrap_or_else(|e| panic!("server did not start: {e}"));
        server._temp = Some(temp);
        server
    }
}
