//! `etl-engine vault-decrypt`: audited recovery of original values.

use super::{connect_db, load, load_keyring, usage};
use anyhow::{Context, Result};
use etl_engine::crypto::VaultCipher;
use etl_engine::sink;
use etl_engine::vault::recover::{self, Selector};
use std::io::{BufRead, Write};
use std::path::Path;
use tokio_util::sync::CancellationToken;

#[allow(clippy::too_many_arguments)]
pub async fn cmd_decrypt(
    spec_path: &Path,
    column: String,
    mut tokens: Vec<String>,
    stdin: bool,
    selectors: Vec<String>,
    reason: String,
    actor: Option<String>,
    format: crate::OutputFormat,
) -> Result<u8> {
    if reason.trim().is_empty() {
        return Err(usage("--reason must say why the values are needed"));
    }
    let spec = load(spec_path)?;
    let ring = load_keyring(&spec)?;
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
                "say what to recover: --token TOKEN, --stdin, or --where COLUMN=VALUE",
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
    sink::schema::ensure(&pool, &spec)
        .await
        .context("creating the engine's tables")?;
    let req = recover::Request {
        column,
        selector,
        actor,
        reason,
    };
    let out = recover::recover(&pool, &spec, &cipher, &req).await?;
    let mut stdout = std::io::stdout().lock();
    match format {
        crate::OutputFormat::Text => {
            for r in &out.recovered {
                writeln!(stdout, "{}\t{}", r.token, r.value.as_str())?;
            }
        }
        crate::OutputFormat::Csv => {
            writeln!(stdout, "token,value")?;
            for r in &out.recovered {
                writeln!(stdout, "{},{}", r.token, csv_field(&r.value))?;
            }
        }
        crate::OutputFormat::Json => {
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
