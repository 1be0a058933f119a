//! Intake: SQS pollers and the file reader. Each receives (or reads) messages, charges them to
//! the byte budget, processes them (decode → extract → transforms) and queues them for the
//! writers. Receiving waits while the in-flight count or byte budget is spent, so a backlog
//! stays in the queue, not in memory.

use super::budget::ByteBudget;
use super::drain::{Drain, Verdict};
use super::pollers::Signals;
use super::{PipelineError, Queued, RECEIVE_GRACE, RunOptions, Shared};
use crate::process::Processor;
use crate::retry::{Backoff, retry};
use crate::source::file::FileSource;
use crate::source::{QueueClient, ReceiveRequest, ReceivedMessage, SqsError};
use crate::spec::{Spec, SqsSourceConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Logs how the queue's own settings meet the spec's: the dead-letter redrive policy against
/// `source.max_receive_count`, and the retention period against `ledger.retention_hours`.
/// Only advisory, so a failure to read them is a warning.
pub(super) async fn check_queue_settings(
    spec: &Spec,
    cfg: &SqsSourceConfig,
    queue: &dyn QueueClient,
) {
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

/// Pause between empty receives while a drain waits for messages still in flight.
const DRAIN_RECHECK: Duration = Duration::from_millis(200);

/// What one poller needs besides the shared handles.
pub(super) struct Poller {
    /// Its number, for logs.
    pub n: u32,
    pub cfg: SqsSourceConfig,
    pub queue: Arc<dyn QueueClient>,
    pub processor: Processor,
    pub tx: mpsc::Sender<Queued>,
    /// Messages in flight (queued + being written + being deleted) beyond which it waits.
    pub max_in_flight: usize,
    pub opts: RunOptions,
    /// When draining: decides whether an empty receive ends this poller.
    pub drain: Option<Arc<Drain>>,
    /// Where it reports its receives, and whether it is still wanted.
    pub signals: Arc<Signals>,
}

/// Why a poller's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// No longer wanted (fewer loops): it left between receives, holding nothing.
    Retired,
    /// Shutdown, failure, or the drain is done: no loop should start again.
    Finished,
}

/// Receives, processes and queues messages for the writers until `stop` fires, the run fails,
/// (draining) the queue is empty with nothing in flight, or the loop is no longer wanted.
pub(super) async fn poll_loop(p: Poller, shared: Shared, stop: CancellationToken) -> Exit {
    let Poller {
        n,
        cfg,
        queue,
        processor,
        tx,
        max_in_flight,
        opts,
        drain,
        signals,
    } = p;
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
    let stats = &shared.stats;
    while !stop.is_cancelled() {
        // Only here, between receives: a loop never leaves with messages in hand.
        if !signals.wanted(n) {
            return Exit::Retired;
        }
        // Waiting for room counts as the pipeline pushing back, for the next receive.
        let mut blocked = shared.in_flight.len() >= max_in_flight;
        shared.in_flight.wait_for_room(max_in_flight, &stop).await;
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
                shared.failure.fail(PipelineError::Sqs(e));
                break;
            }
        };
        signals.received(msgs.len(), cfg.max_messages);
        if msgs.is_empty() {
            if let Some(drain) = &drain {
                match drain.check(&shared.in_flight, queue.as_ref()).await {
                    Verdict::Done => {
                        tracing::debug!(
                            poller = n,
                            "The queue is empty and nothing is in flight; poller done."
                        );
                        break;
                    }
                    Verdict::GiveUp => break,
                    Verdict::KeepPolling => {
                        // An endpoint may answer an empty receive at once (short polling, or
                        // a queue that is not long-polled): pause so this loop never spins
                        // and starves the writers it is waiting for.
                        tokio::select! {
                            _ = tokio::time::sleep(DRAIN_RECHECK) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                }
            }
            continue;
        }
        if let Some(drain) = &drain {
            drain.reset();
        }
        stats
            .received
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(u64::from(cfg.visibility_timeout_secs));
        shared
            .in_flight
            .add(msgs.iter().map(|m| m.receipt_handle.clone()), deadline);
        stats
            .in_flight
            .store(shared.in_flight.len() as u64, Ordering::Relaxed);
        for m in msgs {
            // Waiting for budget or for the writers is backpressure: the backlog stays in SQS.
            // A failed run stops waiting; what this poller holds is handed back at the end.
            match queue_one(&processor, m, &tx, &shared).await {
                Queuing::Done { waited } => blocked |= waited,
                Queuing::Stopped => return Exit::Finished,
            }
        }
        if blocked {
            signals.blocked();
        }
    }
    Exit::Finished
}

/// How queuing one message went.
enum Queuing {
    /// Queued; `waited` if it had to wait for the byte budget or the writers.
    Done { waited: bool },
    /// The run failed or the writers are gone.
    Stopped,
}

/// Charges one message to the byte budget, processes it and queues it for the writers, and
/// says whether either had to wait (the pipeline pushing back, which the poller count heeds).
async fn queue_one(
    processor: &Processor,
    m: ReceivedMessage,
    tx: &mpsc::Sender<Queued>,
    shared: &Shared,
) -> Queuing {
    let abort = shared.failure.aborted();
    let cost = ByteBudget::cost(m.body.len());
    let mut waited = false;
    let charge = match shared.budget.try_charge(cost) {
        Some(c) => Some(c),
        None => {
            waited = true;
            tokio::select! {
                c = shared.budget.charge(cost) => c,
                _ = abort.cancelled() => None,
            }
        }
    };
    let Some(charge) = charge else {
        return Queuing::Stopped;
    };
    let item = Queued {
        processed: processor.process(m),
        charge,
    };
    let item = match tx.try_send(item) {
        Ok(()) => return Queuing::Done { waited },
        Err(mpsc::error::TrySendError::Closed(_)) => return Queuing::Stopped,
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    tokio::select! {
        sent = tx.send(item) => match sent {
            Ok(()) => Queuing::Done { waited: true },
            Err(_) => Queuing::Stopped,
        },
        _ = abort.cancelled() => Queuing::Stopped,
    }
}

/// Reads the file in chunks and processes them on one task per core: with SQS, pollers process
/// their own messages in parallel, and a file must not be held to one core by its single reader.
/// Message ids come from line numbers, assigned while reading, so the order of processing does
/// not matter.
pub(super) async fn file_loop(
    path: &str,
    chunk: usize,
    processor: Processor,
    tx: mpsc::Sender<Queued>,
    shared: Shared,
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
        let (src, processor, tx, shared, stop) = (
            src.clone(),
            processor.clone(),
            tx.clone(),
            shared.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                let msgs = src.lock().await.next_chunk(chunk).await?;
                if msgs.is_empty() {
                    break;
                }
                shared
                    .stats
                    .received
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                for m in msgs {
                    if let Queuing::Stopped = queue_one(&processor, m, &tx, &shared).await {
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
