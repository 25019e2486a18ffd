//! The file verifier streams: a chain produced on the fly, never held in memory, verifies.

use std::io::{BufReader, Read};

use chrono::{TimeZone, Utc};
use sos_audit::{NewEntry, Verdict, verify_jsonl, write_jsonl_line};
use sos_core::Sha256Digest;

/// Produces a valid chain file of `remaining` entries, one line at a time.
struct GeneratedChain {
    remaining: u64,
    seq: u64,
    prev: Sha256Digest,
    line: Vec<u8>,
    offset: usize,
}

impl Read for GeneratedChain {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.offset == self.line.len() {
            if self.remaining == 0 {
                return Ok(0);
            }
            self.remaining -= 1;
            self.seq += 1;
            let time = Utc.timestamp_opt(1_767_258_000, 0).single().expect("time");
            let entry = NewEntry::new(
                crate::tenant("acme"),
                "bot",
                "tick",
                "",
                &serde_json::json!({ "n": self.seq }),
            )
            .expect("valid")
            .into_entry(self.seq, time, self.prev)
            .expect("hash");
            self.prev = entry.hash;
            self.line.clear();
            self.offset = 0;
            write_jsonl_line(&mut self.line, &entry).map_err(std::io::Error::other)?;
        }
        let count = buffer.len().min(self.line.len() - self.offset);
        buffer[..count].copy_from_slice(&self.line[self.offset..self.offset + count]);
        self.offset += count;
        Ok(count)
    }
}

#[test]
fn verify_jsonl_streams_a_generated_chain() {
    let entries = 10_000;
    let source =
        GeneratedChain { remaining: entries, seq: 0, prev: Sha256Digest::ZERO, line: Vec::new(), offset: 0 };
    let mut reported = 0;
    let verdict = verify_jsonl(BufReader::new(source), None, |checked| reported = checked).expect("readable");
    match verdict {
        Verdict::Intact(chain) => {
            assert_eq!(chain.entries, entries);
            assert_eq!(chain.head.map(|head| head.seq), Some(entries));
        }
        other => panic!("generated chain did not verify: {other:?}"),
    }
    assert_eq!(reported, entries, "progress reports every entry by the end");
}
