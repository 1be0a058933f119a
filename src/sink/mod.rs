//! The Postgres sink: one transaction per batch writes the ledger, vault rows, target rows and
//! rejects together, so a message's effect is committed entirely or not at all.
//!
//! - Ledger first: `INSERT .. ON CONFLICT DO NOTHING RETURNING message_id` tells which messages
//!   are new; redelivered ones are skipped (and still acknowledged). Concurrent processes block
//!   on the same ledger key until the first commits, so each message's rows are written once.
//! - Rows go in through `UNNEST` of typed arrays: one bind parameter per column however many
//!   rows, far below Postgres's 65,535-parameter limit.
//! - A row Postgres refuses (value too long, constraint) fails the whole statement; the batch is
//!   then split in halves until the bad row is alone, and that row becomes a reject. The other
//!   halves commit on their own, so one bad row never fails a batch.
//! - [`WriteProgress`] remembers which parts committed, so a transient error part-way through
//!   retries only the rest, and a message is reported as safe to delete only once committed.

pub mod schema;

use crate::crypto::{Binding, CipherError, VaultCipher};
use crate::db::quote_ident;
use crate::process::{Outcome, Processed};
use crate::spec::{Column, Spec};
use crate::value::{Val, ValType};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Errors from the sink, classified where they occur.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Cipher(#[from] CipherError),
    #[error("target table {table}: {problem}")]
    Target { table: String, problem: String },
}

/// SQLSTATE classes that mean "this data can never be written": data exceptions (22) and
/// integrity constraint violations (23). Only these are isolated by splitting a batch; any
/// other error is about the database or the statement, not one row.
fn is_row_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// SQLSTATEs worth retrying: connection exceptions (08), insufficient resources (53), operator
/// intervention such as shutdown, restart or a cancelled statement (57), serialization failure
/// and deadlock (40001, 40P01), unknown statement completion (40003), lock timeout (55P03),
/// and writing to a read-only server (25006), which is what a primary demoted by a failover says.
fn is_transient_sqlstate(c: &str) -> bool {
    c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57")
        || matches!(c, "40001" | "40P01" | "40003" | "55P03" | "25006")
}

impl SinkError {
    /// Whether retrying later may succeed: connection problems, timeouts, serialization
    /// failures, deadlocks, server shutdown or restart. Everything else (missing table or
    /// column, permissions, key problems) needs a person, so retrying would only delay the error.
    pub fn is_retriable(&self) -> bool {
        match self {
            SinkError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| is_transient_sqlstate(&c)),
                _ => false,
            },
            _ => false,
        }
    }
}

/// The reject reason for a row Postgres refused. Only the primary message and SQLSTATE are
/// kept: the DETAIL line ("Failing row contains (...)") carries the row's values, and a few
/// messages quote the offending value after a colon, so that part is cut as well.
fn refusal_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => {
            let msg = d.message();
            let msg = msg.split_once(": \"").map_or(msg, |(head, _)| head);
            format!(
                "postgres refused the row: {msg} (SQLSTATE {})",
                d.code().unwrap_or_default()
            )
        }
        _ => "postgres refused the row".to_string(),
    }
}

/// What one committed write did.
#[derive(Debug, Default, Clone)]
pub struct WriteReport {
    /// Message ids committed in this write (new rows, new rejects and duplicates): safe to delete.
    pub acked: Vec<(String, String)>,
    pub rows: u64,
    pub rejects: u64,
    pub duplicates: u64,
    pub vault_rows: u64,
    /// Encryptions performed, by key id (nonce budget).
    pub encryptions: HashMap<String, u64>,
}

impl WriteReport {
    fn merge(&mut self, o: WriteReport) {
        self.acked.extend(o.acked);
        self.rows += o.rows;
        self.rejects += o.rejects;
        self.duplicates += o.duplicates;
        self.vault_rows += o.vault_rows;
        for (k, v) in o.encryptions {
            *self.encryptions.entry(k).or_default() += v;
        }
    }
}

/// One batch on its way into Postgres: what has committed so far and what has not.
///
/// Kept across retries, so that after a transient error only the uncommitted parts are written
/// again, and so that on giving up the caller can delete exactly the committed messages and
/// hand back exactly the others.
#[derive(Debug)]
pub struct WriteProgress<'a> {
    /// Parts still to write; the last one is written next.
    pending: Vec<&'a [Processed]>,
    /// What the committed parts did; `report.acked` lists exactly the committed messages.
    pub report: WriteReport,
}

impl<'a> WriteProgress<'a> {
    /// Nothing written yet.
    pub fn new(batch: &'a [Processed]) -> Self {
        Self {
            pending: vec![batch],
            report: WriteReport::default(),
        }
    }

    /// Whether every message has committed.
    pub fn is_done(&self) -> bool {
        self.pending.iter().all(|p| p.is_empty())
    }

    /// Number of messages not yet committed.
    pub fn pending_len(&self) -> usize {
        self.pending.iter().map(|p| p.len()).sum()
    }

    /// (message id, receipt handle) of every message not yet committed.
    pub fn pending_receipts(&self) -> Vec<(String, String)> {
        self.pending
            .iter()
            .flat_map(|p| p.iter())
            .map(|p| (p.message_id.clone(), p.receipt_handle.clone()))
            .collect()
    }
}

/// Writes batches for one spec.
pub struct Sink {
    pool: PgPool,
    pipeline: String,
    target_table: String,
    columns: Arc<Vec<Column>>,
    cipher: Arc<VaultCipher>,
    sql_ledger: String,
    sql_vault: String,
    sql_target: String,
    sql_rejects: String,
}

/// Connects a pool to `url`, failing fast with a clear error when Postgres is unreachable.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

impl Sink {
    /// Builds the statements for `spec`. Call [`schema::ensure`] and [`Sink::check_target`] first.
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
        let arrays: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 1, c.out_type.pg_array_type()))
            .collect();
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
            sql_target: format!(
                "INSERT INTO {target} ({}) SELECT * FROM UNNEST({})",
                names.join(", "),
                arrays.join(", ")
            ),
            sql_rejects: format!(
                "INSERT INTO {rejects} (pipeline, message_id, reason, key_id, nonce, body_ciphertext) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[]) \
                 ON CONFLICT (pipeline, message_id) DO NOTHING"
            ),
        }
    }

    /// The pool (for housekeeping queries).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks that the target table exists and has every spec column with a type the column's
    /// value can be written to, naming every problem at once.
    pub async fn check_target(
        pool: &PgPool,
        table: &str,
        columns: &[Column],
    ) -> Result<(), SinkError> {
        let (schema, name) = match table.split_once('.') {
            Some((s, n)) => (Some(s.to_string()), n.to_string()),
            None => (None, table.to_string()),
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_name = $1 AND ($2::text IS NULL AND table_schema = ANY(current_schemas(false)) OR table_schema = $2)",
        )
        .bind(&name)
        .bind(&schema)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Err(SinkError::Target {
                table: table.to_string(),
                problem: "does not exist (or this role cannot see it); create it first, e.g. from schema/".into(),
            });
        }
        let have: HashMap<String, String> = rows.into_iter().collect();
        let mut problems = Vec::new();
        for c in columns {
            match have.get(&c.name) {
                None => problems.push(format!("has no column {}", c.name)),
                Some(pg_type) if !type_compatible(c.out_type, pg_type) => problems.push(format!(
                    "column {} is {pg_type}, but the spec produces {} values for it",
                    c.name,
                    c.out_type.name()
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = have.keys().map(String::as_str).collect();
        names.sort_unstable();
        Err(SinkError::Target {
            table: table.to_string(),
            problem: format!("{} (it has: {})", problems.join("; "), names.join(", ")),
        })
    }

    /// Writes a batch, splitting it to isolate rows Postgres refuses. A transient error is
    /// returned as is; see [`Sink::write_resumable`] to continue after one without rewriting
    /// the sub-batches that already committed.
    pub async fn write(&self, batch: &[Processed]) -> Result<WriteReport, SinkError> {
        let mut progress = WriteProgress::new(batch);
        self.write_resumable(&mut progress).await?;
        Ok(progress.report)
    }

    /// Writes what is still pending in `progress`, one transaction per part. A part Postgres
    /// refuses because of a row (SQLSTATE class 22 or 23) is split in halves until the row is
    /// alone, and that row is written as a reject with the reason; the rest commits.
    ///
    /// On any other error the failing part stays pending and the error is returned: committed
    /// parts are in `progress.report` (safe to delete), pending ones are not. Calling again
    /// resumes with the pending parts. If this future is dropped mid-write, the part being
    /// written also stays pending: it may have committed (the ledger then skips it later), but
    /// it is never reported as committed when it was not.
    pub async fn write_resumable(&self, progress: &mut WriteProgress<'_>) -> Result<(), SinkError> {
        while let Some(&part) = progress.pending.last() {
            if part.is_empty() {
                progress.pending.pop();
                continue;
            }
            match self.write_once(part).await {
                Ok(r) => {
                    progress.pending.pop();
                    progress.report.merge(r);
                }
                Err(SinkError::Db(e)) if is_row_error(&e) => {
                    if part.len() == 1 {
                        let reason = refusal_reason(&e);
                        let rejected = part
                            .iter()
                            .map(|p| reject_of(p, reason.clone()))
                            .collect::<Vec<_>>();
                        let r = self.write_once(&rejected).await?;
                        progress.pending.pop();
                        progress.report.merge(r);
                    } else {
                        progress.pending.pop();
                        let (left, right) = part.split_at(part.len() / 2);
                        progress.pending.push(right);
                        progress.pending.push(left);
                    }
                }
                Err(e) => {
                    if !progress.report.acked.is_empty() {
                        tracing::debug!(
                            committed = progress.report.acked.len(),
                            pending = progress.pending_len(),
                            "Part of a batch committed before an error; only the rest will be retried."
                        );
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn write_once(&self, batch: &[Processed]) -> Result<WriteReport, SinkError> {
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

fn reject_of(p: &Processed, reason: String) -> Processed {
    // A row Postgres refused: the reject keeps the original body (encrypted like any other
    // reject), and the ledger marks the message as rejected.
    Processed {
        message_id: p.message_id.clone(),
        receipt_handle: p.receipt_handle.clone(),
        body: p.body.clone(),
        outcome: Outcome::Reject { reason },
    }
}

/// Whether values of `ty` can be inserted into a column of Postgres type `pg_type`
/// (`information_schema.columns.data_type`) by an assignment cast.
pub fn type_compatible(ty: ValType, pg_type: &str) -> bool {
    let textual = matches!(pg_type, "text" | "character varying" | "character");
    let numeric = matches!(
        pg_type,
        "integer" | "bigint" | "numeric" | "real" | "double precision"
    );
    textual
        || match ty {
            ValType::Json | ValType::Text => false,
            ValType::Integer | ValType::BigInt => numeric,
            ValType::Boolean => pg_type == "boolean",
            ValType::Date | ValType::Timestamp => {
                matches!(
                    pg_type,
                    "date" | "timestamp without time zone" | "timestamp with time zone"
                )
            }
        }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds one column of a batch as a typed array.
fn bind_column<'q, 'v>(
    q: PgQuery<'q>,
    ty: ValType,
    vals: impl Iterator<Item = &'v Val>,
) -> PgQuery<'q> {
    match ty {
        ValType::Json | ValType::Text => {
            q.bind(vals.map(|v| v.to_text()).collect::<Vec<Option<String>>>())
        }
        ValType::Integer => q.bind(
            vals.map(|v| match v {
                Val::Int(i) => Some(*i),
                _ => None,
            })
            .collect::<Vec<Option<i32>>>(),
        ),
        ValType::BigInt => q.bind(
            vals.map(|v| match v {
                Val::BigInt(i) => Some(*i),
                Val::Int(i) => Some(i64::from(*i)),
                _ => None,
            })
            .collect::<Vec<Option<i64>>>(),
        ),
        ValType::Boolean => q.bind(
            vals.map(|v| match v {
                Val::Bool(b) => Some(*b),
                _ => None,
            })
            .collect::<Vec<Option<bool>>>(),
        ),
        ValType::Date => q.bind(
            vals.map(|v| match v {
                Val::Date(d) => Some(*d),
                _ => None,
            })
            .collect::<Vec<Option<NaiveDate>>>(),
        ),
        ValType::Timestamp => q.bind(
            vals.map(|v| match v {
                Val::Timestamp(t) => Some(*t),
                _ => None,
            })
            .collect::<Vec<Option<DateTime<Utc>>>>(),
        ),
    }
}

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
