//! Right to erasure (`etl-engine vault-erase`): one person's PII out of the target tables, the
//! vault and the rejects, in one transaction with its audit record.
//!
//! For the rows matching the selectors, in every output of the spec that has the selector
//! columns (or the one named): the rows' token columns (`hash` and `encrypt`) are set to NULL,
//! or the rows deleted; then each vault entry of those rows' encrypted tokens is deleted unless
//! another row of that table still holds the token (a value shared with someone else stays
//! recoverable for them). Rejects of the pipeline whose decrypted body holds every selector
//! value as a JSON leaf are deleted. The audit row records counts, never a value or token.

use super::recover::{RecoverError, decrypt_text, resolve_output_tables, where_clause};
use super::rotate::REJECTS_BINDING_COLUMN;
use crate::crypto::cipher::{Binding, VaultCipher};
use crate::db::policy::AUDIT_APPEND_FUNCTION;
use crate::db::quote_ident;
use crate::db::vault_v3;
use crate::spec::Spec;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

/// What to do with the matching rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep the rows, set their token columns to NULL.
    Null,
    /// Delete the rows.
    DeleteRows,
}

/// One erasure. `Debug` never shows the selector values.
#[derive(Clone)]
pub struct Request {
    /// `COLUMN=VALUE` pairs, all of which a row must match.
    pub conds: Vec<(String, String)>,
    /// Only this output table.
    pub output: Option<String>,
    /// Null the tokens or delete the rows.
    pub mode: Mode,
    /// Who erases (claimed).
    pub actor: String,
    /// Why; recorded.
    pub reason: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field(
                "columns",
                &self
                    .conds
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("output", &self.output)
            .field("mode", &self.mode)
            .finish()
    }
}

/// What one output table gave up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReport {
    /// The output table.
    pub table: String,
    /// Rows nulled or deleted.
    pub rows: u64,
    /// Vault entries deleted.
    pub vault_deleted: u64,
    /// Tokens kept in the vault because other rows still hold them.
    pub vault_kept_shared: u64,
}

/// The whole erasure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Per output table.
    pub tables: Vec<TableReport>,
    /// Rejects deleted.
    pub rejects_deleted: u64,
    /// The audit row's id.
    pub audit_id: i64,
}

/// Erases, in one transaction with the audit record. Reject bodies are matched only when a
/// cipher is given (they are encrypted).
pub async fn erase(
    pool: &PgPool,
    spec: &Spec,
    cipher: Option<&VaultCipher>,
    req: &Request,
) -> Result<Report, RecoverError> {
    if req.reason.trim().is_empty() {
        return Err(RecoverError::NoReason);
    }
    let cols: Vec<&str> = req.conds.iter().map(|(c, _)| c.as_str()).collect();
    let outputs = resolve_output_tables(spec, &cols, req.output.as_deref())?;
    let mut tx = pool.begin().await?;
    let mut report = Report::default();
    for output in outputs {
        let table = quote_ident(&output.table);
        // Writers wait while a person's rows and vault entries go, so no row referencing a
        // token is added between the check and the delete in this table.
        sqlx::query(AssertSqlSafe(format!(
            "LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"
        )))
        .execute(&mut *tx)
        .await?;
        let sel = where_clause(output, &req.conds, 1)?;
        let mut tokens_by_column = Vec::new();
        for c in output.columns.iter().filter(|c| c.encrypts()) {
            let sql = format!(
                "SELECT DISTINCT {col}::text FROM {table} WHERE {sel} AND {col} IS NOT NULL",
                col = quote_ident(&c.name)
            );
            let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            for (_, v) in &req.conds {
                q = q.bind(v);
            }
            tokens_by_column.push((c.name.clone(), q.fetch_all(&mut *tx).await?));
        }
        let masked: Vec<String> = output
            .columns
            .iter()
            .filter(|c| c.encrypts() || c.hashes())
            .map(|c| format!("{} = NULL", quote_ident(&c.name)))
            .collect();
        let sql = match req.mode {
            Mode::DeleteRows => Some(format!("DELETE FROM {table} WHERE {sel}")),
            Mode::Null if masked.is_empty() => None,
            Mode::Null => Some(format!(
                "UPDATE {table} SET {} WHERE {sel}",
                masked.join(", ")
            )),
        };
        let mut t = TableReport {
            table: output.table.clone(),
            ..TableReport::default()
        };
        if let Some(sql) = sql {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (_, v) in &req.conds {
                q = q.bind(v);
            }
            t.rows = q.execute(&mut *tx).await?.rows_affected();
        }
        for (column, tokens) in tokens_by_column {
            let deleted =
                delete_unreferenced(&mut tx, spec, &output.table, &column, &tokens).await?;
            t.vault_deleted += deleted;
            t.vault_kept_shared += tokens.len() as u64 - deleted.min(tokens.len() as u64);
        }
        report.tables.push(t);
    }
    if let Some(cipher) = cipher {
        report.rejects_deleted = erase_rejects(&mut tx, spec, cipher, &req.conds).await?;
    }
    let summary = format!(
        "{} [erase: mode {}, selector columns {}, {}, rejects deleted {}]",
        req.reason,
        match req.mode {
            Mode::Null => "null",
            Mode::DeleteRows => "delete-rows",
        },
        cols.join(","),
        report
            .tables
            .iter()
            .map(|t| format!(
                "{}: rows {}, vault entries deleted {}, kept (shared) {}",
                t.table, t.rows, t.vault_deleted, t.vault_kept_shared
            ))
            .collect::<Vec<_>>()
            .join("; "),
        report.rejects_deleted
    );
    let rows: u64 = report.tables.iter().map(|t| t.rows).sum();
    let tables: Vec<&str> = report.tables.iter().map(|t| t.table.as_str()).collect();
    report.audit_id = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {}('erase', $1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
        quote_ident(AUDIT_APPEND_FUNCTION)
    )))
    .bind(&req.actor)
    .bind(spec.file.display().to_string())
    .bind(&spec.name)
    .bind(tables.join(","))
    .bind(cols.join(","))
    .bind(i32::try_from(rows).unwrap_or(i32::MAX))
    .bind(&summary)
    .fetch_one(&mut *tx)
    .await
    .map_err(RecoverError::Audit)?;
    tx.commit().await.map_err(RecoverError::Audit)?;
    Ok(report)
}

/// Deletes the vault entries of `tokens` that no row of `table` references any more.
async fn delete_unreferenced(
    tx: &mut Transaction<'_, Postgres>,
    spec: &Spec,
    table: &str,
    column: &str,
    tokens: &[String],
) -> Result<u64, sqlx::Error> {
    if tokens.is_empty() {
        return Ok(0);
    }
    // A column never registered has no vault rows (the vault's key refers to the registry).
    let Some(id) = vault_v3::column_id(&mut **tx, &spec.vault.table, table, column).await? else {
        return Ok(0);
    };
    // The vault keeps the token's bytes; the target table its hex text. Anything in the
    // target column that is not a token matches no vault row.
    let sql = format!(
        "DELETE FROM {vault} AS v WHERE v.column_id = $1 \
         AND v.token = ANY(ARRAY(SELECT decode(x, 'hex') FROM unnest($2::text[]) AS u(x) WHERE x ~ '^[0-9a-f]{{64}}$')) \
         AND NOT EXISTS (SELECT 1 FROM {t} AS t WHERE t.{c}::text = encode(v.token, 'hex'))",
        vault = quote_ident(&spec.vault.table),
        t = quote_ident(table),
        c = quote_ident(column)
    );
    Ok(sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .bind(tokens)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// Deletes the pipeline's rejects whose body (decrypted, parsed as JSON) holds every selector
/// value as a leaf. Bodies that are not JSON (e.g. still base64 or gzip) are not matched.
async fn erase_rejects(
    tx: &mut Transaction<'_, Postgres>,
    spec: &Spec,
    cipher: &VaultCipher,
    conds: &[(String, String)],
) -> Result<u64, RecoverError> {
    let rejects = quote_ident(&spec.rejects.table);
    type Row = (String, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT message_id, key_id, nonce, body_ciphertext FROM {rejects} WHERE pipeline = $1"
    )))
    .bind(&spec.name)
    .fetch_all(&mut **tx)
    .await?;
    let mut matched = Vec::new();
    for (message_id, key_id, nonce, ct) in rows {
        let (Some(key_id), Some(nonce), Some(ct)) = (key_id, nonce, ct) else {
            continue;
        };
        let b = Binding {
            scope: &spec.name,
            column: REJECTS_BINDING_COLUMN,
            token: &message_id,
        };
        let body = decrypt_text(cipher, b, &key_id, &nonce, &ct)?;
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        if conds.iter().all(|(_, v)| has_leaf(&json, v)) {
            matched.push(message_id);
        }
    }
    if matched.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {rejects} WHERE pipeline = $1 AND message_id = ANY($2)"
    )))
    .bind(&spec.name)
    .bind(&matched)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Whether a string or number leaf of `v` equals `want`.
fn has_leaf(v: &serde_json::Value, want: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Number(n) => n.to_string() == want,
        serde_json::Value::Bool(b) => b.to_string() == want,
        serde_json::Value::Array(a) => a.iter().any(|x| has_leaf(x, want)),
        serde_json::Value::Object(o) => o.values().any(|x| has_leaf(x, want)),
        serde_json::Value::Null => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn leaves_match_exactly_at_any_depth() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a": {"user_id": "u-1"}, "n": [12, "x"]}"#).unwrap();
        assert!(super::has_leaf(&v, "u-1"));
        assert!(super::has_leaf(&v, "12"));
        assert!(!super::has_leaf(&v, "u-"));
        assert!(!super::has_leaf(&v, "user_id"));
    }
}
