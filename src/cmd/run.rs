//! `etl-engine run`: load, connect, run the pipeline, summarize; signals shut it down cleanly.

use super::{connect_db, load, load_keyring, spec_tokenizer, usage};
use anyhow::{Context, Result, anyhow};
use etl_engine::crypto::{KeyUse, VaultCipher};
use etl_engine::metrics::{self, Metrics};
use etl_engine::pipeline::{self, RunOptions};
use etl_engine::process::Processor;
use etl_engine::progress::{Progress, ProgressConfig, ProgressMode, QueueDepth};
use etl_engine::retry::{Backoff, retry};
use etl_engine::sink::{self, Sink};
use etl_engine::source::{self, Source, SqsError};
use etl_engine::spec::SourceConfig;
use etl_engine::stats::Stats;

/// Exit code of `run --drain` when the queue still counted messages at the end.
pub const EXIT_DRAIN_INCOMPLETE: u8 = 4;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How a run reports while it works: progress on stderr and, optionally, Prometheus metrics.
#[derive(clap::Args, Debug, Clone)]
pub struct ObserveArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics while running (e.g. 0.0.0.0:9898; port 0 picks one and logs it).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Progress while running: a live line on a terminal, a log line every --progress-interval-secs otherwise.
    #[arg(long, value_enum, default_value_t = ProgressFlag::Auto)]
    pub progress: ProgressFlag,
    /// Seconds between progress log lines (when stderr is not a terminal, or with --progress log).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_interval_secs: u64,
}

/// Values of `--progress`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ProgressFlag {
    /// `line` when stderr is a terminal, `log` otherwise.
    Auto,
    /// A live status line, redrawn in place.
    Line,
    /// A structured log line per interval.
    Log,
    /// Only the final summary.
    Off,
}

/// How often encryption counts are written to the key-usage table while running:
/// `ETL_KEY_USAGE_FLUSH_SECS`, default 60.
fn key_usage_flush_interval() -> std::time::Duration {
    let secs = match std::env::var("ETL_KEY_USAGE_FLUSH_SECS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .unwrap_or_else(|| {
                tracing::warn!(
                    "ETL_KEY_USAGE_FLUSH_SECS must be a whole number of seconds above 0; using 60."
                );
                60
            }),
        Err(_) => 60,
    };
    std::time::Duration::from_secs(secs)
}

fn shutdown_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let wait = || async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return std::future::pending::<()>().await;
                };
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        wait().await;
        tracing::info!(
            "Shutting down: no more receives; flushing, committing and deleting what is in flight. Signal again to exit at once."
        );
        cancel.cancel();
        wait().await;
        // Nothing is lost: uncommitted messages become visible again and the ledger skips committed ones.
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(130);
    });
}

pub async fn cmd_run(
    spec_path: &Path,
    drain: bool,
    summary_json: Option<&Path>,
    observe: ObserveArgs,
) -> Result<u8> {
    let spec = load(spec_path)?;
    // Least key: the active hash key (if any column hashes) and the active encryption key,
    // never the decrypt-only ones.
    let ring = load_keyring(
        &spec,
        KeyUse {
            hash: spec.uses_hash(),
            ..KeyUse::WRITE
        },
    )
    .await?;
    let tokenizer = if spec.uses_hash() {
        Some(spec_tokenizer(&spec, &ring)?)
    } else {
        None
    };
    // Rejects are stored encrypted, so an encryption key is needed even without `encrypt` columns.
    ring.active_encryption_key().map_err(usage)?;
    let cipher = Arc::new(VaultCipher::new(&ring).map_err(usage)?);
    drop(ring);

    // Bound before connecting, so a bad address fails at once and probes answer while services start.
    let stats = Arc::new(Stats::default());
    let depth = Arc::new(QueueDepth::default());
    let metrics_server = match &observe.metrics_addr {
        Some(addr) => Some(
            metrics::serve(
                addr,
                Metrics::new(spec.name.clone(), stats.clone(), depth.clone()),
            )
            .await
            .map_err(usage)?,
        ),
        None => None,
    };

    let cancel = CancellationToken::new();
    shutdown_on_signals(cancel.clone());

    let pool = connect_db(&spec.target.url, spec.target.writers + 2, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    Sink::check_outputs(&pool, &spec).await.map_err(usage)?;
    // A key at its nonce limit never encrypts again.
    let active_key = cipher.active_key_id().map(str::to_string);
    if let Some(key_id) = &active_key {
        sink::check_nonce_budget(&pool, key_id).await?;
    }

    let connecting = cancel.clone();
    let source = Source::build(&spec.source, |cfg| async move {
        retry(
            Backoff { max_elapsed: std::time::Duration::from_secs(60), ..Backoff::SQS },
            &connecting,
            SqsError::is_retriable,
            |e, attempt, _| tracing::warn!(attempt, error = %e, "SQS is not reachable yet; retrying."),
            || source::sqs::connect(&cfg),
        )
        .await
        .map_err(|e| anyhow!("cannot connect to SQS queue {} (source.queue): {e}", cfg.queue))
    })
    .await?;
    let queue = source.queue();
    let max_receive = match &spec.source {
        SourceConfig::Sqs(cfg) => Some(cfg.max_receive_count),
        SourceConfig::File(_) => None,
    };
    let processor = Processor::new(&spec, tokenizer, max_receive).map_err(anyhow::Error::msg)?;
    let sink = Arc::new(Sink::new(pool.clone(), &spec, cipher));
    // The vault's column ids, once: a column `setup` has not registered stops here.
    sink.load_vault_columns().await.map_err(usage)?;
    tracing::info!(pipeline = %spec.name, tables = %spec.table_names().join(","), drain, "Pipeline started.");
    let progress = Progress::start(ProgressConfig {
        pipeline: spec.name.clone(),
        stats: stats.clone(),
        depth,
        queue: queue.clone(),
        poll_depth: metrics_server.is_some(),
        mode: match observe.progress {
            ProgressFlag::Auto => ProgressMode::auto(),
            ProgressFlag::Line => ProgressMode::Line,
            ProgressFlag::Log => ProgressMode::Log,
            ProgressFlag::Off => ProgressMode::Off,
        },
        log_interval: std::time::Duration::from_secs(observe.progress_interval_secs),
    });
    let flush_stop = CancellationToken::new();
    let flush = sink::spawn_key_usage_flush(
        pool.clone(),
        stats.clone(),
        key_usage_flush_interval(),
        flush_stop.clone(),
        cancel.clone(),
    );
    let result = pipeline::run(
        &spec,
        processor,
        sink,
        source,
        RunOptions { drain },
        stats.clone(),
        cancel,
    )
    .await;
    flush_stop.cancel();
    let _ = flush.await;
    // Also after a failed run: whatever was committed was encrypted.
    sink::record_key_usage(&pool, &stats).await;
    progress.finish().await;
    if let Some(m) = metrics_server {
        m.stop().await;
    }
    let summary = result?;
    println!("{}: {summary}", spec.name);
    // A run stopped because its key reached the nonce limit says so in its exit code.
    if let Some(key_id) = &active_key {
        sink::check_nonce_budget(&pool, key_id).await?;
    }
    if let Some(p) = summary_json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    // A drain that ended with messages still counted in the queue did not drain it: say so in
    // the exit code too, so a script never takes it for a complete run.
    match summary.left_in_queue {
        Some(n) if n > 0 => {
            eprintln!(
                "{}: the drain ended with {n} message(s) still in the queue (held by another consumer, delayed, or not yet visible); run it again to take them",
                spec.name
            );
            Ok(EXIT_DRAIN_INCOMPLETE)
        }
        _ => Ok(0),
    }
}
