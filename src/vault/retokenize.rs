//! Re-tokenization (`vault-retokenize`): after a new hash key was made active, replaces the
//! tokens of an encrypted column with the new key's tokens, in the vault and in the target
//! table, so old and new rows of the same value match again.
//!
//! The new token is made in the column's token domain (its `token_domain`, else
//! `table.column`) unless the spec keeps `vault.legacy_tokens`, so this is also how a vault
//! moves from the undomained tokens of before to domained ones: drop `legacy_tokens` from the
//! spec and re-tokenize each encrypted column.
//!
//! Only columns whose originals are in the vault (`encrypt`) can be re-tokenized; `hash`-only
//! columns keep no original, so their old tokens stay as they are (see SECURITY.md).
//!
//! Per batch, in one transaction: the old vault rows are deleted with a compare-and-set on
//! token and nonce (a row changed or removed by someone else in between is left alone), the
//! values are stored again under their new tokens (encrypted with the active key, bound to the
//! new token), and the target rows are updated from old to new token. Progress is the data
//! itself: a row is done when its token is the new key's token of its value, so a rerun
//! continues where a run stopped. Plaintext exists only in zeroizing buffers.

use crate::crypto::Tokenizer;
use crate::crypto::cipher::{Binding, CipherError, VaultCipher};
use crate::db::quote_ident;
use crate::db::vault_v3;
use crate::spec::Spec;
use crate::spec::TransformConfig;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::{BTreeMap, HashMap};

/// Errors that stop a re-tokenization; per-row decryption failures are counted instead.
#[derive(Debug, thiserror::Error)]
pub enum RetokenizeError {
    #[error("column {column} of spec {spec} cannot be re-tokenized: {problem}")]
    Column {
        column: String,
        spec: String,
        problem: String,
    },
    #[error("--batch-size must be between 1 and 100000, got {0}")]
    BatchSize(u32),
    #[error(
        "no active encryption key in the keyring; add one with `etl-engine keyring add-key FILE --purpose encryption`"
    )]
    NoActiveKey,
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a re-tokenization did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// The output table holding the column.
    pub table: String,
    /// The column.
    pub column: String,
    /// The hash key the tokens are now made with.
    pub hash_key: String,
    /// Vault rows read.
    pub examined: u64,
    /// Vault rows whose token was replaced.
    pub retokenized: u64,
    /// Vault rows already under the new hash key.
    pub current: u64,
    /// Vault rows changed by someone else between read and write; a rerun sees them.
    pub raced: u64,
    /// Target-table rows whose column was updated.
    pub target_rows: u64,
    /// Rows that could not be decrypted, by error; they keep their old token.
    pub failed: BTreeMap<String, u64>,
    /// One token per error, to look at.
    pub failed_examples: BTreeMap<String, String>,
    /// Encryptions performed, by key id (for the nonce budget).
    #[serde(skip)]
    pub encryptions: HashMap<String, u64>,
}

impl Report {
    /// Rows that failed to decrypt.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// One vault row moving from its old token to its new one.
struct Change {
    old: String,
    old_nonce: Vec<u8>,
    new: String,
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Checks that `column` keeps its originals in the vault and that its stored value is the
/// token itself (`encrypt` is its last transform), so the new token can be computed from the
/// original exactly as the pipeline would.
pub fn check_column<'s>(spec: &'s Spec, column: &str) -> Result<&'s str, RetokenizeError> {
    let err = |problem: String| RetokenizeError::Column {
        column: column.to_string(),
        spec: spec.file.display().to_string(),
        problem,
    };
    let holders: Vec<&crate::spec::Output> = spec
        .outputs
        .iter()
        .filter(|o| o.columns.iter().any(|c| c.name == column))
        .collect();
    let output = match holders.as_slice() {
        [one] => *one,
        [] => {
            let names: Vec<&str> = spec.all_columns().map(|c| c.name.as_str()).collect();
            return Err(err(format!(
                "no such column (columns: {})",
                names.join(", ")
            )));
        }
        _ => {
            return Err(err(format!(
                "several outputs have a column of this name ({}); retokenizing one of them is not supported",
                holders
                    .iter()
                    .map(|o| o.table.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    let Some(col) = output.columns.iter().find(|c| c.name == column) else {
        return Err(err("no such column".into()));
    };
    match col
        .transforms
        .iter()
        .position(|t| matches!(t, TransformConfig::Encrypt {}))
    {
        None if col.hashes() => {
            Err(err("it is hashed without `encrypt`, so the vault has no originals to compute new tokens from".into()))
        }
        None => Err(err("it is neither hashed nor encrypted".into())),
        Some(i) if i + 1 != col.transforms.len() => {
            Err(err("`encrypt` is not its last transform, so the stored value is not the token itself".into()))
        }
        Some(_) => Ok(output.table.as_str()),
    }
}

/// Replaces the old tokens of `column` with `tokenizer`'s (in the column's token domain), in
/// batches of `batch_size`.
pub async fn retokenize(
    pool: &PgPool,
    spec: &Spec,
    column: &str,
    cipher: &VaultCipher,
    tokenizer: &Tokenizer,
    batch_size: u32,
) -> Result<Report, RetokenizeError> {
    let table = check_column(spec, column)?;
    if batch_size == 0 || batch_size > 100_000 {
        return Err(RetokenizeError::BatchSize(batch_size));
    }
    if cipher.active_key_id().is_none() {
        return Err(RetokenizeError::NoActiveKey);
    }
    let vault = quote_ident(&spec.vault.table);
    let target = quote_ident(table);
    let col = quote_ident(column);
    let tokens = spec
        .output(table)
        .and_then(|o| o.columns.iter().find(|c| c.name == column))
        .map(|c| tokenizer.domain(&c.domain(table)))
        .ok_or_else(|| RetokenizeError::Column {
            column: column.to_string(),
            spec: spec.file.display().to_string(),
            problem: "no such column".into(),
        })?;
    let id = vault_v3::column_id(pool, &spec.vault.table, table, column)
        .await?
        .ok_or_else(|| RetokenizeError::Column {
            column: column.to_string(),
            spec: spec.file.display().to_string(),
            problem: format!(
                "{table}.{column} is not registered in {}: run `etl-engine setup SPEC` first",
                vault_v3::columns_table(&spec.vault.table)
            ),
        })?;
    // Tokens travel as hex text, as the binding and the target table have them; the vault
    // keeps their bytes (whose order is the hex text's order).
    let select_first = format!(
        "SELECT encode(token, 'hex'), key_id, nonce, ciphertext FROM {vault} WHERE column_id = $1 ORDER BY token LIMIT $2"
    );
    let select_after = format!(
        "SELECT encode(token, 'hex'), key_id, nonce, ciphertext FROM {vault} \
         WHERE column_id = $1 AND token > decode($3, 'hex') ORDER BY token LIMIT $2"
    );
    let claim = format!(
        "DELETE FROM {vault} AS v USING UNNEST($2::text[], $3::bytea[]) AS u(tok, n) \
         WHERE v.column_id = $1 AND v.token = decode(u.tok, 'hex') AND v.nonce = u.n RETURNING encode(v.token, 'hex')"
    );
    let insert = format!(
        "INSERT INTO {vault} (column_id, token, key_id, nonce, ciphertext, rotated_at) \
         SELECT $1, decode(t, 'hex'), k, n, c, now() FROM UNNEST($2::text[], $3::text[], $4::bytea[], $5::bytea[]) AS u(t, k, n, c) \
         ORDER BY t ON CONFLICT (column_id, token) DO NOTHING RETURNING encode(token, 'hex')"
    );
    let update = format!(
        "UPDATE {target} AS t SET {col} = m.new FROM UNNEST($1::text[], $2::text[]) AS m(old, new) WHERE t.{col} = m.old"
    );

    let mut report = Report {
        table: table.to_string(),
        column: column.to_string(),
        hash_key: tokenizer.key_id().to_string(),
        ..Default::default()
    };
    let mut cursor: Option<String> = None;
    // New tokens this run wrote ahead of the cursor: the walk meets them again and must not
    // count them as already current. Entries go as the cursor passes them.
    let mut written_ahead: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> = match &cursor {
            None => {
                sqlx::query_as(AssertSqlSafe(select_first.clone()))
                    .bind(id)
                    .bind(i64::from(batch_size))
                    .fetch_all(pool)
                    .await?
            }
            Some(after) => {
                sqlx::query_as(AssertSqlSafe(select_after.clone()))
                    .bind(id)
                    .bind(i64::from(batch_size))
                    .bind(after)
                    .fetch_all(pool)
                    .await?
            }
        };
        let Some(last) = rows.last() else { break };
        cursor = Some(last.0.clone());
        let fetched = rows.len();
        report.examined += fetched as u64;

        let mut changes: Vec<Change> = Vec::new();
        for (token, key_id, nonce, ct) in rows {
            if written_ahead.remove(&token) {
                report.examined -= 1;
                continue;
            }
            let plain = match cipher.decrypt(
                Binding {
                    scope: table,
                    column,
                    token: &token,
                },
                &key_id,
                &nonce,
                &ct,
            ) {
                Ok(p) => p,
                Err(e) => {
                    let msg = e.to_string();
                    report
                        .failed_examples
                        .entry(msg.clone())
                        .or_insert_with(|| token.clone());
                    *report.failed.entry(msg).or_default() += 1;
                    continue;
                }
            };
            let new = tokens.token(&plain);
            if new == token {
                report.current += 1;
                continue;
            }
            let sealed = cipher
                .encrypt(
                    Binding {
                        scope: table,
                        column,
                        token: &new,
                    },
                    &plain,
                )
                .map_err(|e: CipherError| RetokenizeError::Column {
                    column: column.to_string(),
                    spec: spec.file.display().to_string(),
                    problem: e.to_string(),
                })?;
            *report.encryptions.entry(sealed.key_id.clone()).or_default() += 1;
            changes.push(Change {
                old: token,
                old_nonce: nonce,
                new,
                key_id: sealed.key_id,
                nonce: sealed.nonce.to_vec(),
                ciphertext: sealed.ciphertext,
            });
        }
        if !changes.is_empty() {
            let mut tx = pool.begin().await?;
            let old: Vec<&str> = changes.iter().map(|c| c.old.as_str()).collect();
            let old_nonces: Vec<&[u8]> = changes.iter().map(|c| c.old_nonce.as_slice()).collect();
            let claimed: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(claim.clone()))
                .bind(id)
                .bind(&old)
                .bind(&old_nonces)
                .fetch_all(&mut *tx)
                .await?;
            let claimed: std::collections::HashSet<String> =
                claimed.into_iter().map(|r| r.0).collect();
            let mine: Vec<&Change> = changes
                .iter()
                .filter(|c| claimed.contains(&c.old))
                .collect();
            report.raced += (changes.len() - mine.len()) as u64;
            if !mine.is_empty() {
                let new: Vec<&str> = mine.iter().map(|c| c.new.as_str()).collect();
                let kids: Vec<&str> = mine.iter().map(|c| c.key_id.as_str()).collect();
                let nonces: Vec<&[u8]> = mine.iter().map(|c| c.nonce.as_slice()).collect();
                let cts: Vec<&[u8]> = mine.iter().map(|c| c.ciphertext.as_slice()).collect();
                let inserted: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(insert.clone()))
                    .bind(id)
                    .bind(&new)
                    .bind(&kids)
                    .bind(&nonces)
                    .bind(&cts)
                    .fetch_all(&mut *tx)
                    .await?;
                let old: Vec<&str> = mine.iter().map(|c| c.old.as_str()).collect();
                let updated = sqlx::query(AssertSqlSafe(update.clone()))
                    .bind(&old)
                    .bind(&new)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                report.target_rows += updated;
                report.retokenized += mine.len() as u64;
                if let Some(c) = &cursor {
                    written_ahead.extend(
                        inserted
                            .into_iter()
                            .map(|r| r.0)
                            .filter(|t| t.as_str() > c.as_str()),
                    );
                }
            }
            tx.commit().await?;
        }
        tracing::debug!(
            column,
            examined = report.examined,
            retokenized = report.retokenized,
            "Re-tokenized a batch."
        );
        if fetched < batch_size as usize {
            break;
        }
    }
    Ok(report)
}
