//! `etl-engine rejects`: what was rejected and why, and — audited, with a reason — the original
//! bodies, so a rejected message can be inspected, fixed and sent again.

use super::decrypt::csv_field;
use super::{connect_db, load, load_keyring, usage};
use anyhow::{Context, Result};
use etl_engine::crypto::{KeyUse, VaultCipher};
use etl_engine::vault::rejects::{self, Query, RejectInfo};
use std::io::Write;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Arguments of `etl-engine rejects`.
#[derive(clap::Args)]
pub struct RejectsArgs {
    /// The spec whose rejects table to read (rows of its pipeline only).
    spec: PathBuf,
    /// Only this message id (repeatable). Without it, the newest rejects up to --limit.
    #[arg(long = "message-id")]
    message_ids: Vec<String>,
    /// At most this many rejects, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Also decrypt and print the original bodies (may hold PII): needs --reason and the keyring,
    /// and is recorded in the audit table with the message ids read.
    #[arg(long)]
    show_bodies: bool,
    /// Why the bodies are needed (with --show-bodies); recorded in the audit table.
    #[arg(long)]
    reason: Option<String>,
    /// Who is reading the bodies (default: the OS user).
    #[arg(long)]
    actor: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::OutputFormat::Text)]
    format: crate::OutputFormat,
}

/// Runs `etl-engine rejects`: exit 0, or 3 when a requested message id has no reject.
pub async fn cmd_rejects(args: RejectsArgs) -> Result<u8> {
    let reason = match (args.show_bodies, args.reason) {
        (true, Some(r)) if !r.trim().is_empty() => Some(r),
        (true, _) => {
            return Err(usage(
                "--show-bodies needs --reason saying why the bodies are needed (it is recorded in the audit table)",
            ));
        }
        (false, Some(_)) => return Err(usage("--reason only applies with --show-bodies")),
        (false, None) => None,
    };
    let spec = load(&args.spec)?;
    // Bodies are read only with a reason, and then need the keyring.
    let body_reader = match reason {
        Some(reason) => {
            let ring = load_keyring(&spec, KeyUse::RECOVER).await?;
            Some((VaultCipher::new(&ring).map_err(usage)?, reason))
        }
        None => None,
    };
    let q = Query {
        message_ids: (!args.message_ids.is_empty()).then_some(args.message_ids),
        limit: args.limit,
    };
    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 2, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    let rows: Vec<(RejectInfo, Option<zeroize::Zeroizing<String>>)> = match body_reader {
        Some((cipher, reason)) => {
            let actor = super::actor_or_os_user(args.actor);
            rejects::recover_bodies(&pool, &spec, &cipher, &q, &actor, &reason)
                .await?
                .into_iter()
                .map(|r| (r.info, Some(r.body)))
                .collect()
        }
        None => rejects::list(&pool, &spec, &q)
            .await
            .with_context(|| format!("reading {}", spec.rejects.table))?
            .into_iter()
            .map(|i| (i, None))
            .collect(),
    };
    print_rows(&rows, args.format)?;
    let mut code = 0;
    for id in q.message_ids.iter().flatten() {
        if !rows.iter().any(|(i, _)| &i.message_id == id) {
            eprintln!("no reject of pipeline {} with message id {id}", spec.name);
            code = 3;
        }
    }
    if rows.is_empty() && q.message_ids.is_none() {
        eprintln!(
            "No rejects for pipeline {} in {}.",
            spec.name, spec.rejects.table
        );
    }
    Ok(code)
}

fn print_rows(
    rows: &[(RejectInfo, Option<zeroize::Zeroizing<String>>)],
    format: crate::OutputFormat,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let at = |i: &RejectInfo| {
        i.rejected_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    match format {
        crate::OutputFormat::Text => {
            for (i, body) in rows {
                write!(out, "{}\t{}\t{}", i.message_id, at(i), i.reason)?;
                if let Some(b) = body {
                    write!(out, "\t{}", b.as_str())?;
                }
                writeln!(out)?;
            }
        }
        crate::OutputFormat::Csv => {
            let with_bodies = rows.iter().any(|(_, b)| b.is_some());
            writeln!(
                out,
                "message_id,rejected_at,reason{}",
                if with_bodies { ",body" } else { "" }
            )?;
            for (i, body) in rows {
                write!(
                    out,
                    "{},{},{}",
                    csv_field(&i.message_id),
                    at(i),
                    csv_field(&i.reason)
                )?;
                if let Some(b) = body {
                    write!(out, ",{}", csv_field(b))?;
                }
                writeln!(out)?;
            }
        }
        crate::OutputFormat::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|(i, body)| {
                    let mut v = serde_json::json!({
                        "message_id": i.message_id,
                        "rejected_at": at(i),
                        "reason": i.reason,
                    });
                    if let Some(b) = body {
                        v["body"] = b.as_str().into();
                    }
                    v
                })
                .collect();
            writeln!(out, "{}", serde_json::Value::Array(items))?;
        }
    }
    Ok(())
}
