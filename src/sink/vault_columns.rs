//! The vault's (target table, column) → id map, read once per sink from the registry
//! `etl-engine setup` fills (`<vault>_columns`, see [`crate::db::vault_v3`]): vault rows are
//! keyed by that id and the token's 32 bytes.
//!
//! Every encrypted column of the spec must be registered; one that is not is an error naming
//! `etl-engine setup SPEC`, since the writer has no right to register it (nor should a writer
//! choose ids that recovery and rotation rely on).

use super::SinkError;
use crate::db::vault_v3::{self, TOKEN_BYTES};
use crate::spec::Spec;
use crate::transform::PendingVault;
use sqlx::PgPool;
use std::collections::HashMap;
use tokio::sync::OnceCell;

/// The ids of one vault's registered columns.
#[derive(Debug, Default)]
pub struct VaultColumns {
    /// target table → column → id.
    ids: HashMap<String, HashMap<String, i16>>,
}

impl VaultColumns {
    /// The id of (table, column), if registered.
    pub fn id(&self, table: &str, column: &str) -> Option<i16> {
        self.ids.get(table)?.get(column).copied()
    }

    /// The key of a pending vault row: its column's id and its token's bytes.
    pub(super) fn key(
        &self,
        vault: &str,
        pv: &PendingVault,
    ) -> Result<(i16, [u8; TOKEN_BYTES]), SinkError> {
        let id = self
            .id(&pv.table, &pv.column)
            .ok_or_else(|| unregistered(vault, format!("{}.{}", pv.table, pv.column)))?;
        Ok((id, pv.token_bytes))
    }
}

/// The error for columns missing from the registry.
fn unregistered(vault: &str, missing: String) -> SinkError {
    SinkError::VaultColumns {
        registry: vault_v3::columns_table(vault),
        missing,
    }
}

/// The map of one sink, loaded on first use (or by [`VaultColumnIds::load`] at start).
#[derive(Debug)]
pub struct VaultColumnIds {
    /// The vault table as the spec names it.
    vault: String,
    /// The spec's encrypted (target table, column) pairs: each must be registered.
    wanted: Vec<(String, String)>,
    /// The map, once read.
    loaded: OnceCell<VaultColumns>,
}

impl VaultColumnIds {
    /// The (not yet loaded) map of `spec`'s vault.
    pub fn new(spec: &Spec) -> Self {
        Self {
            vault: spec.vault.table.clone(),
            wanted: encrypted_columns(spec),
            loaded: OnceCell::new(),
        }
    }

    /// The vault table.
    pub fn vault(&self) -> &str {
        &self.vault
    }

    /// The map, read from the registry the first time; fails naming `etl-engine setup` when an
    /// encrypted column of the spec is not registered.
    pub async fn load(&self, pool: &PgPool) -> Result<&VaultColumns, SinkError> {
        self.loaded
            .get_or_try_init(|| async {
                let mut ids: HashMap<String, HashMap<String, i16>> = HashMap::new();
                for (id, table, column) in vault_v3::registered_columns(pool, &self.vault).await? {
                    ids.entry(table).or_default().insert(column, id);
                }
                let map = VaultColumns { ids };
                let missing: Vec<String> = self
                    .wanted
                    .iter()
                    .filter(|(t, c)| map.id(t, c).is_none())
                    .map(|(t, c)| format!("{t}.{c}"))
                    .collect();
                if missing.is_empty() {
                    Ok(map)
                } else {
                    Err(unregistered(&self.vault, missing.join(", ")))
                }
            })
            .await
    }
}

/// The (target table, column) pairs `spec` encrypts, i.e. writes to the vault.
pub fn encrypted_columns(spec: &Spec) -> Vec<(String, String)> {
    spec.outputs
        .iter()
        .flat_map(|o| {
            o.columns
                .iter()
                .filter(|c| c.encrypts())
                .map(|c| (o.table.clone(), c.name.clone()))
        })
        .collect()
}
