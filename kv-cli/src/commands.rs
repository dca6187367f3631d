//! What each subcommand does.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use kvstore_client::wire::Frame;
use kvstore_client::{Client, Condition, Event, EventKind, Update, WatchOptions};

use crate::cli::{Cli, Command, Output};
use crate::output::print_json;

/// A client of the servers at `urls` with the token and CA file of the command line.
fn connect(urls: &[String], token: Option<&str>, ca_file: Option<&Path>) -> anyhow::Result<Client> {
    let mut client = Client::with_urls(urls)?;
    if let Some(token) = token {
        client = client.with_token(token)?;
    }
    if let Some(ca) = ca_file {
        client = client.with_ca_file(ca)?;
    }
    Ok(client)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = connect(&cli.url, cli.token.as_deref(), cli.ca_file.as_deref())?;
    let json = cli.output == Output::Json;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Get {
            key,
            rev: Some(rev),
        } => {
            let at = client.get_at(&key, rev).await?;
            if json {
                print_json(&mut out, &at)?;
            } else {
                out.write_all(&at.entry.value)?;
                if std::io::stdout().is_terminal() && !at.entry.value.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
            }
        }
        Command::Get { key, rev: None } => {
            if json {
                print_json(&mut out, &client.get_entry(&key).await?)?;
            } else {
                let value = client.get(&key).await?;
                out.write_all(&value)?;
                if std::io::stdout().is_terminal() && !value.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
            }
        }
        Command::Put {
            key,
            value,
            if_revision,
            create,
            ttl,
            lease,
        } => {
            let value = if value == "-" {
                read_stdin()?
            } else {
                value.into_bytes()
            };
            let condition = match (if_revision, create) {
                (Some(rev), _) => Some(Condition::ModRevision(rev)),
                (None, true) => Some(Condition::Absent),
                (None, false) => None,
            };
            let result = match (condition, ttl, lease) {
                (Some(condition), None, None) => client.put_if(&key, value, condition).await?,
                (None, Some(ttl), _) => client.put_with_ttl(&key, value, ttl).await?,
                (None, None, Some(lease)) => client.put_with_lease(&key, value, lease).await?,
                (None, None, None) => client.put(&key, value).await?,
                (Some(_), _, _) => {
                    anyhow::bail!("--ttl and --lease do not go with --if-revision or --create")
                }
            };
            if json {
                print_json(&mut out, &result)?;
            } else {
                writeln!(out, "OK (revision {})", result.revision)?;
            }
        }
        Command::Del {
            key,
            if_revision,
            prefix,
        } => match (key, prefix) {
            (_, Some(prefix)) => {
                let result = client.delete_prefix(&prefix).await?;
                if json {
                    print_json(&mut out, &result)?;
                } else {
                    writeln!(
                        out,
                        "deleted {} (revision {})",
                        result.deleted, result.revision
                    )?;
                }
            }
            (key, None) => {
                let key = key.unwrap_or_default();
                let result = match if_revision {
                    Some(rev) => client.delete_if(&key, Condition::ModRevision(rev)).await?,
                    None => client.delete(&key).await?,
                };
                if json {
                    print_json(&mut out, &result)?;
                } else {
                    writeln!(out, "deleted (revision {})", result.revision)?;
                }
            }
        },
        Command::Txn => {
            let text = String::from_utf8(read_stdin()?).context("the transaction is not UTF-8")?;
            let txn =
                crate::txn::parse(&text).map_err(|e| crate::txn::Malformed(format!("{e:#}")))?;
            let answer = client.txn(&txn).await?;
            if json {
                print_json(&mut out, &answer)?;
            } else {
                crate::txn::print(&mut out, &answer)?;
            }
        }
        Command::Ls { prefix, rev } => {
            let entries = match rev {
                None => client.list_all(&prefix).await?,
                Some(rev) => {
                    let mut entries = Vec::new();
                    let mut pages = std::pin::pin!(client.list_at(&prefix, Some(rev), Some(1000)));
                    while let Some(page) = pages.next().await {
                        entries.extend(page?.entries);
                    }
                    entries
                }
            };
            if json {
                print_json(&mut out, &entries)?;
            } else {
                for entry in entries {
                    writeln!(out, "{}", entry.key)?;
                }
            }
        }
        Command::History { key, after } => {
            let mut after = after;
            loop {
                let page = client.history(&key, after, Some(1000)).await?;
                for event in &page.events {
                    if json {
                        print_json(&mut out, event)?;
                    } else {
                        print_change(&mut out, event)?;
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Command::Export { prefix } => {
            let mut chunks = std::pin::pin!(client.export(&prefix).await?);
            while let Some(chunk) = chunks.next().await {
                out.write_all(&chunk?)?;
            }
        }
        Command::Import => {
            let result = client.restore_stream(stdin_chunks()).await?;
            if json {
                print_json(&mut out, &result)?;
            } else {
                writeln!(
                    out,
                    "restored {} entries (revision {})",
                    result.restored, result.revision
                )?;
            }
        }
        Command::Health => {
            let revision = client.health().await?;
            if json {
                print_json(
                    &mut out,
                    &serde_json::json!({"status": "ok", "revision": revision}),
                )?;
            } else {
                writeln!(out, "ok (revision {revision})")?;
            }
        }
        Command::Bench(bench) => {
            // Benchmarks that open and drop connections make clients of their own.
            let (url, token, ca_file) = (cli.url, cli.token, cli.ca_file);
            let connect: crate::bench::Connect =
                Arc::new(move || connect(&url, token.as_deref(), ca_file.as_deref()));
            crate::bench::run(&client, connect, bench, json, &mut out).await?
        }
        Command::Lease(command) => crate::lease::lease(&client, command, json, &mut out).await?,
        Command::Lock(args) => crate::lease::lock(&client, args, &mut out).await?,
        // Answered by `main` before a client is made.
        Command::Completion { .. } | Command::Man => {}
        Command::Watch {
            prefix,
            from_revision,
            initial,
        } => {
            let options = WatchOptions {
                prefix,
                start_revision: from_revision,
                initial,
                reconnect: true,
            };
            tokio::select! {
                result = watch(&client, options, json, &mut out) => result?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading stdin")?;
    Ok(bytes)
}

/// Standard input as a stream of chunks, read as the upload goes, so an import
/// never holds the whole snapshot.
fn stdin_chunks() -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(tokio::io::stdin()), |stdin| async move {
        let mut stdin = stdin?;
        let mut buf = vec![0; 64 * 1024];
        match stdin.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(stdin)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

async fn watch(
    client: &Client,
    options: WatchOptions,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut updates = client.watch_with(options);
    while let Some(update) = updates.next().await {
        match update? {
            Update::Reconnecting { reason, delay } => {
                eprintln!("kv: {reason}; reconnecting in {delay:?}");
                continue;
            }
            Update::Event(event) if json => print_json(out, &event)?,
            Update::Event(event) => writeln!(out, "{}", describe(&event))?,
            Update::Entry(entry) if json => print_json(out, &Frame::Entry(entry))?,
            Update::Entry(entry) => writeln!(
                out,
                "ENTRY {} = {} (revision {})",
                entry.key,
                show(&entry.value),
                entry.mod_revision
            )?,
            Update::Synced { revision } if json => print_json(out, &Frame::Synced { revision })?,
            Update::Synced { revision } => writeln!(out, "SYNCED (revision {revision})")?,
            _ => continue,
        }
        out.flush()?;
    }
    Ok(())
}

/// One line for a change: `PUT key = value (revision N)` / `DELETE key (revision N)`.
fn describe(event: &Event) -> String {
    match event.kind {
        EventKind::Put => format!(
            "PUT {} = {} (revision {})",
            event.key,
            show(&event.value),
            event.revision
        ),
        EventKind::Delete => format!("DELETE {} (revision {})", event.key, event.revision),
    }
}

/// A value for a line of text: as is when it is printable UTF-8, else escaped.
fn show(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => value.escape_ascii().to_string(),
    }
}

/// One change of `kv history`: revision, kind, version, value (as text when it is
/// UTF-8, else its size).
fn print_change(out: &mut impl Write, event: &Event) -> anyhow::Result<()> {
    match event.kind {
        EventKind::Put => {
            let value = match std::str::from_utf8(&event.value) {
                Ok(text) => text.to_string(),
                Err(_) => format!("<{} bytes, not UTF-8>", event.value.len()),
            };
            writeln!(
                out,
                "{}\tput\tversion {}\t{value}",
                event.revision, event.version
            )?;
        }
        EventKind::Delete => writeln!(out, "{}\tdelete", event.revision)?,
    }
    Ok(())
}
