//! The file source: a JSON Lines file, one message body per line; message id = file name + line
//! number, so re-running the same file is exactly-once through the ledger like SQS is.
//!
//! Lines come from the shared [`JsonLinesReader`]. A line that cannot be a message body does not
//! stop the run; it becomes a message the processor rejects, keeping what can be kept:
//! - not UTF-8: marked with [`INVALID_UTF8_ATTRIBUTE`], the body is the raw line in base64, so
//!   every byte ends up in the rejects (SQS bodies are always UTF-8; only files can hold such
//!   lines);
//! - longer than [`MAX_LINE_BYTES`]: marked with [`OVERSIZED_LINE_ATTRIBUTE`] (its length), the
//!   body is its first [`OVERSIZED_PREFIX_BYTES`] at most, since the line itself was never held.

use super::ReceivedMessage;
use super::jsonl::{JsonLinesReader, Line, LineKind};
#[cfg(doc)]
use super::jsonl::{MAX_LINE_BYTES, OVERSIZED_PREFIX_BYTES};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;
use std::path::Path;
use tokio::io::BufReader;

/// Attribute set on a file line that is not UTF-8 (a name SQS never sends); the processor
/// rejects such a message. Also set on an oversized line whose kept prefix is not UTF-8.
pub const INVALID_UTF8_ATTRIBUTE: &str = "etl:InvalidUtf8";

/// Attribute set on a file line longer than [`MAX_LINE_BYTES`], holding the line's length in
/// bytes (a name SQS never sends); the processor rejects such a message.
pub const OVERSIZED_LINE_ATTRIBUTE: &str = "etl:OversizedLine";

/// Reads a JSON Lines file in chunks, without loading it whole.
pub struct FileSource {
    lines: JsonLinesReader<BufReader<tokio::fs::File>>,
    name: String,
}

impl FileSource {
    /// Opens the file.
    pub async fn open(path: &Path) -> std::io::Result<Self> {
        let f = tokio::fs::File::open(path).await?;
        Ok(Self {
            lines: JsonLinesReader::new(BufReader::with_capacity(1 << 16, f)),
            name: file_name(path),
        })
    }

    /// The next up to `max` messages; empty at end of file. Blank lines are skipped.
    pub async fn next_chunk(&mut self, max: usize) -> std::io::Result<Vec<ReceivedMessage>> {
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            let Some(line) = self.lines.next_line().await? else {
                break;
            };
            out.push(line_message(&self.name, line));
        }
        Ok(out)
    }
}

/// The name message ids start with: the file name without its directory, so moving the file
/// does not make its lines new messages.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The message a line of the file `file_name` becomes, with id `file_name:line`. Shared with
/// `preview`, so it shows exactly the rejects `run` would write.
pub fn line_message(file_name: &str, line: Line) -> ReceivedMessage {
    let mut attributes = HashMap::new();
    let body = match line.kind {
        LineKind::Text(text) => text,
        LineKind::NotUtf8(raw) => {
            attributes.insert(INVALID_UTF8_ATTRIBUTE.to_owned(), "true".to_owned());
            B64.encode(raw)
        }
        LineKind::Oversized { mut prefix, len } => {
            attributes.insert(OVERSIZED_LINE_ATTRIBUTE.to_owned(), len.to_string());
            // The cut may split a character: drop its first bytes rather than call the whole
            // prefix "not UTF-8" and make it unreadable as base64.
            if let Err(e) = std::str::from_utf8(&prefix)
                && e.error_len().is_none()
            {
                prefix.truncate(e.valid_up_to());
            }
            match String::from_utf8(prefix) {
                Ok(text) => text,
                Err(e) => {
                    attributes.insert(INVALID_UTF8_ATTRIBUTE.to_owned(), "true".to_owned());
                    B64.encode(e.as_bytes())
                }
            }
        }
    };
    ReceivedMessage {
        message_id: format!("{file_name}:{}", line.number),
        receipt_handle: String::new(),
        body,
        attributes,
        message_attributes: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_ids_blank_lines_crlf_and_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let mut bytes = b"{\"a\": 1}\r\n\n   \n{\"b\": 2}\n".to_vec();
        bytes.extend_from_slice(b"{\"c\": \"\xff\xfe\"}\n{\"d\": 4}");
        std::fs::write(&path, &bytes).unwrap();
        let mut src = FileSource::open(&path).await.unwrap();
        let first = src.next_chunk(2).await.unwrap();
        let rest = src.next_chunk(10).await.unwrap();
        assert!(src.next_chunk(10).await.unwrap().is_empty());
        let all: Vec<_> = first.iter().chain(&rest).collect();
        let ids: Vec<&str> = all.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(
            ids,
            ["in.jsonl:1", "in.jsonl:4", "in.jsonl:5", "in.jsonl:6"]
        );
        assert_eq!(all[0].body, "{\"a\": 1}", "CRLF is stripped");
        assert_eq!(
            all[3].body, "{\"d\": 4}",
            "a last line without newline counts"
        );
        assert!(all[2].attributes.contains_key(INVALID_UTF8_ATTRIBUTE));
        assert_eq!(
            B64.decode(&all[2].body).unwrap(),
            b"{\"c\": \"\xff\xfe\"}",
            "every byte of the invalid line is kept"
        );
        assert!(!all[1].attributes.contains_key(INVALID_UTF8_ATTRIBUTE));
    }

    #[test]
    fn an_oversized_line_keeps_a_readable_prefix_and_its_length() {
        // A prefix cut inside "é" (two bytes): the half character is dropped, the rest is text.
        let mut prefix = vec![b'a'; 4095];
        prefix.push(0xc3);
        let msg = line_message(
            "in.jsonl",
            Line {
                number: 7,
                kind: LineKind::Oversized {
                    prefix,
                    len: 5_000_000,
                },
            },
        );
        assert_eq!(msg.message_id, "in.jsonl:7");
        assert_eq!(msg.body, "a".repeat(4095));
        assert_eq!(
            msg.attributes
                .get(OVERSIZED_LINE_ATTRIBUTE)
                .map(String::as_str),
            Some("5000000")
        );
        assert!(!msg.attributes.contains_key(INVALID_UTF8_ATTRIBUTE));

        // A prefix with bytes that are not UTF-8 is kept whole, in base64, and marked so.
        let prefix = b"{\"c\": \"\xff\xfe".to_vec();
        let msg = line_message(
            "in.jsonl",
            Line {
                number: 8,
                kind: LineKind::Oversized {
                    prefix: prefix.clone(),
                    len: 2_000_000,
                },
            },
        );
        assert_eq!(B64.decode(&msg.body).unwrap(), prefix);
        assert!(msg.attributes.contains_key(INVALID_UTF8_ATTRIBUTE));
        assert!(msg.attributes.contains_key(OVERSIZED_LINE_ATTRIBUTE));
    }
}
