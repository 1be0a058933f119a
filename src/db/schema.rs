//! Every DDL statement of the engine's own objects (ledger, vault, rejects, key usage, audit,
//! and the audited recovery functions), in one place.
//!
//! Which statements run, in which order and at which version, is decided in [`super::migrate`].

use super::{literal, qualified_expr, quote_ident};

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

/// The DDL of the objects every pipeline of a database shares: key-usage counters and the
/// append-only recovery audit.
pub fn shared_ddl() -> Vec<String> {
    vec![
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
    ]
}

/// The DDL of a ledger table.
pub fn ledger_ddl(table: &str) -> Vec<String> {
    let ledger = quote_ident(table);
    let ledger_idx = quote_ident(&format!("{}_processed_at", table.replace('.', "_")));
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (\n  pipeline text NOT NULL,\n  message_id text NOT NULL,\n  outcome text NOT NULL,\n  \
             processed_at timestamptz NOT NULL DEFAULT now(),\n  PRIMARY KEY (pipeline, message_id))"
        ),
        format!("CREATE INDEX IF NOT EXISTS {ledger_idx} ON {ledger} (processed_at)"),
    ]
}

/// The DDL of a vault table and its recovery function.
pub fn vault_ddl(table: &str) -> Vec<String> {
    let vault = quote_ident(table);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {vault} (\n  target_table text NOT NULL,\n  column_name text NOT NULL,\n  token text NOT NULL,\n  \
             key_id text NOT NULL,\n  nonce bytea NOT NULL,\n  ciphertext bytea NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now(),\n  \
             rotated_at timestamptz,\n  PRIMARY KEY (target_table, column_name, token))"
        ),
        vault_recover_function_ddl(table),
    ]
}

/// The DDL of a rejects table and its body-reading function.
pub fn rejects_ddl(table: &str) -> Vec<String> {
    let rejects = quote_ident(table);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {rejects} (\n  pipeline text NOT NULL,\n  message_id text NOT NULL,\n  reason text NOT NULL,\n  \
             key_id text,\n  nonce bytea,\n  body_ciphertext bytea,\n  rejected_at timestamptz NOT NULL DEFAULT now(),\n  \
             PRIMARY KEY (pipeline, message_id))"
        ),
        rejects_recover_function_ddl(table),
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
