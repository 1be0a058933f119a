//! Wires source → process → sink → ack with bounded channels, and owns the delivery rules:
//! messages are deleted only after their effect is committed; in-flight messages have their
//! visibility extended while they wait; a batch that cannot be written is released at once
//! (visibility 0) for redelivery; shutdown stops polling, flushes, commits and deletes.
//!
//! Tasks: `pollers` receive and process (CPU work is small: a few µs per message), `writers`
//! batch and commit, one `acker` deletes in batches of 10 concurrently, one `heartbeat`
//! extends visibility. Channels are bounded, so a backlog fills SQS, not memory.

use crate::process::{Processed, Processor};
use crate::retry::{Backoff, retry};
use crate::sink::{Sink, SinkError, WriteReport};
use crate::source::file::FileSource;
use crate::source::{BatchEntry, QueueClient, ReceiveRequest, SqsError};
use crate::spec::{SourceConfig, Spec, SqsSourceConfig};
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("SQS: {0}")]
    Sqs(#[from] SqsError),
    #[error("{0}")]
    Sink(#[from] SinkError),
    #[error("cannot read input file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// Live counters, shared with progress reporting and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub rows: AtomicU64,
    pub rejects: AtomicU64,
    pub duplicates: AtomicU64,
    pub deleted: AtomicU64,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    pub batches: AtomicU64,
    pub released: AtomicU64,
    pub vault_rows: AtomicU64,
    /// Sum and count of batch commit latency in microseconds, and a histogram (see `LATENCY_BUCKETS_MS`).
    pub commit_micros_sum: AtomicU64,
    pub commit_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    /// Encryptions by key id since start (nonce budget), flushed to the key-usage table.
    pub encryptions: std::sync::Mutex<HashMap<String, u64>>,
}

/// Upper bounds (ms) of the commit-latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

impl Stats {
    fn add(&self, r: &WriteReport, elapsed: Duration) {
        self.rows.fetch_add(r.rows, Ordering::Relaxed);
        self.rejects.fetch_add(r.rejects, Ordering::Relaxed);
        self.duplicates.fetch_add(r.duplicates, Ordering::Relaxed);
        self.vault_rows.fetch_add(r.vault_rows, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let micros = elapsed.as_micros() as u64;
        self.commit_micros_sum.fetch_add(micros, Ordering::Relaxed);
        let ms = micros / 1000;
        for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.commit_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        if !r.encryptions.is_empty() {
            if let Ok(mut e) = self.encryptions.lock() {
                for (k, v) in &r.encryptions {
                    *e.entry(k.clone()).or_default() += v;
                }
            }
        }
    }

    /// A snapshot for the summary.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            received: g(&self.received),
            rows: g(&self.rows),
            rejects: g(&self.rejects),
            duplicates: g(&self.duplicates),
            deleted: g(&self.deleted),
            released: g(&self.released),
            retries: g(&self.retries),
            batches: g(&self.batches),
            elapsed_secs: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            messages_per_sec: ((g(&self.rows) + g(&self.rejects) + g(&self.duplicates)) as f64 / secs).round(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub received: u64,
    pub rows: u64,
    pub rejects: u64,
    pub duplicates: u64,
    pub deleted: u64,
    /// Messages handed back to the queue (visibility 0) after a batch could not be written.
    pub released: u64,
    pub retries: u64,
    pub batches: u64,
    pub elapsed_secs: f64,
    pub messages_per_sec: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {}, written {}, rejected {}, duplicates skipped {}, deleted {}, released {}, retries {} in {:.1} s ({} msgs/s)",
            self.received,
            self.rows,
            self.rejects,
            self.duplicates,
            self.deleted,
            self.released,
            self.retries,
            self.elapsed_secs,
            self.messages_per_sec
        )
    }
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
    }
    /// Receipts whose deadline is within `window`, with their deadlines moved to `new_deadline`.
    fn due(&self, window: Duration, new_deadline: Instant) -> Vec<String> {
        let now = Instant::now();
        let Ok(mut m) = self.map.lock() else { return Vec::new() };
        let mut out = Vec::new();
        for (r, d) in m.iter_mut() {
            if d.saturating_duration_since(now) <= window {
                *d = new_deadline;
                out.push(r.clone());
            }
        }
        out
    }
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Runs a spec until drained or cancelled.
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
    let capacity = spec.target.batch_size * spec.target.writers as usize;
    let (tx, rx) = mpsc::channel::<Processed>(capacity.max(10));
    let rx = Arc::new(Mutex::new(rx));
    let (ack_tx, ack_rx) = mpsc::channel::<Vec<(String, String)>>(64);
    let in_flight = Arc::new(InFlight::default());
    // A fatal source error cancels everything but is reported as the run's error.
    let fatal: Arc<std::sync::Mutex<Option<PipelineError>>> = Arc::default();
    let stop_polling = cancel.child_token();

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
                    stats.clone(),
                    stop_polling.clone(),
                    opts,
                    fatal.clone(),
                )));
            }
        }
        (SourceConfig::File(f), _) => {
            let path = f.path.clone();
            let (p, tx2, st, stop, fatal2) = (processor.clone(), tx.clone(), stats.clone(), stop_polling.clone(), fatal.clone());
            let chunk = spec.target.batch_size.min(1000);
            producers.push(tokio::spawn(async move {
                if let Err(e) = file_loop(&path, chunk, p, tx2, st, stop.clone()).await {
                    if let Ok(mut f) = fatal2.lock() {
                        f.get_or_insert(e);
                    }
                    stop.cancel();
                }
            }));
        }
        (SourceConfig::Sqs(_), None) => unreachable!("an SQS spec is always run with a queue client"),
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
            cancel.clone(),
        )));
    }
    drop(ack_tx);

    let acker = tokio::spawn(ack_loop(ack_rx, queue.clone(), in_flight.clone(), stats.clone()));
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
    if let Some(e) = fatal.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    Ok(stats.summary(started.elapsed()))
}

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    n: u32,
    cfg: SqsSourceConfig,
    queue: Arc<dyn QueueClient>,
    processor: Processor,
    tx: mpsc::Sender<Processed>,
    in_flight: Arc<InFlight>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    opts: RunOptions,
    fatal: Arc<std::sync::Mutex<Option<PipelineError>>>,
) {
    // Draining ends once the queue stayed empty for one whole long poll; a wait of 0 (short
    // polling samples only some servers) is raised to 1 s so "empty" means empty.
    let wait = if opts.drain { cfg.wait_time_secs.max(1) } else { cfg.wait_time_secs };
    let req = ReceiveRequest {
        max_messages: cfg.max_messages as i32,
        wait_time_secs: wait as i32,
        visibility_timeout_secs: cfg.visibility_timeout_secs as i32,
    };
    let mut empty = 0;
    while !stop.is_cancelled() {
        let got = tokio::select! {
            r = retry(Backoff::SQS, &stop, SqsError::is_retriable, |e, attempt, d| {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(poller = n, attempt, delay_ms = d.as_millis() as u64, error = %e, "Receiving from SQS failed; retrying.");
            }, || queue.receive(req)) => r,
            _ = stop.cancelled() => break,
        };
        let msgs = match got {
            Ok(m) => m,
            Err(e) if stop.is_cancelled() => {
                tracing::debug!(error = %e, "Receive interrupted by shutdown.");
                break;
            }
            Err(e) => {
                tracing::error!(poller = n, error = %e, "Receiving from SQS failed permanently; stopping.");
                if let Ok(mut f) = fatal.lock() {
                    f.get_or_insert(PipelineError::Sqs(e));
                }
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
        stats.received.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(u64::from(cfg.visibility_timeout_secs));
        in_flight.add(msgs.iter().map(|m| m.receipt_handle.clone()), deadline);
        stats.in_flight.store(in_flight.len() as u64, Ordering::Relaxed);
        for m in msgs {
            // Sending waits when writers are behind: backpressure instead of buffering.
            if tx.send(processor.process(m)).await.is_err() {
                return;
            }
        }
    }
}

async fn file_loop(
    path: &str,
    chunk: usize,
    processor: Processor,
    tx: mpsc::Sender<Processed>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    let file_err = |source| PipelineError::File { path: path.to_string(), source };
    let mut src = FileSource::open(std::path::Path::new(path)).await.map_err(file_err)?;
    while !stop.is_cancelled() {
        let msgs = src.next_chunk(chunk).await.map_err(file_err)?;
        if msgs.is_empty() {
            break;
        }
        stats.received.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        for m in msgs {
            if tx.send(processor.process(m)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    rx: Arc<Mutex<mpsc::Receiver<Processed>>>,
    sink: Arc<Sink>,
    batch_size: usize,
    flush_interval: Duration,
    ack_tx: mpsc::Sender<Vec<(String, String)>>,
    queue: Option<Arc<dyn QueueClient>>,
    in_flight: Arc<InFlight>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
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
            let receipts: Vec<(String, String)> =
                batch.iter().map(|p| (p.message_id.clone(), p.receipt_handle.clone())).collect();
            let started = Instant::now();
            // Shutdown does not interrupt a write: flushing what was received is the point of it.
            let never = CancellationToken::new();
            let _ = &cancel;
            let batch = &batch;
            let result = retry(
                Backoff::WRITE,
                &never,
                SinkError::is_retriable,
                |e, attempt, d| {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(attempt, delay_ms = d.as_millis() as u64, error = %e, "Writing a batch to Postgres failed; retrying.");
                },
                // Each attempt writes the same processed batch; nothing is re-received.
                || sink.write(batch),
            )
            .await;
            match result {
                Ok(report) => {
                    stats.add(&report, started.elapsed());
                    tracing::debug!(rows = report.rows, rejects = report.rejects, duplicates = report.duplicates, "Committed a batch.");
                    if ack_tx.send(report.acked).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, messages = receipts.len(), "Could not write a batch; handing its messages back to the queue.");
                    release(queue.as_deref(), &receipts, &in_flight, &stats).await;
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// Makes messages visible again at once so another attempt (or process) picks them up.
async fn release(queue: Option<&dyn QueueClient>, receipts: &[(String, String)], in_flight: &InFlight, stats: &Stats) {
    in_flight.remove(receipts.iter().map(|(_, r)| r.as_str()));
    let Some(q) = queue else { return };
    for chunk in receipts.chunks(10) {
        let entries = chunk.iter().enumerate().map(|(i, (_, r))| BatchEntry { id: i.to_string(), value: r.clone() }).collect();
        match q.change_visibility_batch(entries, 0).await {
            Ok(_) => {
                stats.released.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "Could not release messages; they return after their visibility timeout."),
        }
    }
}

async fn ack_loop(
    mut rx: mpsc::Receiver<Vec<(String, String)>>,
    queue: Option<Arc<dyn QueueClient>>,
    in_flight: Arc<InFlight>,
    stats: Arc<Stats>,
) {
    while let Some(acked) = rx.recv().await {
        let Some(q) = &queue else {
            stats.deleted.fetch_add(acked.len() as u64, Ordering::Relaxed);
            continue;
        };
        let chunks: Vec<Vec<(String, String)>> = acked.chunks(10).map(<[_]>::to_vec).collect();
        futures::stream::iter(chunks)
            .for_each_concurrent(8, |chunk| {
                let (q, in_flight, stats) = (q.clone(), in_flight.clone(), stats.clone());
                async move {
                    let entries: Vec<BatchEntry> =
                        chunk.iter().enumerate().map(|(i, (_, r))| BatchEntry { id: i.to_string(), value: r.clone() }).collect();
                    let never = CancellationToken::new();
                    let res = retry(
                        Backoff::SQS,
                        &never,
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
        let due = in_flight.due(vt / 2, Instant::now() + vt);
        if due.is_empty() {
            continue;
        }
        tracing::debug!(messages = due.len(), "Extending the visibility of in-flight messages.");
        for chunk in due.chunks(10) {
            let entries = chunk.iter().enumerate().map(|(i, r)| BatchEntry { id: i.to_string(), value: r.clone() }).collect();
            if let Err(e) = queue.change_visibility_batch(entries, visibility_timeout_secs as i32).await {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "Extending message visibility failed; messages may be redelivered (the ledger skips them).");
            }
        }
    }
}
