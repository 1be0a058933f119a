//! The file source: a JSON Lines file, one message body per line; message id = file name + line
//! number, so re-running the same file is exactly-once through the ledger like SQS is.
//!
//! A line that is not UTF-8 does not stop the run: it becomes a message marked with
//! [`INVALID_UTF8_ATTRIBUTE`] whose body is the raw line in base64, so it ends up in the rejects
//! with every byte kept (SQS bodies are always UTF-8; only files can hold such lines).

use super::ReceivedMessage;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Attribute set on a file line that is not UTF-8 (a name SQS never sends); the processor
/// rejects such a message.
pub const INVALID_UTF8_ATTRIBUTE: &str = "etl:InvalidUtf8";

/// Reads a JSON Lines file in chunks, without loading it whole.
pub struct FileSource {
    reader: BufReader<tokio::fs::File>,
    name: String,
    line_no: u64,
}

impl FileSource {
    /// Opens the file.
    pub async fn open(path: &Path) -> std::io::Result<Self> {
        let f = tokio::fs::File::open(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, f),
            name,
            line_no: 0,
        })
    }

    /// The next up to `max` messages; empty at end of file. Blank lines are skipped.
    pub async fn next_chunk(&mut self, max: usize) -> std::io::Result<Vec<ReceivedMessage>> {
        let mut out = Vec::with_capacity(max);
        let mut raw = Vec::new();
        while out.len() < max {
            raw.clear();
            if self.reader.read_until(b'\n', &mut raw).await? == 0 {
                break;
            }
            self.line_no += 1;
            // Line endings as `lines()` treats them: "\n" or "\r\n".
            if raw.last() == Some(&b'\n') {
                raw.pop();
                if raw.last() == Some(&b'\r') {
                    raw.pop();
                }
            }
            let mut attributes = HashMap::new();
            let body = match std::str::from_utf8(&raw) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => text.to_owned(),
                Err(_) => {
                    attributes.insert(INVALID_UTF8_ATTRIBUTE.to_owned(), "true".to_owned());
                    B64.encode(&raw)
                }
            };
            out.push(ReceivedMessage {
                message_id: format!("{}:{}", self.name, self.line_no),
                receipt_handle: String::new(),
                body,
                attributes,
                message_attributes: HashMap::new(),
            });
        }
        Ok(out)
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
}
