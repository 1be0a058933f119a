//! The engine tables a spec writes to: set up (migrated) by `etl-engine setup`, and checked by
//! every other command (the DDL and the migration steps live in [`crate::db`]).

use super::vault_columns::encrypted_columns;
use crate::db::migrate::{self, Applied, MigrateError};
use crate::db::schema::EngineTables;
use crate::db::vault_v3;
use crate::spec::Spec;
use sqlx::PgPool;

pub use crate::db::schema::{AUDIT_TABLE, KEY_USAGE_TABLE};

/// The names of `spec`'s engine tables.
pub fn tables(spec: &Spec) -> EngineTables {
    EngineTables {
        ledger: spec.ledger.table.clone(),
        vault: spec.vault.table.clone(),
        rejects: spec.rejects.table.clone(),
    }
}

/// Creates or migrates `spec`'s engine tables and functions, and registers the spec's
/// encrypted columns in its vault's registry of column ids (what `etl-engine setup` does).
pub async fn setup(pool: &PgPool, spec: &Spec) -> Result<Vec<Applied>, MigrateError> {
    let applied = migrate::setup(pool, &tables(spec)).await?;
    vault_v3::register_columns(pool, &spec.vault.table, &encrypted_columns(spec)).await?;
    Ok(applied)
}

/// Checks that `spec`'s engine tables are set up at the version this engine needs; runs no DDL.
pub async fn check(pool: &PgPool, spec: &Spec) -> Result<(), MigrateError> {
    migrate::check(pool, &tables(spec)).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn spec_defaults_name_the_default_engine_tables() {
        let text = "name: t\nsource: {type: file, path: x.jsonl}\ntarget: {url: 'postgres://localhost/db', table: t}\ncolumns: {c: {path: $.c}}\n";
        let spec = crate::spec::parse_spec_str(text, std::path::Path::new("t.yaml"), false)
            .expect("a minimal spec loads");
        assert_eq!(
            super::tables(&spec),
            crate::db::schema::EngineTables::default()
        );
    }
}
