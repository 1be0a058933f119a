//! `etl-engine send`: loads a JSON Lines file into the spec's queue (the example loader),
//! over whichever SQS protocol the endpoint speaks.
//!
//! The file is streamed through the shared JSON Lines reader, a few batches in flight at a time,
//! so its size does not matter. A line that cannot be an SQS body (not UTF-8, or longer than the
//! SQS limit) is reported by line number, never by content, and skipped; the rest is sent and
//! the exit code is then 1, so no line is dropped silently.

use super::{load, usage};
use anyhow::{Context, Result};
use etl_engine::retry::{Backoff, retry};
use etl_engine::source::jsonl::{JsonLinesReader, LineKind, MAX_LINE_BYTES};
use etl_engine::source::{self, BatchEntry, QueueClient, SqsError};
use etl_engine::spec::SourceConfig;
use futures::TryStreamExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufRead;
use tokio_util::sync::CancellationToken;

/// Entries per SendMessageBatch call (the SQS maximum).
const BATCH: usize = 10;
/// Batch calls in flight at once.
const IN_FLIGHT: usize = 8;
/// Retrying the calls that find (or create) the queue: rides out throttling and an endpoint
/// that is still starting, as `run` does, yet a wrong endpoint fails within a minute.
const SETUP_RETRY: Backoff = Backoff {
    max_elapsed: Duration::from_secs(60),
    ..Backoff::SQS
};

pub async fn cmd_send(spec_path: &Path, input: &Path, create: bool) -> Result<u8> {
    let spec = load(spec_path)?;
    let SourceConfig::Sqs(cfg) = &spec.source else {
        return Err(usage(format!(
            "{}: source.type is not sqs; nothing to send to",
            spec_path.display()
        )));
    };
    // Opened before connecting, so a wrong path fails fast.
    let file = tokio::fs::File::open(input)
        .await
        .with_context(|| format!("reading {}", input.display()))?;
    let mut lines = JsonLinesReader::new(tokio::io::BufReader::new(file));
    let setup =
        source::sqs::aws_setup(cfg.endpoint_url.as_deref(), &cfg.region, cfg.wait_time_secs)
            .await?;
    let cancel = CancellationToken::new();
    let warn = |e: &SqsError, attempt: u32, _: Duration| {
        tracing::warn!(attempt, error = %e, "SQS is not reachable yet; retrying.");
    };
    if create && !cfg.queue.starts_with("http") {
        // CreateQueue with the same attributes is idempotent, so retrying it is safe.
        retry(SETUP_RETRY, &cancel, SqsError::is_retriable, warn, || {
            source::sqs::create_queue(&setup, &cfg.queue, &[])
        })
        .await?;
    }
    let queue = retry(SETUP_RETRY, &cancel, SqsError::is_retriable, warn, || {
        source::sqs::connect_with(&setup, &cfg.queue, cfg.protocol)
    })
    .await?;

    let mut not_sent = 0u64;
    let batches = futures::stream::try_unfold(
        (&mut lines, &mut not_sent),
        |(lines, not_sent)| async move {
            let batch = next_batch(lines, not_sent, input).await?;
            Ok::<_, anyhow::Error>((!batch.is_empty()).then_some((batch, (lines, not_sent))))
        },
    );
    let sent = batches
        .map_ok(|entries| send_batch(queue.clone(), entries, cancel.clone()))
        .try_buffer_unordered(IN_FLIGHT)
        .try_fold(0usize, |sent, n| async move { Ok(sent + n) })
        .await?;
    println!(
        "Sent {sent} messages from {} to {}.",
        input.display(),
        cfg.queue
    );
    if not_sent > 0 {
        eprintln!(
            "error: {not_sent} lines of {} were not sent (listed above)",
            input.display()
        );
        return Ok(1);
    }
    Ok(0)
}

/// The next up to [`BATCH`] bodies, empty at the end of the file. Lines that cannot be SQS
/// bodies are reported on stderr (by line number: lines may carry PII) and counted in
/// `not_sent` instead.
async fn next_batch<R: AsyncBufRead + Unpin>(
    lines: &mut JsonLinesReader<R>,
    not_sent: &mut u64,
    input: &Path,
) -> Result<Vec<BatchEntry>> {
    let mut entries = Vec::with_capacity(BATCH);
    while entries.len() < BATCH {
        let Some(line) = lines
            .next_line()
            .await
            .with_context(|| format!("reading {}", input.display()))?
        else {
            break;
        };
        let why = match line.kind {
            LineKind::Text(body) => {
                entries.push(BatchEntry {
                    id: entries.len().to_string(),
                    value: body,
                });
                continue;
            }
            LineKind::NotUtf8(_) => "is not valid UTF-8".to_string(),
            LineKind::Oversized { len, .. } => {
                format!("is {len} bytes, over the {MAX_LINE_BYTES}-byte SQS message limit")
            }
        };
        eprintln!("{}: line {} {why}; not sent", input.display(), line.number);
        *not_sent += 1;
    }
    Ok(entries)
}

/// Sends one batch, retrying transient errors; any entry SQS refuses fails the command.
async fn send_batch(
    queue: Arc<dyn QueueClient>,
    entries: Vec<BatchEntry>,
    cancel: CancellationToken,
) -> Result<usize> {
    let n = entries.len();
    let failed = retry(
        Backoff::SQS,
        &cancel,
        SqsError::is_retriable,
        |_, _, _| {},
        || queue.send_batch(entries.clone()),
    )
    .await?;
    if let Some(f) = failed.first() {
        return Err(SqsError::new(
            source::ErrorKind::Permanent,
            "SendMessageBatch",
            format!("{} entries failed: {} {}", failed.len(), f.code, f.message),
        )
        .into());
    }
    Ok(n)
}
