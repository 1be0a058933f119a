//! Reading rejects back (`etl-engine rejects`): the list of rejected messages with their reasons
//! (no PII: reasons name a stage and a column, never a value), and — audited like
//! `vault-decrypt` — their original bodies, so a reject can be inspected, fixed and replayed.
//!
//! Bodies are read only through a `SECURITY DEFINER` function per rejects table, which records
//! the message ids it returns in the audit table before returning them; the recovery role has
//! no privilege on the ciphertext columns themselves.

use super::cipher::{Binding, VaultCipher};
use super::recover::{RecoverError, classify_call_error, decrypt_text, literal, qualified_expr};
use super::rotate::REJECTS_BINDING_COLUMN;
use crate::sink::quote_ident;
use crate::sink::schema::AUDIT_TABLE;
use crate::spec::Spec;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use zeroize::Zeroizing;

/// What the audit table's `column_name` says for a read of reject bodies.
pub const AUDIT_COLUMN: &str = "body";

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
/// written by the same statement and committed before anything is decrypted; if it cannot be,
/// nothing is.
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
    let function = recover_function_name(&spec.rejects.table);
    let mut tx = pool.begin().await?;
    type Row = (
        String,
        String,
        DateTime<Utc>,
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT message_id, reason, rejected_at, key_id, nonce, body_ciphertext FROM {}($1, $2, $3, $4, $5, $6)",
        quote_ident(&function)
    )))
    .bind(spec.file.display().to_string())
    .bind(&spec.name)
    .bind(&q.message_ids)
    .bind(i32::try_from(q.limit).unwrap_or(i32::MAX))
    .bind(actor)
    .bind(reason)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| classify_call_error(e, function.clone()))?;
    tx.commit().await.map_err(RecoverError::Audit)?;

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

/// The body-reading function of a rejects table: `<rejects table>_recover`, in the same schema.
pub fn recover_function_name(rejects_table: &str) -> String {
    format!("{rejects_table}_recover")
}

/// DDL (a `DO` block, safe to run repeatedly and concurrently) creating the body-reading
/// function of `rejects_table` if it is missing: `SECURITY DEFINER`, a fixed `search_path`,
/// callable by no one until granted (see `schema/roles.sql`). It picks the rows first, writes
/// the audit row naming them, then returns them; if the insert fails, the call fails.
pub fn recover_function_ddl(rejects_table: &str) -> String {
    let rejects = qualified_expr(rejects_table);
    let audit = qualified_expr(AUDIT_TABLE);
    let function = qualified_expr(&recover_function_name(rejects_table));
    let table_literal = literal(rejects_table);
    let column_literal = literal(AUDIT_COLUMN);
    format!(
        r#"DO $etl$
DECLARE
  rejects text := {rejects};
  audit text := {audit};
  fn text := {function};
BEGIN
  IF to_regprocedure(fn || '(text,text,text[],integer,text,text)') IS NOT NULL THEN
    RETURN;
  END IF;
  EXECUTE format($f$
    CREATE FUNCTION %s(p_spec text, p_pipeline text, p_ids text[], p_limit integer, p_actor text, p_reason text)
    RETURNS TABLE(message_id text, reason text, rejected_at timestamptz, key_id text, nonce bytea, body_ciphertext bytea)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    #variable_conflict use_column
    DECLARE
      ids text[];
    BEGIN
      IF p_reason IS NULL OR btrim(p_reason) = '' OR p_actor IS NULL OR btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'reading reject bodies needs an actor and a reason' USING ERRCODE = '22023';
      END IF;
      SELECT coalesce(array_agg(s.message_id), '{{}}') INTO ids FROM (
        SELECT r.message_id FROM %s AS r
        WHERE r.pipeline = p_pipeline AND (p_ids IS NULL OR r.message_id = ANY(p_ids))
        ORDER BY r.rejected_at DESC, r.message_id LIMIT greatest(p_limit, 0)) AS s;
      INSERT INTO %s (actor, db_user, spec, target_table, column_name, value_count, reason, tokens)
        VALUES (p_actor, session_user, p_spec, %L, %L, cardinality(ids), p_reason, ids);
      RETURN QUERY SELECT r.message_id, r.reason, r.rejected_at, r.key_id, r.nonce, r.body_ciphertext FROM %s AS r
        WHERE r.pipeline = p_pipeline AND r.message_id = ANY(ids)
        ORDER BY r.rejected_at DESC, r.message_id;
    END
    $body$$f$, fn, rejects, audit, {table_literal}, {column_literal}, rejects);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text[],integer,text,text) FROM PUBLIC', fn);
END
$etl$"#
    )
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

    #[test]
    fn function_ddl_names_the_table_and_audits_before_returning() {
        let ddl = recover_function_ddl("etl_rejects");
        assert!(ddl.contains("'etl_rejects_recover'"), "{ddl}");
        let audit = ddl.find("INSERT INTO").unwrap();
        let ret = ddl.find("RETURN QUERY").unwrap();
        assert!(
            audit < ret,
            "the audit row must be written before rows are returned"
        );
    }
}
