//! The Markdown files of the repository: every relative link leads to a file that
//! exists, and every `#anchor` to a heading of the file it names (GitHub's rule:
//! the heading in lower case, spaces as `-`, punctuation but `-` and `_` dropped);
//! the shell tours of the README and the HTTP API run as shown against a new
//! server. (The Rust examples of the docs are doctests of `kvstore-client`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, TestServer};

fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The Markdown files git knows (all of them under the workspace but `target/`).
fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            markdown_files(&path, found);
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// GitHub's anchor of a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings (outside code blocks), numbered as
/// GitHub numbers repeats (`x`, `x-1`, ...).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        let base = slug(&heading.replace('`', ""));
        let mut anchor = base.clone();
        let mut n = 0;
        while found.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        found.insert(anchor);
    }
    found
}

/// The targets of the inline links and images of a Markdown text, outside code.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans hold examples, not links.
        let mut outside = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                outside.push_str(part);
            }
        }
        let mut rest = outside.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = workspace();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(
        !files.is_empty(),
        "no Markdown files under {}",
        root.display()
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match link.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(&root).join(path)
            };
            let shown = file
                .strip_prefix(&root)
                .unwrap_or(file)
                .display()
                .to_string();
            if !target.exists() {
                broken.push(format!("{shown}: {link}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{shown}: {link}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 0, "no relative link was checked");
}

#[test]
fn anchors_follow_githubs_rule() {
    let text = "# Quick start\n## Reading the past\n### The legacy `/kv` API\n## Reading the past\n```\n# not a heading\n```\n";
    let found = anchors(text);
    for anchor in [
        "quick-start",
        "reading-the-past",
        "the-legacy-kv-api",
        "reading-the-past-1",
    ] {
        assert!(found.contains(anchor), "{anchor} in {found:?}");
    }
    assert!(!found.contains("not-a-heading"));
}

/// The `sh` blocks under `heading` in `text`.
fn shell_blocks(text: &str, heading: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut under = false;
    let mut block: Option<String> = None;
    for line in text.lines() {
        match &mut block {
            Some(lines) if line.starts_with("```") => {
                if under {
                    blocks.push(std::mem::take(lines));
                }
                block = None;
            }
            Some(lines) => {
                lines.push_str(line);
                lines.push('\n');
            }
            None if line.starts_with("```sh") => block = Some(String::new()),
            None if line.starts_with('#') => under = line == heading,
            None => {}
        }
    }
    blocks
}

/// A command of a tour and the JSON answers shown under it (`# {...}` lines that
/// are whole JSON; the others, with `...` or prose, are for the reader).
struct Step {
    command: String,
    shown: Vec<serde_json::Value>,
}

fn steps(block: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix('#') {
            Some(comment) => {
                if let (Some(step), Ok(json)) = (
                    steps.last_mut(),
                    serde_json::from_str::<serde_json::Value>(comment.trim()),
                ) {
                    if json.is_object() {
                        step.shown.push(json);
                    }
                }
            }
            None => steps.push(Step {
                command: line.to_string(),
                shown: Vec::new(),
            }),
        }
    }
    steps
}

/// Runs the tour under `heading` of the Markdown file `file` against a new
/// server, command by command in a shell, `localhost:5000` being that server and
/// `kv` this build's: each must succeed and print the JSON shown under it. Answers
/// the number of commands run.
fn run_tour(file: &str, heading: &str, curl: &Path) -> usize {
    let text = std::fs::read_to_string(workspace().join(file)).expect(file);
    let blocks = shell_blocks(&text, heading);
    assert!(!blocks.is_empty(), "{file} has no sh block under {heading}");
    let server = TestServer::start();
    let address = server.url.trim_start_matches("http://").to_string();
    let work = tempfile::tempdir().expect("temp dir");
    // What the CLI tour's lock runs.
    let script = work.path().join("nightly.sh");
    std::fs::write(&script, "#!/bin/sh\necho nightly done\n").expect("nightly.sh");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let kv = support::kv_bin();
    let mut path =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    path.insert(0, kv.parent().expect("kv's dir").to_path_buf());
    path.insert(0, curl.parent().expect("curl's dir").to_path_buf());
    let path = std::env::join_paths(path).expect("PATH");
    let mut ran = 0;
    for step in blocks.iter().flat_map(|b| steps(b)) {
        // Those two stream until Ctrl-C.
        if step.command.starts_with("kv watch") || step.command.starts_with("curl -N") {
            continue;
        }
        let command = step.command.replace("localhost:5000", &address);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(work.path())
            .env("PATH", &path)
            .env("KV_URL", &server.url)
            .output()
            .expect("sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}, {heading}: `{}` failed ({}):\n{stdout}{}",
            step.command,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for shown in &step.shown {
            let given: serde_json::Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {stdout}", step.command));
            assert_eq!(&given, shown, "{file}, {heading}: `{}`", step.command);
        }
        ran += 1;
    }
    ran
}

#[test]
fn the_shell_tours_run_as_shown() {
    let Some(curl) = support::program("curl") else {
        support::skip(
            "KVSTORE_REQUIRE_CURL",
            "the docs' shell tours",
            "no curl on the PATH",
        );
        return;
    };
    for (file, heading, at_least) in [
        ("README.md", "## A taste of the HTTP API", 4),
        ("README.md", "## A taste of the CLI", 5),
        (
            "docs/http-api.md",
            "## Keys, values and the basic calls",
            10,
        ),
        ("docs/http-api.md", "## The legacy `/kv` API", 3),
    ] {
        let ran = run_tour(file, heading, &curl);
        assert!(
            ran >= at_least,
            "{file}, {heading}: only {ran} commands ran"
        );
    }
}

#[test]
fn a_tour_is_read_as_commands_and_the_json_shown_under_them() {
    let text = "## Tour\n```sh\n# put\ncurl -X PUT x --data-binary 'v'\n# {\"revision\":2}\n# a note ...\nkv get k   # v\n```\n## Other\n```sh\nnot this\n```\n";
    let blocks = shell_blocks(text, "## Tour");
    assert_eq!(blocks.len(), 1);
    let steps = steps(&blocks[0]);
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].command, "curl -X PUT x --data-binary 'v'");
    assert_eq!(steps[0].shown, vec![serde_json::json!({"revision": 2})]);
    assert_eq!(steps[1].command, "kv get k   # v");
    assert!(steps[1].shown.is_empty());
}
