//! The engine tables a spec writes to, created if missing (the DDL itself lives in
//! [`crate::db::schema`]).

use crate::db::schema::EngineTables;
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

/// Creates `spec`'s engine tables and functions where missing.
pub async fn ensure(pool: &PgPool, spec: &Spec) -> Result<(), sqlx::Error> {
    crate::db::schema::ensure(pool, &tables(spec)).await
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
