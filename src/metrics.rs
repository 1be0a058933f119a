//! Prometheus metrics for a running pipeline, served over HTTP at `/metrics`.
//!
//! The numbers come straight from the pipeline's live [`Stats`] counters and the queue-depth
//! estimate: a `prometheus-client` [`Collector`] reads them on each scrape and the crate renders
//! them in the Prometheus text exposition format (version 0.0.4), so there is no second
//! bookkeeping to drift from the summary. `hyper` serves them, with `/healthz` for container
//! probes; connections are capped and idle ones dropped, because a scraper is the only client.

use crate::progress::QueueDepth;
use crate::stats::{LATENCY_BUCKETS_MS, Stats};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
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
    registry: Registry,
}

/// The `Content-Type` of the text exposition format (version 0.0.4), which every Prometheus
/// version scrapes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A request head larger than this is not a scrape; hyper answers 431 instead of buffering more.
/// (8 KiB is also the smallest buffer hyper accepts.)
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How much a client may cost the process.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// A client that has not sent a whole request head by then (first or next on a kept-alive
    /// connection) is dropped, so idle sockets cannot pile up and hold connection slots.
    read_timeout: Duration,
    /// Scrapes are rare; this bounds the work a misbehaving client can cause.
    max_connections: usize,
}

/// The limits `serve` uses; tests shrink them to observe them quickly.
const LIMITS: Limits = Limits {
    read_timeout: Duration::from_secs(5),
    max_connections: 32,
};

/// Picks one live counter out of [`Stats`].
type LiveCounter = fn(&Stats) -> &AtomicU64;

/// Counters: the name without `_total` (the encoder appends it, as Prometheus naming requires),
/// the help text, and the live counter it reads.
const COUNTERS: [(&str, &str, LiveCounter); 10] = [
    (
        "etl_messages_received",
        "Messages received from the source.",
        |s| &s.received,
    ),
    (
        "etl_rows_written",
        "Rows committed to the target table.",
        |s| &s.rows,
    ),
    (
        "etl_messages_rejected",
        "Messages that can never succeed, committed to the rejects table.",
        |s| &s.rejects,
    ),
    (
        "etl_duplicates_skipped",
        "Redelivered messages already in the ledger, skipped without a second row.",
        |s| &s.duplicates,
    ),
    (
        "etl_messages_deleted",
        "Messages deleted from the queue after their commit.",
        |s| &s.deleted,
    ),
    (
        "etl_messages_released",
        "Messages handed back to the queue (visibility 0) after a batch could not be written.",
        |s| &s.released,
    ),
    ("etl_retries", "Retried SQS and Postgres calls.", |s| {
        &s.retries
    }),
    (
        "etl_vault_rows_written",
        "Encrypted originals written to the vault.",
        |s| &s.vault_rows,
    ),
    (
        "etl_messages_skipped",
        "Messages acknowledged without rows: a filter matched, or no output did (unmatched: skip).",
        |s| &s.skipped,
    ),
    (
        "etl_rows_unchanged",
        "Rows an upsert or ignore output left as they were (a stored or newer row won).",
        |s| &s.unchanged_rows,
    ),
];

impl Metrics {
    /// Metrics for the pipeline named `pipeline` (the spec's `name`, used as a label).
    pub fn new(pipeline: impl Into<String>, stats: Arc<Stats>, depth: Arc<QueueDepth>) -> Self {
        let pipeline = pipeline.into();
        // A registry-wide label puts `pipeline` on every series, escaped by the crate.
        let label = (Cow::Borrowed("pipeline"), Cow::Owned(pipeline.clone()));
        let mut registry = Registry::with_labels(std::iter::once(label));
        registry.register_collector(Box::new(LiveStats { stats, depth }));
        Self { pipeline, registry }
    }

    /// Renders the current values in the Prometheus text format.
    ///
    /// Writing to a `String` cannot fail; the error is the encoder's signature, passed on so the
    /// server can answer 500 rather than a truncated exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the live counters at scrape time; it holds no values of its own.
#[derive(Debug)]
struct LiveStats {
    stats: Arc<Stats>,
    depth: Arc<QueueDepth>,
}

impl Collector for LiveStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &*self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, counter) in COUNTERS {
            let c = ConstCounter::new(g(counter(s)));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let gauges = [
            (
                "etl_messages_in_flight",
                "Messages received and not yet deleted.",
                Some(g(&s.in_flight)),
            ),
            (
                "etl_sqs_pollers",
                "SQS receive loops running now (source.pollers; with `auto` it follows the backlog).",
                Some(g(&s.pollers)).filter(|n| *n > 0),
            ),
            (
                "etl_queue_messages_visible",
                "Queue depth estimate: ApproximateNumberOfMessages, polled every 2 seconds.",
                self.depth.visible(),
            ),
            (
                "etl_queue_messages_not_visible",
                "Messages in flight on the queue (all consumers): ApproximateNumberOfMessagesNotVisible.",
                self.depth.not_visible(),
            ),
        ];
        // An unknown depth (not polled yet, or a file source) is left out rather than shown as 0;
        // so is the poller count of a file source.
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let c = ConstGauge::new(v);
                c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
            }
        }

        // Rows by target table, one series per table (labelled `table`), once a batch wrote some.
        let by_table = s
            .rows_by_table
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        if !by_table.is_empty() {
            let mut family = encoder.encode_descriptor(
                "etl_table_rows_written",
                "Rows committed, by target table (inserted or updated).",
                None,
                MetricType::Counter,
            )?;
            for (table, n) in &by_table {
                let c = ConstCounter::new(*n);
                c.encode(family.encode_family(&[("table", table.as_str())])?)?;
            }
        }

        // The pipeline keeps cumulative bucket counts; the encoder wants each bucket's own count
        // and sums them back up. A bucket read lower than the one before it (a commit racing the
        // scrape) is raised to it, so the series stays cumulative.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_MS
            .iter()
            .zip(&s.commit_buckets)
            .map(|(ms, n)| {
                let n = g(n).max(below);
                let own = n - below;
                below = n;
                (*ms as f64 / 1000.0, own)
            })
            .collect();
        // Buckets are read before the count: the pipeline counts a batch before filing it in a
        // bucket, so a scrape racing a commit still sees count >= every bucket.
        let count = g(&s.batches).max(below);
        let sum_secs = g(&s.commit_micros_sum) as f64 / 1e6;
        encoder
            .encode_descriptor(
                "etl_batch_commit_seconds",
                "Time to write and commit one batch (rows, vault, rejects, ledger).",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum_secs, count, &buckets, None)
    }
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

    /// Stops accepting scrapes, lets open ones finish (briefly), and releases the port.
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
    serve_with(addr, metrics, LIMITS).await
}

/// [`serve`] with explicit limits.
async fn serve_with(
    addr: &str,
    metrics: Metrics,
    limits: Limits,
) -> Result<MetricsServer, MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    tracing::info!(addr = %local, pipeline = %metrics.pipeline, "Serving metrics.");
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(
        listener,
        Arc::new(metrics),
        stop.clone(),
        limits,
    ));
    Ok(MetricsServer {
        addr: local,
        stop,
        task,
    })
}

/// Accepts connections until `stop`, each served by hyper on its own task, then waits (at most
/// one read timeout) for those still open to finish.
async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
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
        let service = service_fn(move |req| {
            let response = respond(&metrics, &req);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut stopping = false;
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    // Finishes a response under way, then closes; an idle connection closes now.
                    _ = stop.cancelled(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "A metrics connection failed.");
            }
            drop(permit);
        });
    }
    // The listener is dropped here, releasing the port. Every slot back means every connection
    // has ended; a client that will not finish is not worth holding up shutdown for.
    drop(listener);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.read_timeout, slots.acquire_many(all)).await;
}

/// Answers one request: `/metrics`, `/healthz`, a pointer at `/`, 404 elsewhere.
fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<String> {
    // hyper sends headers only for HEAD, with the length the GET body would have.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET or HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => match metrics.render() {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "Rendering metrics failed.");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
            }
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/" => text(StatusCode::OK, "etl-engine: metrics at /metrics\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        ),
    }
}

/// A plain-text response that no cache keeps (every scrape must see live values).
fn text(status: StatusCode, body: impl Into<String>) -> Response<String> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn sample_stats() -> Arc<Stats> {
        let stats = Arc::new(Stats::default());
        stats.received.store(150, Ordering::Relaxed);
        stats.rows.store(130, Ordering::Relaxed);
        stats.rejects.store(20, Ordering::Relaxed);
        stats.batches.store(3, Ordering::Relaxed);
        stats.skipped.store(4, Ordering::Relaxed);
        if let Ok(mut by) = stats.rows_by_table.lock() {
            by.insert("user_logins".to_string(), 130);
        }
        stats.commit_micros_sum.store(45_000, Ordering::Relaxed);
        // Commits of 4 ms, 12 ms and 29 ms, filed cumulatively like the pipeline does.
        for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let n = [4u64, 12, 29].iter().filter(|ms| *ms <= b).count() as u64;
            stats.commit_buckets[i].store(n, Ordering::Relaxed);
        }
        stats
    }

    fn sample() -> Metrics {
        Metrics::new("log\"ins", sample_stats(), Arc::new(QueueDepth::default()))
    }

    /// What the hand-written renderer printed for [`sample`] before the crate took over:
    /// dashboards and alerts see the same names, labels, help, types and buckets. (Skipped
    /// messages, unchanged rows and rows by table came later, as additions.)
    const BEFORE: &str = r#"# HELP etl_messages_received_total Messages received from the source.
# TYPE etl_messages_received_total counter
etl_messages_received_total{pipeline="log\"ins"} 150
# HELP etl_rows_written_total Rows committed to the target table.
# TYPE etl_rows_written_total counter
etl_rows_written_total{pipeline="log\"ins"} 130
# HELP etl_messages_rejected_total Messages that can never succeed, committed to the rejects table.
# TYPE etl_messages_rejected_total counter
etl_messages_rejected_total{pipeline="log\"ins"} 20
# HELP etl_duplicates_skipped_total Redelivered messages already in the ledger, skipped without a second row.
# TYPE etl_duplicates_skipped_total counter
etl_duplicates_skipped_total{pipeline="log\"ins"} 0
# HELP etl_messages_deleted_total Messages deleted from the queue after their commit.
# TYPE etl_messages_deleted_total counter
etl_messages_deleted_total{pipeline="log\"ins"} 0
# HELP etl_messages_released_total Messages handed back to the queue (visibility 0) after a batch could not be written.
# TYPE etl_messages_released_total counter
etl_messages_released_total{pipeline="log\"ins"} 0
# HELP etl_retries_total Retried SQS and Postgres calls.
# TYPE etl_retries_total counter
etl_retries_total{pipeline="log\"ins"} 0
# HELP etl_vault_rows_written_total Encrypted originals written to the vault.
# TYPE etl_vault_rows_written_total counter
etl_vault_rows_written_total{pipeline="log\"ins"} 0
# HELP etl_messages_skipped_total Messages acknowledged without rows: a filter matched, or no output did (unmatched: skip).
# TYPE etl_messages_skipped_total counter
etl_messages_skipped_total{pipeline="log\"ins"} 4
# HELP etl_rows_unchanged_total Rows an upsert or ignore output left as they were (a stored or newer row won).
# TYPE etl_rows_unchanged_total counter
etl_rows_unchanged_total{pipeline="log\"ins"} 0
# HELP etl_messages_in_flight Messages received and not yet deleted.
# TYPE etl_messages_in_flight gauge
etl_messages_in_flight{pipeline="log\"ins"} 0
# HELP etl_table_rows_written_total Rows committed, by target table (inserted or updated).
# TYPE etl_table_rows_written_total counter
etl_table_rows_written_total{pipeline="log\"ins",table="user_logins"} 130
# HELP etl_batch_commit_seconds Time to write and commit one batch (rows, vault, rejects, ledger).
# TYPE etl_batch_commit_seconds histogram
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="0.005"} 1
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="0.01"} 1
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="0.025"} 2
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="0.05"} 3
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="0.1"} 3
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="0.25"} 3
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="0.5"} 3
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="1"} 3
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="2.5"} 3
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="10"} 3
etl_batch_commit_seconds_bucket{pipeline="log\"ins",le="+Inf"} 3
etl_batch_commit_seconds_sum{pipeline="log\"ins"} 0.045
etl_batch_commit_seconds_count{pipeline="log\"ins"} 3
"#;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Sends one raw request and reads until the server closes the connection.
    async fn raw(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn exposition_is_unchanged_from_the_hand_written_one() {
        assert_eq!(sample().render().unwrap(), BEFORE);
    }

    #[test]
    fn label_values_are_escaped() {
        let stats = Arc::new(Stats::default());
        let m = Metrics::new("a\\b\nc\"d", stats, Arc::new(QueueDepth::default()));
        let text = m.render().unwrap();
        let l = r#"pipeline="a\\b\nc\"d""#;
        assert_eq!(value(&text, &format!("etl_retries_total{{{l}}}")), 0.0);
        assert_eq!(
            value(
                &text,
                &format!("etl_batch_commit_seconds_bucket{{{l},le=\"+Inf\"}}")
            ),
            0.0
        );
    }

    #[test]
    fn a_racing_commit_never_makes_buckets_decrease() {
        let stats = sample_stats();
        // Read mid-commit: a wider bucket not yet bumped, and the count not yet either.
        stats.commit_buckets[4].store(2, Ordering::Relaxed);
        stats.commit_buckets[5].store(4, Ordering::Relaxed);
        stats.batches.store(3, Ordering::Relaxed);
        let m = Metrics::new("p", stats, Arc::new(QueueDepth::default()));
        let text = m.render().unwrap();
        let bucket = |le: &str| {
            value(
                &text,
                &format!("etl_batch_commit_seconds_bucket{{pipeline=\"p\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.1"), 3.0);
        assert_eq!(bucket("0.25"), 4.0);
        assert_eq!(bucket("10"), 4.0);
        assert_eq!(bucket("+Inf"), 4.0);
        assert_eq!(
            value(&text, "etl_batch_commit_seconds_count{pipeline=\"p\"}"),
            4.0
        );
    }

    #[test]
    fn every_sample_line_has_a_type_line() {
        let text = sample().render().unwrap();
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
    async fn serves_live_values_and_answers_other_requests() {
        let stats = sample_stats();
        let metrics = Metrics::new("logins", stats.clone(), Arc::new(QueueDepth::default()));
        let server = serve("127.0.0.1:0", metrics).await.unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let client = reqwest::Client::new();
        let get = |path: &'static str| client.get(format!("http://{addr}{path}")).send();

        let ok = get("/metrics").await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["content-type"], CONTENT_TYPE);
        assert_eq!(ok.headers()["cache-control"], "no-store");
        let body = ok.text().await.unwrap();
        let received = r#"etl_messages_received_total{pipeline="logins"}"#;
        assert_eq!(value(&body, received), 150.0);
        assert_eq!(
            value(
                &body,
                r#"etl_batch_commit_seconds_count{pipeline="logins"}"#
            ),
            3.0
        );

        // A scrape reads the pipeline's counters as they are now.
        stats.received.fetch_add(7, Ordering::Relaxed);
        stats.in_flight.store(5, Ordering::Relaxed);
        stats.pollers.store(12, Ordering::Relaxed);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert_eq!(value(&body, received), 157.0);
        assert_eq!(
            value(&body, r#"etl_messages_in_flight{pipeline="logins"}"#),
            5.0
        );
        assert_eq!(value(&body, r#"etl_sqs_pollers{pipeline="logins"}"#), 12.0);

        let health = get("/healthz").await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok\n");
        assert_eq!(get("/").await.unwrap().status(), 200);
        assert_eq!(get("/nope").await.unwrap().status(), 404);
        let post = client
            .post(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 405);
        assert_eq!(post.headers()["allow"], "GET, HEAD");

        // HEAD: the GET's headers, no body.
        let head = raw(
            addr,
            "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 3\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "{head}");

        // A request head past the limit is refused instead of buffered.
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD * 2)
        );
        assert!(raw(addr, &huge).await.starts_with("HTTP/1.1 431"));

        // The pooled keep-alive connection does not hold up the stop.
        tokio::time::timeout(Duration::from_secs(2), server.stop())
            .await
            .expect("stop closes idle connections at once");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is released after stop"
        );
    }

    #[tokio::test]
    async fn idle_and_excess_connections_are_dropped() {
        let limits = Limits {
            read_timeout: Duration::from_millis(300),
            max_connections: 1,
        };
        let server = serve_with("127.0.0.1:0", sample(), limits).await.unwrap();
        let addr = server.local_addr();
        // How long the server takes to close `s` (None: not within `within`); what it sent.
        let closed_after = |mut s: TcpStream, within: Duration| async move {
            let start = std::time::Instant::now();
            let mut got = Vec::new();
            let closed = tokio::time::timeout(within, s.read_to_end(&mut got)).await;
            closed
                .ok()
                .map(|_| (start.elapsed(), String::from_utf8_lossy(&got).into_owned()))
        };

        // An idle client takes the only slot, so the next connection is closed at once...
        let idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let excess = TcpStream::connect(addr).await.unwrap();
        let (_, sent) = closed_after(excess, Duration::from_millis(250))
            .await
            .expect("an excess connection is closed at once");
        assert_eq!(sent, "");
        // ...and the idle one is dropped once the read timeout passes, freeing the slot.
        let (after, _) = closed_after(idle, Duration::from_secs(3))
            .await
            .expect("an idle connection is closed");
        assert!(
            after >= Duration::from_millis(150),
            "closed after {after:?}"
        );

        // A kept-alive connection gets its answer, then the same timeout for its next request.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (after, sent) = closed_after(kept, Duration::from_secs(3))
            .await
            .expect("an idle kept-alive connection is closed");
        assert!(sent.starts_with("HTTP/1.1 200 OK\r\n"), "{sent}");
        assert!(
            after >= Duration::from_millis(250),
            "closed after {after:?}"
        );
        server.stop().await;
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
