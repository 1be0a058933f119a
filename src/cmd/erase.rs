//! `etl-engine vault-erase`: one person's PII out of the target tables, the vault and the
//! rejects (right to erasure), audited.

use super::{connect_db, load, load_keyring, usage};
use anyhow::{Context, Result};
use etl_engine::crypto::{KeyUse, VaultCipher};
use etl_engine::vault::erase::{self, Mode};
use etl_engine::vault::recover;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// How matching rows are treated.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EraseMode {
    /// Keep the rows, set their token columns (hash and encrypt) to NULL.
    Null,
    /// Delete the rows.
    DeleteRows,
}

/// Arguments of `etl-engine vault-erase`.
#[derive(clap::Args)]
pub struct EraseArgs {
    /// The spec whose target tables, vault and rejects to erase from.
    spec: PathBuf,
    /// Select the person's rows: COLUMN=VALUE (repeatable, all must match). The value shows in
    /// the process list: prefer --where-stdin.
    #[arg(long = "where")]
    selectors: Vec<String>,
    /// Read the COLUMN=VALUE selectors from stdin, one per line.
    #[arg(long)]
    where_stdin: bool,
    /// Why; recorded in the audit table. Required.
    #[arg(long)]
    reason: String,
    /// Null the token columns (default) or delete the rows.
    #[arg(long, value_enum, default_value_t = EraseMode::Null)]
    mode: EraseMode,
    /// Only this output table (default: every output with the selector columns).
    #[arg(long = "output", value_name = "TABLE")]
    output: Option<String>,
    /// Who is erasing (default: the OS user).
    #[arg(long)]
    actor: Option<String>,
}

/// Runs `etl-engine vault-erase`: prints the counts; exit 0.
pub async fn cmd_erase(args: EraseArgs) -> Result<u8> {
    if args.reason.trim().is_empty() {
        return Err(usage("--reason must say why the data is erased"));
    }
    let spec = load(&args.spec)?;
    let mut lines = args.selectors;
    if args.where_stdin {
        let text =
            std::io::read_to_string(std::io::stdin()).context("reading selectors from stdin")?;
        lines.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    if lines.is_empty() {
        return Err(usage(
            "say whose data to erase: --where COLUMN=VALUE or --where-stdin",
        ));
    }
    let conds = lines
        .iter()
        .map(|l| recover::parse_where(l))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    // Reject bodies are encrypted: matching them needs the keys that decrypt.
    let ring = load_keyring(&spec, KeyUse::RECOVER).await?;
    let cipher = VaultCipher::new(&ring).map_err(usage)?;
    drop(ring);
    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 2, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    let req = erase::Request {
        conds,
        output: args.output,
        mode: match args.mode {
            EraseMode::Null => Mode::Null,
            EraseMode::DeleteRows => Mode::DeleteRows,
        },
        actor: super::actor_or_os_user(args.actor),
        reason: args.reason,
    };
    let report = erase::erase(&pool, &spec, Some(&cipher), &req).await?;
    for t in &report.tables {
        println!(
            "{}: {} row(s) {}, {} vault entr(ies) deleted, {} kept (still used by other rows)",
            t.table,
            t.rows,
            match req.mode {
                Mode::Null => "nulled",
                Mode::DeleteRows => "deleted",
            },
            t.vault_deleted,
            t.vault_kept_shared
        );
    }
    println!(
        "{}: {} reject(s) deleted; audit record {}",
        spec.rejects.table, report.rejects_deleted, report.audit_id
    );
    Ok(0)
}
