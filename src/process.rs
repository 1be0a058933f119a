//! One message through decode → extract → transforms, yielding a row or a reject reason.
//!
//! Pure and synchronous: no I/O, so it is shared by `run`, `preview` and `test`.

use crate::decode::decode;
use crate::extract::extract;
use crate::source::ReceivedMessage;
use crate::spec::Column;
use crate::transform::{Context, PendingVault, Tokenizer, Transform};
use crate::value::Val;
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
    tokenizer: Option<Tokenizer>,
    max_receive_count: Option<u32>,
}

impl Processor {
    /// `tokenizer` is required when a column hashes or encrypts (checked by the caller).
    /// Fails, naming the column and transform, only for columns that skipped spec validation.
    pub fn new(
        columns: Vec<Column>,
        tokenizer: Option<Tokenizer>,
        max_receive_count: Option<u32>,
    ) -> Result<Self, String> {
        let chains = columns
            .iter()
            .map(Transform::build_chain)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            columns: Arc::new(columns),
            chains: Arc::new(chains),
            tokenizer,
            max_receive_count,
        })
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
        if msg
            .attributes
            .contains_key(crate::source::file::INVALID_UTF8_ATTRIBUTE)
        {
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
        for (col, chain) in self.columns.iter().zip(self.chains.iter()) {
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
                tokenizer: self.tokenizer.as_ref(),
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
