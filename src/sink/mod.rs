//! The Postgres sink: one transaction per batch writes the ledger, vault rows, target rows and
//! rejects together, so a message's effect is committed entirely or not at all.
//!
//! - Ledger first: its entries tell which messages are new; redelivered ones are skipped (and
//!   still acknowledged). Concurrent processes block on the same ledger key until the first
//!   commits, so each message's rows are written once.
//! - Ledger, vault and output rows go in by binary COPY, as fast as Postgres takes rows. Where a
//!   key may already be stored (the ledger: a redelivered message; the vault: a token another
//!   writer stored; `upsert`/`ignore` outputs: an existing row), the COPY runs under a savepoint:
//!   on a unique violation it is rolled back and redone as the `INSERT … ON CONFLICT` statement,
//!   so every conflict rule holds, and that table skips COPY for the next few writes. Columns
//!   with no exact binary form (uuid, text[], a type that needs an assignment cast) and rejects
//!   go in through `UNNEST` of typed arrays: one bind parameter per column however many rows.
//! - Tokens known to be stored already ([`known_tokens`]) are neither encrypted nor sent again.
//! - A row Postgres refuses (value too long, constraint) fails the whole statement; the batch is
//!   then split in halves until the bad row is alone, and that row becomes a reject. The other
//!   halves commit on their own, so one bad row never fails a batch.
//! - [`WriteProgress`] remembers which parts committed, so a transient error part-way through
//!   retries only the rest, and a message is reported as safe to delete only once committed.
//!
//! This file holds the [`Sink`] itself and how its errors are classified; the rest is split by
//! concept: `batch` (progress of a batch and splitting it around a refused row), `statements`
//! (the SQL and one batch part's transaction), `output` (one output's writer), `copy` (binary
//! COPY streams), `bind` (one column's values as a typed array), `known_tokens` (the vault's
//! known-token cache), `in_flight` (vault tokens this process's writers are writing now),
//! `vault_columns` (the vault's column ids), `target` (checking the target table) and
//! `key_usage` (counting encryptions against each key's nonce budget).

mod batch;
mod bind;
pub mod copy;
pub mod ddl;
mod in_flight;
mod key_usage;
mod known_tokens;
mod output;
pub mod schema;
mod statements;
mod target;
pub mod vault_columns;

pub use batch::{WriteProgress, WriteReport};
pub use key_usage::{
    KeyUsageError, NONCE_LIMIT, NONCE_WARN_AT, check_nonce_budget, record_key_counts,
    record_key_usage, spawn_key_usage_flush,
};
pub use target::type_compatible;

use crate::crypto::{CipherError, VaultCipher};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::Arc;
use std::time::Duration;

/// Errors from the sink, classified where they occur.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Postgres or the connection to it failed; see [`SinkError::is_retriable`].
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Encrypting a vault value or a reject body failed (a key problem).
    #[error(transparent)]
    Cipher(#[from] CipherError),
    /// A COPY into an output was refused for its binary format: the table's column types
    /// changed while the engine ran. The plan is made again at the next try (retriable).
    #[error(
        "target table {table}: a column's type changed while running; the write will be retried with the new types"
    )]
    StalePlan {
        /// The table as the spec names it.
        table: String,
    },
    /// An encrypted column has no id in the vault's registry of columns.
    #[error(
        "encrypted column(s) {missing} not registered in {registry}: run `etl-engine setup SPEC` as the owner of the engine's tables"
    )]
    VaultColumns {
        /// The registry table.
        registry: String,
        /// The (table.column) pairs missing, comma-separated.
        missing: String,
    },
    /// The target table is missing or does not fit the spec's columns.
    #[error("target table {table}: {problem}")]
    Target {
        /// The table as the spec names it.
        table: String,
        /// Every problem found, in one sentence.
        problem: String,
    },
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
            SinkError::StalePlan { .. } => true,
            _ => false,
        }
    }
}

/// Writes batches for one spec.
pub struct Sink {
    /// Connections to the target database.
    pool: PgPool,
    /// The spec's name: the ledger and rejects key, and the binding scope of reject bodies.
    pipeline: String,
    /// One statement per output, in spec order.
    outputs: Vec<output::OutputWriter>,
    /// Encrypts vault values and reject bodies.
    cipher: Arc<VaultCipher>,
    /// Tokens known to be in the vault: neither encrypted nor sent again.
    known: known_tokens::KnownTokens,
    /// The vault's (table, column) → id map, read once.
    vault_columns: vault_columns::VaultColumnIds,
    /// Vault tokens this process's writers are writing right now.
    in_flight: in_flight::InFlight,
    /// The statements, and when to COPY.
    sql: statements::Statements,
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
    /// The pool (for housekeeping queries).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Reads the vault's column ids now (otherwise the first batch does), failing when an
    /// encrypted column of the spec is not registered (`etl-engine setup SPEC` registers them).
    pub async fn load_vault_columns(&self) -> Result<(), SinkError> {
        self.vault_columns.load(&self.pool).await.map(|_| ())
    }

    /// Tokens this sink knows to be in the vault (and so neither encrypts nor sends again).
    pub fn known_tokens(&self) -> usize {
        self.known.len()
    }

    /// Vault tokens this sink's writers are writing right now (none once every write ended).
    pub fn tokens_in_flight(&self) -> usize {
        self.in_flight.claimed()
    }

    /// Forgets every known token, so the next batches write their vault rows again (after
    /// vault rows were deleted, e.g. by an erasure).
    pub fn forget_known_tokens(&self) {
        self.known.clear();
    }
}
