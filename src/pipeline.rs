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
//! Tasks: `pollers` receive and process (CPU work is small: a few µs per message), `writers`
//! batch and commit, one `acker` deletes in batches of 10 concurrently, one `heartbeat`
//! extends visibility. The channel to the writers is bounded and so is the number of messages
//! in flight, so a backlog stays in SQS, not in memory.

use crate::process::{Processed, Processor};
use crate::retry::{Backoff, retry};
use crate::sink::{Sink, SinkError, WriteProgress};
use crate::source::file::FileSource;
use crate::source::{BatchEntry, QueueClient, ReceiveRequest, SqsError};
use crate::spec::{SourceConfig, Spec, SqsSourceConfig};
use crate::stats::{BatchCounts, Stats, Summary};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, mpsc};
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
}

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop when the queue is empty (or the file is read) instead of polling forever.
    pub drain: bool,
}

/// Messages received and not yet deleted, by receipt handle, with their visibility deadline.
#[derive(Default)]
struct InFlight {
    map: std::sync::Mutex<HashMap<String, Instant>>,
    /// Woken whenever messages leave, so pollers waiting for room can go on.
    freed: Notify,
}

impl InFlight {
    fn add(&self, receipts: impl Iterator<Item = String>, deadline: Instant) {
        if let Ok(mut m) = self.map.lock() {
            for r in receipts {
                m.insert(r, deadline);
            }
        }
    }
    fn remove<'a>(&self, receipts: impl Iterator<Item = &'a str>) {
        if let Ok(mut m) = self.map.lock() {
            for r in receipts {
                m.remove(r);
            }
        }
        self.freed.notify_waiters();
    }
    /// Receipts whose visibility ends within `window`.
    fn due(&self, window: Duration) -> Vec<String> {
        let now = Instant::now();
        let Ok(m) = self.map.lock() else {
            return Vec::new();
        };
        m.iter()
            .filter(|(_, d)| d.saturating_duration_since(now) <= window)
            .map(|(r, _)| r.clone())
            .collect()
    }
    /// Records a successful extension. Receipts deleted meanwhile are not added back.
    fn extended(&self, receipts: &[String], deadline: Instant) {
        if let Ok(mut m) = self.map.lock() {
            for r in receipts {
                if let Some(d) = m.get_mut(r) {
                    *d = deadline;
                }
            }
        }
    }
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
    /// Waits until fewer than `cap` messages are in flight (or `stop` fires).
    async fn wait_for_room(&self, cap: usize, stop: &CancellationToken) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before checking, so a removal between the check and the wait is not missed.
            freed.as_mut().enable();
            if self.len() < cap {
                return;
            }
            tokio::select! {
                _ = freed => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Set once by whichever task hits an error that stops the run; reported as the run's error.
type Fatal = Arc<std::sync::Mutex<Option<PipelineError>>>;

fn set_fatal(fatal: &Fatal, e: PipelineError) {
    if let Ok(mut f) = fatal.lock() {
        f.get_or_insert(e);
    }
}

/// How long a receive call already sent may still deliver after shutdown began. A receive that
/// finds messages answers within milliseconds; waiting a little for it means those messages are
/// written now rather than left invisible until their timeout. A long poll of an empty queue is
/// simply abandoned after this.
const RECEIVE_GRACE: Duration = Duration::from_secs(1);

/// How long shutdown may spend writing and deleting before it gives up and hands the rest back:
/// half the visibility timeout, so a replacement process is not kept waiting for the messages.
fn shutdown_deadline(spec: &Spec) -> Duration {
    match &spec.source {
        SourceConfig::Sqs(cfg) => (Duration::from_secs(u64::from(cfg.visibility_timeout_secs)) / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(300)),
        SourceConfig::File(_) => Duration::from_secs(30),
    }
}

/// Runs a spec until drained or cancelled.
///
/// Cancelling `cancel` is a graceful shutdown: receiving stops, what was received is written
/// and deleted, and the summary is returned. If writing cannot finish within
/// [`shutdown_deadline`] (Postgres down, a table locked), the rest is released for redelivery
/// and [`PipelineError::ShutdownTimeout`] is returned.
pub async fn run(
    spec: &Spec,
    processor: Processor,
    sink: Arc<Sink>,
    queue: Option<Arc<dyn QueueClient>>,
    opts: RunOptions,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    let capacity = (spec.target.batch_size * spec.target.writers as usize).max(10);
    let (tx, rx) = mpsc::channel::<Processed>(capacity);
    let rx = Arc::new(Mutex::new(rx));
    // Unbounded on purpose: writers must never wait on SQS to go on committing (an SQS outage
    // would otherwise stall Postgres writes too). Its size is bounded by the in-flight cap below.
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Vec<(String, String)>>();
    let in_flight = Arc::new(InFlight::default());
    // Queued + being written + being deleted: beyond this, pollers wait instead of receiving.
    let max_in_flight = capacity * 3;
    let fatal: Fatal = Arc::default();
    let stop_polling = cancel.child_token();
    let unwritten = Arc::new(AtomicU64::new(0));

    // Past the shutdown deadline, writes and deletes in progress are abandoned.
    let hard_stop = CancellationToken::new();
    let deadline_task = {
        let (cancel, hard_stop, grace) =
            (cancel.clone(), hard_stop.clone(), shutdown_deadline(spec));
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

    if let (SourceConfig::Sqs(cfg), Some(q)) = (&spec.source, &queue) {
        check_queue_settings(spec, cfg, q.as_ref()).await;
    }

    let mut producers = Vec::new();
    match (&spec.source, &queue) {
        (SourceConfig::Sqs(cfg), Some(q)) => {
            for n in 0..cfg.pollers {
                producers.push(tokio::spawn(poll_loop(
                    n,
                    cfg.clone(),
                    q.clone(),
                    processor.clone(),
                    tx.clone(),
                    in_flight.clone(),
                    max_in_flight,
                    stats.clone(),
                    stop_polling.clone(),
                    opts,
                    fatal.clone(),
                )));
            }
        }
        (SourceConfig::File(f), _) => {
            let path = f.path.clone();
            let (p, tx2, st, stop, fatal2) = (
                processor.clone(),
                tx.clone(),
                stats.clone(),
                stop_polling.clone(),
                fatal.clone(),
            );
            let chunk = spec.target.batch_size.min(1000);
            producers.push(tokio::spawn(async move {
                if let Err(e) = file_loop(&path, chunk, p, tx2, st, stop.clone()).await {
                    set_fatal(&fatal2, e);
                    stop.cancel();
                }
            }));
        }
        (SourceConfig::Sqs(_), None) => {
            unreachable!("an SQS spec is always run with a queue client")
        }
    }
    drop(tx);

    let mut writers = Vec::new();
    for _ in 0..spec.target.writers {
        writers.push(tokio::spawn(write_loop(
            rx.clone(),
            sink.clone(),
            spec.target.batch_size,
            Duration::from_millis(spec.target.flush_interval_ms),
            ack_tx.clone(),
            queue.clone(),
            in_flight.clone(),
            stats.clone(),
            WriteControl {
                stop_polling: stop_polling.clone(),
                hard_stop: hard_stop.clone(),
                fatal: fatal.clone(),
                unwritten: unwritten.clone(),
            },
        )));
    }
    drop(ack_tx);

    let acker = tokio::spawn(ack_loop(
        ack_rx,
        queue.clone(),
        in_flight.clone(),
        stats.clone(),
        hard_stop.clone(),
    ));
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = match (&spec.source, &queue) {
        (SourceConfig::Sqs(cfg), Some(q)) => Some(tokio::spawn(heartbeat_loop(
            cfg.visibility_timeout_secs,
            q.clone(),
            in_flight.clone(),
            stats.clone(),
            heartbeat_stop.clone(),
        ))),
        _ => None,
    };

    for p in producers {
        let _ = p.await;
    }
    for w in writers {
        let _ = w.await;
    }
    let _ = acker.await;
    heartbeat_stop.cancel();
    if let Some(h) = heartbeat {
        let _ = h.await;
    }
    deadline_task.abort();
    if let Some(e) = fatal.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    let unwritten = unwritten.load(Ordering::Relaxed);
    if unwritten > 0 {
        return Err(PipelineError::ShutdownTimeout { unwritten });
    }
    Ok(stats.summary(started.elapsed()))
}

/// Logs how the queue's own settings meet the spec's: the dead-letter redrive policy against
/// `source.max_receive_count`, and the retention period against `ledger.retention_hours`.
/// Only advisory, so a failure to read them is a warning.
async fn check_queue_settings(spec: &Spec, cfg: &SqsSourceConfig, queue: &dyn QueueClient) {
    let names = vec![
        "RedrivePolicy".to_string(),
        "MessageRetentionPeriod".to_string(),
    ];
    let attrs = match queue.queue_attributes(names).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the queue's redrive policy and retention period; not checking them.");
            return;
        }
    };
    match attrs.get("RedrivePolicy").map(|p| parse_redrive_policy(p)) {
        Some(Some((dlq, max))) if max <= cfg.max_receive_count => tracing::info!(
            dead_letter_queue = %dlq, queue_max_receive_count = max, source_max_receive_count = cfg.max_receive_count,
            "The queue has a redrive policy: SQS moves a message to its dead-letter queue after {max} receives, \
             before source.max_receive_count ({}) would reject it.", cfg.max_receive_count
        ),
        Some(Some((dlq, max))) => tracing::info!(
            dead_letter_queue = %dlq, queue_max_receive_count = max, source_max_receive_count = cfg.max_receive_count,
            "The queue has a redrive policy, but source.max_receive_count ({}) is lower: a message received more often \
             goes to the rejects table before SQS would move it to the dead-letter queue after {max} receives.",
            cfg.max_receive_count
        ),
        Some(None) => tracing::warn!(
            "The queue's RedrivePolicy could not be read; relying on source.max_receive_count alone."
        ),
        None => tracing::debug!(
            max_receive_count = cfg.max_receive_count,
            "The queue has no redrive policy; messages received more than source.max_receive_count times go to the rejects table."
        ),
    }
    let retention = attrs
        .get("MessageRetentionPeriod")
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(secs) =
        retention.filter(|secs| spec.ledger.retention_hours.saturating_mul(3600) < *secs)
    {
        tracing::warn!(
            retention_secs = secs,
            ledger_retention_hours = spec.ledger.retention_hours,
            "ledger.retention_hours is shorter than the queue's retention period: a message redelivered after its \
             ledger entry was pruned would be written again. Raise ledger.retention_hours to at least {} hours.",
            secs.div_ceil(3600)
        );
    }
}

/// The dead-letter target ARN and maxReceiveCount of an SQS RedrivePolicy (JSON; AWS writes the
/// count as a number, some emulators as a string).
pub fn parse_redrive_policy(policy: &str) -> Option<(String, u32)> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    let arn = v.get("deadLetterTargetArn")?.as_str()?.to_string();
    let max = match v.get("maxReceiveCount")? {
        serde_json::Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some((arn, max))
}

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    n: u32,
    cfg: SqsSourceConfig,
    queue: Arc<dyn QueueClient>,
    processor: Processor,
    tx: mpsc::Sender<Processed>,
    in_flight: Arc<InFlight>,
    max_in_flight: usize,
    stats: Arc<Stats>,
    stop: CancellationToken,
    opts: RunOptions,
    fatal: Fatal,
) {
    // Draining ends once the queue stayed empty for one whole long poll; a wait of 0 (short
    // polling samples only some servers) is raised to 1 s so "empty" means empty.
    let wait = if opts.drain {
        cfg.wait_time_secs.max(1)
    } else {
        cfg.wait_time_secs
    };
    let req = ReceiveRequest {
        max_messages: cfg.max_messages as i32,
        wait_time_secs: wait as i32,
        visibility_timeout_secs: cfg.visibility_timeout_secs as i32,
    };
    let mut empty = 0;
    while !stop.is_cancelled() {
        in_flight.wait_for_room(max_in_flight, &stop).await;
        if stop.is_cancelled() {
            break;
        }
        let receive = retry(
            Backoff::SQS,
            &stop,
            SqsError::is_retriable,
            |e, attempt, d| {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(poller = n, attempt, delay_ms = d.as_millis() as u64, error = %e, "Receiving from SQS failed; retrying.");
            },
            || queue.receive(req),
        );
        tokio::pin!(receive);
        let got = tokio::select! {
            r = &mut receive => r,
            _ = stop.cancelled() => match tokio::time::timeout(RECEIVE_GRACE, &mut receive).await {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        let msgs = match got {
            Ok(m) => m,
            Err(e) if stop.is_cancelled() => {
                tracing::debug!(error = %e, "Receive interrupted by shutdown.");
                break;
            }
            Err(e) => {
                tracing::error!(poller = n, error = %e, "Receiving from SQS failed permanently; stopping.");
                set_fatal(&fatal, PipelineError::Sqs(e));
                stop.cancel();
                break;
            }
        };
        if msgs.is_empty() {
            empty += 1;
            if opts.drain && empty >= 1 {
                tracing::debug!(poller = n, "Queue looks empty; poller done.");
                break;
            }
            continue;
        }
        empty = 0;
        stats
            .received
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(u64::from(cfg.visibility_timeout_secs));
        in_flight.add(msgs.iter().map(|m| m.receipt_handle.clone()), deadline);
        stats
            .in_flight
            .store(in_flight.len() as u64, Ordering::Relaxed);
        for m in msgs {
            // Sending waits when writers are behind: backpressure instead of buffering.
            if tx.send(processor.process(m)).await.is_err() {
                return;
            }
        }
    }
}

/// Reads the file in chunks and processes them on one task per core: with SQS, pollers process
/// their own messages in parallel, and a file must not be held to one core by its single reader.
/// Message ids come from line numbers, assigned while reading, so the order of processing does
/// not matter.
async fn file_loop(
    path: &str,
    chunk: usize,
    processor: Processor,
    tx: mpsc::Sender<Processed>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    let file_err = |source| PipelineError::File {
        path: path.to_string(),
        source,
    };
    let src = FileSource::open(std::path::Path::new(path))
        .await
        .map_err(file_err)?;
    let src = Arc::new(Mutex::new(src));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (src, processor, tx, stats, stop) = (
            src.clone(),
            processor.clone(),
            tx.clone(),
            stats.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                let msgs = src.lock().await.next_chunk(chunk).await?;
                if msgs.is_empty() {
                    break;
                }
                stats
                    .received
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                for m in msgs {
                    if tx.send(processor.process(m)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok::<(), std::io::Error>(())
        });
    }
    drop(tx);
    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Stop the other readers: a file that cannot be read to the end is an error.
                stop.cancel();
                first_err.get_or_insert(e);
            }
            Err(e) => {
                stop.cancel();
                first_err.get_or_insert(std::io::Error::other(e.to_string()));
            }
        }
    }
    match first_err {
        Some(e) => Err(file_err(e)),
        None => Ok(()),
    }
}

/// What a writer needs besides its data: how to stop the run, when to give up, and where to
/// count what it had to give up.
struct WriteControl {
    /// Cancelled on a fatal error, so pollers stop receiving.
    stop_polling: CancellationToken,
    /// Cancelled when the shutdown deadline passes: abandon the write in progress.
    hard_stop: CancellationToken,
    fatal: Fatal,
    /// Messages handed back because shutdown ran out of time.
    unwritten: Arc<AtomicU64>,
}

/// How one batch's write ended.
enum WriteEnd {
    Done,
    /// Retrying cannot help (or retries ran out); the run stops.
    Failed(SinkError),
    /// The shutdown deadline passed.
    Deadline,
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    rx: Arc<Mutex<mpsc::Receiver<Processed>>>,
    sink: Arc<Sink>,
    batch_size: usize,
    flush_interval: Duration,
    ack_tx: mpsc::UnboundedSender<Vec<(String, String)>>,
    queue: Option<Arc<dyn QueueClient>>,
    in_flight: Arc<InFlight>,
    stats: Arc<Stats>,
    ctl: WriteControl,
) {
    loop {
        // Collect one batch: wait for the first message, then up to the flush interval.
        let mut batch = Vec::with_capacity(batch_size);
        let closed = {
            let mut rx = rx.lock().await;
            let mut closed = false;
            match rx.recv().await {
                Some(p) => batch.push(p),
                None => closed = true,
            }
            if !closed {
                let deadline = tokio::time::Instant::now() + flush_interval;
                while batch.len() < batch_size {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(p)) => batch.push(p),
                        Ok(None) => {
                            closed = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            closed
        };
        if !batch.is_empty() {
            let started = Instant::now();
            let mut progress = WriteProgress::new(&batch);
            // Shutdown does not interrupt a write (flushing what was received is the point of
            // it); only its deadline does.
            let end = write_with_retries(&sink, &mut progress, &stats, &ctl.hard_stop).await;
            let report = std::mem::take(&mut progress.report);
            let pending = progress.pending_receipts();
            stats.add_batch(
                &BatchCounts {
                    rows: report.rows,
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
                    "Committed a batch."
                ),
                WriteEnd::Failed(e) => {
                    tracing::error!(
                        error = %e, committed = report.acked.len(), released = pending.len(),
                        "Could not write a batch, and retrying cannot help; handing its unwritten messages back to the queue and stopping."
                    );
                }
                WriteEnd::Deadline => {
                    ctl.unwritten
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                }
            }
            // Only what committed is deleted; the rest goes back to the queue at once.
            if !report.acked.is_empty() && ack_tx.send(report.acked).is_err() {
                return;
            }
            if !pending.is_empty() {
                release(queue.as_deref(), &pending, &in_flight, &stats).await;
            }
            if let WriteEnd::Failed(e) = end {
                set_fatal(&ctl.fatal, PipelineError::Sink(e));
                ctl.stop_polling.cancel();
            }
        }
        if closed {
            return;
        }
    }
}

/// Writes a batch, retrying transient errors with backoff; each retry resumes with the parts
/// that have not committed. Gives up on a permanent error, after `Backoff::WRITE.max_elapsed`,
/// or when `hard_stop` fires (abandoning even a statement in progress, e.g. one waiting on a lock).
async fn write_with_retries(
    sink: &Sink,
    progress: &mut WriteProgress<'_>,
    stats: &Stats,
    hard_stop: &CancellationToken,
) -> WriteEnd {
    let backoff = Backoff::WRITE;
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
        }
    }
}

/// Makes messages visible again at once so another attempt (or process) picks them up.
async fn release(
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
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, r))| BatchEntry {
                id: i.to_string(),
                value: r.clone(),
            })
            .collect();
        match q.change_visibility_batch(entries, 0).await {
            Ok(failed) => {
                stats
                    .released
                    .fetch_add((chunk.len() - failed.len()) as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not release messages; they return after their visibility timeout.")
            }
        }
    }
}

async fn ack_loop(
    mut rx: mpsc::UnboundedReceiver<Vec<(String, String)>>,
    queue: Option<Arc<dyn QueueClient>>,
    in_flight: Arc<InFlight>,
    stats: Arc<Stats>,
    hard_stop: CancellationToken,
) {
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
                            stats.deleted.fetch_add((chunk.len() - failed.len()) as u64, Ordering::Relaxed);
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

async fn heartbeat_loop(
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

#[cfg(test)]
mod tests {
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
