//! Reading rejects back (`etl-engine rejects`): the list of rejected messages with their reasons
//! (no PII: reasons name a stage and a column, never a value), and — audited like
//! `vault-decrypt` — their original bodies, so a reject can be inspected, fixed and replayed.
//!
//! Bodies are read in two steps, like vault values: `<rejects>_recover_grant` picks the message
//! ids (at most [`MAX_RECOVER`]) and appends the audit row (with the pipeline and the ids) and
//! its grant, committed on its own; `<rejects>_recover(grant)` then returns exactly those
//! bodies. The recovery role has no privilege on the ciphertext columns themselves.

use super::recover::{RecoverError, classify_call_error, decrypt_text};
use super::rotate::REJECTS_BINDING_COLUMN;
use crate::crypto::cipher::{Binding, VaultCipher};
use crate::db::policy::{MAX_RECOVER, grant_function_name, read_function_name};
use crate::db::quote_ident;
use crate::spec::Spec;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use zeroize::Zeroizing;

/// One rejected message, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectInfo {
    pub message_id: String,
    pub reason: String,
    pub rejected_at: DateTime<Utc>,
}

/// One rejected message with its original body. `Debug` redacts the body.
pub struct RecoveredReject {
    pub info: RejectInfo,
    pub body: Zeroizing<String>,
}

impl std::fmt::Debug for RecoveredReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveredReject")
            .field("info", &self.info)
            .field("body", &"<redacted>")
            .finish()
    }
}

/// Which rejects to read: the given message ids, or the newest `limit` of the pipeline.
#[derive(Debug, Clone)]
pub struct Query {
    pub message_ids: Option<Vec<String>>,
    pub limit: u32,
}

/// Lists rejects of the spec's pipeline, newest first. Needs SELECT on the non-secret columns
/// only (`pipeline, message_id, reason, rejected_at`).
pub async fn list(pool: &PgPool, spec: &Spec, q: &Query) -> Result<Vec<RejectInfo>, sqlx::Error> {
    let sql = format!(
        "SELECT message_id, reason, rejected_at FROM {} WHERE pipeline = $1 \
         AND ($2::text[] IS NULL OR message_id = ANY($2)) ORDER BY rejected_at DESC, message_id LIMIT $3",
        quote_ident(&spec.rejects.table)
    );
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&spec.name)
        .bind(&q.message_ids)
        .bind(i64::from(q.limit))
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(message_id, reason, rejected_at)| RejectInfo {
            message_id,
            reason,
            rejected_at,
        })
        .collect())
}

/// Reads and decrypts reject bodies. The audit row (listing exactly the message ids returned) is
/// committed before any ciphertext is read; if it cannot be, nothing is.
pub async fn recover_bodies(
    pool: &PgPool,
    spec: &Spec,
    cipher: &VaultCipher,
    q: &Query,
    actor: &str,
    reason: &str,
) -> Result<Vec<RecoveredReject>, RecoverError> {
    if reason.trim().is_empty() {
        return Err(RecoverError::NoReason);
    }
    let n_ids = q.message_ids.as_ref().map_or(0, Vec::len);
    if n_ids > MAX_RECOVER || q.limit as usize > MAX_RECOVER {
        return Err(RecoverError::TooMany {
            count: n_ids.max(q.limit as usize),
            max: MAX_RECOVER,
        });
    }
    // Step 1, committed on its own: the audit row (pipeline, message ids) and its grant.
    let grant_fn = grant_function_name(&spec.rejects.table);
    let grant: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {}($1, $2, $3, $4, $5, $6)",
        quote_ident(&grant_fn)
    )))
    .bind(spec.file.display().to_string())
    .bind(&spec.name)
    .bind(&q.message_ids)
    .bind(i32::try_from(q.limit).unwrap_or(i32::MAX))
    .bind(actor)
    .bind(reason)
    .fetch_one(pool)
    .await
    .map_err(|e| classify_call_error(e, grant_fn))?;
    // Step 2: exactly the bodies that grant names.
    let read_fn = read_function_name(&spec.rejects.table);
    type Row = (
        String,
        String,
        DateTime<Utc>,
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT message_id, reason, rejected_at, key_id, nonce, body_ciphertext FROM {}($1)",
        quote_ident(&read_fn)
    )))
    .bind(grant)
    .fetch_all(pool)
    .await
    .map_err(|e| classify_call_error(e, read_fn))?;

    let mut out = Vec::with_capacity(rows.len());
    for (message_id, reject_reason, rejected_at, key_id, nonce, ct) in rows {
        // Rejects written before bodies were kept have no ciphertext: an empty body.
        let body = match (key_id, nonce, ct) {
            (Some(key_id), Some(nonce), Some(ct)) => {
                let b = Binding {
                    scope: &spec.name,
                    column: REJECTS_BINDING_COLUMN,
                    token: &message_id,
                };
                decrypt_text(cipher, b, &key_id, &nonce, &ct)?
            }
            _ => Zeroizing::new(String::new()),
        };
        out.push(RecoveredReject {
            info: RejectInfo {
                message_id,
                reason: reject_reason,
                rejected_at,
            },
            body,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_body() {
        let r = RecoveredReject {
            info: RejectInfo {
                message_id: "m-1".into(),
                reason: "decode: not JSON".into(),
                rejected_at: DateTime::<Utc>::UNIX_EPOCH,
            },
            body: Zeroizing::new("{\"ip\": \"199.172.111.135\"}".into()),
        };
        let d = format!("{r:?}");
        assert!(d.contains("m-1") && d.contains("<redacted>"), "{d}");
        assert!(!d.contains("199.172"), "{d}");
    }
}
