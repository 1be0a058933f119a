//! The visibility heartbeat: messages being queued, written or deleted stay invisible to other
//! consumers for as long as this process holds them.

use super::in_flight::InFlight;
use crate::source::{BatchEntry, QueueClient, SqsError};
use crate::stats::Stats;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Extends the visibility of every in-flight message before half its timeout has passed, until
/// `stop` fires.
pub(super) async fn heartbeat_loop(
    visibility_timeout_secs: u32,
    queue: Arc<dyn QueueClient>,
    in_flight: Arc<InFlight>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let vt = Duration::from_secs(u64::from(visibility_timeout_secs));
    // Checking every quarter of the timeout and extending anything past its half leaves at
    // least a quarter of the timeout for the extension call itself.
    let tick = (vt / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => return,
        }
        let due = in_flight.due(vt / 2);
        if due.is_empty() {
            continue;
        }
        tracing::debug!(
            messages = due.len(),
            "Extending the visibility of in-flight messages."
        );
        let chunks: Vec<Vec<String>> = due.chunks(10).map(<[_]>::to_vec).collect();
        let results: Vec<(usize, Option<SqsError>)> = futures::stream::iter(chunks)
            .map(|chunk| {
                let (queue, in_flight) = (queue.clone(), in_flight.clone());
                async move {
                    // The new deadline counts from before the call, so it is never later than SQS's.
                    let deadline = Instant::now() + vt;
                    let entries = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, r)| BatchEntry {
                            id: i.to_string(),
                            value: r.clone(),
                        })
                        .collect();
                    match queue
                        .change_visibility_batch(entries, visibility_timeout_secs as i32)
                        .await
                    {
                        // Entry failures are receipts deleted meanwhile or already expired (the
                        // message may then be redelivered; the ledger skips it).
                        Ok(failed) => {
                            in_flight.extended(&chunk, deadline);
                            (failed.len(), None)
                        }
                        Err(e) => {
                            // A transient failure stays due, so the next tick tries again; a
                            // permanent one (receipts the queue no longer knows) is not retried
                            // every tick but only when due again.
                            if !e.is_retriable() {
                                in_flight.extended(&chunk, deadline);
                            }
                            (chunk.len(), Some(e))
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let failed: usize = results.iter().map(|(n, _)| n).sum();
        let first_error = results.into_iter().find_map(|(_, e)| e);
        if let Some(e) = first_error {
            // One line per tick, however many calls failed (an outage would otherwise flood the log).
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                failed, due = due.len(), error = %e,
                "Extending message visibility failed; messages may be redelivered (the ledger skips them). Retrying on the next tick."
            );
        } else if failed > 0 {
            tracing::debug!(
                failed,
                "Some messages' visibility could not be extended (already deleted or expired)."
            );
        }
    }
}
