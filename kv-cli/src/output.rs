//! How the commands print what they get.

use std::io::Write;

/// `value` as one line of JSON.
pub(crate) fn print_json<T: serde::Serialize>(
    out: &mut impl Write,
    value: &T,
) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}
