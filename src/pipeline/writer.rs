//! Writers: collect processed messages into batches, write each batch in one transaction
//! (retrying transient errors), then pass what committed to the acker and hand back what did
//! not. Several writers run at once, each with its own transaction.

use super::budget::Charge;
use super::in_flight::InFlight;
use super::{PipelineError, Queued, Shared};
use crate::retry::{Backoff, retry};
use crate::sink::{Sink, SinkError, WriteProgress};
use crate::source::{BatchEntry, QueueClient, SqsError};
use crate::stats::{BatchCounts, Stats};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Retries of handing messages back (visibility 0): brief, since they come back anyway.
const RELEASE_BACKOFF: Backoff = Backoff {
    max_elapsed: Duration::from_secs(10),
    ..Backoff::SQS
};

/// What one writer needs besides the shared handles.
pub(super) struct Writer {
    /// The queue of processed messages, shared by all writers.
    pub rx: Arc<Mutex<mpsc::Receiver<Queued>>>,
    pub sink: Arc<Sink>,
    pub batch_size: usize,
    /// A partial batch is written after this long.
    pub flush_interval: Duration,
    /// Committed (message id, receipt handle) pairs, for the acker.
    pub ack_tx: mpsc::UnboundedSender<Vec<(String, String)>>,
    /// Cancelled when the shutdown deadline passes: abandon the write in progress.
    pub hard_stop: CancellationToken,
    /// Messages handed back because shutdown ran out of time.
    pub unwritten: Arc<AtomicU64>,
}

/// How one batch's write ended.
enum WriteEnd {
    Done,
    /// Retrying cannot help (or retries ran out); the run stops.
    Failed(SinkError),
    /// The shutdown deadline passed.
    Deadline,
    /// Another task failed and the run is stopping: no more retries.
    Aborted,
}

/// Writes batches until the queue of processed messages is closed and empty, or the run fails.
pub(super) async fn write_loop(w: Writer, shared: Shared) {
    let abort = shared.failure.aborted();
    loop {
        // A failed run writes nothing more: what is still queued is handed back at the end.
        if abort.is_cancelled() {
            return;
        }
        let (batch, charge, closed) = collect(&w).await;
        if !batch.is_empty() {
            write_batch(&w, &shared, batch).await;
            // The batch's memory is free now; only receipts stay until deleted.
            drop(charge);
        }
        if closed {
            return;
        }
    }
}

/// Collects one batch: waits for the first message, then takes more up to the flush interval.
/// Returns the batch, its memory charge, and whether the queue is closed.
async fn collect(w: &Writer) -> (Vec<crate::process::Processed>, Charge, bool) {
    let mut batch = Vec::with_capacity(w.batch_size.min(1024));
    let mut charge = Charge::none();
    let mut rx = w.rx.lock().await;
    match rx.recv().await {
        Some(q) => {
            charge.merge(q.charge);
            batch.push(q.processed);
        }
        None => return (batch, charge, true),
    }
    let deadline = tokio::time::Instant::now() + w.flush_interval;
    let mut closed = false;
    while batch.len() < w.batch_size {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(q)) => {
                charge.merge(q.charge);
                batch.push(q.processed);
            }
            Ok(None) => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    (batch, charge, closed)
}

/// Writes one batch with retries, counts it, acks what committed and hands back the rest.
async fn write_batch(w: &Writer, shared: &Shared, batch: Vec<crate::process::Processed>) {
    let stats = &shared.stats;
    let started = Instant::now();
    let mut progress = WriteProgress::new(&batch);
    // Shutdown does not interrupt a write (flushing what was received is the point of it); only
    // its deadline does, or another task's failure between retries.
    let end = write_with_retries(&w.sink, &mut progress, stats, &w.hard_stop, shared).await;
    let report = std::mem::take(&mut progress.report);
    let pending = progress.pending_receipts();
    stats.add_batch(
        &BatchCounts {
            rows: report.rows,
            rows_by_table: report.rows_by_table,
            unchanged_rows: report.unchanged_rows,
            skipped: report.skipped,
            rejects: report.rejects,
            duplicates: report.duplicates,
            vault_rows: report.vault_rows,
        },
        &report.encryptions,
        started.elapsed(),
    );
    match &end {
        WriteEnd::Done => tracing::debug!(
            rows = report.rows,
            rejects = report.rejects,
            duplicates = report.duplicates,
            skipped = report.skipped,
            "Committed a batch."
        ),
        WriteEnd::Failed(e) => tracing::error!(
            error = %e, committed = report.acked.len(), released = pending.len(),
            "Could not write a batch, and retrying cannot help; handing its unwritten messages back to the queue and stopping."
        ),
        WriteEnd::Deadline => {
            w.unwritten
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
        }
        WriteEnd::Aborted => tracing::warn!(
            committed = report.acked.len(),
            released = pending.len(),
            "The run is stopping after a failure; handing this batch's unwritten messages back to the queue."
        ),
    }
    // Only what committed is deleted; the rest goes back to the queue at once. If the acker
    // is gone (it failed), the committed receipts stay in flight and are handed back at the
    // end: the ledger skips them on redelivery.
    if !report.acked.is_empty() {
        let _ = w.ack_tx.send(report.acked);
    }
    if !pending.is_empty() {
        release(shared.queue.as_deref(), &pending, &shared.in_flight, stats).await;
    }
    if let WriteEnd::Failed(e) = end {
        shared.failure.fail(PipelineError::Sink(e));
    }
}

/// Writes a batch, retrying transient errors with backoff; each retry resumes with the parts
/// that have not committed. Gives up on a permanent error, after `Backoff::WRITE.max_elapsed`,
/// when another task failed (between attempts), or when `hard_stop` fires (abandoning even a
/// statement in progress, e.g. one waiting on a lock).
async fn write_with_retries(
    sink: &Sink,
    progress: &mut WriteProgress<'_>,
    stats: &Stats,
    hard_stop: &CancellationToken,
    shared: &Shared,
) -> WriteEnd {
    let backoff = Backoff::WRITE;
    let abort = shared.failure.aborted();
    let first = Instant::now();
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            r = sink.write_resumable(progress) => r,
            _ = hard_stop.cancelled() => return WriteEnd::Deadline,
        };
        let e = match result {
            Ok(()) => return WriteEnd::Done,
            Err(e) => e,
        };
        attempt += 1;
        if !e.is_retriable() {
            return WriteEnd::Failed(e);
        }
        if abort.is_cancelled() {
            return WriteEnd::Aborted;
        }
        if first.elapsed() >= backoff.max_elapsed {
            tracing::error!(
                attempts = attempt,
                seconds = first.elapsed().as_secs(),
                "Postgres writes kept failing; giving up."
            );
            return WriteEnd::Failed(e);
        }
        let delay = backoff.delay(attempt);
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            attempt, delay_ms = delay.as_millis() as u64, pending = progress.pending_len(), error = %e,
            "Writing a batch to Postgres failed; retrying."
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = hard_stop.cancelled() => return WriteEnd::Deadline,
            _ = abort.cancelled() => return WriteEnd::Aborted,
        }
    }
}

/// Makes messages visible again at once so another attempt (or process) picks them up.
pub(super) async fn release(
    queue: Option<&dyn QueueClient>,
    receipts: &[(String, String)],
    in_flight: &InFlight,
    stats: &Stats,
) {
    in_flight.remove(receipts.iter().map(|(_, r)| r.as_str()));
    stats
        .in_flight
        .store(in_flight.len() as u64, Ordering::Relaxed);
    let Some(q) = queue else { return };
    let never = CancellationToken::new();
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, r))| BatchEntry {
                id: i.to_string(),
                value: r.clone(),
            })
            .collect::<Vec<_>>();
        // A short retry: a message not handed back still returns after its visibility
        // timeout, so this must not hold up the run for long.
        let handed_back = retry(
            RELEASE_BACKOFF,
            &never,
            SqsError::is_retriable,
            |e, attempt, _| {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(attempt, error = %e, "Handing messages back failed; retrying.");
            },
            || q.change_visibility_batch(entries.clone(), 0),
        );
        match handed_back.await {
            Ok(failed) => {
                // An endpoint may report more failures than entries; never wrap.
                let released = chunk.len().saturating_sub(failed.len());
                stats.released.fetch_add(released as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not release messages; they return after their visibility timeout.")
            }
        }
    }
}
