//! `etl-engine setup`: creates or migrates the engine's own tables and functions for each spec,
//! as an explicit step run by the database owner (the other commands only check the version).

use super::{Exit, connect_db, load};
use anyhow::{Result, anyhow};
use etl_engine::db::migrate::MigrateError;
use etl_engine::db::owners::{Registered, public_can_create, register};
use etl_engine::db::schema::REJECTS_AUDIT_COLUMN;
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
            Err(e @ (MigrateError::TooNew { .. } | MigrateError::Owner(_))) => {
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
        // What may be recovered at all: this spec's encrypted columns and its rejects' bodies.
        let mut entries = Vec::new();
        for o in &spec.outputs {
            for c in o.columns.iter().filter(|c| c.encrypts()) {
                entries.push(Registered {
                    object_table: spec.vault.table.clone(),
                    target_table: o.table.clone(),
                    column: c.name.clone(),
                });
            }
        }
        entries.push(Registered {
            object_table: spec.rejects.table.clone(),
            target_table: spec.name.clone(),
            column: REJECTS_AUDIT_COLUMN.into(),
        });
        register(&pool, &entries).await.map_err(|e| {
            anyhow!(
                "{}: registering the recoverable columns: {e}",
                path.display()
            )
        })?;
        if let Some(schema) = public_can_create(&pool)
            .await
            .map_err(|e| anyhow!("{}: reading the schema's privileges: {e}", path.display()))?
        {
            eprintln!(
                "warning: {}: every role may create objects in schema {schema} (and so plant functions under the engine's names); as its owner run: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC",
                path.display()
            );
        }
        pool.close().await;
        println!(
            "{}: registered {} recoverable column(s) and the rejects' bodies",
            path.display(),
            entries.len() - 1
        );
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
