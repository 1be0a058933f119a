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

/// Adds this run's encryption counts to the key-usage table and warns when a key nears its
/// nonce budget. Failures are logged, not fatal: the rows are already committed.
pub async fn record_key_usage(pool: &PgPool, stats: &crate::stats::Stats) {
    let counts: Vec<(String, u64)> = match stats.encryptions.lock() {
        Ok(mut m) => m.drain().filter(|(_, n)| *n > 0).collect(),
        Err(_) => return,
    };
    let failed = record_key_counts(pool, counts).await;
    // Kept for the next flush, so a Postgres hiccup does not lose counts.
    if !failed.is_empty()
        && let Ok(mut m) = stats.encryptions.lock()
    {
        for (k, n) in failed {
            *m.entry(k).or_default() += n;
        }
    }
}

/// Writes the encryption counts of a running pipeline to the key-usage table every `every`
/// until `stop` is cancelled, so a long run (or one that is killed) is still counted against
/// the nonce budget. Await the handle before the final [`record_key_usage`].
pub fn spawn_key_usage_flush(
    pool: PgPool,
    stats: Arc<crate::stats::Stats>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; nothing has been encrypted yet.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => record_key_usage(&pool, &stats).await,
            }
        }
    })
}

/// Adds encryption counts per key id to the key-usage table, warning for keys past
/// [`NONCE_WARN_AT`]. Returns the counts that could not be written (the failure is logged).
pub async fn record_key_counts(pool: &PgPool, counts: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let mut failed = Vec::new();
    for (key_id, n) in counts {
        let res: Result<(i64,), _> = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {} (key_id, encryptions) VALUES ($1, $2) ON CONFLICT (key_id) DO UPDATE \
             SET encryptions = {0}.encryptions + excluded.encryptions, updated_at = now() RETURNING encryptions",
            schema::KEY_USAGE_TABLE
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
