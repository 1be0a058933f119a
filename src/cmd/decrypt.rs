//! `etl-engine vault-decrypt`: audited recovery of original values.

use super::{connect_db, load, load_keyring, usage};
use crate::OutputFormat;
use anyhow::{Context, Result};
use etl_engine::crypto::{KeyUse, VaultCipher};
use etl_engine::vault::recover::{self, Selector};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Arguments of `etl-engine vault-decrypt`.
#[derive(clap::Args)]
pub struct DecryptArgs {
    /// The spec whose target table and vault to read.
    spec: PathBuf,
    /// The encrypted column, e.g. masked_ip.
    #[arg(long)]
    column: String,
    /// The output table holding the column, when the spec has several outputs that encrypt a
    /// column of this name (default: the only one that does).
    #[arg(long = "output", value_name = "TABLE")]
    output: Option<String>,
    /// Tokens to recover (the values stored in the column).
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// Read tokens from stdin, one per line.
    #[arg(long)]
    stdin: bool,
    /// Select rows of the target table: COLUMN=VALUE (repeatable; values are bound as parameters).
    /// The value shows in the process list: prefer --where-stdin.
    #[arg(long = "where")]
    selectors: Vec<String>,
    /// Read the COLUMN=VALUE selectors from stdin, one per line, so values stay out of `ps`.
    #[arg(long, conflicts_with = "stdin")]
    where_stdin: bool,
    /// Why the values are needed; recorded in the audit table. Required.
    #[arg(long)]
    reason: String,
    /// Who is recovering (default: the OS user).
    #[arg(long)]
    actor: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

/// Runs `etl-engine vault-decrypt`: prints the recovered values and exits 0, or 3 when a token
/// is not in the vault.
pub async fn cmd_decrypt(args: DecryptArgs) -> Result<u8> {
    let DecryptArgs {
        spec: spec_path,
        column,
        output,
        mut tokens,
        stdin,
        mut selectors,
        where_stdin,
        reason,
        actor,
        format,
    } = args;
    if reason.trim().is_empty() {
        return Err(usage("--reason must say why the values are needed"));
    }
    let spec = load(&spec_path)?;
    // Which table to read is known before any service is touched: say so early.
    recover::resolve_output(&spec, &column, output.as_deref()).map_err(usage)?;
    let ring = load_keyring(&spec, KeyUse::RECOVER).await?;
    let cipher = VaultCipher::new(&ring).map_err(usage)?;
    drop(ring);
    if stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading tokens from stdin")?;
            if !line.trim().is_empty() {
                tokens.push(line.trim().to_string());
            }
        }
    }
    if where_stdin {
        let text =
            std::io::read_to_string(std::io::stdin()).context("reading selectors from stdin")?;
        selectors.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    let selector = match (tokens.is_empty(), selectors.is_empty()) {
        (false, true) => Selector::Tokens(tokens),
        (true, false) => Selector::Where(
            selectors
                .iter()
                .map(|s| recover::parse_where(s))
                .collect::<Result<_, _>>()
                .map_err(usage)?,
        ),
        (true, true) => {
            return Err(usage(
                "say what to recover: --token TOKEN, --stdin, --where COLUMN=VALUE or --where-stdin",
            ));
        }
        (false, false) => {
            return Err(usage(
                "use either tokens (--token/--stdin) or --where, not both",
            ));
        }
    };
    let actor = super::actor_or_os_user(actor);
    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 2, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    let req = recover::Request {
        column,
        output,
        selector,
        actor,
        reason,
    };
    let out = recover::recover(&pool, &spec, &cipher, &req).await?;
    let mut stdout = std::io::stdout().lock();
    match format {
        OutputFormat::Text => {
            for r in &out.recovered {
                writeln!(stdout, "{}\t{}", r.token, r.value.as_str())?;
            }
        }
        OutputFormat::Csv => {
            writeln!(stdout, "token,value")?;
            for r in &out.recovered {
                writeln!(stdout, "{},{}", r.token, csv_field(&r.value))?;
            }
        }
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = out
                .recovered
                .iter()
                .map(|r| serde_json::json!({"token": r.token, "value": r.value.as_str()}))
                .collect();
            writeln!(stdout, "{}", serde_json::Value::Array(items))?;
        }
    }
    for t in &out.missing {
        eprintln!("not found in the vault: {t}");
    }
    Ok(if out.missing.is_empty() { 0 } else { 3 })
}

/// One CSV field, quoted when it holds a separator, a quote or a line break.
pub(super) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
