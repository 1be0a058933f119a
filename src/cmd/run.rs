//! `etl-engine run`: load, connect, run the pipeline, summarize; signals shut it down cleanly.

use super::{connect_db, load, load_keyring, usage};
use anyhow::{Context, Result, anyhow};
use etl_engine::pipeline::{self, RunOptions, Stats};
use etl_engine::process::Processor;
use etl_engine::retry::{Backoff, retry};
use etl_engine::sink::{self, Sink};
use etl_engine::source::{self, QueueClient, SqsError};
use etl_engine::spec::SourceConfig;
use etl_engine::transform::Tokenizer;
use etl_engine::vault::VaultCipher;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn shutdown_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let wait = || async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
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
        tracing::info!("Shutting down: no more receives; flushing, committing and deleting what is in flight. Signal again to exit at once.");
        cancel.cancel();
        wait().await;
        // Nothing is lost: uncommitted messages become visible again and the ledger skips committed ones.
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(130);
    });
}

pub async fn cmd_run(spec_path: &Path, drain: bool, summary_json: Option<&Path>) -> Result<u8> {
    let spec = load(spec_path)?;
    let ring = load_keyring(&spec)?;
    let tokenizer = if spec.uses_hash() { Some(Tokenizer::new(ring.active_hash_key().map_err(usage)?)) } else { None };
    // Rejects are stored encrypted, so an encryption key is needed even without `encrypt` columns.
    ring.active_encryption_key().map_err(usage)?;
    let cipher = Arc::new(VaultCipher::new(&ring).map_err(usage)?);
    drop(ring);

    let cancel = CancellationToken::new();
    shutdown_on_signals(cancel.clone());

    let pool = connect_db(&spec.target.url, spec.target.writers + 2, &cancel).await?;
    sink::schema::ensure(&pool, &spec).await.context("creating the engine's tables")?;
    Sink::check_target(&pool, &spec.target.table, &spec.columns).await.map_err(usage)?;

    let queue: Option<Arc<dyn QueueClient>> = match &spec.source {
        SourceConfig::Sqs(cfg) => Some(
            retry(
                Backoff { max_elapsed: std::time::Duration::from_secs(60), ..Backoff::SQS },
                &cancel,
                SqsError::is_retriable,
                |e, attempt, _| tracing::warn!(attempt, error = %e, "SQS is not reachable yet; retrying."),
                || source::sqs::connect(cfg),
            )
            .await
            .map_err(|e| anyhow!("cannot connect to SQS queue {} (source.queue): {e}", cfg.queue))?,
        ),
        SourceConfig::File(_) => None,
    };
    let max_receive = match &spec.source {
        SourceConfig::Sqs(cfg) => Some(cfg.max_receive_count),
        SourceConfig::File(_) => None,
    };
    let columns = Arc::new(spec.columns.clone());
    let processor = Processor::new(spec.columns.clone(), tokenizer, max_receive);
    let sink = Arc::new(Sink::new(pool.clone(), &spec, columns, cipher));
    let stats = Arc::new(Stats::default());
    tracing::info!(pipeline = %spec.name, table = %spec.target.table, drain, "Pipeline started.");
    let summary = pipeline::run(&spec, processor, sink, queue, RunOptions { drain }, stats.clone(), cancel).await?;
    sink::record_key_usage(&pool, &stats).await;
    println!("{}: {summary}", spec.name);
    if let Some(p) = summary_json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(0)
}

