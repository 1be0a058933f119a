//! The SQL the sink runs: statements built once per spec from quoted identifiers (one per
//! output, with its write mode), and one transaction per batch part binding ledger, vault,
//! output and reject rows as typed arrays.

use super::bind::{bind_column, unnest_select};
use super::known_tokens::KnownTokens;
use super::vault_columns::VaultColumnIds;
use super::{Sink, SinkError, WriteReport};
use crate::crypto::{Binding, VaultCipher};
use crate::db::quote_ident;
use crate::process::{Outcome, Processed};
use crate::spec::{Output, Spec, Write};
use crate::transform::PendingVault;
use crate::value::{Val, ValType};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl Sink {
    /// Builds the statements for `spec`. Check the schema version ([`schema::check`](super::schema::check))
    /// and the outputs ([`Sink::check_outputs`]) first.
    pub fn new(pool: PgPool, spec: &Spec, cipher: Arc<VaultCipher>) -> Self {
        let ledger = quote_ident(&spec.ledger.table);
        let vault = quote_ident(&spec.vault.table);
        let rejects = quote_ident(&spec.rejects.table);
        Sink {
            pool,
            pipeline: spec.name.clone(),
            outputs: spec.outputs.iter().map(OutputWriter::new).collect(),
            cipher,
            known: KnownTokens::default(),
            vault_columns: VaultColumnIds::new(spec),
            sql_ledger: format!(
                "INSERT INTO {ledger} (pipeline, message_id, outcome) SELECT $1, m, o FROM UNNEST($2::text[], $3::text[]) AS u(m, o) \
                 ON CONFLICT (pipeline, message_id) DO NOTHING RETURNING message_id"
            ),
            sql_vault: format!(
                "INSERT INTO {vault} (column_id, token, key_id, nonce, ciphertext) \
                 SELECT * FROM UNNEST($1::smallint[], $2::bytea[], $3::text[], $4::bytea[], $5::bytea[]) \
                 ON CONFLICT (column_id, token) DO NOTHING"
            ),
            sql_rejects: format!(
                "INSERT INTO {rejects} (pipeline, message_id, reason, key_id, nonce, body_ciphertext) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[]) \
                 ON CONFLICT (pipeline, message_id) DO NOTHING"
            ),
        }
    }

    /// Writes `batch` in one transaction: ledger first, then vault rows, every output's rows
    /// and rejects of the messages the ledger had not seen. Any error rolls it all back.
    pub(super) async fn write_once(&self, batch: &[Processed]) -> Result<WriteReport, SinkError> {
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await?;
        let ids: Vec<&str> = batch.iter().map(|p| p.message_id.as_str()).collect();
        let outcomes: Vec<&str> = batch
            .iter()
            .map(|p| match p.outcome {
                Outcome::Rows { .. } => "row",
                Outcome::Skip { .. } => "skip",
                Outcome::Reject { .. } => "reject",
            })
            .collect();
        let fresh: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(self.sql_ledger.clone()))
            .bind(&self.pipeline)
            .bind(&ids)
            .bind(&outcomes)
            .fetch_all(&mut *tx)
            .await?;
        let fresh: HashSet<String> = fresh.into_iter().map(|r| r.0).collect();
        let mut report = WriteReport {
            acked: batch
                .iter()
                .map(|p| (p.message_id.clone(), p.receipt_handle.clone()))
                .collect(),
            ..Default::default()
        };
        // A message id twice in one batch (possible with redelivery) is written once.
        let mut seen = HashSet::new();
        let new: Vec<&Processed> = batch
            .iter()
            .filter(|p| fresh.contains(&p.message_id) && seen.insert(p.message_id.as_str()))
            .collect();
        report.duplicates = (batch.len() - new.len()) as u64;
        report.skipped = new
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::Skip { .. }))
            .count() as u64;

        let stored = self.write_vault(&new, &mut tx, &mut report).await?;

        // Every output's rows, in spec order.
        for (oi, out) in self.outputs.iter().enumerate() {
            let rows: Vec<&Vec<Val>> = new
                .iter()
                .filter_map(|p| match &p.outcome {
                    Outcome::Rows { rows, .. } => Some(rows.iter()),
                    _ => None,
                })
                .flatten()
                .filter(|r| r.output == oi)
                .map(|r| &r.values)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let offered = rows.len() as u64;
            let rows = out.dedup(rows);
            let mut q = sqlx::query(AssertSqlSafe(out.sql.clone()));
            for (i, col) in out.types.iter().enumerate() {
                q = bind_column(q, *col, rows.iter().map(|r| r.get(i).unwrap_or(&Val::Null)));
            }
            let written = q.execute(&mut *tx).await?.rows_affected();
            report.rows += written;
            report.unchanged_rows += offered - written.min(offered);
            *report.rows_by_table.entry(out.table.clone()).or_default() += written;
        }

        // Rejects, bodies encrypted.
        let (mut r_id, mut r_reason, mut r_kid, mut r_nonce, mut r_ct) =
            (vec![], vec![], vec![], vec![], vec![]);
        for p in &new {
            if let Outcome::Reject { reason } = &p.outcome {
                let body = p.body.as_str();
                let b = Binding {
                    scope: &self.pipeline,
                    column: "rejects",
                    token: &p.message_id,
                };
                let sealed = self.cipher.encrypt(b, body.as_bytes())?;
                *report.encryptions.entry(sealed.key_id.clone()).or_default() += 1;
                r_id.push(p.message_id.clone());
                r_reason.push(reason.clone());
                r_kid.push(sealed.key_id);
                r_nonce.push(sealed.nonce.to_vec());
                r_ct.push(sealed.ciphertext);
            }
        }
        if !r_id.is_empty() {
            sqlx::query(AssertSqlSafe(self.sql_rejects.clone()))
                .bind(&self.pipeline)
                .bind(&r_id)
                .bind(&r_reason)
                .bind(&r_kid)
                .bind(&r_nonce)
                .bind(&r_ct)
                .execute(&mut *tx)
                .await?;
            report.rejects = r_id.len() as u64;
        }
        tx.commit().await?;
        // Only now are these tokens certainly in the vault (written here or by a concurrent
        // writer whose row won).
        self.known.remember(
            stored
                .iter()
                .map(|pv| (pv.table.as_str(), pv.column.as_str(), pv.token.as_str())),
        );
        Ok(report)
    }

    /// Vault rows: one encryption per distinct (column, token) in the batch that is not known
    /// to be stored already, keyed by the column's registered id and the token's 32 bytes and
    /// inserted in key order, so concurrent writers sharing hot tokens wait for each other
    /// instead of deadlocking. Returns the tokens sent, which are in the vault once the
    /// transaction commits.
    async fn write_vault<'p>(
        &self,
        new: &[&'p Processed],
        tx: &mut Transaction<'_, Postgres>,
        report: &mut WriteReport,
    ) -> Result<Vec<&'p PendingVault>, SinkError> {
        let pending: Vec<&PendingVault> = new
            .iter()
            .filter_map(|p| match &p.outcome {
                Outcome::Rows { vault, .. } => Some(vault.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        if pending.is_empty() {
            return Ok(pending);
        }
        let ids = self.vault_columns.load(&self.pool).await?;
        let vault = self.vault_columns.vault();
        let mut keyed = pending
            .into_iter()
            .map(|pv| ids.key(vault, pv).map(|k| (k, pv)))
            .collect::<Result<Vec<_>, _>>()?;
        keyed.sort_unstable_by_key(|k| k.0);
        keyed.dedup_by(|a, b| a.0 == b.0);
        let known = self.known.known(
            keyed
                .iter()
                .map(|(_, pv)| (pv.table.as_str(), pv.column.as_str(), pv.token.as_str())),
        );
        let keyed: Vec<_> = keyed
            .into_iter()
            .zip(known)
            .filter_map(|(k, known)| (!known).then_some(k))
            .collect();
        if keyed.is_empty() {
            return Ok(Vec::new());
        }
        let (mut v_id, mut v_tok, mut v_kid, mut v_nonce, mut v_ct) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((id, token), pv) in &keyed {
            let b = Binding {
                scope: &pv.table,
                column: &pv.column,
                token: &pv.token,
            };
            let sealed = self.cipher.encrypt(b, pv.plaintext.as_bytes())?;
            *report.encryptions.entry(sealed.key_id.clone()).or_default() += 1;
            v_id.push(*id);
            v_tok.push(token.to_vec());
            v_kid.push(sealed.key_id);
            v_nonce.push(sealed.nonce.to_vec());
            v_ct.push(sealed.ciphertext);
        }
        let r = sqlx::query(AssertSqlSafe(self.sql_vault.clone()))
            .bind(&v_id)
            .bind(&v_tok)
            .bind(&v_kid)
            .bind(&v_nonce)
            .bind(&v_ct)
            .execute(&mut **tx)
            .await?;
        report.vault_rows = r.rows_affected();
        Ok(keyed.into_iter().map(|(_, pv)| pv).collect())
    }
}

/// One output's statement, built once: how its rows are written.
#[derive(Debug)]
pub(super) struct OutputWriter {
    /// The table as the spec names it.
    pub(super) table: String,
    /// Column types, in statement order.
    types: Vec<ValType>,
    /// The statement: `INSERT … SELECT * FROM UNNEST(…)` with the write mode's `ON CONFLICT`.
    sql: String,
    /// Positions of the upsert key columns (empty unless upsert).
    key: Vec<usize>,
    /// Position of the `only_if_newer` column.
    newer: Option<usize>,
}

impl OutputWriter {
    fn new(o: &Output) -> Self {
        let names: Vec<String> = o.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let pos = |name: &str| o.columns.iter().position(|c| c.name == name);
        let mut sql = format!(
            "INSERT INTO {} AS cur ({}) {}",
            quote_ident(&o.table),
            names.join(", "),
            unnest_select(&o.columns)
        );
        let (mut key, mut newer) = (Vec::new(), None);
        match &o.write {
            Write::Insert => {}
            Write::Ignore => sql.push_str(" ON CONFLICT DO NOTHING"),
            Write::Upsert {
                key: k,
                only_if_newer,
            } => {
                key = k.iter().filter_map(|n| pos(n)).collect();
                newer = only_if_newer.as_deref().and_then(pos);
                let keys: Vec<String> = k.iter().map(|n| quote_ident(n)).collect();
                let updates: Vec<String> = o
                    .columns
                    .iter()
                    .filter(|c| !k.contains(&c.name))
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
                    .collect();
                if updates.is_empty() {
                    sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
                } else {
                    sql.push_str(&format!(
                        " ON CONFLICT ({}) DO UPDATE SET {}",
                        keys.join(", "),
                        updates.join(", ")
                    ));
                    if let Some(n) = only_if_newer {
                        // An older message never overwrites a newer row; an equal one may
                        // (a re-sent message then rewrites the same values).
                        sql.push_str(&format!(
                            " WHERE cur.{0} IS NULL OR cur.{0} <= EXCLUDED.{0}",
                            quote_ident(n)
                        ));
                    }
                }
            }
        }
        Self {
            table: o.table.clone(),
            types: o.columns.iter().map(|c| c.out_type).collect(),
            sql,
            key,
            newer,
        }
    }

    /// For upsert: one row per key, so the statement never touches a row twice (Postgres
    /// refuses that). The later row wins; with `only_if_newer`, the newer one (ties: later).
    /// Other modes keep every row.
    fn dedup<'r>(&self, rows: Vec<&'r Vec<Val>>) -> Vec<&'r Vec<Val>> {
        if self.key.is_empty() {
            return rows;
        }
        let mut at: HashMap<Vec<Option<String>>, usize> = HashMap::new();
        let mut kept: Vec<&'r Vec<Val>> = Vec::with_capacity(rows.len());
        for row in rows {
            let key: Vec<Option<String>> = self
                .key
                .iter()
                .map(|&i| row.get(i).and_then(Val::to_text))
                .collect();
            match at.get(&key) {
                Some(&i) => {
                    let older = self.newer.is_some_and(|n| {
                        newer_order(row.get(n), kept[i].get(n)) == Some(Ordering::Less)
                    });
                    if !older {
                        kept[i] = row;
                    }
                }
                None => {
                    at.insert(key, kept.len());
                    kept.push(row);
                }
            }
        }
        kept
    }
}

/// The order of two `only_if_newer` values: numbers by value, dates and times by instant,
/// anything else by text; a missing value is older than any other.
fn newer_order(a: Option<&Val>, b: Option<&Val>) -> Option<Ordering> {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    match (a?, b?) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::BigInt(x), Val::BigInt(y)) => Some(x.cmp(y)),
        (Val::Timestamp(x), Val::Timestamp(y)) => Some(x.cmp(y)),
        (Val::Date(x), Val::Date(y)) => Some(x.cmp(y)),
        (x, y) => Some(x.to_text().cmp(&y.to_text())),
    }
}
