//! A batch on its way into Postgres: what it did ([`WriteReport`]), which parts have committed
//! ([`WriteProgress`]), and how a part Postgres refuses because of one row is split in halves
//! until that row is alone and can be written as a reject.

use super::{Sink, SinkError, is_row_error};
use crate::process::{Outcome, Processed};
use std::collections::HashMap;

/// The reject reason for a row Postgres refused. Only the primary message and SQLSTATE are
/// kept: the DETAIL line ("Failing row contains (...)") carries the row's values, and a few
/// messages quote the offending value after a colon, so that part is cut as well.
fn refusal_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => {
            let msg = d.message();
            let msg = msg.split_once(": \"").map_or(msg, |(head, _)| head);
            format!(
                "postgres refused the row: {msg} (SQLSTATE {})",
                d.code().unwrap_or_default()
            )
        }
        _ => "postgres refused the row".to_string(),
    }
}

/// What one committed write did.
#[derive(Debug, Default, Clone)]
pub struct WriteReport {
    /// Message ids committed in this write (new rows, new rejects and duplicates): safe to delete.
    pub acked: Vec<(String, String)>,
    /// Rows inserted or updated, in every output.
    pub rows: u64,
    /// Rows inserted or updated, by output table.
    pub rows_by_table: std::collections::BTreeMap<String, u64>,
    /// Rows an `ignore` or `upsert` output left alone (a stored row, or a newer one, won) or
    /// that a later message of the same batch superseded.
    pub unchanged_rows: u64,
    /// Messages acknowledged without rows: a filter matched, or no output did (`unmatched: skip`).
    pub skipped: u64,
    /// Rejects inserted (messages that failed processing or rows Postgres refused).
    pub rejects: u64,
    /// Messages the ledger had already seen, or seen twice in the batch: acknowledged, not written.
    pub duplicates: u64,
    /// Vault rows inserted (new tokens).
    pub vault_rows: u64,
    /// Encryptions performed, by key id (nonce budget).
    pub encryptions: HashMap<String, u64>,
}

impl WriteReport {
    /// Adds what another committed part did.
    fn merge(&mut self, o: WriteReport) {
        self.acked.extend(o.acked);
        self.rows += o.rows;
        for (t, n) in o.rows_by_table {
            *self.rows_by_table.entry(t).or_default() += n;
        }
        self.unchanged_rows += o.unchanged_rows;
        self.skipped += o.skipped;
        self.rejects += o.rejects;
        self.duplicates += o.duplicates;
        self.vault_rows += o.vault_rows;
        for (k, v) in o.encryptions {
            *self.encryptions.entry(k).or_default() += v;
        }
    }
}

/// One batch on its way into Postgres: what has committed so far and what has not.
///
/// Kept across retries, so that after a transient error only the uncommitted parts are written
/// again, and so that on giving up the caller can delete exactly the committed messages and
/// hand back exactly the others.
#[derive(Debug)]
pub struct WriteProgress<'a> {
    /// Parts still to write; the last one is written next.
    pending: Vec<&'a [Processed]>,
    /// What the committed parts did; `report.acked` lists exactly the committed messages.
    pub report: WriteReport,
}

impl<'a> WriteProgress<'a> {
    /// Nothing written yet.
    pub fn new(batch: &'a [Processed]) -> Self {
        Self {
            pending: vec![batch],
            report: WriteReport::default(),
        }
    }

    /// Whether every message has committed.
    pub fn is_done(&self) -> bool {
        self.pending.iter().all(|p| p.is_empty())
    }

    /// Number of messages not yet committed.
    pub fn pending_len(&self) -> usize {
        self.pending.iter().map(|p| p.len()).sum()
    }

    /// (message id, receipt handle) of every message not yet committed.
    pub fn pending_receipts(&self) -> Vec<(String, String)> {
        self.pending
            .iter()
            .flat_map(|p| p.iter())
            .map(|p| (p.message_id.clone(), p.receipt_handle.clone()))
            .collect()
    }
}

impl Sink {
    /// Writes a batch, splitting it to isolate rows Postgres refuses. A transient error is
    /// returned as is; see [`Sink::write_resumable`] to continue after one without rewriting
    /// the sub-batches that already committed.
    pub async fn write(&self, batch: &[Processed]) -> Result<WriteReport, SinkError> {
        let mut progress = WriteProgress::new(batch);
        self.write_resumable(&mut progress).await?;
        Ok(progress.report)
    }

    /// Writes what is still pending in `progress`, one transaction per part. A part Postgres
    /// refuses because of a row (SQLSTATE class 22 or 23) is split in halves until the row is
    /// alone, and that row is written as a reject with the reason; the rest commits.
    ///
    /// On any other error the failing part stays pending and the error is returned: committed
    /// parts are in `progress.report` (safe to delete), pending ones are not. Calling again
    /// resumes with the pending parts. If this future is dropped mid-write, the part being
    /// written also stays pending: it may have committed (the ledger then skips it later), but
    /// it is never reported as committed when it was not.
    pub async fn write_resumable(&self, progress: &mut WriteProgress<'_>) -> Result<(), SinkError> {
        while let Some(&part) = progress.pending.last() {
            if part.is_empty() {
                progress.pending.pop();
                continue;
            }
            match self.write_once(part).await {
                Ok(r) => {
                    progress.pending.pop();
                    progress.report.merge(r);
                }
                Err(SinkError::Db(e)) if is_row_error(&e) => {
                    if part.len() == 1 {
                        let reason = refusal_reason(&e);
                        let rejected = part
                            .iter()
                            .map(|p| reject_of(p, reason.clone()))
                            .collect::<Vec<_>>();
                        let r = self.write_once(&rejected).await?;
                        progress.pending.pop();
                        progress.report.merge(r);
                    } else {
                        progress.pending.pop();
                        let (left, right) = part.split_at(part.len() / 2);
                        progress.pending.push(right);
                        progress.pending.push(left);
                    }
                }
                Err(e) => {
                    if !progress.report.acked.is_empty() {
                        tracing::debug!(
                            committed = progress.report.acked.len(),
                            pending = progress.pending_len(),
                            "Part of a batch committed before an error; only the rest will be retried."
                        );
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// The reject for a row Postgres refused: it keeps the original body (encrypted like any other
/// reject), and the ledger marks the message as rejected.
fn reject_of(p: &Processed, reason: String) -> Processed {
    Processed {
        message_id: p.message_id.clone(),
        receipt_handle: p.receipt_handle.clone(),
        body: p.body.clone(),
        outcome: Outcome::Reject { reason },
    }
}
