//! Every DDL statement of the engine's own objects (ledger, vault, rejects, key usage, audit,
//! and the audited recovery functions), in one place.
//!
//! `schema/engine.sql` holds the same DDL with the default names, for operators who create
//! tables ahead of time and run the engine with a role that cannot (see `schema/roles.sql`).

use super::{literal, qualified_expr, quote_ident};
use sqlx::{AssertSqlSafe, PgPool};

/// Name of the table counting encryptions per key (nonce budget).
pub const KEY_USAGE_TABLE: &str = "etl_key_usage";
/// Name of the append-only audit table of PII recoveries.
pub const AUDIT_TABLE: &str = "etl_vault_audit";
/// What the audit table's `column_name` says for a read of reject bodies.
pub const REJECTS_AUDIT_COLUMN: &str = "body";

/// The names of one pipeline's engine tables (the spec's `ledger.table`, `vault.table`,
/// `rejects.table`). Key usage and audit tables are shared by every pipeline of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTables {
    /// Processed message ids (exactly-once).
    pub ledger: String,
    /// Encrypted originals of `encrypt` columns.
    pub vault: String,
    /// Messages that can never succeed, with their reason and encrypted body.
    pub rejects: String,
}

impl Default for EngineTables {
    /// The default names; `spec::types` defaults to the same (a test in `sink` checks it).
    fn default() -> Self {
        Self {
            ledger: "etl_ledger".into(),
            vault: "etl_vault".into(),
            rejects: "etl_rejects".into(),
        }
    }
}

/// The DDL for one pipeline's engine tables.
pub fn ddl(tables: &EngineTables) -> Vec<String> {
    let ledger = quote_ident(&tables.ledger);
    let ledger_idx = quote_ident(&format!("{}_processed_at", tables.ledger.replace('.', "_")));
    let vault = quote_ident(&tables.vault);
    let rejects = quote_ident(&tables.rejects);
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
        vault_recover_function_ddl(&tables.vault),
        rejects_recover_function_ddl(&tables.rejects),
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
  -- EXECUTE PROCEDURE, not EXECUTE FUNCTION: the same thing, and accepted by PostgreSQL 10 too.
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = audit AND tgname = '{AUDIT_TABLE}_append_only') THEN
    EXECUTE format('CREATE TRIGGER {AUDIT_TABLE}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE PROCEDURE %I.{AUDIT_TABLE}_append_only()', audit, s);
  END IF;
END
$etl$"#
    )
}

/// Creates missing engine tables. Tables that exist are left alone, so a least-privilege role
/// that cannot create tables works once they were created ahead of time.
pub async fn ensure(pool: &PgPool, tables: &EngineTables) -> Result<(), sqlx::Error> {
    for stmt in ddl(tables) {
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
    let mut out = String::from(
        "-- The engine's own tables with their default names (created by `etl-engine run` when missing).\n\
         -- Generated from src/db/schema.rs; a unit test fails when this file is stale\n\
         -- (regenerate: UPDATE_SCHEMA=1 cargo test --lib engine_sql_is_current).\n\n",
    );
    for stmt in ddl(&EngineTables::default()) {
        out.push_str(&stmt);
        out.push_str(";\n\n");
    }
    out
}

/// The recovery function of a vault table: `<vault table>_recover`, in the same schema.
pub fn vault_recover_function_name(vault_table: &str) -> String {
    format!("{vault_table}_recover")
}

/// DDL (a `DO` block, safe to run repeatedly and concurrently) creating the recovery function
/// of `vault_table` if it is missing: `SECURITY DEFINER`, a fixed `search_path`, callable by no
/// one until granted (see `schema/roles.sql`). It refuses an empty reason, returns the
/// ciphertexts of the given tokens and appends an audit row in the same statement; if the
/// insert fails, the call fails and returns nothing.
pub fn vault_recover_function_ddl(vault_table: &str) -> String {
    let vault = qualified_expr(vault_table);
    let audit = qualified_expr(AUDIT_TABLE);
    let function = qualified_expr(&vault_recover_function_name(vault_table));
    format!(
        r#"DO $etl$
DECLARE
  vault text := {vault};
  audit text := {audit};
  fn text := {function};
BEGIN
  IF to_regprocedure(fn || '(text,text,text,text[],text,text)') IS NOT NULL THEN
    RETURN;
  END IF;
  EXECUTE format($f$
    CREATE FUNCTION %s(p_spec text, p_target_table text, p_column text, p_tokens text[], p_actor text, p_reason text)
    RETURNS TABLE(token text, key_id text, nonce bytea, ciphertext bytea)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    #variable_conflict use_column
    DECLARE
      n integer;
    BEGIN
      IF p_reason IS NULL OR btrim(p_reason) = '' OR p_actor IS NULL OR btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'reading the vault needs an actor and a reason' USING ERRCODE = '22023';
      END IF;
      RETURN QUERY SELECT v.token, v.key_id, v.nonce, v.ciphertext FROM %s AS v
        WHERE v.target_table = p_target_table AND v.column_name = p_column AND v.token = ANY(p_tokens);
      GET DIAGNOSTICS n = ROW_COUNT;
      INSERT INTO %s (actor, db_user, spec, target_table, column_name, value_count, reason, tokens)
        VALUES (p_actor, session_user, p_spec, p_target_table, p_column, n, p_reason, p_tokens);
    END
    $body$$f$, fn, vault, audit);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text,text[],text,text) FROM PUBLIC', fn);
END
$etl$"#
    )
}

/// The body-reading function of a rejects table: `<rejects table>_recover`, in the same schema.
pub fn rejects_recover_function_name(rejects_table: &str) -> String {
    format!("{rejects_table}_recover")
}

/// DDL (a `DO` block, safe to run repeatedly and concurrently) creating the body-reading
/// function of `rejects_table` if it is missing: `SECURITY DEFINER`, a fixed `search_path`,
/// callable by no one until granted (see `schema/roles.sql`). It picks the rows first, writes
/// the audit row naming them, then returns them; if the insert fails, the call fails.
pub fn rejects_recover_function_ddl(rejects_table: &str) -> String {
    let rejects = qualified_expr(rejects_table);
    let audit = qualified_expr(AUDIT_TABLE);
    let function = qualified_expr(&rejects_recover_function_name(rejects_table));
    let table_literal = literal(rejects_table);
    let column_literal = literal(REJECTS_AUDIT_COLUMN);
    format!(
        r#"DO $etl$
DECLARE
  rejects text := {rejects};
  audit text := {audit};
  fn text := {function};
BEGIN
  IF to_regprocedure(fn || '(text,text,text[],integer,text,text)') IS NOT NULL THEN
    RETURN;
  END IF;
  EXECUTE format($f$
    CREATE FUNCTION %s(p_spec text, p_pipeline text, p_ids text[], p_limit integer, p_actor text, p_reason text)
    RETURNS TABLE(message_id text, reason text, rejected_at timestamptz, key_id text, nonce bytea, body_ciphertext bytea)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    #variable_conflict use_column
    DECLARE
      ids text[];
    BEGIN
      IF p_reason IS NULL OR btrim(p_reason) = '' OR p_actor IS NULL OR btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'reading reject bodies needs an actor and a reason' USING ERRCODE = '22023';
      END IF;
      SELECT coalesce(array_agg(s.message_id), '{{}}') INTO ids FROM (
        SELECT r.message_id FROM %s AS r
        WHERE r.pipeline = p_pipeline AND (p_ids IS NULL OR r.message_id = ANY(p_ids))
        ORDER BY r.rejected_at DESC, r.message_id LIMIT greatest(p_limit, 0)) AS s;
      INSERT INTO %s (actor, db_user, spec, target_table, column_name, value_count, reason, tokens)
        VALUES (p_actor, session_user, p_spec, %L, %L, cardinality(ids), p_reason, ids);
      RETURN QUERY SELECT r.message_id, r.reason, r.rejected_at, r.key_id, r.nonce, r.body_ciphertext FROM %s AS r
        WHERE r.pipeline = p_pipeline AND r.message_id = ANY(ids)
        ORDER BY r.rejected_at DESC, r.message_id;
    END
    $body$$f$, fn, rejects, audit, {table_literal}, {column_literal}, rejects);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text[],integer,text,text) FROM PUBLIC', fn);
END
$etl$"#
    )
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

    #[test]
    fn function_ddl_names_the_table_and_audits_before_returning() {
        let ddl = super::rejects_recover_function_ddl("etl_rejects");
        assert!(ddl.contains("'etl_rejects_recover'"), "{ddl}");
        let audit = ddl.find("INSERT INTO").unwrap();
        let ret = ddl.find("RETURN QUERY").unwrap();
        assert!(
            audit < ret,
            "the audit row must be written before rows are returned"
        );
    }
}
