//! Canonical JSON: the exact bytes a payload is hashed as.
//!
//! The rule is RFC 8785 (JCS) restricted to the values whose JCS form needs no floating-point
//! formatting: `null`, booleans, strings, integers within ±(2^53 − 1), arrays and objects.
//! Object members are sorted by the UTF-16 code units of their keys, nothing is indented, and
//! strings escape only `"`, `\`, and control characters (`\b \f \n \r \t`, otherwise `\u00xx`
//! in lowercase hex); every other character is written as itself in UTF-8.

use std::fmt::Write as _;

use serde_json::Value;

use crate::error::{Error, Result};

/// The largest integer magnitude a payload may hold: 2^53 − 1 (I-JSON, RFC 7493).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// How deeply arrays and objects may nest in a payload.
pub const MAX_DEPTH: usize = 64;

/// Writes `value` in canonical JSON form.
///
/// # Errors
///
/// [`Error::InvalidPayload`] for a non-integer number, an integer beyond ±(2^53 − 1), or nesting
/// deeper than [`MAX_DEPTH`].
///
/// ```
/// let payload = serde_json::json!({"b": 1, "a": ["x", true, null]});
/// assert_eq!(sos_audit::canonical_json(&payload)?, r#"{"a":["x",true,null],"b":1}"#);
/// # Ok::<(), sos_audit::Error>(())
/// ```
pub fn canonical_json(value: &Value) -> Result<String> {
    let mut out = String::new();
    write_value(value, &mut out, 0)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut String, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::InvalidPayload { reason: format!("nesting is deeper than {MAX_DEPTH} levels") });
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                if unsigned > MAX_SAFE_INTEGER {
                    return Err(out_of_range(number));
                }
                let _ = write!(out, "{unsigned}");
            } else if let Some(signed) = number.as_i64() {
                if signed.unsigned_abs() > MAX_SAFE_INTEGER {
                    return Err(out_of_range(number));
                }
                let _ = write!(out, "{signed}");
            } else {
                return Err(Error::InvalidPayload {
                    reason: format!("the number {number} is not an integer; send decimals as strings"),
                });
            }
        }
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|left, right| left.0.encode_utf16().cmp(right.0.encode_utf16()));
            out.push('{');
            for (index, (key, item)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn out_of_range(number: &serde_json::Number) -> Error {
    Error::InvalidPayload {
        reason: format!("the integer {number} is outside ±(2^53 - 1); send it as a string"),
    }
}

fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if u32::from(control) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(control));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}
