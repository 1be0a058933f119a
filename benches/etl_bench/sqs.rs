//! The SQS side of the benchmark: filling a queue, A (the endpoint's own receive + delete
//! ceiling) and watching a queue drain.
//!
//! Everything goes through the engine's own queue client, so A sends exactly the requests the
//! engine's pollers send (same SDK, same attributes asked for, same batch size and visibility
//! timeout), minus everything the engine does with the messages.

use etl_engine::source::sqs::{AwsSetup, aws_setup, connect_with, create_queue};
use etl_engine::source::{BatchEntry, QueueClient, ReceiveRequest};
use etl_engine::spec::{SqsProtocol, SqsSourceConfig};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The AWS setup for a local endpoint.
pub async fn setup(endpoint: &str) -> anyhow::Result<AwsSetup> {
    Ok(aws_setup(Some(endpoint), "us-east-1", 1).await?)
}

/// What SQS accepts in one SendMessageBatch, all bodies together: 256 KiB in classic SQS
/// (AWS raised it to 1 MiB in 2025, LocalStack 4.13 accepts 1 MiB); the loader's default, so it
/// works against any endpoint.
pub const CLASSIC_BATCH_BYTES: usize = 262_144;

/// Groups consecutive bodies into send batches of at most 10 and at most `batch_bytes` bytes
/// together (a body larger than that alone goes alone). Returns index ranges into `lens`.
pub fn send_batches(lens: &[usize], batch_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &len) in lens.iter().enumerate() {
        if i > start && (i - start == 10 || bytes + len > batch_bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

/// Creates queue `name` (it must not hold messages) and sends every body to it, `concurrency`
/// send batches at a time (see [`send_batches`]). With `pad_to` > 0 each body is first padded
/// to that many bytes ([`crate::datagen::pad`]), one batch at a time, so the padded bodies are
/// never all in memory. Returns the queue URL.
pub async fn load(
    endpoint: &str,
    name: &str,
    bodies: &[String],
    pad_to: usize,
    batch_bytes: usize,
    concurrency: usize,
) -> anyhow::Result<String> {
    let s = setup(endpoint).await?;
    let url = create_queue(&s, name, &[]).await?;
    let q = connect_with(&s, &url, SqsProtocol::Json).await?;
    let (visible, in_flight) = depth(q.as_ref()).await?;
    anyhow::ensure!(
        visible + in_flight == 0,
        "queue {name} is not empty ({visible} visible, {in_flight} in flight)"
    );
    let body = |i: usize| {
        if pad_to > 0 {
            crate::datagen::pad(&bodies[i], pad_to)
        } else {
            bodies[i].clone()
        }
    };
    let lens: Vec<usize> = (0..bodies.len()).map(|i| body(i).len()).collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(send_batches(&lens, batch_bytes))
        .map(|range| {
            let q = q.clone();
            let mut entries: Vec<BatchEntry> = range
                .enumerate()
                .map(|(id, i)| BatchEntry {
                    id: id.to_string(),
                    value: body(i),
                })
                .collect();
            async move {
                // A local endpoint under load may fail a call now and then; try a few
                // times, sending again only the entries that failed.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match q.send_batch(entries.clone()).await {
                        Ok(failed) if failed.is_empty() => return Ok(()),
                        Ok(failed) if attempt >= 5 || failed.iter().any(|f| f.sender_fault) => {
                            anyhow::bail!(
                                "{} entries of a send batch failed: {}",
                                failed.len(),
                                failed[0].message
                            )
                        }
                        Ok(failed) => entries.retain(|e| failed.iter().any(|f| f.id == e.id)),
                        Err(e) if attempt >= 5 || !e.is_retriable() => return Err(e.into()),
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(url)
}

/// Messages visible and in flight (LocalStack's counts are exact).
pub async fn depth(q: &dyn QueueClient) -> anyhow::Result<(u64, u64)> {
    let a = q
        .queue_attributes(vec![
            "ApproximateNumberOfMessages".into(),
            "ApproximateNumberOfMessagesNotVisible".into(),
        ])
        .await?;
    let n = |k: &str| a.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((
        n("ApproximateNumberOfMessages"),
        n("ApproximateNumberOfMessagesNotVisible"),
    ))
}

/// What A measured.
#[derive(Debug, serde::Serialize)]
pub struct Ceiling {
    pub messages: u64,
    pub workers: u32,
    pub receive_calls: u64,
    pub delete_calls: u64,
    pub secs: f64,
    pub messages_per_sec: f64,
}

/// A: the engine's request pattern with nothing in between — `workers` receive loops (asking
/// for what the engine asks for) hand receipt handles straight to up to [`DELETE_CONCURRENCY`]
/// concurrent DeleteMessageBatch calls, like the engine's acker, until `expect` messages are
/// deleted (or, like the engine's drain, a poller sees two empty answers in a row).
pub async fn ceiling(
    endpoint: &str,
    queue_url: &str,
    cfg: &SqsSourceConfig,
    workers: u32,
    expect: u64,
) -> anyhow::Result<Ceiling> {
    let s = setup(endpoint).await?;
    let q: Arc<dyn QueueClient> = connect_with(&s, queue_url, SqsProtocol::Json).await?;
    let req = ReceiveRequest {
        max_messages: cfg.max_messages as i32,
        wait_time_secs: cfg.wait_time_secs.min(1) as i32,
        visibility_timeout_secs: cfg.visibility_timeout_secs as i32,
    };
    let received = Arc::new(AtomicU64::new(0));
    let receive_calls = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<BatchEntry>>(64);
    let started = Instant::now();
    let pollers: Vec<_> = (0..workers)
        .map(|_| {
            let (q, received, calls, tx) = (
                q.clone(),
                received.clone(),
                receive_calls.clone(),
                tx.clone(),
            );
            tokio::spawn(async move {
                let mut empty = 0;
                while received.load(Ordering::Relaxed) < expect {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let msgs = q.receive(req).await?;
                    if msgs.is_empty() {
                        empty += 1;
                        if empty >= 2 {
                            break;
                        }
                        continue;
                    }
                    empty = 0;
                    received.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                    let entries = msgs
                        .into_iter()
                        .enumerate()
                        .map(|(i, m)| BatchEntry {
                            id: i.to_string(),
                            value: m.receipt_handle,
                        })
                        .collect();
                    if tx.send(entries).await.is_err() {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    drop(tx);
    let deleted = AtomicU64::new(0);
    let delete_calls = AtomicU64::new(0);
    let failures: Vec<anyhow::Error> = tokio_stream_of(rx)
        .map(|entries| {
            let (q, deleted, delete_calls) = (q.clone(), &deleted, &delete_calls);
            async move {
                let n = entries.len() as u64;
                delete_calls.fetch_add(1, Ordering::Relaxed);
                let failed = q.delete_batch(entries).await?;
                deleted.fetch_add(n - failed.len() as u64, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(DELETE_CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    for p in pollers {
        p.await??;
    }
    if let Some(e) = failures.into_iter().next() {
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    let messages = deleted.load(Ordering::Relaxed);
    Ok(Ceiling {
        messages,
        workers,
        receive_calls: receive_calls.load(Ordering::Relaxed),
        delete_calls: delete_calls.load(Ordering::Relaxed),
        secs,
        messages_per_sec: messages as f64 / secs,
    })
}

/// Concurrent delete calls, as many as the engine's acker makes.
pub const DELETE_CONCURRENCY: usize = 8;

/// A receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Polls a queue until it is empty (nothing visible, nothing in flight); returns when that was
/// first seen. Polling costs the endpoint about 10 calls a second.
pub async fn watch_until_empty(
    endpoint: &str,
    queue_url: &str,
    started: Instant,
) -> anyhow::Result<Duration> {
    let s = setup(endpoint).await?;
    let q = connect_with(&s, queue_url, SqsProtocol::Json).await?;
    loop {
        // A failed poll (endpoint busy) is just retried on the next tick.
        if let Ok((0, 0)) = depth(q.as_ref()).await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes a queue (after a measurement, so LocalStack does not keep it).
pub async fn delete_queue(endpoint: &str, queue_url: &str) -> anyhow::Result<()> {
    let s = setup(endpoint).await?;
    s.sdk
        .delete_queue()
        .queue_url(queue_url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("DeleteQueue {queue_url}: {e}"))?;
    Ok(())
}
