//! The JSONL export format: one entry per line.

use std::io::{BufRead, Read as _, Write};

use serde::{Deserialize, Serialize};
use sos_core::{Sha256Digest, TenantId};

use crate::entry::AuditEntry;
use crate::error::{Error, Result};

/// The longest accepted line of a chain file, in bytes (newline excluded).
pub const MAX_LINE_LEN: usize = 1024 * 1024;

#[derive(Serialize)]
struct LineOut<'a> {
    tenant: &'a str,
    seq: u64,
    time_us: i64,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    payload: &'a str,
    prev_hash: Sha256Digest,
    hash: Sha256Digest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    tenant: String,
    seq: u64,
    time_us: i64,
    actor: String,
    action: String,
    subject: String,
    payload: String,
    prev_hash: Sha256Digest,
    hash: Sha256Digest,
}

/// Writes `entry` as one JSONL line (with its trailing newline).
///
/// # Errors
///
/// [`Error::Io`] when writing fails.
pub fn write_jsonl_line<W: Write>(writer: &mut W, entry: &AuditEntry) -> Result<()> {
    let line = LineOut {
        tenant: entry.tenant.as_str(),
        seq: entry.seq,
        time_us: entry.time_us,
        actor: &entry.actor,
        action: &entry.action,
        subject: &entry.subject,
        payload: &entry.payload,
        prev_hash: entry.prev_hash,
        hash: entry.hash,
    };
    serde_json::to_writer(&mut *writer, &line).map_err(std::io::Error::from)?;
    writer.write_all(b"\n")?;
    Ok(())
}

/// Parses one line of a chain file (without its newline). `line_number` is used in errors.
///
/// # Errors
///
/// [`Error::MalformedLine`] when the line is not a JSON object with exactly the documented
/// fields, or names an invalid tenant.
///
/// ```
/// let error = sos_audit::parse_jsonl_line(b"{not json", 7).unwrap_err();
/// assert!(error.to_string().starts_with("line 7 "));
/// ```
pub fn parse_jsonl_line(line: &[u8], line_number: u64) -> Result<AuditEntry> {
    let malformed = |reason: String| Error::MalformedLine { line: line_number, reason };
    let parsed: LineIn = serde_json::from_slice(line).map_err(|error| malformed(error.to_string()))?;
    let tenant = TenantId::new(parsed.tenant).map_err(|error| malformed(error.to_string()))?;
    Ok(AuditEntry {
        tenant,
        seq: parsed.seq,
        time_us: parsed.time_us,
        actor: parsed.actor,
        action: parsed.action,
        subject: parsed.subject,
        payload: parsed.payload,
        prev_hash: parsed.prev_hash,
        hash: parsed.hash,
    })
}

/// Reads a chain file entry by entry, holding one line at a time.
///
/// Empty lines (including a trailing one) are skipped; a line longer than [`MAX_LINE_LEN`] is an
/// error rather than a reason to allocate without bound.
#[derive(Debug)]
pub struct JsonlReader<R> {
    reader: R,
    line_number: u64,
    buffer: Vec<u8>,
}

impl<R: BufRead> JsonlReader<R> {
    /// Wraps a buffered reader.
    pub fn new(reader: R) -> Self {
        Self { reader, line_number: 0, buffer: Vec::new() }
    }

    /// The next entry, or `None` at the end of the file.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedLine`] naming the line; [`Error::Io`] when reading fails.
    pub fn next_entry(&mut self) -> Result<Option<AuditEntry>> {
        loop {
            self.buffer.clear();
            self.line_number += 1;
            let limit = u64::try_from(MAX_LINE_LEN).unwrap_or(u64::MAX) + 2;
            let read = (&mut self.reader).take(limit).read_until(b'\n', &mut self.buffer)?;
            if read == 0 {
                return Ok(None);
            }
            if self.buffer.last() == Some(&b'\n') {
                self.buffer.pop();
                if self.buffer.last() == Some(&b'\r') {
                    self.buffer.pop();
                }
            }
            if self.buffer.len() > MAX_LINE_LEN {
                return Err(Error::MalformedLine {
                    line: self.line_number,
                    reason: format!("it is longer than {MAX_LINE_LEN} bytes"),
                });
            }
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return parse_jsonl_line(&self.buffer, self.line_number).map(Some);
        }
    }
}
