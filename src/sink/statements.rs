//! The SQL the sink runs: statements built once per spec from quoted identifiers, and one
//! transaction per batch part binding ledger, vault, target and reject rows as typed arrays.

use super::bind::{bind_column, unnest_select};
use super::{Sink, SinkError, WriteReport};
use crate::crypto::{Binding, VaultCipher};
use crate::db::quote_ident;
use crate::process::{Outcome, Processed};
use crate::spec::{Column, Spec};
use crate::value::Val;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use std::collections::HashSet;
use std::sync::Arc;

impl Sink {
    /// Builds the statements for `spec`. Call [`schema::ensure`](super::schema::ensure) and [`Sink::check_target`] first.
    pub fn new(
        pool: PgPool,
        spec: &Spec,
        columns: Arc<Vec<Column>>,
        cipher: Arc<VaultCipher>,
    ) -> Self {
        let ledger = quote_ident(&spec.ledger.table);
        let vault = quote_ident(&spec.vault.table);
        let rejects = quote_ident(&spec.rejects.table);
        let target = quote_ident(&spec.target.table);
        let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
        let select = unnest_select(&columns);
        Sink {
            pool,
            pipeline: spec.name.clone(),
            target_table: spec.target.table.clone(),
            columns,
            cipher,
            sql_ledger: format!(
                "INSERT INTO {ledger} (pipeline, message_id, outcome) SELECT $1, m, o FROM UNNEST($2::text[], $3::text[]) AS u(m, o) \
                 ON CONFLICT (pipeline, message_id) DO NOTHING RETURNING message_id"
            ),
            sql_vault: format!(
                "INSERT INTO {vault} (target_table, column_name, token, key_id, nonce, ciphertext) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[]) \
                 ON CONFLICT (target_table, column_name, token) DO NOTHING"
            ),
            sql_target: format!("INSERT INTO {target} ({}) {}", names.join(", "), select),
            sql_rejects: format!(
                "INSERT INTO {rejects} (pipeline, message_id, reason, key_id, nonce, body_ciphertext) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[]) \
                 ON CONFLICT (pipeline, message_id) DO NOTHING"
            ),
        }
    }

    /// Writes `batch` in one transaction: ledger first, then vault rows, target rows and rejects
    /// of the messages the ledger had not seen. Any error rolls the whole transaction back.
    pub(super) async fn write_once(&self, batch: &[Processed]) -> Result<WriteReport, SinkError> {
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await?;
        let ids: Vec<&str> = batch.iter().map(|p| p.message_id.as_str()).collect();
        let outcomes: Vec<&str> = batch
            .iter()
            .map(|p| {
                if matches!(p.outcome, Outcome::Row { .. }) {
                    "row"
                } else {
                    "reject"
                }
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

        // Vault: one encryption per distinct (column, token) in the batch, inserted in key order
        // so concurrent writers sharing hot tokens wait for each other instead of deadlocking.
        let mut pending: Vec<&crate::transform::PendingVault> = new
            .iter()
            .filter_map(|p| match &p.outcome {
                Outcome::Row { vault, .. } => Some(vault.iter()),
                Outcome::Reject { .. } => None,
            })
            .flatten()
            .collect();
        pending.sort_unstable_by(|a, b| (&a.column, &a.token).cmp(&(&b.column, &b.token)));
        pending.dedup_by(|a, b| a.column == b.column && a.token == b.token);
        let (mut v_col, mut v_tok, mut v_kid, mut v_nonce, mut v_ct) =
            (vec![], vec![], vec![], vec![], vec![]);
        for pv in pending {
            let b = Binding {
                scope: &self.target_table,
                column: &pv.column,
                token: &pv.token,
            };
            let sealed = self.cipher.encrypt(b, pv.plaintext.as_bytes())?;
            *report.encryptions.entry(sealed.key_id.clone()).or_default() += 1;
            v_col.push(pv.column.clone());
            v_tok.push(pv.token.clone());
            v_kid.push(sealed.key_id);
            v_nonce.push(sealed.nonce.to_vec());
            v_ct.push(sealed.ciphertext);
        }
        if !v_col.is_empty() {
            let r = sqlx::query(AssertSqlSafe(self.sql_vault.clone()))
                .bind(&self.target_table)
                .bind(&v_col)
                .bind(&v_tok)
                .bind(&v_kid)
                .bind(&v_nonce)
                .bind(&v_ct)
                .execute(&mut *tx)
                .await?;
            report.vault_rows = r.rows_affected();
        }

        // Target rows.
        let rows: Vec<&Vec<Val>> = new
            .iter()
            .filter_map(|p| match &p.outcome {
                Outcome::Row { values, .. } => Some(values),
                Outcome::Reject { .. } => None,
            })
            .collect();
        if !rows.is_empty() {
            let mut q = sqlx::query(AssertSqlSafe(self.sql_target.clone()));
            for (i, col) in self.columns.iter().enumerate() {
                q = bind_column(
                    q,
                    col.out_type,
                    rows.iter().map(|r| r.get(i).unwrap_or(&Val::Null)),
                );
            }
            q.execute(&mut *tx).await?;
            report.rows = rows.len() as u64;
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
        Ok(report)
    }
}
