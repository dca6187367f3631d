//! Python virtual environments for tests that drive real Python programs: made
//! under the target dir with python3's venv and pip from a requirements file, and
//! reused while that file is unchanged.
//!
//! Without python3 (or its venv module) a test says SKIPPED, on stdout and stderr;
//! with `KVSTORE_REQUIRE_PYTHON=1`, or under CI (`CI=true`), it fails instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use super::target_dir;

fn set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether a missing Python fails the test rather than skipping it.
pub fn python_required() -> bool {
    set("KVSTORE_REQUIRE_PYTHON") || set("CI")
}

/// Skips `what` because `why` (or fails, when Python is required).
pub fn skip(what: &str, why: &str) {
    assert!(
        !python_required(),
        "{what} needs Python (KVSTORE_REQUIRE_PYTHON or CI is set), but {why}"
    );
    // Straight to the streams: the test harness captures `println!` of a passing
    // test, and a skip must show.
    let line = format!("SKIPPED: {what}: {why}\n");
    let _ = std::io::stdout().write_all(line.as_bytes());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Runs `cmd` to completion, returning whether it succeeded and its output.
fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Builds one venv at a time in this process (tests run on parallel threads).
static BUILDING: Mutex<()> = Mutex::new(());

/// `target/<name>` holding what `requirements` pins: reused when it was made from
/// the same file, else built in a side folder and moved into place (so a run that
/// dies half-way leaves nothing that looks ready). `None` (after [`skip`] of `what`)
/// without python3 or its venv module.
pub fn venv(what: &str, name: &str, requirements: &Path) -> Option<PathBuf> {
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let wanted = std::fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("{}: {e}", requirements.display()));
    let venv = target_dir().join(name);
    let stamp = venv.join("kvstore-requirements.txt");
    if venv.join("bin/python").exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
    {
        return Some(venv);
    }
    let (ok, out) = run(Command::new("python3").arg("--version"));
    if !ok {
        skip(what, &format!("python3 is missing ({})", out.trim()));
        return None;
    }
    let building = target_dir().join(format!("{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let (ok, out) = run(Command::new("python3").args(["-m", "venv"]).arg(&building));
    if !ok {
        let _ = std::fs::remove_dir_all(&building);
        skip(
            what,
            &format!(
                "python3 -m venv failed (no venv module or pip?): {}",
                out.trim()
            ),
        );
        return None;
    }
    let started = Instant::now();
    let (ok, out) = run(Command::new(building.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements));
    if !ok {
        let _ = std::fs::remove_dir_all(&building);
        panic!("pip install -r {} failed:\n{out}", requirements.display());
    }
    println!(
        "installed {} into {} in {:.0?}",
        requirements.display(),
        venv.display(),
        started.elapsed()
    );
    std::fs::write(building.join("kvstore-requirements.txt"), &wanted).expect("stamp");
    let _ = std::fs::remove_dir_all(&venv);
    if let Err(e) = std::fs::rename(&building, &venv) {
        // Another run won the race: use its venv.
        let _ = std::fs::remove_dir_all(&building);
        assert!(
            venv.join("bin/python").exists(),
            "moving the venv into place: {e}"
        );
    }
    Some(venv)
}
