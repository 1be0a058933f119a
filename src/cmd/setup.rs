//! `etl-engine setup`: creates or migrates the engine's own tables and functions for each spec,
//! as an explicit step run by the database owner (the other commands only check the version).

use super::{Exit, connect_db, load};
use anyhow::{Result, anyhow};
use etl_engine::db::migrate::MigrateError;
use etl_engine::sink;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Arguments of `setup`.
#[derive(clap::Args)]
pub struct SetupArgs {
    /// Spec files; the engine tables each one names (ledger, vault, rejects) are set up or
    /// migrated, together with the key-usage and audit tables every pipeline shares.
    #[arg(required = true)]
    pub specs: Vec<PathBuf>,
}

/// Sets up every spec's engine tables; prints what each migration step did.
pub async fn setup(args: SetupArgs) -> Result<()> {
    for path in &args.specs {
        let spec = load(path)?;
        let cancel = CancellationToken::new();
        let pool = connect_db(&spec.target.url, 1, &cancel).await?;
        let applied = match sink::schema::setup(&pool, &spec).await {
            Ok(a) => a,
            Err(e @ MigrateError::TooNew { .. }) => {
                eprintln!("error: {}: {e}", path.display());
                return Err(Exit(2).into());
            }
            Err(e) => {
                return Err(anyhow!(
                    "{}: setting up the engine's tables: {e}",
                    path.display()
                ));
            }
        };
        pool.close().await;
        for a in applied {
            let name = &a.object.name;
            let kind = a.object.kind.as_str();
            if a.steps.is_empty() {
                println!("{kind} {name}: at version {}, nothing to do", a.to);
            } else {
                println!(
                    "{kind} {name}: version {} -> {}: {}",
                    a.from,
                    a.to,
                    a.steps.join("; ")
                );
            }
        }
    }
    Ok(())
}
