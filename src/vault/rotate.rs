//! Key rotation for stored ciphertexts (`vault-rotate`): every vault value and encrypted reject
//! body of a spec that is not under the active encryption key is decrypted and encrypted again
//! under it, so the old key can afterwards be retired and removed.
//!
//! - Batches walk the primary key (keyset pagination), so each query is an index range scan,
//!   however large the table.
//! - Progress is the data itself: a row is done when its `key_id` is the active key. A run that
//!   stops half-way (crash, Ctrl-C, `--max-rows`) is continued by running it again.
//! - Each update is a compare-and-set on the old key id and nonce. A row changed in between
//!   (another rotation) is left alone and counted, never overwritten with stale data. The
//!   pipeline only inserts vault rows (`ON CONFLICT DO NOTHING`), so a concurrent run is safe;
//!   one still using the old keyring may add rows under the old key, which a rerun picks up.
//! - Plaintext exists only inside [`VaultCipher::reencrypt`], in a zeroizing buffer; it is never
//!   sent to the database or logged.

use crate::crypto::cipher::{Binding, CipherError, VaultCipher};
use crate::db::quote_ident;
use crate::db::vault_v3;
use crate::spec::Spec;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::{BTreeMap, HashMap};

/// The `column` part of the associated data of reject bodies (see the sink).
pub const REJECTS_BINDING_COLUMN: &str = "rejects";

/// Errors that stop a rotation. Per-row decryption failures do not: they are counted in the
/// report and the rotation goes on.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(
        "no active encryption key in the keyring; add one with `etl-engine keyring add-key FILE --purpose encryption`"
    )]
    NoActiveKey,
    #[error("--batch-size must be between 1 and 100000, got {0}")]
    BatchSize(u32),
    #[error("postgres, table {table}: {source}")]
    Db { table: String, source: sqlx::Error },
}

/// How to rotate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Rows read, re-encrypted and updated per statement.
    pub batch_size: u32,
    /// Stop after examining this many rows (to spread the work over several runs).
    pub max_rows: Option<u64>,
}

/// What a rotation did to one table.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Rows read that were not under the active key.
    pub examined: u64,
    /// Rows now under the active key.
    pub rotated: u64,
    /// Rows changed by someone else between read and update; left alone (a rerun sees them).
    pub raced: u64,
    /// Rows that could not be decrypted, by error; they keep their old ciphertext.
    pub failed: BTreeMap<String, u64>,
    /// One row per error, to look at: `column/token` or the reject's message id (never a value).
    pub failed_examples: BTreeMap<String, String>,
    /// Rows not under the active key after this run, by key id.
    pub remaining: BTreeMap<String, u64>,
}

impl TableReport {
    /// Adds what a pass over another part of the same table did.
    fn absorb(&mut self, o: TableReport) {
        self.examined += o.examined;
        self.rotated += o.rotated;
        self.raced += o.raced;
        for (k, v) in o.failed {
            *self.failed.entry(k).or_default() += v;
        }
        for (k, v) in o.failed_examples {
            self.failed_examples.entry(k).or_insert(v);
        }
        for (k, v) in o.remaining {
            *self.remaining.entry(k).or_default() += v;
        }
    }

    /// Rows not under the active key after this run.
    pub fn remaining_total(&self) -> u64 {
        self.remaining.values().sum()
    }

    /// Rows that failed to decrypt.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// What a rotation did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// The key everything was re-encrypted to.
    pub active_key: String,
    /// The vault table (rows of this spec's target table).
    pub vault: TableReport,
    /// The rejects table (rows of this spec's pipeline).
    pub rejects: TableReport,
    /// Encryptions performed, by key id (for the nonce budget).
    #[serde(skip)]
    pub encryptions: HashMap<String, u64>,
}

impl Report {
    /// Whether every row of the spec is under the active key.
    pub fn complete(&self) -> bool {
        self.vault.remaining_total() == 0 && self.rejects.remaining_total() == 0
    }
}

/// The two tables that hold ciphertexts, and how their rows are bound.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Key (column_id, token bytes); bound to (target_table, column_name, hex token).
    Vault,
    /// Key (pipeline, message_id); bound to (pipeline, "rejects", message_id).
    Rejects,
}

/// The statements of one table. Each takes the scope's key as `$1` (a vault column id or a
/// pipeline name) and the active key id as `$2`; rows come back as (token or message id,
/// key id, nonce, ciphertext), vault tokens as hex text.
struct Statements {
    first: String,
    after: String,
    update: String,
    remaining: String,
}

fn statements(kind: Kind, table: &str) -> Statements {
    let t = quote_ident(table);
    match kind {
        Kind::Vault => Statements {
            first: format!(
                "SELECT encode(token, 'hex'), key_id, nonce, ciphertext FROM {t} \
                 WHERE column_id = $1 AND key_id <> $2 ORDER BY token LIMIT $3"
            ),
            after: format!(
                "SELECT encode(token, 'hex'), key_id, nonce, ciphertext FROM {t} \
                 WHERE column_id = $1 AND token > decode($4, 'hex') AND key_id <> $2 ORDER BY token LIMIT $3"
            ),
            update: format!(
                "UPDATE {t} AS v SET key_id = $2, nonce = u.new_nonce, ciphertext = u.new_ct, rotated_at = now() \
                 FROM UNNEST($3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::bytea[]) \
                   AS u(tok, old_kid, old_nonce, new_nonce, new_ct) \
                 WHERE v.column_id = $1 AND v.token = decode(u.tok, 'hex') \
                   AND v.key_id = u.old_kid AND v.nonce = u.old_nonce"
            ),
            remaining: format!(
                "SELECT key_id, count(*) FROM {t} WHERE column_id = $1 AND key_id <> $2 GROUP BY key_id ORDER BY key_id"
            ),
        },
        Kind::Rejects => Statements {
            first: format!(
                "SELECT message_id, key_id, nonce, body_ciphertext FROM {t} \
                 WHERE pipeline = $1 AND key_id <> $2 ORDER BY message_id LIMIT $3"
            ),
            after: format!(
                "SELECT message_id, key_id, nonce, body_ciphertext FROM {t} \
                 WHERE (pipeline, message_id) > ($1, $4) AND pipeline = $1 AND key_id <> $2 ORDER BY message_id LIMIT $3"
            ),
            update: format!(
                "UPDATE {t} AS r SET key_id = $2, nonce = u.new_nonce, body_ciphertext = u.new_ct \
                 FROM UNNEST($3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::bytea[]) \
                   AS u(tok, old_kid, old_nonce, new_nonce, new_ct) \
                 WHERE r.pipeline = $1 AND r.message_id = u.tok AND r.key_id = u.old_kid AND r.nonce = u.old_nonce"
            ),
            remaining: format!(
                "SELECT key_id, count(*) FROM {t} WHERE pipeline = $1 AND key_id <> $2 GROUP BY key_id ORDER BY key_id"
            ),
        },
    }
}

type Row = (String, String, Option<Vec<u8>>, Option<Vec<u8>>);

/// Re-encrypts every vault value of `spec`'s target table and every encrypted reject body of
/// its pipeline that is not under the active key. Rows of other specs sharing the tables are
/// left alone: they may belong to another keyring.
pub async fn rotate(
    pool: &PgPool,
    spec: &Spec,
    cipher: &VaultCipher,
    opts: Options,
) -> Result<Report, RotateError> {
    if opts.batch_size == 0 || opts.batch_size > 100_000 {
        return Err(RotateError::BatchSize(opts.batch_size));
    }
    let active = cipher
        .active_key_id()
        .ok_or(RotateError::NoActiveKey)?
        .to_string();
    let mut report = Report {
        active_key: active.clone(),
        ..Default::default()
    };
    let mut budget = opts.max_rows;
    let run = Rotation {
        pool,
        cipher,
        active: &active,
        batch_size: opts.batch_size,
    };
    report.vault.table = spec.vault.table.clone();
    // Vault rows are bound to the output table and column they were written for: one pass per
    // registered column of each output that encrypts (columns it no longer encrypts included).
    let registered = vault_v3::registered_columns(pool, &spec.vault.table)
        .await
        .map_err(|source| RotateError::Db {
            table: vault_v3::columns_table(&spec.vault.table),
            source,
        })?;
    for output in spec
        .outputs
        .iter()
        .filter(|o| o.columns.iter().any(|c| c.encrypts()))
    {
        for (id, _, column) in registered.iter().filter(|r| r.1 == output.table) {
            let vault = TableScope {
                kind: Kind::Vault,
                table: &spec.vault.table,
                key: ScopeKey::Column(*id),
                scope: &output.table,
                column,
            };
            let part = rotate_table(&run, vault, &mut budget, &mut report.encryptions).await?;
            report.vault.absorb(part);
        }
    }
    let rejects = TableScope {
        kind: Kind::Rejects,
        table: &spec.rejects.table,
        key: ScopeKey::Pipeline(&spec.name),
        scope: &spec.name,
        column: REJECTS_BINDING_COLUMN,
    };
    report.rejects = rotate_table(&run, rejects, &mut budget, &mut report.encryptions).await?;
    Ok(report)
}

/// What every table of one rotation shares.
struct Rotation<'a> {
    /// Connections to the database holding the tables.
    pool: &'a PgPool,
    /// Decrypts under the old keys and encrypts under the active one.
    cipher: &'a VaultCipher,
    /// The key id every rotated row ends up under.
    active: &'a str,
    /// Rows read and updated per transaction.
    batch_size: u32,
}

/// One table to rotate, and which of its rows belong to the spec being rotated.
struct TableScope<'a> {
    /// Which of the two ciphertext tables this is, which decides its statements.
    kind: Kind,
    /// The table's name as the spec gives it.
    table: &'a str,
    /// Which of its rows are rotated: one vault column's, or one pipeline's rejects; other
    /// specs' rows sharing the table are left alone.
    key: ScopeKey<'a>,
    /// The binding's scope: the target table (vault) or pipeline name (rejects).
    scope: &'a str,
    /// The binding's column: the encrypted column (vault) or `rejects`.
    column: &'a str,
}

/// The key selecting a scope's rows, bound as `$1` of its statements.
#[derive(Clone, Copy)]
enum ScopeKey<'a> {
    /// A vault column's registered id.
    Column(i16),
    /// A pipeline's name.
    Pipeline(&'a str),
}

/// Binds a scope's key as the next parameter of a query (`$1` of every statement).
macro_rules! bind_key {
    ($q:expr, $key:expr) => {
        match $key {
            ScopeKey::Column(id) => $q.bind(id),
            ScopeKey::Pipeline(p) => $q.bind(p),
        }
    };
}

/// Re-encrypts the rows of one table in `target` that are not under the active key, in batches,
/// stopping when none are left or `budget` (rows, shared by both tables) runs out. Counts each
/// encryption per key id in `encryptions`.
async fn rotate_table(
    run: &Rotation<'_>,
    target: TableScope<'_>,
    budget: &mut Option<u64>,
    encryptions: &mut HashMap<String, u64>,
) -> Result<TableReport, RotateError> {
    let Rotation {
        pool,
        cipher,
        active,
        batch_size,
    } = *run;
    let TableScope {
        kind,
        table,
        key,
        scope,
        column,
    } = target;
    let db = |source: sqlx::Error| RotateError::Db {
        table: table.to_string(),
        source,
    };
    let sql = statements(kind, table);
    let mut rep = TableReport {
        table: table.to_string(),
        ..Default::default()
    };
    let mut cursor: Option<String> = None;
    loop {
        let limit = match budget {
            Some(0) => break,
            Some(b) => (*b).min(u64::from(batch_size)),
            None => u64::from(batch_size),
        };
        let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<Row> = match &cursor {
            None => {
                let q = sqlx::query_as(AssertSqlSafe(sql.first.clone()));
                bind_key!(q, key)
                    .bind(active)
                    .bind(limit_i64)
                    .fetch_all(pool)
                    .await
            }
            Some(tok) => {
                let q = sqlx::query_as(AssertSqlSafe(sql.after.clone()));
                bind_key!(q, key)
                    .bind(active)
                    .bind(limit_i64)
                    .bind(tok)
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(db)?;
        let Some(last) = rows.last() else { break };
        cursor = Some(last.0.clone());
        let fetched = rows.len() as u64;
        rep.examined += fetched;
        if let Some(b) = budget.as_mut() {
            *b -= fetched.min(*b);
        }

        let (mut toks, mut old_kids, mut old_nonces, mut new_nonces, mut new_cts) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (tok, key_id, nonce, ct) in rows {
            let binding = Binding {
                scope,
                column,
                token: &tok,
            };
            let result = match (&nonce, &ct) {
                (Some(n), Some(c)) => cipher.reencrypt(binding, &key_id, n, c),
                _ => Err(CipherError::BadNonce(0)),
            };
            match result {
                Ok(Some(sealed)) => {
                    *encryptions.entry(sealed.key_id.clone()).or_default() += 1;
                    new_nonces.push(sealed.nonce.to_vec());
                    new_cts.push(sealed.ciphertext);
                    old_kids.push(key_id);
                    old_nonces.push(nonce.unwrap_or_default());
                    toks.push(tok);
                }
                // Already under the active key (cannot happen with the query's filter).
                Ok(None) => {}
                Err(e) => {
                    let msg = e.to_string();
                    rep.failed_examples
                        .entry(msg.clone())
                        .or_insert_with(|| match kind {
                            Kind::Vault => format!("{column}/{tok}"),
                            Kind::Rejects => format!("message {tok}"),
                        });
                    *rep.failed.entry(msg).or_default() += 1;
                }
            }
        }
        if !toks.is_empty() {
            let attempted = toks.len() as u64;
            let q = sqlx::query(AssertSqlSafe(sql.update.clone()));
            let done = bind_key!(q, key)
                .bind(active)
                .bind(&toks)
                .bind(&old_kids)
                .bind(&old_nonces)
                .bind(&new_nonces)
                .bind(&new_cts)
                .execute(pool)
                .await
                .map_err(db)?
                .rows_affected();
            rep.rotated += done;
            rep.raced += attempted.saturating_sub(done);
        }
        tracing::debug!(
            table,
            examined = rep.examined,
            rotated = rep.rotated,
            "Rotated a batch."
        );
        if fetched < limit {
            break;
        }
    }
    let q = sqlx::query_as(AssertSqlSafe(sql.remaining.clone()));
    let remaining: Vec<(String, i64)> = bind_key!(q, key)
        .bind(active)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rep.remaining = remaining
        .into_iter()
        .map(|(k, n)| (k, u64::try_from(n).unwrap_or(0)))
        .collect();
    Ok(rep)
}
