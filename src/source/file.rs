//! The file source: a JSON Lines file, one message body per line; message id = file name + line
//! number, so re-running the same file is exactly-once through the ledger like SQS is.

use super::ReceivedMessage;
use std::collections::HashMap;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Reads a JSON Lines file in chunks, without loading it whole.
pub struct FileSource {
    lines: tokio::io::Lines<BufReader<tokio::fs::File>>,
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
            lines: BufReader::with_capacity(1 << 16, f).lines(),
            name,
            line_no: 0,
        })
    }

    /// The next up to `max` messages; empty at end of file. Blank lines are skipped.
    pub async fn next_chunk(&mut self, max: usize) -> std::io::Result<Vec<ReceivedMessage>> {
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            let Some(line) = self.lines.next_line().await? else {
                break;
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            out.push(ReceivedMessage {
                message_id: format!("{}:{}", self.name, self.line_no),
                receipt_handle: String::new(),
                body: line,
                attributes: HashMap::new(),
                message_attributes: HashMap::new(),
            });
        }
        Ok(out)
    }
}
