//! `etl-engine prune-ledger`: deletes old ledger entries in batches, so the ledger does not grow
//! without bound.
//!
//! An entry may only go once SQS can no longer deliver its message: if a message outlived its
//! ledger entry, a redelivery would be written a second time. SQS forgets a message after the
//! queue's `MessageRetentionPeriod`, so the age pruned must be at least that; the command reads
//! it from the queue and refuses a shorter age unless `--force` is given.

use super::{connect_db, load, usage};
use anyhow::{Context, Result, anyhow};
use etl_engine::db::quote_ident;
use etl_engine::retry::{Backoff, retry};
use etl_engine::source::{self, SqsError};
use etl_engine::spec::{SourceConfig, Spec};
use sqlx::AssertSqlSafe;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Arguments of `prune-ledger`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The spec whose ledger (table and pipeline name) to prune.
    pub spec: std::path::PathBuf,
    /// Delete entries processed more than this many hours ago (default: the spec's ledger.retention_hours).
    #[arg(long, value_name = "HOURS")]
    pub older_than_hours: Option<u64>,
    /// Entries deleted per statement; each statement commits on its own, so locks stay short.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Prune even when the age is shorter than the queue's retention period, or when the queue
    /// cannot be asked. Messages still in the queue may then be written twice.
    #[arg(long)]
    pub force: bool,
    /// Only count the entries that would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `prune-ledger`. Exit code 2 when the age is refused.
pub async fn cmd_prune(args: PruneArgs) -> Result<u8> {
    let spec = load(&args.spec)?;
    let hours = args.older_than_hours.unwrap_or(spec.ledger.retention_hours);
    let hours_flag = if args.older_than_hours.is_some() {
        "--older-than-hours"
    } else {
        "ledger.retention_hours"
    };
    check_against_queue_retention(&spec, hours, hours_flag, args.force).await?;

    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 1, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    let table = quote_ident(&spec.ledger.table);
    let hours_i64 =
        i64::try_from(hours).map_err(|_| usage(format!("{hours_flag} is too large: {hours}")))?;
    let old = "pipeline = $1 AND processed_at < now() - $2::bigint * interval '1 hour'";

    if args.dry_run {
        let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {old}"
        )))
        .bind(&spec.name)
        .bind(hours_i64)
        .fetch_one(&pool)
        .await
        .with_context(|| format!("counting old entries in ledger table {}", spec.ledger.table))?;
        println!(
            "Would prune {n} ledger entries older than {hours} hours from {} (pipeline {}).",
            spec.ledger.table, spec.name
        );
        return Ok(0);
    }

    // ctid batches: a bounded DELETE without needing a key column, each committed on its own.
    let delete = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {old} LIMIT $3))"
    );
    let mut total: u64 = 0;
    loop {
        let done = sqlx::query(AssertSqlSafe(delete.clone()))
            .bind(&spec.name)
            .bind(hours_i64)
            .bind(i64::from(args.batch_size))
            .execute(&pool)
            .await
            .with_context(|| {
                format!(
                    "deleting old entries from ledger table {}",
                    spec.ledger.table
                )
            })?
            .rows_affected();
        total += done;
        if done > 0 {
            tracing::debug!(deleted = done, total, "Pruned a batch of ledger entries.");
        }
        if done < u64::from(args.batch_size) {
            break;
        }
    }
    println!(
        "Pruned {total} ledger entries older than {hours} hours from {} (pipeline {}).",
        spec.ledger.table, spec.name
    );
    Ok(0)
}

/// Refuses an age shorter than the queue's retention period (SQS sources only).
async fn check_against_queue_retention(
    spec: &Spec,
    hours: u64,
    hours_flag: &str,
    force: bool,
) -> Result<()> {
    let SourceConfig::Sqs(cfg) = &spec.source else {
        // A file can be replayed at any time; its ledger entries protect against that only as
        // long as they are kept, which is the operator's call.
        return Ok(());
    };
    let cancel = CancellationToken::new();
    let backoff = Backoff {
        max_elapsed: Duration::from_secs(20),
        ..Backoff::SQS
    };
    let warn = |e: &SqsError, attempt: u32, _: Duration| {
        tracing::warn!(attempt, error = %e, "SQS is not reachable yet; retrying.");
    };
    let attrs = async {
        let queue = retry(backoff, &cancel, SqsError::is_retriable, warn, || {
            source::sqs::connect(cfg)
        })
        .await?;
        retry(backoff, &cancel, SqsError::is_retriable, warn, || {
            queue.queue_attributes(vec!["MessageRetentionPeriod".into()])
        })
        .await
    }
    .await;
    let retention_secs = match attrs.map(|a| {
        a.get("MessageRetentionPeriod")
            .and_then(|v| v.parse::<u64>().ok())
    }) {
        Ok(Some(s)) => s,
        Ok(None) | Err(_) if force => {
            tracing::warn!(queue = %cfg.queue, "Could not read the queue's MessageRetentionPeriod; pruning anyway (--force).");
            return Ok(());
        }
        Ok(None) => {
            return Err(anyhow!(
                "queue {} (source.queue) did not report its MessageRetentionPeriod, so the ledger cannot be pruned safely; \
                 pass --force to prune anyway",
                cfg.queue
            ));
        }
        Err(e) => {
            return Err(anyhow!(
                "cannot read the MessageRetentionPeriod of queue {} (source.queue): {e}; the ledger is pruned only when the \
                 queue confirms it no longer holds older messages (pass --force to prune anyway)",
                cfg.queue
            ));
        }
    };
    if hours.saturating_mul(3600) < retention_secs {
        let needed = retention_secs.div_ceil(3600);
        if force {
            tracing::warn!(
                hours,
                retention_secs,
                "Pruning entries younger than the queue's retention period (--force): a redelivered message could be written twice."
            );
            return Ok(());
        }
        return Err(usage(format!(
            "{hours_flag} is {hours} hours, shorter than the retention period of queue {} ({retention_secs} s = {needed} hours): \
             a message still in the queue could lose its ledger entry and be written twice. Use at least {needed} hours \
             (or --force)",
            cfg.queue
        )));
    }
    Ok(())
}
