//! Counting encryptions per key in the key-usage table, so that a key nearing the random-nonce
//! limit is noticed and rotated in time.

use super::schema;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Encryptions per key after which a warning is logged: a quarter of the 2^32 random-nonce
/// limit of NIST SP 800-38D, leaving ample time to rotate.
pub const NONCE_WARN_AT: i64 = 1 << 30;

/// The random-nonce limit of NIST SP 800-38D: no key encrypts more than 2^32 times.
pub const NONCE_LIMIT: i64 = 1 << 32;

/// A key that reached [`NONCE_LIMIT`].
#[derive(Debug, thiserror::Error)]
pub enum KeyUsageError {
    /// The key may not encrypt any more.
    #[error(
        "encryption key {key_id} has been used for {encryptions} encryptions, the 2^32 limit of random 96-bit nonces: the engine will not encrypt with it. Add a new active key (`etl-engine keyring add-key KEYRING --purpose encryption`), deploy it, then run `etl-engine vault-rotate SPEC`"
    )]
    Exhausted {
        /// The key.
        key_id: String,
        /// Its count.
        encryptions: i64,
    },
    /// Postgres refused the query.
    #[error("reading the key-usage counters: {0}")]
    Db(#[from] sqlx::Error),
}

/// Refuses a key that reached [`NONCE_LIMIT`]; checked before a run encrypts anything.
pub async fn check_nonce_budget(pool: &PgPool, key_id: &str) -> Result<(), KeyUsageError> {
    let n: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT encryptions FROM {} WHERE key_id = $1",
        schema::KEY_USAGE_TABLE
    )))
    .bind(key_id)
    .fetch_optional(pool)
    .await?;
    match n {
        Some(encryptions) if encryptions >= NONCE_LIMIT => Err(KeyUsageError::Exhausted {
            key_id: key_id.to_string(),
            encryptions,
        }),
        _ => Ok(()),
    }
}

/// Adds this run's encryption counts to the key-usage table and warns when a key nears its
/// nonce budget. Failures are logged, not fatal: the rows are already committed. Returns
/// whether a key reached [`NONCE_LIMIT`].
pub async fn record_key_usage(pool: &PgPool, stats: &crate::stats::Stats) -> bool {
    let counts: Vec<(String, u64)> = match stats.encryptions.lock() {
        Ok(mut m) => m.drain().filter(|(_, n)| *n > 0).collect(),
        Err(_) => return false,
    };
    let keys: Vec<String> = counts.iter().map(|(k, _)| k.clone()).collect();
    let failed = record_key_counts(pool, counts).await;
    let mut exhausted = false;
    for k in keys {
        if let Err(e @ KeyUsageError::Exhausted { .. }) = check_nonce_budget(pool, &k).await {
            tracing::error!(error = %e, "Encryption key exhausted; stopping.");
            exhausted = true;
        }
    }
    // Kept for the next flush, so a Postgres hiccup does not lose counts.
    if !failed.is_empty()
        && let Ok(mut m) = stats.encryptions.lock()
    {
        for (k, n) in failed {
            *m.entry(k).or_default() += n;
        }
    }
    exhausted
}

/// Writes the encryption counts of a running pipeline to the key-usage table every `every`
/// until `stop` is cancelled, so a long run (or one that is killed) is still counted against
/// the nonce budget. When a key reaches [`NONCE_LIMIT`], `exhausted` is cancelled (the run
/// stops taking messages). Await the handle before the final [`record_key_usage`].
pub fn spawn_key_usage_flush(
    pool: PgPool,
    stats: Arc<crate::stats::Stats>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
    exhausted: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; nothing has been encrypted yet.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    if record_key_usage(&pool, &stats).await {
                        exhausted.cancel();
                    }
                }
            }
        }
    })
}

/// Adds encryption counts per key id through the counting function (the writer role has no
/// UPDATE on the counters, and the function only adds), warning for keys past
/// [`NONCE_WARN_AT`]. Returns the counts that could not be written (the failure is logged).
pub async fn record_key_counts(pool: &PgPool, counts: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let mut failed = Vec::new();
    for (key_id, n) in counts {
        let res: Result<(i64,), _> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {}($1, $2)",
            crate::db::policy::KEY_USAGE_FUNCTION
        )))
        .bind(&key_id)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_one(pool)
        .await;
        match res {
            Ok((total,)) if total >= NONCE_WARN_AT => tracing::warn!(
                key_id = %key_id, encryptions = total,
                "This encryption key has been used for more than 2^30 encryptions; rotate it (add a new active key and run vault-rotate) before 2^32."
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, key_id = %key_id, "Could not record key usage; will try again at the next flush.");
                failed.push((key_id, n));
            }
        }
    }
    failed
}
