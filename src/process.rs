//! One message through decode → extract → transforms, yielding a row or a reject reason.
//!
//! Pure and synchronous: no I/O, so it is shared by `run`, `preview` and `test`.

use crate::decode::decode;
use crate::extract::extract;
use crate::source::ReceivedMessage;
use crate::source::file::{INVALID_UTF8_ATTRIBUTE, OVERSIZED_LINE_ATTRIBUTE};
use crate::source::jsonl::MAX_LINE_BYTES;
use crate::spec::Column;
use crate::transform::{Context, DomainTokenizer, PendingVault, Tokenizer, Transform};
use crate::value::Val;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::sync::Arc;

/// What became of one message.
#[derive(Debug)]
pub enum Outcome {
    /// A row for the target table (values in column order) and vault entries to store.
    Row {
        values: Vec<Val>,
        vault: Vec<PendingVault>,
    },
    /// The message can never succeed; the reason names the stage and column, never a value.
    Reject { reason: String },
}

/// A processed message, with what the sink and the ack need. `Debug` shows the body's length
/// only: a reject body may carry PII.
pub struct Processed {
    pub message_id: String,
    pub receipt_handle: String,
    /// The original body. Kept for every message, not only rejects: Postgres may still refuse
    /// a valid-looking row at write time, and its reject must carry the body (encrypted) so
    /// nothing is lost. It is moved here from the received message, not copied.
    pub body: String,
    pub outcome: Outcome,
}

impl std::fmt::Debug for Processed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processed")
            .field("message_id", &self.message_id)
            .field("body_len", &self.body.len())
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// Runs the per-message stages for one spec.
#[derive(Debug, Clone)]
pub struct Processor {
    columns: Arc<Vec<Column>>,
    /// Each column's transform chain, built once, in column order.
    chains: Arc<Vec<Vec<Transform>>>,
    /// Each column's token maker (its domain for the target table), in column order.
    tokenizers: Arc<Vec<Option<DomainTokenizer>>>,
    max_receive_count: Option<u32>,
}

impl Processor {
    /// Rows go to `table`, which with each column's name makes its default token domain.
    /// `tokenizer` is required when a column hashes or encrypts (checked by the caller).
    /// Fails, naming the column and transform, only for columns that skipped spec validation.
    pub fn new(
        table: &str,
        columns: Vec<Column>,
        tokenizer: Option<Tokenizer>,
        max_receive_count: Option<u32>,
    ) -> Result<Self, String> {
        let chains = columns
            .iter()
            .map(Transform::build_chain)
            .collect::<Result<Vec<_>, _>>()?;
        let tokenizers = columns
            .iter()
            .map(|c| {
                tokenizer
                    .as_ref()
                    .filter(|_| c.hashes() || c.encrypts())
                    .map(|t| t.domain(&c.domain(table)))
            })
            .collect();
        Ok(Self {
            columns: Arc::new(columns),
            chains: Arc::new(chains),
            tokenizers: Arc::new(tokenizers),
            max_receive_count,
        })
    }

    /// The token maker of `column` (its domain), if the column hashes or encrypts.
    pub fn tokenizer_of(&self, column: &str) -> Option<&DomainTokenizer> {
        self.columns
            .iter()
            .position(|c| c.name == column)
            .and_then(|i| self.tokenizers[i].as_ref())
    }

    /// The columns, in write order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Processes one message.
    pub fn process(&self, msg: ReceivedMessage) -> Processed {
        let outcome = self.outcome(&msg);
        Processed {
            message_id: msg.message_id,
            receipt_handle: msg.receipt_handle,
            body: msg.body,
            outcome,
        }
    }

    fn outcome(&self, msg: &ReceivedMessage) -> Outcome {
        let reject = |reason: String| Outcome::Reject { reason };
        if let (Some(limit), Some(count)) = (
            self.max_receive_count,
            msg.attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse::<u32>().ok()),
        ) && count > limit
        {
            return reject(format!(
                "received {count} times, more than source.max_receive_count ({limit})"
            ));
        }
        let not_utf8 = msg.attributes.contains_key(INVALID_UTF8_ATTRIBUTE);
        if let Some(len) = msg.attributes.get(OVERSIZED_LINE_ATTRIBUTE) {
            // The body is only the line's start (the reader never held the rest); the reason
            // says so, with sizes only, so nobody mistakes it for the whole message.
            let (kept, encoding) = if not_utf8 {
                let kept = B64.decode(&msg.body).map_or(0, |raw| raw.len());
                (kept, ", base64-encoded as they are not valid UTF-8")
            } else {
                (msg.body.len(), "")
            };
            return reject(format!(
                "decode: the line is {len} bytes, over the {MAX_LINE_BYTES}-byte limit; the reject keeps its first {kept} bytes{encoding}"
            ));
        }
        if not_utf8 {
            return reject(
                "decode: the line is not valid UTF-8 (the reject body holds the raw line, base64-encoded)"
                    .into(),
            );
        }
        let body = match decode(&msg.body) {
            Ok(b) => b,
            Err(e) => return reject(format!("decode: {e}")),
        };
        let mut values = Vec::with_capacity(self.columns.len());
        let mut vault = Vec::new();
        for ((col, chain), tokenizer) in self
            .columns
            .iter()
            .zip(self.chains.iter())
            .zip(self.tokenizers.iter())
        {
            let mut v = match extract(&col.source, &body, msg) {
                Ok(v) => v,
                Err(e) => return reject(format!("column {}: extract: {e}", col.name)),
            };
            if col.required && v.is_null() {
                return reject(format!(
                    "column {}: required value is missing or null",
                    col.name
                ));
            }
            let mut ctx = Context {
                tokenizer: tokenizer.as_ref(),
                column: &col.name,
                vault: &mut vault,
            };
            for t in chain {
                v = match t.apply(v, &mut ctx) {
                    Ok(v) => v,
                    Err(e) => return reject(format!("column {}: {}: {e}", col.name, t.name())),
                };
            }
            values.push(v);
        }
        Outcome::Row { values, vault }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn message(body: &str, attributes: &[(&str, &str)]) -> ReceivedMessage {
        ReceivedMessage {
            message_id: "in.jsonl:3".into(),
            receipt_handle: String::new(),
            body: body.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            message_attributes: HashMap::new(),
        }
    }

    fn reason(p: Processed) -> String {
        match p.outcome {
            Outcome::Reject { reason } => reason,
            Outcome::Row { .. } => panic!("expected a reject"),
        }
    }

    #[test]
    fn an_oversized_line_is_a_reject_naming_sizes_only() {
        // No columns: without the marker, `{}` would be a row.
        let processor = Processor::new("t", Vec::new(), None, None).unwrap();
        assert!(matches!(
            processor.process(message("{}", &[])).outcome,
            Outcome::Row { .. }
        ));

        let prefix = format!(
            "{{\"email\": \"secret@example.com\", \"pad\": \"{}",
            "x".repeat(4000)
        );
        let p = processor.process(message(&prefix, &[(OVERSIZED_LINE_ATTRIBUTE, "2000000")]));
        assert_eq!(p.body, prefix, "the reject body is the kept prefix");
        let r = reason(p);
        assert_eq!(
            r,
            format!(
                "decode: the line is 2000000 bytes, over the 1048576-byte limit; the reject keeps its first {} bytes",
                prefix.len()
            )
        );
        assert!(!r.contains("secret"));

        // A prefix that is not UTF-8 is base64 in the body; the reason counts the raw bytes.
        let p = processor.process(message(
            &B64.encode(b"{\"a\": \"\xff"),
            &[
                (OVERSIZED_LINE_ATTRIBUTE, "1048577"),
                (INVALID_UTF8_ATTRIBUTE, "true"),
            ],
        ));
        assert_eq!(
            reason(p),
            "decode: the line is 1048577 bytes, over the 1048576-byte limit; the reject keeps its first 8 bytes, base64-encoded as they are not valid UTF-8"
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_reject() {
        let processor = Processor::new("t", Vec::new(), None, None).unwrap();
        let p = processor.process(message(
            &B64.encode(b"\xff"),
            &[(INVALID_UTF8_ATTRIBUTE, "true")],
        ));
        assert!(reason(p).starts_with("decode: the line is not valid UTF-8"));
    }
}
