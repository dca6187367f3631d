//! JSON exactly as Python's `json.dumps` writes it by default (`", "` and `": "`
//! separators, non-ASCII escaped as `\uXXXX`), for the legacy `/kv` endpoint whose
//! clients print the bodies as they come.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::Formatter;

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() {
                w.write_all(&fragment.as_bytes()[i..i + 1])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// `value` as Python's `json.dumps(value)` would write it, plus the newline Flask adds.
pub fn to_vec<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dumps() -> serde_json::Result<()> {
        let v = serde_json::json!({"value": "v1"});
        assert_eq!(to_vec(&v)?, b"{\"value\": \"v1\"}\n");
        // python3 -c 'import json; print(json.dumps({"k": "caf\u00e9 \U0001F600 \n\""}))'
        let v = serde_json::json!({"k": "caf\u{e9} \u{1F600} \n\""});
        assert_eq!(
            String::from_utf8_lossy(&to_vec(&v)?),
            "{\"k\": \"caf\\u00e9 \\ud83d\\ude00 \\n\\\"\"}\n"
        );
        Ok(())
    }
}
