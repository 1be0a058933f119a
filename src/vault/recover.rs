//! PII recovery (`vault-decrypt`): tokens → original values, each recovery recorded in the
//! append-only audit table in the same transaction as the read. If the audit row cannot be
//! written, nothing is decrypted; if the commit fails, nothing is returned.

use super::cipher::{Binding, CipherError, VaultCipher};
use crate::sink::quote_ident;
use crate::sink::schema::AUDIT_TABLE;
use crate::spec::Spec;
use crate::transform::Transform;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// Errors of a recovery. None of them carries a recovered value.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("column {column} is not encrypted by spec {spec} (columns with `- type: encrypt`: {encrypted})")]
    NotEncrypted { column: String, spec: String, encrypted: String },
    #[error("--where: {0}")]
    Selector(String),
    #[error("the audit record could not be written, so nothing was decrypted: {0}")]
    Audit(sqlx::Error),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("token {token}: {source}")]
    Cipher { token: String, source: CipherError },
    #[error("a recovered value is not UTF-8 text")]
    NotText,
}

/// Which values to recover.
#[derive(Debug, Clone)]
pub enum Selector {
    /// Explicit tokens (from arguments or stdin).
    Tokens(Vec<String>),
    /// Rows of the target table where each `column = value` (values bound as parameters).
    Where(Vec<(String, String)>),
}

/// Who recovers, and why.
#[derive(Debug, Clone)]
pub struct Request {
    pub column: String,
    pub selector: Selector,
    pub actor: String,
    pub reason: String,
}

/// One recovered value. `Debug` is redacted.
pub struct Recovered {
    pub token: String,
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovered").field("token", &self.token).field("value", &"<redacted>").finish()
    }
}

/// The result: recovered values, and tokens with no vault entry.
#[derive(Debug)]
pub struct Outcome {
    pub recovered: Vec<Recovered>,
    pub missing: Vec<String>,
}

/// Parses `COLUMN=VALUE`.
pub fn parse_where(s: &str) -> Result<(String, String), RecoverError> {
    let (c, v) = s
        .split_once('=')
        .ok_or_else(|| RecoverError::Selector(format!("expected COLUMN=VALUE, got {:?}", s.chars().take(40).collect::<String>())))?;
    Ok((c.trim().to_string(), v.trim().trim_matches('\'').to_string()))
}

/// Recovers values, auditing first.
pub async fn recover(pool: &PgPool, spec: &Spec, cipher: &VaultCipher, req: &Request) -> Result<Outcome, RecoverError> {
    let encrypted: Vec<&str> = spec
        .columns
        .iter()
        .filter(|c| c.transforms.iter().any(|t| *t == Transform::Encrypt))
        .map(|c| c.name.as_str())
        .collect();
    if !encrypted.contains(&req.column.as_str()) {
        return Err(RecoverError::NotEncrypted {
            column: req.column.clone(),
            spec: spec.file.display().to_string(),
            encrypted: encrypted.join(", "),
        });
    }
    let mut tx = pool.begin().await?;
    let tokens: Vec<String> = match &req.selector {
        Selector::Tokens(t) => t.clone(),
        Selector::Where(conds) => {
            let mut sql = format!("SELECT DISTINCT {}::text FROM {} WHERE ", quote_ident(&req.column), quote_ident(&spec.target.table));
            for (i, (col, _)) in conds.iter().enumerate() {
                // Column names are checked against the spec; values are bind parameters.
                if !spec.columns.iter().any(|c| &c.name == col) {
                    let names: Vec<&str> = spec.columns.iter().map(|c| c.name.as_str()).collect();
                    return Err(RecoverError::Selector(format!("no column {col} in the spec (columns: {})", names.join(", "))));
                }
                if i > 0 {
                    sql.push_str(" AND ");
                }
                sql.push_str(&format!("{}::text = ${}", quote_ident(col), i + 1));
            }
            let mut q = sqlx::query_as::<_, (Option<String>,)>(AssertSqlSafe(sql));
            for (_, v) in conds {
                q = q.bind(v);
            }
            q.fetch_all(&mut *tx).await?.into_iter().filter_map(|r| r.0).collect()
        }
    };
    let mut tokens = tokens;
    tokens.sort();
    tokens.dedup();

    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {AUDIT_TABLE} (actor, spec, target_table, column_name, value_count, reason) VALUES ($1, $2, $3, $4, $5, $6)"
    )))
    .bind(&req.actor)
    .bind(spec.file.display().to_string())
    .bind(&spec.target.table)
    .bind(&req.column)
    .bind(i32::try_from(tokens.len()).unwrap_or(i32::MAX))
    .bind(&req.reason)
    .execute(&mut *tx)
    .await
    .map_err(RecoverError::Audit)?;

    let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT token, key_id, nonce, ciphertext FROM {} WHERE target_table = $1 AND column_name = $2 AND token = ANY($3)",
        quote_ident(&spec.vault.table)
    )))
    .bind(&spec.target.table)
    .bind(&req.column)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await?;
    let mut found: HashMap<String, Recovered> = HashMap::new();
    for (token, key_id, nonce, ct) in rows {
        let b = Binding { scope: &spec.target.table, column: &req.column, token: &token };
        let plain = cipher.decrypt(b, &key_id, &nonce, &ct).map_err(|source| RecoverError::Cipher { token: token.clone(), source })?;
        let value = Zeroizing::new(String::from_utf8(plain.to_vec()).map_err(|_| RecoverError::NotText)?);
        found.insert(token.clone(), Recovered { token, value });
    }
    tx.commit().await.map_err(RecoverError::Audit)?;
    let mut recovered = Vec::new();
    let mut missing = Vec::new();
    for t in tokens {
        match found.remove(&t) {
            Some(r) => recovered.push(r),
            None => missing.push(t),
        }
    }
    Ok(Outcome { recovered, missing })
}
