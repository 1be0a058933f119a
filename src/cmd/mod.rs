//! Command implementations behind the CLI in `main.rs`, one file per command family, plus the
//! helpers they share (loading specs and keyrings with user-facing errors, connecting to Postgres).

pub mod audit;
pub mod check;
pub mod decrypt;
pub mod erase;
pub mod ledger;
pub mod rejects;
pub mod run;
pub mod send;
pub mod setup;
pub mod spec_tools;
pub mod vault;

use anyhow::{Result, anyhow};
use etl_engine::crypto::{KeyUse, Keyring, Tokenizer};
use etl_engine::retry::{Backoff, retry};
use etl_engine::sink::{self, SinkError};
use etl_engine::spec::{self, Spec};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// An error that has already been explained to the user, with its exit code.
#[derive(Debug)]
pub struct Exit(pub u8);
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// Errors in what the user gave us (spec, keyring, arguments): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// Who is recovering values, for the audit table: `--actor`, else the OS user.
pub fn actor_or_os_user(actor: Option<String>) -> String {
    actor
        .or_else(|| whoami::username().ok())
        .unwrap_or_else(|| "unknown".into())
}

pub fn load(path: &Path) -> Result<Spec> {
    spec::load_spec(path).map_err(usage)
}

/// Loads the spec's keyring with only the keys `use_` needs (a KMS-wrapped keyring unwraps
/// just those). A KMS failure is a runtime error (exit 1), a bad keyring a usage error.
pub async fn load_keyring(spec: &Spec, use_: KeyUse) -> Result<Keyring> {
    Keyring::load(spec.vault.keyring.as_deref().map(Path::new), use_)
        .await
        .map_err(|e| match e {
            etl_engine::crypto::KeyringError::Kms { .. } => anyhow::Error::from(e),
            other => usage(other),
        })
}

/// The tokenizer of the spec: the keyring's active hash key, with domains unless the spec
/// keeps `vault.legacy_tokens`.
pub fn spec_tokenizer(spec: &Spec, ring: &Keyring) -> Result<Tokenizer> {
    let key = ring.active_hash_key().map_err(usage)?;
    Ok(Tokenizer::new(key)
        .map_err(usage)?
        .legacy(spec.vault.legacy_tokens))
}

/// Connects to Postgres, retrying while it is unreachable (it may be restarting).
pub async fn connect_db(
    url: &str,
    max_connections: u32,
    cancel: &CancellationToken,
) -> Result<sqlx::PgPool> {
    let backoff = Backoff {
        max_elapsed: std::time::Duration::from_secs(60),
        ..Backoff::WRITE
    };
    retry(
        backoff,
        cancel,
        |e: &SinkError| e.is_retriable(),
        |e, attempt, _| tracing::warn!(attempt, error = %e, "Postgres is not reachable yet; retrying."),
        || async { sink::connect_pool(url, max_connections).await.map_err(SinkError::from) },
    )
    .await
    .map_err(|e| anyhow!("cannot connect to Postgres (target.url; override with ETL_SPEC_TARGET__URL): {e}"))
}

/// Stops with a clear error (exit 2) unless `spec`'s engine tables are set up at the version
/// this engine needs. Commands other than `setup` run no DDL.
pub async fn require_schema(pool: &sqlx::PgPool, spec: &Spec) -> Result<()> {
    use etl_engine::db::migrate::MigrateError;
    match sink::schema::check(pool, spec).await {
        Ok(()) => Ok(()),
        Err(MigrateError::Db(e)) => Err(anyhow!("checking the engine's schema version: {e}")),
        Err(e) => Err(usage(e)),
    }
}
