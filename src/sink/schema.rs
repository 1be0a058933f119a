//! The engine's own tables (ledger, vault, rejects, key usage, audit), created if missing.
//!
//! `schema/engine.sql` holds the same DDL with the default names, for operators who create
//! tables ahead of time and run the engine with a role that cannot (see `schema/roles.sql`).

use super::quote_ident;
use crate::spec::Spec;
use sqlx::{AssertSqlSafe, PgPool};

/// Name of the table counting encryptions per key (nonce budget).
pub const KEY_USAGE_TABLE: &str = "etl_key_usage";
/// Name of the append-only audit table of PII recoveries.
pub const AUDIT_TABLE: &str = "etl_vault_audit";

/// The DDL for a spec's engine tables.
pub fn ddl(spec: &Spec) -> Vec<String> {
    let ledger = quote_ident(&spec.ledger.table);
    let ledger_idx = quote_ident(&format!(
        "{}_processed_at",
        spec.ledger.table.replace('.', "_")
    ));
    let vault = quote_ident(&spec.vault.table);
    let rejects = quote_ident(&spec.rejects.table);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (\n  pipeline text NOT NULL,\n  message_id text NOT NULL,\n  outcome text NOT NULL,\n  \
             processed_at timestamptz NOT NULL DEFAULT now(),\n  PRIMARY KEY (pipeline, message_id))"
        ),
        format!("CREATE INDEX IF NOT EXISTS {ledger_idx} ON {ledger} (processed_at)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {vault} (\n  target_table text NOT NULL,\n  column_name text NOT NULL,\n  token text NOT NULL,\n  \
             key_id text NOT NULL,\n  nonce bytea NOT NULL,\n  ciphertext bytea NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now(),\n  \
             rotated_at timestamptz,\n  PRIMARY KEY (target_table, column_name, token))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {rejects} (\n  pipeline text NOT NULL,\n  message_id text NOT NULL,\n  reason text NOT NULL,\n  \
             key_id text,\n  nonce bytea,\n  body_ciphertext bytea,\n  rejected_at timestamptz NOT NULL DEFAULT now(),\n  \
             PRIMARY KEY (pipeline, message_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {KEY_USAGE_TABLE} (\n  key_id text PRIMARY KEY,\n  encryptions bigint NOT NULL DEFAULT 0,\n  \
             updated_at timestamptz NOT NULL DEFAULT now())"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (\n  id bigserial PRIMARY KEY,\n  at timestamptz NOT NULL DEFAULT now(),\n  \
             actor text NOT NULL,\n  db_user text NOT NULL DEFAULT session_user,\n  spec text NOT NULL,\n  target_table text NOT NULL,\n  \
             column_name text NOT NULL,\n  value_count integer NOT NULL,\n  reason text NOT NULL,\n  tokens text[])"
        ),
        audit_append_only_ddl(),
        crate::vault::recover::recover_function_ddl(&spec.vault.table),
        crate::vault::rejects::recover_function_ddl(&spec.rejects.table),
    ]
}

/// DDL (a `DO` block, safe to run repeatedly and concurrently) making the audit table
/// append-only: a statement trigger refuses UPDATE, DELETE and TRUNCATE, for its owner too.
/// Also adds the `tokens` column to audit tables created before it existed.
fn audit_append_only_ddl() -> String {
    format!(
        r#"DO $etl$
DECLARE
  s text := current_schema();
  audit regclass := to_regclass(format('%I.%I', current_schema(), '{AUDIT_TABLE}'));
BEGIN
  IF audit IS NULL THEN
    RETURN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = audit AND attname = 'tokens' AND NOT attisdropped) THEN
    EXECUTE format('ALTER TABLE %s ADD COLUMN tokens text[]', audit);
  END IF;
  IF to_regproc(format('%I.%I', s, '{AUDIT_TABLE}_append_only')) IS NULL THEN
    EXECUTE format($f$
      CREATE FUNCTION %I.{AUDIT_TABLE}_append_only() RETURNS trigger
      LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
      AS $body$
      BEGIN
        RAISE EXCEPTION USING MESSAGE = '{AUDIT_TABLE} is append-only: ' || TG_OP || ' is not allowed', ERRCODE = '42501';
      END
      $body$$f$, s);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = audit AND tgname = '{AUDIT_TABLE}_append_only') THEN
    EXECUTE format('CREATE TRIGGER {AUDIT_TABLE}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %I.{AUDIT_TABLE}_append_only()', audit, s);
  END IF;
END
$etl$"#
    )
}

/// Creates missing engine tables. Tables that exist are left alone, so a least-privilege role
/// that cannot create tables works once they were created ahead of time.
pub async fn ensure(pool: &PgPool, spec: &Spec) -> Result<(), sqlx::Error> {
    for stmt in ddl(spec) {
        match sqlx::query(AssertSqlSafe(stmt)).execute(pool).await {
            Ok(_) => {}
            // 42501: insufficient privilege. Fine if the table is already there; the writes
            // that follow will say so clearly if it is not.
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42501") => {
                tracing::debug!(
                    "Cannot create an engine table with this role; assuming it exists."
                );
            }
            // 23505 / 42P07 / 42723 / 42710 / 42701: a concurrent process created the same table,
            // type, function, trigger or column at the same moment.
            Err(sqlx::Error::Database(d))
                if matches!(
                    d.code().as_deref(),
                    Some("23505" | "42P07" | "42723" | "42710" | "42701")
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The DDL with default table names, as kept in `schema/engine.sql`.
pub fn default_ddl_text() -> String {
    let text = "source: {type: file, path: x.jsonl}\ntarget: {url: 'postgres://localhost/db', table: t}\ncolumns: {c: {path: $.c}}\n";
    let spec = crate::spec::parse_spec_str(text, std::path::Path::new("engine.yaml"), false);
    let mut out = String::from(
        "-- The engine's own tables with their default names (created by `etl-engine run` when missing).\n\
         -- Generated from src/sink/schema.rs; a unit test fails when this file is stale\n\
         -- (regenerate: UPDATE_SCHEMA=1 cargo test --lib engine_sql_is_current).\n\n",
    );
    if let Ok(spec) = spec {
        for stmt in ddl(&spec) {
            out.push_str(&stmt);
            out.push_str(";\n\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_sql_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/engine.sql");
        let want = super::default_ddl_text();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(want.contains("CREATE TABLE IF NOT EXISTS \"etl_ledger\""));
        assert_eq!(
            have, want,
            "schema/engine.sql is stale: run UPDATE_SCHEMA=1 cargo test --lib engine_sql_is_current"
        );
    }
}
