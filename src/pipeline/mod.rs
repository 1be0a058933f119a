//! Wires source → process → sink → ack, and owns the delivery rules:
//!
//! - A message is deleted only after its effect (row or reject) is committed, and only the
//!   committed ones: a batch that commits part-way before an error deletes exactly that part.
//! - In-flight messages have their visibility extended (ChangeMessageVisibilityBatch) before half
//!   the timeout has passed, for as long as they are queued, being written or being deleted.
//! - Transient errors are retried with bounded exponential backoff and jitter; a batch that still
//!   cannot be written is released at once (visibility 0) for redelivery, and an error no retry
//!   can fix (missing table, permissions, keys) stops the run instead of cycling every message
//!   through the queue.
//! - Shutdown stops receiving, flushes, commits and deletes what is in flight; past a deadline
//!   (half the visibility timeout) unwritten messages are released rather than waited on.
//!
//! - A task that fails or panics stops the run: receiving stops, no batch is retried any more,
//!   every message this process still holds is handed back to the queue, and the run returns
//!   the error (the binary exits non-zero). Nothing is deleted that did not commit.
//!
//! Tasks, one file each: [`intake`] (`pollers` receive and process; CPU work is a few µs per
//! message; [`pollers`] decides how many loops run), [`writer`] (`writers` batch and commit), [`acker`] (deletes in batches of 10
//! concurrently), [`visibility`] (extends what is held). In flight is bounded by count
//! ([`in_flight`]) and by bytes ([`budget`]), so a backlog stays in SQS, not in memory.

mod acker;
mod budget;
mod drain;
mod in_flight;
mod intake;
mod pollers;
mod visibility;
mod writer;

pub use intake::parse_redrive_policy;

use crate::process::{Processed, Processor};
use crate::sink::{Sink, SinkError};
use crate::source::{QueueClient, Source, SqsError};
use crate::spec::Spec;
use crate::stats::{Stats, Summary};
use budget::{ByteBudget, Charge};
use in_flight::InFlight;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("SQS: {0}")]
    Sqs(#[from] SqsError),
    #[error("{0}")]
    Sink(#[from] SinkError),
    #[error("cannot read input file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// Shutdown could not write everything before its deadline.
    #[error(
        "shutdown deadline passed with {unwritten} message(s) not written; they were handed back to the queue \
         and will be redelivered (the ledger skips any that did commit)"
    )]
    ShutdownTimeout { unwritten: u64 },
    /// A task of the run panicked or was cancelled: a bug, reported rather than hidden.
    #[error(
        "the {task} task failed ({message}); the run stopped and handed back the messages it held"
    )]
    TaskFailed {
        /// Which task: poller, file reader, writer, acker or heartbeat.
        task: &'static str,
        /// The panic message, or why the task ended.
        message: String,
    },
}

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop when the queue is empty (or the file is read) instead of polling forever.
    pub drain: bool,
}

/// A processed message on its way to a writer, with the memory it is charged.
pub(crate) struct Queued {
    processed: Processed,
    charge: Charge,
}

/// The first error that stops a run, and the token that tells every task to stop.
#[derive(Clone)]
struct Failure {
    first: Arc<std::sync::Mutex<Option<PipelineError>>>,
    /// Cancelled on failure: pollers stop, writers stop taking batches and retrying.
    abort: CancellationToken,
    /// Cancelled on failure too, so pollers leave their loops.
    stop_polling: CancellationToken,
}

impl Failure {
    fn new(stop_polling: CancellationToken) -> Self {
        Self {
            first: Arc::default(),
            abort: CancellationToken::new(),
            stop_polling,
        }
    }
    /// Records `e` (the first error wins) and stops the run.
    fn fail(&self, e: PipelineError) {
        if let Ok(mut f) = self.first.lock() {
            f.get_or_insert(e);
        }
        self.abort.cancel();
        self.stop_polling.cancel();
    }
    /// The token cancelled on failure.
    fn aborted(&self) -> &CancellationToken {
        &self.abort
    }
    /// Whether the run failed.
    fn failed(&self) -> bool {
        self.abort.is_cancelled()
    }
    /// The error, once.
    fn take(&self) -> Option<PipelineError> {
        self.first.lock().ok().and_then(|mut f| f.take())
    }
}

/// What every task of one run shares.
#[derive(Clone)]
struct Shared {
    queue: Option<Arc<dyn QueueClient>>,
    in_flight: Arc<InFlight>,
    budget: ByteBudget,
    stats: Arc<Stats>,
    failure: Failure,
}

/// Spawns one task of the run; if it panics (or is cancelled) the run fails with
/// [`PipelineError::TaskFailed`] at once, not only when the task is awaited at the end.
fn spawn_task<F>(task: &'static str, fut: F, failure: &Failure) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let inner = tokio::spawn(fut);
    let failure = failure.clone();
    tokio::spawn(async move {
        if let Err(e) = inner.await {
            failure.fail(task_failed(task, e));
        }
    })
}

/// The error for a task that panicked or was cancelled (logged here, once).
fn task_failed(task: &'static str, e: tokio::task::JoinError) -> PipelineError {
    let message = if e.is_panic() {
        let p = e.into_panic();
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panicked".into())
    } else {
        "cancelled".into()
    };
    tracing::error!(task, error = %message, "A task of the run failed; stopping the run and handing back the messages it held.");
    PipelineError::TaskFailed { task, message }
}

/// How long a receive call already sent may still deliver after shutdown began. A receive that
/// finds messages answers within milliseconds; waiting a little for it means those messages are
/// written now rather than left invisible until their timeout. A long poll of an empty queue is
/// simply abandoned after this.
const RECEIVE_GRACE: Duration = Duration::from_secs(1);

/// How long handing back held messages may take when a run fails; past it they return after
/// their visibility timeout anyway.
const HAND_BACK_LIMIT: Duration = Duration::from_secs(15);

/// How long shutdown may spend writing and deleting before it gives up and hands the rest back:
/// half the visibility timeout, so a replacement process is not kept waiting for the messages.
fn shutdown_deadline(source: &Source) -> Duration {
    match source {
        Source::Sqs { config, .. } => {
            (Duration::from_secs(u64::from(config.visibility_timeout_secs)) / 2)
                .clamp(Duration::from_secs(1), Duration::from_secs(300))
        }
        Source::File(_) => Duration::from_secs(30),
    }
}

/// Runs a spec's pipeline from `source` until drained or cancelled.
///
/// Cancelling `cancel` is a graceful shutdown: receiving stops, what was received is written
/// and deleted, and the summary is returned. If writing cannot finish within
/// [`shutdown_deadline`] (Postgres down, a table locked), the rest is released for redelivery
/// and [`PipelineError::ShutdownTimeout`] is returned. If any task fails or panics, the run
/// stops, hands back what it holds and returns that error.
pub async fn run(
    spec: &Spec,
    processor: Processor,
    sink: Arc<Sink>,
    source: Source,
    opts: RunOptions,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    let queue = source.queue();
    let capacity = (spec.target.batch_size * spec.target.writers as usize).max(10);
    let (tx, rx) = mpsc::channel::<Queued>(capacity);
    let rx = Arc::new(Mutex::new(rx));
    // Unbounded on purpose: writers must never wait on SQS to go on committing (an SQS outage
    // would otherwise stall Postgres writes too). Its size is bounded by the in-flight cap below.
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Vec<(String, String)>>();
    // Queued + being written + being deleted: beyond this, pollers wait instead of receiving.
    let max_in_flight = capacity * 3;
    let stop_polling = cancel.child_token();
    let failure = Failure::new(stop_polling.clone());
    let shared = Shared {
        queue: queue.clone(),
        in_flight: Arc::new(InFlight::default()),
        budget: ByteBudget::new(spec.source.max_in_flight_bytes()),
        stats: stats.clone(),
        failure: failure.clone(),
    };
    let unwritten = Arc::new(AtomicU64::new(0));
    let drain = match (&source, opts.drain) {
        (Source::Sqs { config, .. }, true) => Some(Arc::new(drain::Drain::new(
            Duration::from_secs(u64::from(config.visibility_timeout_secs)),
            Duration::from_secs(u64::from(config.wait_time_secs.max(1))),
        ))),
        _ => None,
    };

    // Past the shutdown deadline, writes and deletes in progress are abandoned.
    let hard_stop = CancellationToken::new();
    let deadline_task = {
        let (cancel, hard_stop, grace) = (
            cancel.clone(),
            hard_stop.clone(),
            shutdown_deadline(&source),
        );
        tokio::spawn(async move {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
            tracing::warn!(
                deadline_secs = grace.as_secs(),
                "Shutdown is taking too long; handing unwritten messages back to the queue."
            );
            hard_stop.cancel();
        })
    };

    if let Source::Sqs { config, client } = &source {
        intake::check_queue_settings(spec, config, client.as_ref()).await;
    }

    let mut producers = Vec::new();
    match &source {
        Source::Sqs {
            config: cfg,
            client: q,
        } => {
            // The loops (a fixed number, or as many as `auto` finds useful) run under one
            // supervising task; a panic in any of them fails the run like any task's.
            let mode = cfg.pollers;
            let (cfg, q, processor, tx, drain) = (
                cfg.clone(),
                q.clone(),
                processor.clone(),
                tx.clone(),
                drain.clone(),
            );
            let room =
                u32::try_from(max_in_flight / cfg.max_messages.max(1) as usize).unwrap_or(u32::MAX);
            let make = move |n, signals| intake::Poller {
                n,
                cfg: cfg.clone(),
                queue: q.clone(),
                processor: processor.clone(),
                tx: tx.clone(),
                max_in_flight,
                opts,
                drain: drain.clone(),
                signals,
            };
            producers.push(spawn_task(
                "poller",
                pollers::supervise(mode, room, make, shared.clone(), stop_polling.clone()),
                &failure,
            ));
        }
        Source::File(f) => {
            let path = f.path.clone();
            let (p, tx2, shared2, stop) = (
                processor.clone(),
                tx.clone(),
                shared.clone(),
                stop_polling.clone(),
            );
            let chunk = spec.target.batch_size.min(1000);
            producers.push(spawn_task(
                "file reader",
                async move {
                    let failure = shared2.failure.clone();
                    if let Err(e) = intake::file_loop(&path, chunk, p, tx2, shared2, stop).await {
                        failure.fail(e);
                    }
                },
                &failure,
            ));
        }
    }
    drop(tx);

    let mut writers = Vec::new();
    for _ in 0..spec.target.writers {
        let w = writer::Writer {
            rx: rx.clone(),
            sink: sink.clone(),
            batch_size: spec.target.batch_size,
            flush_interval: Duration::from_millis(spec.target.flush_interval_ms),
            ack_tx: ack_tx.clone(),
            hard_stop: hard_stop.clone(),
            unwritten: unwritten.clone(),
        };
        writers.push(spawn_task(
            "writer",
            writer::write_loop(w, shared.clone()),
            &failure,
        ));
    }
    drop(ack_tx);

    let acker = spawn_task(
        "acker",
        acker::ack_loop(ack_rx, shared.clone(), hard_stop.clone()),
        &failure,
    );
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = match &source {
        Source::Sqs { config, client } => Some(spawn_task(
            "heartbeat",
            visibility::heartbeat_loop(
                config.visibility_timeout_secs,
                client.clone(),
                shared.in_flight.clone(),
                stats.clone(),
                heartbeat_stop.clone(),
            ),
            &failure,
        )),
        Source::File(_) => None,
    };

    // The supervising wrappers never panic themselves, so joining them cannot fail; failures of
    // the tasks inside are already recorded in `failure`.
    for task in producers.into_iter().chain(writers) {
        let _ = task.await;
    }
    let _ = acker.await;
    heartbeat_stop.cancel();
    if let Some(h) = heartbeat {
        let _ = h.await;
    }
    deadline_task.abort();
    if failure.failed() {
        hand_back(&shared, &rx).await;
    }
    if let Some(e) = failure.take() {
        return Err(e);
    }
    let unwritten = unwritten.load(Ordering::Relaxed);
    if unwritten > 0 {
        return Err(PipelineError::ShutdownTimeout { unwritten });
    }
    let mut summary = stats.summary(started);
    summary.left_in_queue = drain.and_then(|d| d.left());
    Ok(summary)
}

/// After a failure: drops what is still queued for writers and makes every message this
/// process still holds visible again, so another attempt (or process) takes it at once.
/// Committed but not yet deleted messages are among them; the ledger skips those.
async fn hand_back(shared: &Shared, rx: &Mutex<mpsc::Receiver<Queued>>) {
    {
        let mut rx = rx.lock().await;
        rx.close();
        while rx.try_recv().is_ok() {}
    }
    if shared.in_flight.is_empty() {
        return;
    }
    let receipts: Vec<(String, String)> = shared
        .in_flight
        .take_all()
        .into_iter()
        .map(|r| (String::new(), r))
        .collect();
    if receipts.is_empty() {
        return;
    }
    tracing::warn!(
        messages = receipts.len(),
        "Handing the messages this run still held back to the queue."
    );
    let release = writer::release(
        shared.queue.as_deref(),
        &receipts,
        &shared.in_flight,
        &shared.stats,
    );
    if tokio::time::timeout(HAND_BACK_LIMIT, release)
        .await
        .is_err()
    {
        tracing::warn!(
            "Handing messages back took too long; they return after their visibility timeout."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::in_flight::InFlight;
    use super::*;

    #[test]
    fn redrive_policy_count_as_number_or_string() {
        let aws = r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:dlq","maxReceiveCount":5}"#;
        let emu =
            r#"{"deadLetterTargetArn": "arn:aws:sqs:us-east-1:1:dlq", "maxReceiveCount": "3"}"#;
        assert_eq!(
            parse_redrive_policy(aws),
            Some(("arn:aws:sqs:us-east-1:1:dlq".into(), 5))
        );
        assert_eq!(parse_redrive_policy(emu).map(|p| p.1), Some(3));
        assert_eq!(parse_redrive_policy("{}"), None);
        assert_eq!(parse_redrive_policy("not json"), None);
    }

    #[tokio::test]
    async fn in_flight_waits_for_room_and_extends_only_live_receipts() {
        let f = Arc::new(InFlight::default());
        let now = Instant::now();
        f.add(
            ["a".to_string(), "b".to_string()].into_iter(),
            now + Duration::from_millis(10),
        );
        f.add(
            ["c".to_string()].into_iter(),
            now + Duration::from_secs(100),
        );
        let mut due = f.due(Duration::from_secs(1));
        due.sort();
        assert_eq!(due, ["a", "b"]);
        f.remove(["a"].into_iter());
        f.extended(&due, now + Duration::from_secs(100));
        assert!(
            f.due(Duration::from_secs(1)).is_empty(),
            "extended receipts are no longer due"
        );
        assert_eq!(f.len(), 2, "a receipt deleted meanwhile is not added back");

        let stop = CancellationToken::new();
        let waiter = tokio::spawn({
            let f = f.clone();
            let stop = stop.clone();
            async move { f.wait_for_room(2, &stop).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "two in flight with a cap of two: no room"
        );
        f.remove(["b"].into_iter());
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("room after a removal")
            .expect("join");
    }
}
