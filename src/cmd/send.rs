//! `etl-engine send`: loads a JSON Lines file into the spec's queue (the example loader),
//! over whichever SQS protocol the endpoint speaks.

use super::{load, usage};
use anyhow::{Context, Result};
use etl_engine::retry::{Backoff, retry};
use etl_engine::source::{self, BatchEntry, SqsError};
use etl_engine::spec::SourceConfig;
use std::path::Path;
use tokio_util::sync::CancellationToken;

pub async fn cmd_send(spec_path: &Path, input: &Path, create: bool) -> Result<u8> {
    let spec = load(spec_path)?;
    let SourceConfig::Sqs(cfg) = &spec.source else {
        return Err(usage(format!(
            "{}: source.type is not sqs; nothing to send to",
            spec_path.display()
        )));
    };
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let setup =
        source::sqs::aws_setup(cfg.endpoint_url.as_deref(), &cfg.region, cfg.wait_time_secs)
            .await?;
    if create && !cfg.queue.starts_with("http") {
        source::sqs::create_queue(&setup, &cfg.queue, &[]).await?;
    }
    let queue = source::sqs::connect_with(&setup, &cfg.queue, cfg.protocol).await?;
    let bodies: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let chunks: Vec<Vec<BatchEntry>> = bodies
        .chunks(10)
        .map(|c| {
            c.iter()
                .enumerate()
                .map(|(i, b)| BatchEntry {
                    id: i.to_string(),
                    value: (*b).to_string(),
                })
                .collect()
        })
        .collect();
    use futures::StreamExt;
    let cancel = CancellationToken::new();
    let results: Vec<Result<usize, SqsError>> = futures::stream::iter(chunks)
        .map(|entries| {
            let (q, cancel) = (queue.clone(), cancel.clone());
            async move {
                let n = entries.len();
                let failed = retry(
                    Backoff::SQS,
                    &cancel,
                    SqsError::is_retriable,
                    |_, _, _| {},
                    || q.send_batch(entries.clone()),
                )
                .await?;
                if let Some(f) = failed.first() {
                    return Err(SqsError::new(
                        source::ErrorKind::Permanent,
                        "SendMessageBatch",
                        format!("{} entries failed: {} {}", failed.len(), f.code, f.message),
                    ));
                }
                Ok(n)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut sent = 0;
    for r in results {
        sent += r?;
    }
    println!(
        "Sent {sent} messages from {} to {}.",
        input.display(),
        cfg.queue
    );
    Ok(0)
}
