//! When `--drain` may stop: only when the queue is empty *and* nothing is in flight.
//!
//! An empty receive alone proves little. On a FIFO queue the rest of a message group stays
//! hidden while one of its messages is in flight, so a poller that stops at the first empty
//! receive leaves messages behind; on any queue, messages another consumer holds (or that this
//! process hands back) come back later. So after an empty receive a poller asks here: while
//! this process holds messages it keeps polling; then the queue's own counts decide, and
//! messages that stay out of reach longer than a visibility timeout are reported as left.

use super::in_flight::InFlight;
use crate::source::QueueClient;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// The queue attributes that together say whether a queue is empty.
const COUNT_ATTRIBUTES: [&str; 3] = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
];

/// What a poller should do after an empty receive while draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The queue is empty and nothing is in flight: this poller is done.
    Done,
    /// Messages remain that may still arrive (in flight here, hidden, delayed): poll again.
    KeepPolling,
    /// Messages remain but stayed out of reach for longer than `patience`: stop and report.
    GiveUp,
}

/// Shared by the pollers of one draining run.
#[derive(Debug)]
pub(super) struct Drain {
    /// How long messages may stay counted but unreceivable before the run gives up on them:
    /// a visibility timeout plus a long poll, after which a message another consumer dropped
    /// is visible again.
    patience: Duration,
    /// Since when the queue has counted messages while this process held none.
    stuck_since: Mutex<Option<Instant>>,
    /// Messages the queue still counted when the run gave up or finished (-1: not known).
    left: AtomicI64,
}

impl Drain {
    /// A drain for a queue whose messages become visible again within `visibility_timeout`.
    pub fn new(visibility_timeout: Duration, wait: Duration) -> Self {
        Self {
            patience: visibility_timeout + wait * 2,
            stuck_since: Mutex::new(None),
            left: AtomicI64::new(-1),
        }
    }

    /// Decides after an empty receive. Reading the queue's counts may fail; then the empty
    /// receive has to do (as before), with a warning.
    pub async fn check(&self, in_flight: &InFlight, queue: &dyn QueueClient) -> Verdict {
        if !in_flight.is_empty() {
            // Ours to finish first; on FIFO queues their groups' next messages wait for them.
            self.reset();
            return Verdict::KeepPolling;
        }
        let names = COUNT_ATTRIBUTES.iter().map(|s| s.to_string()).collect();
        let counts = match queue.queue_attributes(names).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the queue's message counts; ending the drain on an empty receive.");
                return Verdict::Done;
            }
        };
        let left: u64 = COUNT_ATTRIBUTES
            .iter()
            .filter_map(|n| counts.get(*n).and_then(|v| v.trim().parse::<u64>().ok()))
            .fold(0, u64::saturating_add);
        self.left
            .store(i64::try_from(left).unwrap_or(i64::MAX), Ordering::Relaxed);
        if left == 0 {
            return Verdict::Done;
        }
        let Ok(mut since) = self.stuck_since.lock() else {
            return Verdict::GiveUp;
        };
        let first = *since.get_or_insert_with(Instant::now);
        if first.elapsed() >= self.patience {
            tracing::warn!(
                messages = left,
                waited_secs = first.elapsed().as_secs(),
                "The queue still counts messages that no receive returns (held by another consumer, or delayed); ending the drain with them left."
            );
            Verdict::GiveUp
        } else {
            tracing::debug!(
                messages = left,
                "The queue still counts messages; polling again."
            );
            Verdict::KeepPolling
        }
    }

    /// Messages were received again: the queue is moving.
    pub fn reset(&self) {
        if let Ok(mut since) = self.stuck_since.lock() {
            *since = None;
        }
    }

    /// Messages the queue counted at the last check, if it was read.
    pub fn left(&self) -> Option<u64> {
        u64::try_from(self.left.load(Ordering::Relaxed)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{BatchEntry, BatchFailure, ReceiveRequest, ReceivedMessage, SqsError};
    use futures::future::BoxFuture;
    use std::collections::HashMap;

    /// A queue that only answers attribute reads, with fixed counts.
    struct Counts(HashMap<String, String>);

    impl QueueClient for Counts {
        fn protocol_name(&self) -> &'static str {
            "counts"
        }
        fn receive(
            &self,
            _: ReceiveRequest,
        ) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, SqsError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn delete_batch(
            &self,
            _: Vec<BatchEntry>,
        ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn change_visibility_batch(
            &self,
            _: Vec<BatchEntry>,
            _: i32,
        ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn send_batch(
            &self,
            _: Vec<BatchEntry>,
        ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn queue_attributes(
            &self,
            _: Vec<String>,
        ) -> BoxFuture<'_, Result<HashMap<String, String>, SqsError>> {
            let a = self.0.clone();
            Box::pin(async move { Ok(a) })
        }
    }

    fn counts(visible: u64, hidden: u64) -> Counts {
        Counts(HashMap::from([
            ("ApproximateNumberOfMessages".into(), visible.to_string()),
            (
                "ApproximateNumberOfMessagesNotVisible".into(),
                hidden.to_string(),
            ),
            ("ApproximateNumberOfMessagesDelayed".into(), "0".into()),
        ]))
    }

    #[tokio::test]
    async fn holding_messages_or_a_counted_queue_keeps_polling_until_patience_runs_out() {
        let in_flight = InFlight::default();
        let d = Drain::new(Duration::from_millis(40), Duration::ZERO);
        in_flight.add(["r".to_string()].into_iter(), Instant::now());
        assert_eq!(
            d.check(&in_flight, &counts(0, 0)).await,
            Verdict::KeepPolling
        );
        in_flight.remove(["r"].into_iter());
        assert_eq!(d.check(&in_flight, &counts(0, 0)).await, Verdict::Done);
        assert_eq!(d.left(), Some(0));
        // Hidden by someone else: poll again, then give up after the patience.
        assert_eq!(
            d.check(&in_flight, &counts(2, 3)).await,
            Verdict::KeepPolling
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(d.check(&in_flight, &counts(2, 3)).await, Verdict::GiveUp);
        assert_eq!(d.left(), Some(5));
    }
}
