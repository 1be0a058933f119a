//! The acker: deletes committed messages from the queue, ten per call and several calls at
//! once, so deleting keeps up with writing.
//!
//! A delete that fails is not fatal: the message comes back after its visibility timeout and
//! the ledger skips it, so the worst case is a redelivery, never a duplicate row.

use super::Shared;
use crate::retry::{Backoff, retry};
use crate::source::{BatchEntry, SqsError};
use futures::StreamExt;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Deletes what the writers report as committed (message id, receipt handle), until every
/// writer is gone. `hard_stop` abandons retries once the shutdown deadline has passed.
pub(super) async fn ack_loop(
    mut rx: mpsc::UnboundedReceiver<Vec<(String, String)>>,
    shared: Shared,
    hard_stop: CancellationToken,
) {
    let Shared {
        queue,
        in_flight,
        stats,
        ..
    } = shared;
    while let Some(acked) = rx.recv().await {
        let Some(q) = &queue else {
            stats
                .deleted
                .fetch_add(acked.len() as u64, Ordering::Relaxed);
            continue;
        };
        let chunks: Vec<Vec<(String, String)>> = acked.chunks(10).map(<[_]>::to_vec).collect();
        futures::stream::iter(chunks)
            .for_each_concurrent(8, |chunk| {
                let (q, in_flight, stats, hard_stop) = (q.clone(), in_flight.clone(), stats.clone(), hard_stop.clone());
                async move {
                    let entries: Vec<BatchEntry> =
                        chunk.iter().enumerate().map(|(i, (_, r))| BatchEntry { id: i.to_string(), value: r.clone() }).collect();
                    let res = retry(
                        Backoff::SQS,
                        &hard_stop,
                        SqsError::is_retriable,
                        |e, attempt, _| {
                            stats.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(attempt, error = %e, "Deleting messages failed; retrying.");
                        },
                        || q.delete_batch(entries.clone()),
                    )
                    .await;
                    match res {
                        Ok(failed) => {
                            for f in &failed {
                                // An expired receipt handle means the message was redelivered; the
                                // ledger will skip it when it comes back.
                                tracing::warn!(code = %f.code, message = %f.message, "A message could not be deleted; the ledger will skip it on redelivery.");
                            }
                            // An endpoint may report more failures than entries; never wrap.
                            let deleted = chunk.len().saturating_sub(failed.len());
                            stats.deleted.fetch_add(deleted as u64, Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!(error = %e, "Deleting messages failed; the ledger will skip them on redelivery."),
                    }
                    in_flight.remove(chunk.iter().map(|(_, r)| r.as_str()));
                    stats.in_flight.store(in_flight.len() as u64, Ordering::Relaxed);
                }
            })
            .await;
    }
}
