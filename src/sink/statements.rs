//! The SQL the sink runs and the transaction of one batch part: ledger, vault and outputs go in
//! by binary COPY, falling back to their `INSERT … ON CONFLICT` where a stored key makes a COPY
//! fail (or a column has no exact binary form); rejects are bound as typed arrays.

use super::bind::bind_column;
use super::copy::{CopyBuf, CopyGate, copy_in};
use super::in_flight::{Claim, InFlight};
use super::known_tokens::{Key, KnownTokens};
use super::output::OutputWriter;
use super::target::column_types;
use super::vault_columns::VaultColumnIds;
use super::{Sink, SinkError, WriteReport};
use crate::crypto::{Binding, Sealed, VaultCipher};
use crate::db::quote_ident;
use crate::db::vault_v3::TOKEN_BYTES;
use crate::process::{Outcome, Processed};
use crate::spec::Spec;
use crate::transform::PendingVault;
use crate::value::{Val, ValType};
use sqlx::postgres::PgPool;
use sqlx::{Acquire, AssertSqlSafe, Postgres, Transaction};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// How each output's rows go in: `Some(types)` by binary COPY with those encodings, `None` by
/// array binding (see [`OutputWriter::copy_plan`]).
pub(super) type CopyPlans = Arc<Vec<Option<Vec<ValType>>>>;

/// Statements and COPY state of one sink, built once per spec.
#[derive(Debug)]
pub(super) struct Statements {
    /// `COPY` into the ledger.
    copy_ledger: String,
    /// Inserts ledger entries and returns the ids not seen before.
    ledger: String,
    /// `COPY` into the vault.
    copy_vault: String,
    /// Inserts vault rows, skipping tokens already stored.
    vault: String,
    /// Inserts rejects, skipping messages already rejected.
    rejects: String,
    /// Whether the next ledger write tries COPY.
    ledger_gate: CopyGate,
    /// Whether the next vault write tries COPY.
    vault_gate: CopyGate,
    /// Each output's COPY plan, read from the tables at the first write and read again after a
    /// COPY was refused for its binary format (a column's type changed under a running engine).
    plans: RwLock<Option<CopyPlans>>,
}

impl Sink {
    /// Builds the statements for `spec`. Check the schema version ([`schema::check`](super::schema::check))
    /// and the outputs ([`Sink::check_outputs`]) first.
    pub fn new(pool: PgPool, spec: &Spec, cipher: Arc<VaultCipher>) -> Self {
        let ledger = quote_ident(&spec.ledger.table);
        let vault = quote_ident(&spec.vault.table);
        let rejects = quote_ident(&spec.rejects.table);
        let vault_cols = "column_id, token, key_id, nonce, ciphertext";
        Sink {
            pool,
            pipeline: spec.name.clone(),
            outputs: spec.outputs.iter().map(OutputWriter::new).collect(),
            cipher,
            known: KnownTokens::default(),
            vault_columns: VaultColumnIds::new(spec),
            in_flight: InFlight::default(),
            sql: Statements {
                copy_ledger: format!(
                    "COPY {ledger} (pipeline, message_id, outcome) FROM STDIN (FORMAT binary)"
                ),
                ledger: format!(
                    "INSERT INTO {ledger} (pipeline, message_id, outcome) SELECT $1, m, o FROM UNNEST($2::text[], $3::text[]) AS u(m, o) \
                     ON CONFLICT (pipeline, message_id) DO NOTHING RETURNING message_id"
                ),
                copy_vault: format!("COPY {vault} ({vault_cols}) FROM STDIN (FORMAT binary)"),
                vault: format!(
                    "INSERT INTO {vault} ({vault_cols}) \
                     SELECT * FROM UNNEST($1::smallint[], $2::bytea[], $3::text[], $4::bytea[], $5::bytea[]) \
                     ON CONFLICT (column_id, token) DO NOTHING"
                ),
                rejects: format!(
                    "INSERT INTO {rejects} (pipeline, message_id, reason, key_id, nonce, body_ciphertext) \
                     SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[]) \
                     ON CONFLICT (pipeline, message_id) DO NOTHING"
                ),
                ledger_gate: CopyGate::default(),
                vault_gate: CopyGate::default(),
                plans: RwLock::new(None),
            },
        }
    }

    /// Writes `batch` in one transaction: ledger first, then vault rows, every output's rows
    /// and rejects of the messages the ledger had not seen. Any error rolls it all back.
    pub(super) async fn write_once(&self, batch: &[Processed]) -> Result<WriteReport, SinkError> {
        let plans = self.copy_plans().await?;
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await?;
        // A message id twice in one batch (possible with redelivery) is written once. Ledger
        // entries go in id order, so two writers holding the same redelivered messages wait
        // for each other instead of deadlocking.
        let mut seen = HashSet::new();
        let firsts: Vec<&Processed> = batch
            .iter()
            .filter(|p| seen.insert(p.message_id.as_str()))
            .collect();
        let mut by_id = firsts.clone();
        by_id.sort_unstable_by(|a, b| a.message_id.cmp(&b.message_id));
        let fresh = self.write_ledger(&by_id, &mut tx).await?;
        let mut report = WriteReport {
            acked: batch
                .iter()
                .map(|p| (p.message_id.clone(), p.receipt_handle.clone()))
                .collect(),
            ..Default::default()
        };
        // In batch order: for upsert, the later message of a key wins.
        let new: Vec<&Processed> = firsts
            .into_iter()
            .filter(|p| fresh.contains(p.message_id.as_str()))
            .collect();
        report.duplicates = (batch.len() - new.len()) as u64;
        report.skipped = new
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::Skip { .. }))
            .count() as u64;

        // The claim on the vault tokens is held until the transaction has ended.
        let (stored, _claim) = self.write_vault(&new, &mut tx, &mut report).await?;
        for (oi, out) in self.outputs.iter().enumerate() {
            let plan = plans.get(oi).and_then(Option::as_deref);
            self.write_output(oi, out, plan, &new, &mut tx, &mut report)
                .await?;
        }
        self.write_rejects(&new, &mut tx, &mut report).await?;
        tx.commit().await?;
        // Only now are these tokens certainly in the vault (written here or by a concurrent
        // writer whose row won).
        self.known.remember(stored.iter());
        Ok(report)
    }

    /// Each output's COPY plan, reading the tables' column types at the first write.
    async fn copy_plans(&self) -> Result<CopyPlans, SinkError> {
        if let Some(p) = self.sql.plans.read().ok().and_then(|g| g.clone()) {
            return Ok(p);
        }
        let mut plans = Vec::with_capacity(self.outputs.len());
        for out in &self.outputs {
            plans.push(out.copy_plan(&column_types(&self.pool, &out.table).await?));
        }
        let plans: CopyPlans = Arc::new(plans);
        if let Ok(mut g) = self.sql.plans.write() {
            *g = Some(plans.clone());
        }
        Ok(plans)
    }

    /// Ledger entries of `firsts` (distinct ids, in id order); returns the ids not seen before.
    /// Tries one COPY under a savepoint: if none was seen before, that is all of them. If one
    /// was (a redelivery), the COPY fails as a whole and `INSERT … ON CONFLICT DO NOTHING
    /// RETURNING` sorts them out.
    async fn write_ledger<'p>(
        &self,
        firsts: &[&'p Processed],
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<HashSet<&'p str>, SinkError> {
        let outcome = |p: &Processed| match p.outcome {
            Outcome::Rows { .. } => "row",
            Outcome::Skip { .. } => "skip",
            Outcome::Reject { .. } => "reject",
        };
        if self.sql.ledger_gate.try_copy() {
            let mut buf = CopyBuf::new();
            for p in firsts {
                buf.row(3);
                buf.text(&self.pipeline);
                buf.text(&p.message_id);
                buf.text(outcome(p));
            }
            if copy_or_conflict(tx, &self.sql.copy_ledger, buf, &self.sql.ledger_gate).await? {
                return Ok(firsts.iter().map(|p| p.message_id.as_str()).collect());
            }
        }
        let ids: Vec<&str> = firsts.iter().map(|p| p.message_id.as_str()).collect();
        let outcomes: Vec<&str> = firsts.iter().map(|p| outcome(p)).collect();
        let fresh: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(self.sql.ledger.clone()))
            .bind(&self.pipeline)
            .bind(&ids)
            .bind(&outcomes)
            .fetch_all(&mut **tx)
            .await?;
        let fresh: HashSet<String> = fresh.into_iter().map(|r| r.0).collect();
        Ok(ids.into_iter().filter(|id| fresh.contains(*id)).collect())
    }

    /// Vault rows: one encryption per distinct (column, token) in the batch that is not known
    /// to be stored already, keyed by the column's registered id and the token's 32 bytes and
    /// written in key order, so concurrent writers sharing hot tokens wait for each other
    /// instead of deadlocking.
    ///
    /// The tokens no other writer of this process has in flight ([`InFlight`]) and that sort
    /// before the first one that another writer has go in by one COPY under a savepoint; if one
    /// is already stored (another process wrote it), the COPY is redone as
    /// `INSERT … ON CONFLICT DO NOTHING`, which keeps the stored row. The rest, from the first
    /// token another writer has in flight on, are inserted that way after the COPY, in key
    /// order. Returns the keys of
    /// the tokens sent, which are in the vault once the transaction commits, and the claim to
    /// hold until then.
    async fn write_vault(
        &self,
        new: &[&Processed],
        tx: &mut Transaction<'_, Postgres>,
        report: &mut WriteReport,
    ) -> Result<(Vec<Key>, Option<Claim>), SinkError> {
        let pending: Vec<&PendingVault> = new
            .iter()
            .filter_map(|p| match &p.outcome {
                Outcome::Rows { vault, .. } => Some(vault.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        if pending.is_empty() {
            return Ok((Vec::new(), None));
        }
        let ids = self.vault_columns.load(&self.pool).await?;
        let vault = self.vault_columns.vault();
        let mut keyed = pending
            .into_iter()
            .map(|pv| ids.key(vault, pv).map(|k| (k, pv)))
            .collect::<Result<Vec<_>, _>>()?;
        keyed.sort_unstable_by_key(|k| k.0);
        keyed.dedup_by(|a, b| a.0 == b.0);
        // Claim first, then ask the cache: a writer remembers its tokens before it releases
        // their claims, so a token claimed here after another writer committed it is known.
        let (owned, claim) = self.in_flight.claim(keyed.iter().map(|(k, _)| k));
        let known = self.known.known(keyed.iter().map(|(k, _)| k));
        let (keyed, owned): (Vec<_>, Vec<bool>) = keyed
            .into_iter()
            .zip(owned)
            .zip(known)
            .filter_map(|(k, known)| (!known).then_some(k))
            .unzip();
        if keyed.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut rows: Vec<VaultRow<'_>> = Vec::with_capacity(keyed.len());
        for ((id, token), pv) in &keyed {
            let b = Binding {
                scope: &pv.table,
                column: &pv.column,
                token: &pv.token,
            };
            let sealed = self.cipher.encrypt(b, pv.plaintext.as_bytes())?;
            *report.encryptions.entry(sealed.key_id.clone()).or_default() += 1;
            rows.push((*id, token, sealed));
        }
        // Every key goes in ascending order across both statements, so no two writers (of this
        // process or another) can wait for each other in a cycle: the COPY takes this writer's
        // own tokens that sort before the first one another writer of this process has in
        // flight, and everything from there on goes into one sorted INSERT.
        let copyable = owned.iter().take_while(|o| **o).count();
        let mut insert: Vec<VaultRow<'_>> = rows.split_off(copyable);
        let mine = rows;
        if !mine.is_empty() && self.sql.vault_gate.try_copy() {
            let mut buf = CopyBuf::new();
            for (id, token, s) in &mine {
                buf.row(5);
                buf.field(Some(&id.to_be_bytes()));
                buf.bytes(&token[..]);
                buf.text(&s.key_id);
                buf.bytes(&s.nonce);
                buf.bytes(&s.ciphertext);
            }
            if copy_or_conflict(tx, &self.sql.copy_vault, buf, &self.sql.vault_gate).await? {
                report.vault_rows += mine.len() as u64;
            } else {
                insert.extend(mine);
            }
        } else {
            insert.extend(mine);
        }
        if !insert.is_empty() {
            // One statement in key order (after a failed COPY the copied part joins it).
            insert.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            let r = sqlx::query(AssertSqlSafe(self.sql.vault.clone()))
                .bind(insert.iter().map(|r| r.0).collect::<Vec<i16>>())
                .bind(insert.iter().map(|r| &r.1[..]).collect::<Vec<&[u8]>>())
                .bind(
                    insert
                        .iter()
                        .map(|r| r.2.key_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    insert
                        .iter()
                        .map(|r| r.2.nonce.to_vec())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    insert
                        .iter()
                        .map(|r| r.2.ciphertext.as_slice())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut **tx)
                .await?;
            report.vault_rows += r.rows_affected();
        }
        Ok((keyed.into_iter().map(|(k, _)| k).collect(), Some(claim)))
    }

    /// Output number `oi`'s rows of the `new` messages: by COPY when `plan` says how, else by
    /// its `INSERT … SELECT … FROM UNNEST` with the write mode's conflict rule.
    async fn write_output(
        &self,
        oi: usize,
        out: &OutputWriter,
        plan: Option<&[ValType]>,
        new: &[&Processed],
        tx: &mut Transaction<'_, Postgres>,
        report: &mut WriteReport,
    ) -> Result<(), SinkError> {
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
            return Ok(());
        }
        let offered = rows.len() as u64;
        let rows = out.dedup(rows);
        let copy = match plan {
            Some(plan) if !out.keyed || out.gate.try_copy() => OutputWriter::copy_rows(plan, &rows),
            _ => None,
        };
        let copied = match copy {
            Some(buf) if !out.keyed => Some(
                copy_in(tx, &out.sql_copy, buf)
                    .await
                    .map_err(|e| self.copy_refused(out, e))?,
            ),
            Some(buf) => copy_or_conflict(tx, &out.sql_copy, buf, &out.gate)
                .await
                .map_err(|e| self.copy_refused(out, e))?
                .then_some(rows.len() as u64),
            None => None,
        };
        let written = match copied {
            Some(n) => n,
            None => {
                let mut q = sqlx::query(AssertSqlSafe(out.sql.clone()));
                for (i, col) in out.types.iter().enumerate() {
                    q = bind_column(q, *col, rows.iter().map(|r| r.get(i).unwrap_or(&Val::Null)));
                }
                q.execute(&mut **tx).await?.rows_affected()
            }
        };
        report.rows += written;
        report.unchanged_rows += offered - written.min(offered);
        *report.rows_by_table.entry(out.table.clone()).or_default() += written;
        Ok(())
    }

    /// The error of a refused COPY into `out`. Binary data the column cannot read ("incorrect
    /// binary data format", 22P03, or "insufficient data left in message", 08P01, when the
    /// column's binary form is longer) means the table's column types changed since the plan
    /// was made: the plan is made again at the next try, instead of every row becoming a
    /// reject or the same stream being retried forever.
    fn copy_refused(&self, out: &OutputWriter, e: sqlx::Error) -> SinkError {
        if has_sqlstate(&e, "22P03") || has_sqlstate(&e, "08P01") {
            if let Ok(mut g) = self.sql.plans.write() {
                *g = None;
            }
            return SinkError::StalePlan {
                table: out.table.clone(),
            };
        }
        e.into()
    }

    /// Rejects among the `new` messages, bodies encrypted (rare: bound as arrays).
    async fn write_rejects(
        &self,
        new: &[&Processed],
        tx: &mut Transaction<'_, Postgres>,
        report: &mut WriteReport,
    ) -> Result<(), SinkError> {
        let (mut r_id, mut r_reason, mut r_kid, mut r_nonce, mut r_ct) =
            (vec![], vec![], vec![], vec![], vec![]);
        for p in new {
            if let Outcome::Reject { reason } = &p.outcome {
                let b = Binding {
                    scope: &self.pipeline,
                    column: "rejects",
                    token: &p.message_id,
                };
                let sealed = self.cipher.encrypt(b, p.body.as_bytes())?;
                *report.encryptions.entry(sealed.key_id.clone()).or_default() += 1;
                r_id.push(p.message_id.as_str());
                r_reason.push(reason.as_str());
                r_kid.push(sealed.key_id);
                r_nonce.push(sealed.nonce.to_vec());
                r_ct.push(sealed.ciphertext);
            }
        }
        if r_id.is_empty() {
            return Ok(());
        }
        sqlx::query(AssertSqlSafe(self.sql.rejects.clone()))
            .bind(&self.pipeline)
            .bind(&r_id)
            .bind(&r_reason)
            .bind(&r_kid)
            .bind(&r_nonce)
            .bind(&r_ct)
            .execute(&mut **tx)
            .await?;
        report.rejects = r_id.len() as u64;
        Ok(())
    }
}

/// A vault row on its way: column id, token bytes, and the sealed value.
type VaultRow<'k> = (i16, &'k [u8; TOKEN_BYTES], Sealed);

/// Whether `e` is a database error with SQLSTATE `code`.
fn has_sqlstate(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(code))
}

/// COPYs `buf` with `statement` under a savepoint. `Ok(true)`: every row went in. `Ok(false)`:
/// a row's key was already stored (unique violation, 23505, or another integrity error); the
/// savepoint is rolled back, so
/// the transaction goes on as if the COPY had not been tried, and `gate` skips COPY for a while.
async fn copy_or_conflict(
    tx: &mut Transaction<'_, Postgres>,
    statement: &str,
    buf: CopyBuf,
    gate: &CopyGate,
) -> Result<bool, sqlx::Error> {
    let mut sp = (&mut *tx).begin().await?;
    match copy_in(&mut sp, statement, buf).await {
        Ok(_) => {
            sp.commit().await?;
            gate.succeeded();
            Ok(true)
        }
        // A unique violation (23505) is the conflict this is for; any other integrity error
        // (an exclusion constraint an `ignore` output skips, a NOT NULL) is also redone by the
        // statement, which skips what its conflict rule skips and reports a real row error.
        Err(sqlx::Error::Database(d)) if d.code().is_some_and(|c| c.starts_with("23")) => {
            sp.rollback().await?;
            gate.conflicted();
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
