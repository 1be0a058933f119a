//! `etl-engine audit verify`: walks the audit's hash chain and names the first row that does
//! not check out.

use super::{connect_db, load};
use anyhow::{Result, anyhow};
use etl_engine::db::audit::{self, Verdict};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// `etl-engine audit ...`.
#[derive(clap::Subcommand)]
pub enum AuditAction {
    /// Check every audit row's hash and its link to the row before. Exit 0: intact; 1: the
    /// first broken row is named.
    Verify {
        /// A spec naming the database (its target.url).
        spec: PathBuf,
        /// An `ID:HASH` printed by an earlier verify and kept elsewhere: that row must still be
        /// there with that hash (detects a chain recomputed from some row on).
        #[arg(long)]
        anchor: Option<String>,
    },
}

/// Runs an `audit` action.
pub async fn cmd_audit(action: AuditAction) -> Result<u8> {
    let AuditAction::Verify { spec, anchor } = action;
    let anchor = match anchor.as_deref() {
        None => None,
        Some(a) => {
            let (id, hash) = a
                .split_once(':')
                .and_then(|(i, h)| Some((i.parse::<i64>().ok()?, h.to_string())))
                .ok_or_else(|| super::usage("--anchor: expected ID:HASH"))?;
            Some((id, hash))
        }
    };
    let spec = load(&spec)?;
    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 1, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    let verdict = audit::verify(&pool, anchor.as_ref().map(|(i, h)| (*i, h.as_str())))
        .await
        .map_err(|e| anyhow!("reading the audit table: {e}"))?;
    match verdict {
        Verdict::Intact { rows, head } => {
            match head {
                Some((id, hash)) => println!("audit intact: {rows} row(s); head {id}:{hash}"),
                None => println!("audit intact: no rows"),
            }
            Ok(0)
        }
        Verdict::Broken { id, problem, rows } => {
            println!("audit BROKEN at row {id}: {problem} ({rows} row(s) before it check out)");
            Ok(1)
        }
    }
}
