//! Prometheus metrics for a running pipeline, served over plain HTTP at `/metrics`.
//!
//! The numbers come straight from the pipeline's live [`Stats`] counters and the queue-depth
//! estimate, rendered in the Prometheus text exposition format (version 0.0.4) on each scrape,
//! so there is no second bookkeeping to drift from the summary. The HTTP side is deliberately
//! tiny — one GET per connection, answered and closed — because a scraper is the only client;
//! it also answers `/healthz` for container probes.

use crate::progress::QueueDepth;
use crate::stats::{LATENCY_BUCKETS_MS, Stats};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Errors starting the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound (in use, not local, bad syntax).
    #[error("cannot serve metrics on {addr} (--metrics-addr): {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// What `/metrics` reports: one pipeline's counters and its queue-depth estimate.
pub struct Metrics {
    pipeline: String,
    stats: Arc<Stats>,
    depth: Arc<QueueDepth>,
}

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A request head larger than this is not a scrape; refusing it bounds memory per connection.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped, so idle sockets cannot pile up.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes are rare; this bounds the work a misbehaving client can cause.
const MAX_CONNECTIONS: usize = 32;

impl Metrics {
    /// Metrics for the pipeline named `pipeline` (the spec's `name`, used as a label).
    pub fn new(pipeline: impl Into<String>, stats: Arc<Stats>, depth: Arc<QueueDepth>) -> Self {
        Self {
            pipeline: pipeline.into(),
            stats,
            depth,
        }
    }

    /// Renders the current values in the Prometheus text format.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let label = format!("pipeline=\"{}\"", escape_label(&self.pipeline));
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {value}"
            );
        };
        metric(
            "etl_messages_received_total",
            "counter",
            "Messages received from the source.",
            g(&s.received).to_string(),
        );
        metric(
            "etl_rows_written_total",
            "counter",
            "Rows committed to the target table.",
            g(&s.rows).to_string(),
        );
        metric(
            "etl_messages_rejected_total",
            "counter",
            "Messages that can never succeed, committed to the rejects table.",
            g(&s.rejects).to_string(),
        );
        metric(
            "etl_duplicates_skipped_total",
            "counter",
            "Redelivered messages already in the ledger, skipped without a second row.",
            g(&s.duplicates).to_string(),
        );
        metric(
            "etl_messages_deleted_total",
            "counter",
            "Messages deleted from the queue after their commit.",
            g(&s.deleted).to_string(),
        );
        metric(
            "etl_messages_released_total",
            "counter",
            "Messages handed back to the queue (visibility 0) after a batch could not be written.",
            g(&s.released).to_string(),
        );
        metric(
            "etl_retries_total",
            "counter",
            "Retried SQS and Postgres calls.",
            g(&s.retries).to_string(),
        );
        metric(
            "etl_vault_rows_written_total",
            "counter",
            "Encrypted originals written to the vault.",
            g(&s.vault_rows).to_string(),
        );
        metric(
            "etl_messages_in_flight",
            "gauge",
            "Messages received and not yet deleted.",
            g(&s.in_flight).to_string(),
        );
        if let Some(v) = self.depth.visible() {
            metric(
                "etl_queue_messages_visible",
                "gauge",
                "Queue depth estimate: ApproximateNumberOfMessages, polled every 2 seconds.",
                v.to_string(),
            );
        }
        if let Some(v) = self.depth.not_visible() {
            metric(
                "etl_queue_messages_not_visible",
                "gauge",
                "Messages in flight on the queue (all consumers): ApproximateNumberOfMessagesNotVisible.",
                v.to_string(),
            );
        }

        // Buckets are read before the count: the pipeline counts a batch before filing it in a
        // bucket, so a scrape racing a commit still sees count >= every bucket.
        let buckets: Vec<u64> = s.commit_buckets.iter().map(g).collect();
        let sum_secs = g(&s.commit_micros_sum) as f64 / 1e6;
        let count = g(&s.batches).max(buckets.last().copied().unwrap_or(0));
        let name = "etl_batch_commit_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to write and commit one batch (rows, vault, rejects, ledger)."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (ms, n) in LATENCY_BUCKETS_MS.iter().zip(&buckets) {
            let le = *ms as f64 / 1000.0;
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{label}}} {sum_secs}");
        let _ = writeln!(out, "{name}_count{{{label}}} {count}");
        out
    }
}

/// Escapes a label value as the text format requires (backslash, double quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A running metrics endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (differs from the requested one when the port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting scrapes and waits for the accept loop to end.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds `addr` (`HOST:PORT`; port 0 picks a free port) and serves `metrics` until stopped.
///
/// Binding happens before this returns, so a bad `--metrics-addr` fails the run at once
/// instead of after the pipeline has started.
pub async fn serve(addr: &str, metrics: Metrics) -> Result<MetricsServer, MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    tracing::info!(addr = %local, pipeline = %metrics.pipeline, "Serving metrics.");
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, Arc::new(metrics), stop.clone()));
    Ok(MetricsServer {
        addr: local,
        stop,
        task,
    })
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: pause instead of spinning on the error.
                tracing::warn!(error = %e, "Accepting a metrics connection failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "Too many metrics connections; dropping one.");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics).await {
                tracing::debug!(%peer, error = %e, "A metrics request failed.");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it; the connection is closed afterwards.
async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
                false,
            )
            .await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
            false,
        )
        .await;
    }
    match path {
        "/metrics" => {
            respond(
                &mut stream,
                "200 OK",
                CONTENT_TYPE,
                &metrics.render(),
                head_only,
            )
            .await
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n", head_only).await,
        "/" => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain",
                "etl-engine: metrics at /metrics\n",
                head_only,
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "not found; metrics are at /metrics\n",
                head_only,
            )
            .await
        }
    }
}

/// Reads until the blank line that ends an HTTP request head; `None` if it grows too large.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // Closed early: answer whatever arrived (an empty head gets a 405).
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metrics {
        let stats = Arc::new(Stats::default());
        stats.received.store(150, Ordering::Relaxed);
        stats.rows.store(130, Ordering::Relaxed);
        stats.rejects.store(20, Ordering::Relaxed);
        stats.batches.store(3, Ordering::Relaxed);
        stats.commit_micros_sum.store(45_000, Ordering::Relaxed);
        // Commits of 4 ms, 12 ms and 29 ms, filed cumulatively like the pipeline does.
        for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let n = [4u64, 12, 29].iter().filter(|ms| *ms <= b).count() as u64;
            stats.commit_buckets[i].store(n, Ordering::Relaxed);
        }
        let depth = Arc::new(QueueDepth::default());
        Metrics::new("log\"ins", stats, depth)
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn renders_counters_histogram_and_escaped_labels() {
        let text = sample().render();
        let l = r#"pipeline="log\"ins""#;
        assert_eq!(
            value(&text, &format!("etl_messages_received_total{{{l}}}")),
            150.0
        );
        assert_eq!(
            value(&text, &format!("etl_rows_written_total{{{l}}}")),
            130.0
        );
        assert_eq!(
            value(&text, &format!("etl_messages_rejected_total{{{l}}}")),
            20.0
        );
        assert_eq!(
            value(
                &text,
                &format!("etl_batch_commit_seconds_bucket{{{l},le=\"0.005\"}}")
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                &format!("etl_batch_commit_seconds_bucket{{{l},le=\"0.025\"}}")
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                &format!("etl_batch_commit_seconds_bucket{{{l},le=\"0.05\"}}")
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                &format!("etl_batch_commit_seconds_bucket{{{l},le=\"+Inf\"}}")
            ),
            3.0
        );
        assert_eq!(
            value(&text, &format!("etl_batch_commit_seconds_count{{{l}}}")),
            3.0
        );
        assert!(
            (value(&text, &format!("etl_batch_commit_seconds_sum{{{l}}}")) - 0.045).abs() < 1e-9
        );
        assert!(text.contains("# TYPE etl_batch_commit_seconds histogram"));
        assert!(text.contains("# TYPE etl_messages_in_flight gauge"));
        // Unknown depth is left out rather than reported as 0.
        assert!(!text.contains("etl_queue_messages_visible"));
    }

    #[test]
    fn every_sample_line_has_a_type_line() {
        let text = sample().render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "no TYPE for {name}"
            );
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_rejects_other_requests() {
        let server = serve("127.0.0.1:0", sample()).await.unwrap();
        let addr = server.local_addr();
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE));
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        let len: usize = ok
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        assert!(body.contains("etl_messages_received_total"));
        assert!(
            get("GET /nope HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get("POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        let head = get("HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        server.stop().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is released after stop"
        );
    }

    #[tokio::test]
    async fn a_taken_port_names_the_flag() {
        let first = serve("127.0.0.1:0", sample()).await.unwrap();
        let taken = first.local_addr().to_string();
        let err = serve(&taken, sample()).await.err().unwrap().to_string();
        assert!(
            err.contains("--metrics-addr") && err.contains(&taken),
            "{err}"
        );
        first.stop().await;
    }
}
