//! `kv txn`: a transaction read from stdin, as JSON (the body of `POST /v1/txn`)
//! or in lines like `etcdctl txn`'s: compares, a blank line, the success ops, a
//! blank line, the failure ops.
//!
//! ```text
//! mod("acct/1") = "5"
//! value("acct/2") != "closed"
//!
//! put acct/1 90
//! put acct/2 "one hundred and ten"
//! del tmp/x
//! del --prefix tmp/
//!
//! get acct/1
//! get --prefix acct/
//! ```
//!
//! A compare is `FIELD("KEY") OP VALUE`: FIELD is `value`, `ver` (or `version`),
//! `create`, `mod` or `lease`; OP is `=` (or `==`), `!=`, `<` or `>`. Ops are
//! `put KEY VALUE`, `del KEY`, `del --prefix PREFIX`, `get KEY` and
//! `get --prefix PREFIX`. Words with spaces go in double quotes (`\"` and `\\`
//! inside them).

use std::io::Write;

use anyhow::{anyhow, bail, Context};
use kvstore_client::txn::{Compare, CompareOp, Txn, TxnOp, TxnResponse, TxnResult};

/// A transaction that cannot be read (a usage error: exit code 2).
#[derive(Debug)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Malformed {}

/// The transaction in `text`: JSON when it starts with `{`, else lines.
pub fn parse(text: &str) -> anyhow::Result<Txn> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).context("the transaction is not valid JSON");
    }
    let mut sections: [Vec<&str>; 3] = Default::default();
    let mut section = 0;
    // A blank line ends a section (several in a row count once); a blank first
    // line means no compares.
    let mut blank = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            if !blank {
                section += 1;
                blank = true;
            }
            continue;
        }
        blank = false;
        let Some(lines) = sections.get_mut(section) else {
            bail!("a transaction has three sections (compares, success, failure): found more");
        };
        lines.push(line);
    }
    let [compares, success, failure] = sections;
    Ok(Txn {
        compare: compares
            .into_iter()
            .map(compare)
            .collect::<anyhow::Result<_>>()?,
        success: success.into_iter().map(op).collect::<anyhow::Result<_>>()?,
        failure: failure.into_iter().map(op).collect::<anyhow::Result<_>>()?,
    })
}

/// A compare line: `FIELD("KEY") OP VALUE`.
fn compare(line: &str) -> anyhow::Result<Compare> {
    let bad = || anyhow!("cannot read the compare {line:?}: write FIELD(\"KEY\") OP VALUE");
    let (field, rest) = line.split_once('(').ok_or_else(bad)?;
    let (key, rest) = word(rest.trim_start())?.ok_or_else(bad)?;
    let rest = rest
        .trim_start()
        .strip_prefix(')')
        .ok_or_else(bad)?
        .trim_start();
    let (op, rest) = [
        ("==", CompareOp::Equal),
        ("!=", CompareOp::NotEqual),
        ("=", CompareOp::Equal),
        ("<", CompareOp::Less),
        (">", CompareOp::Greater),
    ]
    .into_iter()
    .find_map(|(symbol, op)| rest.strip_prefix(symbol).map(|rest| (op, rest)))
    .ok_or_else(bad)?;
    let (value, rest) = word(rest.trim_start())?.ok_or_else(bad)?;
    if !rest.trim().is_empty() {
        return Err(bad());
    }
    let number = || {
        value
            .parse::<u64>()
            .map_err(|_| anyhow!("the compare {line:?} needs a whole number"))
    };
    Ok(match field.trim() {
        "value" => Compare::value(&key, op, value.as_bytes()),
        "ver" | "version" => Compare::version(&key, op, number()?),
        "create" | "create_revision" => Compare::create_revision(&key, op, number()?),
        "mod" | "mod_revision" => Compare::mod_revision(&key, op, number()?),
        "lease" => Compare::lease(&key, op, number()?),
        other => bail!("unknown compare field {other:?}: value, ver, create, mod or lease"),
    })
}

/// An op line.
fn op(line: &str) -> anyhow::Result<TxnOp> {
    let mut words = Vec::new();
    let mut rest = line;
    while let Some((w, after)) = word(rest.trim_start())? {
        words.push(w);
        rest = after;
    }
    let prefix = words.iter().any(|w| w == "--prefix");
    words.retain(|w| w != "--prefix");
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(match (words.as_slice(), prefix) {
        (["put", key, value], false) => TxnOp::put(key, value.as_bytes()),
        (["del" | "delete", key], false) => TxnOp::delete(key),
        (["del" | "delete", prefix], true) => TxnOp::delete_prefix(prefix),
        (["get", key], false) => TxnOp::get(key),
        (["get" | "ls", prefix], true) | (["ls", prefix], false) => TxnOp::list(prefix, None),
        _ => bail!(
            "cannot read the op {line:?}: put KEY VALUE, del [--prefix] KEY, get [--prefix] KEY"
        ),
    })
}

/// The first word of `text` (bare, or in double quotes) and what follows it.
fn word(text: &str) -> anyhow::Result<Option<(String, &str)>> {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text
            .find(|c: char| c.is_whitespace() || c == ')')
            .unwrap_or(text.len());
        if end == 0 {
            return Ok(None);
        }
        return Ok(Some((text[..end].to_string(), &text[end..])));
    };
    let mut out = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok(Some((out, &quoted[i + 1..]))),
            '\\' => match chars.next() {
                Some((_, escaped)) => out.push(escaped),
                None => break,
            },
            c => out.push(c),
        }
    }
    bail!("a quote is not closed in {text:?}")
}

/// The answer for people: which branch ran, then each result.
pub fn print(out: &mut impl Write, answer: &TxnResponse) -> std::io::Result<()> {
    let branch = if answer.succeeded {
        "SUCCESS"
    } else {
        "FAILURE"
    };
    writeln!(out, "{branch} (revision {})", answer.revision)?;
    for result in &answer.results {
        match result {
            TxnResult::Put(put) => writeln!(out, "OK (revision {})", put.revision)?,
            TxnResult::Delete(d) => writeln!(out, "deleted {}", d.deleted)?,
            TxnResult::Get(got) => match &got.entry {
                Some(entry) => {
                    writeln!(out, "{}", entry.key)?;
                    out.write_all(&entry.value)?;
                    writeln!(out)?;
                }
                None => writeln!(out, "(not found)")?,
            },
            TxnResult::List(listed) => {
                for entry in &listed.entries {
                    writeln!(out, "{}", entry.key)?;
                    out.write_all(&entry.value)?;
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_like_etcdctl() -> anyhow::Result<()> {
        let txn = parse(
            "mod(\"acct/1\") = \"5\"\nvalue(\"a b\") != \"x \\\"y\\\"\"\n\n\
             put acct/1 90\nput acct/2 \"one ten\"\ndel --prefix tmp/\n\nget acct/1\nget --prefix acct/\n",
        )?;
        assert_eq!(
            txn.compare,
            [
                Compare::mod_revision("acct/1", CompareOp::Equal, 5),
                Compare::value("a b", CompareOp::NotEqual, "x \"y\""),
            ]
        );
        assert_eq!(
            txn.success,
            [
                TxnOp::put("acct/1", "90"),
                TxnOp::put("acct/2", "one ten"),
                TxnOp::delete_prefix("tmp/"),
            ]
        );
        assert_eq!(
            txn.failure,
            [TxnOp::get("acct/1"), TxnOp::list("acct/", None)]
        );
        // No compare: the transaction starts with a blank line.
        let txn = parse("\nput a 1\n")?;
        assert_eq!((txn.compare.len(), txn.success.len()), (0, 1));
        for bad in [
            "mod(a) ~ 1",
            "ver(\"a\") = x",
            "colour(\"a\") = 1",
            "\nput a",
            "\nput \"a 1",
            "\nput a 1\n\nput b 2\n\nput c 3",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
