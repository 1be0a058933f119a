//! `etl-engine check`: everything `run` needs, verified without receiving a message — the spec,
//! the keyring, Postgres (target columns and their types), and the SQS queue and its protocol.

use super::{load, load_keyring, usage};
use anyhow::{Result, anyhow};
use etl_engine::crypto::{KeyUse, VaultCipher};
use etl_engine::retry::{Backoff, retry};
use etl_engine::sink::{self, Sink};
use etl_engine::source::{self, SqsError};
use etl_engine::spec::SourceConfig;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Retrying the SQS calls: rides out throttling or a dropped connection (what the SDK's own
/// three attempts did before they were turned off), yet a wrong endpoint still fails the check
/// within seconds.
const SQS_RETRY: Backoff = Backoff {
    max_elapsed: Duration::from_secs(10),
    ..Backoff::SQS
};

/// Runs the checks in order and stops at the first failure, which becomes the error.
pub async fn cmd_check(spec_path: &Path) -> Result<u8> {
    let spec = load(spec_path)?;
    println!(
        "ok   spec {} ({} columns in {}, pipeline {})",
        spec_path.display(),
        spec.all_columns().count(),
        spec.table_names().join(", "),
        spec.name
    );

    let ring = load_keyring(&spec, KeyUse::WRITE).await?;
    let hash = ring.active_hash_key().map_err(usage)?;
    let enc = ring.active_encryption_key().map_err(usage)?;
    VaultCipher::new(&ring).map_err(usage)?;
    println!(
        "ok   keyring {} (hash key {}, encryption key {})",
        ring.origin, hash.id, enc.id
    );

    let pool = sink::connect_pool(&spec.target.url, 1).await.map_err(|e| {
        anyhow!("cannot connect to Postgres (target.url; override with ETL_SPEC_TARGET__URL): {e}")
    })?;
    Sink::check_outputs(&pool, &spec).await.map_err(usage)?;
    for o in &spec.outputs {
        let key = match &o.write {
            etl_engine::spec::Write::Upsert { key, .. } => {
                format!(", and a unique key on ({})", key.join(", "))
            }
            _ => String::new(),
        };
        println!(
            "ok   postgres: table {} has every column with a compatible type{key}",
            o.table
        );
    }
    super::require_schema(&pool, &spec).await?;
    sink::vault_columns::VaultColumnIds::new(&spec)
        .load(&pool)
        .await
        .map_err(usage)?;
    println!(
        "ok   postgres: engine tables {}, {}, {} set up at the current schema version, encrypted columns registered",
        spec.ledger.table, spec.vault.table, spec.rejects.table
    );
    pool.close().await;

    match &spec.source {
        SourceConfig::Sqs(cfg) => {
            let cancel = CancellationToken::new();
            let warn = |e: &SqsError, attempt: u32, _: Duration| {
                tracing::warn!(attempt, error = %e, "An SQS call failed; retrying.");
            };
            let q = retry(SQS_RETRY, &cancel, SqsError::is_retriable, warn, || {
                source::sqs::connect(cfg)
            })
            .await
            .map_err(|e| anyhow!("SQS queue {} (source.queue): {e}", cfg.queue))?;
            let attrs = retry(SQS_RETRY, &cancel, SqsError::is_retriable, warn, || {
                q.queue_attributes(vec!["ApproximateNumberOfMessages".into()])
            })
            .await?;
            let depth = attrs
                .get("ApproximateNumberOfMessages")
                .map(String::as_str)
                .unwrap_or("?");
            println!(
                "ok   sqs: queue {} reachable over the {} protocol, about {depth} messages waiting",
                cfg.queue,
                q.protocol_name()
            );
        }
        SourceConfig::File(f) => {
            std::fs::metadata(&f.path)
                .map_err(|e| usage(format!("source.path {}: {e}", f.path)))?;
            println!("ok   file {} is readable", f.path);
        }
    }
    Ok(0)
}
