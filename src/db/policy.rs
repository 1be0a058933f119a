//! Version 2 of the engine's objects: an audit nobody can skip, owned apart, hash-chained;
//! recovery in two steps (a committed audit grant, then the read); the recovery policy (a cap
//! per call, a registry of recoverable columns); key-usage counting only through a function.
//!
//! Every statement here runs inside `setup`'s migration transaction, as the role running setup
//! (the owner of the engine's tables), in the schema the tables live in.

use super::schema::{AUDIT_TABLE, KEY_USAGE_TABLE, REJECTS_AUDIT_COLUMN};
use super::{literal, qualified_expr};

/// The role owning the audit and the recovery grants: no login, no other privilege.
pub const AUDIT_OWNER: &str = "etl_audit_owner";
/// The function appending an audit row (owned by [`AUDIT_OWNER`]).
pub const AUDIT_APPEND_FUNCTION: &str = "etl_vault_audit_append";
/// The trigger function keeping the audit append-only.
pub const AUDIT_TRIGGER_FUNCTION: &str = "etl_vault_audit_append_only";
/// Recovery grants: which committed audit row allows which read, and whether it was used.
pub const GRANT_TABLE: &str = "etl_recovery_grant";
/// The function consuming a grant (owned by [`AUDIT_OWNER`]).
pub const GRANT_USE_FUNCTION: &str = "etl_recovery_grant_use";
/// Which (vault or rejects table, target table or pipeline, column) may be recovered at all;
/// written by `setup` from the specs.
pub const REGISTRY_TABLE: &str = "etl_recovery_columns";
/// The only way to add to the key-usage counters.
pub const KEY_USAGE_FUNCTION: &str = "etl_key_usage_add";
/// At most this many tokens (or reject bodies) per recovery call, enforced by the database.
pub const MAX_RECOVER: usize = 1000;
/// How long a committed grant can be used.
pub const GRANT_TTL: &str = "5 minutes";

/// Name of a vault's (or rejects table's) grant function: `<table>_recover_grant`.
pub fn grant_function_name(table: &str) -> String {
    format!("{table}_recover_grant")
}

/// Name of a vault's (or rejects table's) reading function: `<table>_recover`.
pub fn read_function_name(table: &str) -> String {
    format!("{table}_recover")
}

/// The canonical text an audit row's hash covers, as an SQL expression over the record `r`
/// and the previous row's hash `prev`. Every field is length-prefixed (`N:text`, `-` for NULL),
/// the time is UTC to the microsecond: [`crate::db::audit::canonical`] builds the same text.
pub fn content_sql(r: &str, prev: &str) -> String {
    let f = |e: String| {
        format!("(CASE WHEN {e} IS NULL THEN '-' ELSE char_length({e})::text || ':' || {e} END)")
    };
    let fields = [
        f(format!("{r}.id::text")),
        f(format!(
            "to_char({r}.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
        )),
        f(format!("{r}.kind")),
        f(format!("{r}.actor")),
        f(format!("{r}.db_user")),
        f(format!("{r}.spec")),
        f(format!("{r}.pipeline")),
        f(format!("{r}.target_table")),
        f(format!("{r}.column_name")),
        f(format!("{r}.value_count::text")),
        f(format!("{r}.reason")),
        format!(
            "(CASE WHEN {r}.tokens IS NULL THEN '-' ELSE coalesce(cardinality({r}.tokens), 0)::text || '[' || \
             coalesce((SELECT string_agg({}, '' ORDER BY u.o) FROM unnest({r}.tokens) WITH ORDINALITY AS u(t, o)), '') || ']' END)",
            f("u.t".into())
        ),
        f(prev.to_string()),
    ];
    format!("'etl-audit-v1;' || {}", fields.join(" || "))
}

/// PL/pgSQL setting `alg` and `h` to the hash of the text in `c`: SHA-256 where the server has
/// `sha256()` (PostgreSQL 11 and later), MD5 on PostgreSQL 10. Only the taken branch is ever
/// parsed, so the function also compiles on 10. Each row records its algorithm.
const HASH_PLPGSQL: &str = "IF to_regprocedure('pg_catalog.sha256(bytea)') IS NOT NULL THEN
        alg := 'sha256'; h := encode(sha256(convert_to(c, 'UTF8')), 'hex');
      ELSE
        alg := 'md5'; h := md5(convert_to(c, 'UTF8'));
      END IF;";

/// Version 2 of the shared objects.
pub fn shared_v2_ddl() -> Vec<String> {
    let audit = qualified_expr(AUDIT_TABLE);
    let grants = qualified_expr(GRANT_TABLE);
    let append = qualified_expr(AUDIT_APPEND_FUNCTION);
    let use_fn = qualified_expr(GRANT_USE_FUNCTION);
    let usage = qualified_expr(KEY_USAGE_TABLE);
    let usage_fn = qualified_expr(KEY_USAGE_FUNCTION);
    let content_backfill = content_sql("r", "prev");
    let content_new = content_sql("r", "prev");
    vec![
        // The audit owner: a role nobody logs in as. The role running setup becomes a member
        // (it has to, to hand objects over); the hash chain is what detects its edits.
        format!(
            r#"DO $etl$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AUDIT_OWNER}') THEN
    BEGIN
      CREATE ROLE {AUDIT_OWNER} NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
  IF NOT pg_has_role(current_user, '{AUDIT_OWNER}', 'MEMBER') THEN
    EXECUTE format('GRANT {AUDIT_OWNER} TO %I', current_user);
  END IF;
  -- Nobody but the schema's owner may create objects where the engine's functions live, so
  -- no one can plant a function or table under a name the engine uses.
  IF pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), 'USAGE') THEN
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    -- Handing objects to the audit owner needs it to hold CREATE here, for this transaction only.
    EXECUTE format('GRANT CREATE ON SCHEMA %I TO {AUDIT_OWNER}', current_schema());
  END IF;
END
$etl$"#
        ),
        format!(
            "ALTER TABLE {AUDIT_TABLE} ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'recover', \
             ADD COLUMN IF NOT EXISTS pipeline text, ADD COLUMN IF NOT EXISTS hash_alg text, \
             ADD COLUMN IF NOT EXISTS prev_hash text, ADD COLUMN IF NOT EXISTS row_hash text"
        ),
        // Rows written before the chain existed are chained now, in id order.
        format!(
            r#"DO $etl$
DECLARE
  audit text := {audit};
  r record;
  prev text;
  c text;
  h text;
  alg text;
BEGIN
  EXECUTE format('ALTER TABLE %s DISABLE TRIGGER {AUDIT_TRIGGER_FUNCTION}', audit);
  FOR r IN EXECUTE format('SELECT * FROM %s ORDER BY id', audit) LOOP
    c := {content_backfill};
    {HASH_PLPGSQL}
    EXECUTE format('UPDATE %s SET hash_alg = $1, prev_hash = $2, row_hash = $3 WHERE id = $4', audit)
      USING alg, prev, h, r.id;
    prev := h;
  END LOOP;
  EXECUTE format('ALTER TABLE %s ENABLE TRIGGER {AUDIT_TRIGGER_FUNCTION}', audit);
END
$etl$"#
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {GRANT_TABLE} (\n  audit_id bigint PRIMARY KEY,\n  txid bigint NOT NULL,\n  \
             db_user text NOT NULL,\n  object_table text NOT NULL,\n  target_table text NOT NULL,\n  column_name text NOT NULL,\n  \
             pipeline text,\n  tokens text[] NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now(),\n  used_at timestamptz)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {REGISTRY_TABLE} (\n  object_table text NOT NULL,\n  target_table text NOT NULL,\n  \
             column_name text NOT NULL,\n  registered_at timestamptz NOT NULL DEFAULT now(),\n  \
             PRIMARY KEY (object_table, target_table, column_name))"
        ),
        // The only writer of the audit: serialises appenders so the chain stays linear, and
        // records a grant when asked to.
        format!(
            r#"DO $etl$
DECLARE
  audit text := {audit};
  grants text := {grants};
  fn text := {append};
  seq text := pg_get_serial_sequence({audit}, 'id');
BEGIN
  EXECUTE format($f$
    CREATE FUNCTION %1$s(p_kind text, p_actor text, p_spec text, p_pipeline text, p_target_table text,
                         p_column text, p_value_count integer, p_reason text, p_tokens text[], p_grant_for text)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    DECLARE
      r record;
      prev text;
      c text;
      h text;
      alg text;
    BEGIN
      IF p_reason IS NULL OR btrim(p_reason) = '' OR p_actor IS NULL OR btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'an audit record needs an actor and a reason' USING ERRCODE = '22023';
      END IF;
      -- Under a snapshot older than the lock, the newest row could be invisible and the chain
      -- would fork; the engine always uses READ COMMITTED.
      IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'the audit is written under READ COMMITTED only' USING ERRCODE = '25000';
      END IF;
      LOCK TABLE %2$s IN SHARE ROW EXCLUSIVE MODE;
      SELECT a.row_hash INTO prev FROM %2$s AS a ORDER BY a.id DESC LIMIT 1;
      SELECT nextval(%3$L::regclass) AS id, now() AS at, p_kind AS kind, p_actor AS actor,
             session_user::text AS db_user, p_spec AS spec, p_pipeline AS pipeline,
             p_target_table AS target_table, p_column AS column_name, p_value_count AS value_count,
             p_reason AS reason, p_tokens AS tokens
        INTO r;
      c := {content_new};
      {HASH_PLPGSQL}
      INSERT INTO %2$s (id, at, kind, actor, db_user, spec, pipeline, target_table, column_name,
                        value_count, reason, tokens, hash_alg, prev_hash, row_hash)
        VALUES (r.id, r.at, r.kind, r.actor, r.db_user, r.spec, r.pipeline, r.target_table,
                r.column_name, r.value_count, r.reason, r.tokens, alg, prev, h);
      IF p_grant_for IS NOT NULL THEN
        INSERT INTO %4$s (audit_id, txid, db_user, object_table, target_table, column_name, pipeline, tokens, created_at)
          VALUES (r.id, txid_current(), session_user, p_grant_for, p_target_table, p_column, p_pipeline,
                  coalesce(p_tokens, '{{}}'), r.at);
      END IF;
      RETURN r.id;
    END
    $body$$f$, fn, audit, seq, grants);
  EXECUTE format($f$
    CREATE FUNCTION %1$s(p_grant bigint, p_object_table text)
    RETURNS TABLE(target_table text, column_name text, pipeline text, tokens text[])
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    #variable_conflict use_column
    BEGIN
      -- A grant written by this very transaction is refused: only a committed audit record
      -- (from an earlier transaction, so durable whatever this one does) opens the vault.
      RETURN QUERY WITH u AS (
        UPDATE %2$s AS g SET used_at = now()
        WHERE g.audit_id = p_grant AND g.object_table = p_object_table AND g.db_user = session_user
          AND g.used_at IS NULL AND g.txid <> txid_current()
          AND g.created_at > now() - interval %3$L
        RETURNING g.target_table, g.column_name, g.pipeline, g.tokens)
        SELECT u.target_table, u.column_name, u.pipeline, u.tokens FROM u;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'recovery grant %% cannot be used: it must be committed by an earlier transaction of the same database user, unused, at most %3$s old, and for this table', p_grant
          USING ERRCODE = '42501';
      END IF;
    END
    $body$$f$, {use_fn}, grants, {ttl});
  EXECUTE format('ALTER TABLE %s OWNER TO {AUDIT_OWNER}', audit);
  EXECUTE format('ALTER TABLE %s OWNER TO {AUDIT_OWNER}', grants);
  EXECUTE format('ALTER FUNCTION %s(text,text,text,text,text,text,integer,text,text[],text) OWNER TO {AUDIT_OWNER}', fn);
  EXECUTE format('ALTER FUNCTION %s(bigint,text) OWNER TO {AUDIT_OWNER}', {use_fn});
  EXECUTE format('REVOKE ALL ON %s, %s FROM PUBLIC', audit, grants);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text,text,text,text,integer,text,text[],text) FROM PUBLIC', fn);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(bigint,text) FROM PUBLIC', {use_fn});
  -- The engine's own definer functions (owned by the role running setup) call these two.
  EXECUTE format('GRANT EXECUTE ON FUNCTION %s(text,text,text,text,text,text,integer,text,text[],text) TO %I', fn, current_user);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %s(bigint,text) TO %I', {use_fn}, current_user);
  IF pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), 'USAGE') THEN
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM {AUDIT_OWNER}', current_schema());
  END IF;
END
$etl$"#,
            ttl = literal(GRANT_TTL),
        ),
        // Counting encryptions: only ever upwards, only through this function.
        format!(
            r#"DO $etl$
DECLARE
  usage text := {usage};
  fn text := {usage_fn};
BEGIN
  EXECUTE format($f$
    CREATE FUNCTION %1$s(p_key_id text, p_n bigint)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    DECLARE
      total bigint;
    BEGIN
      IF p_key_id IS NULL OR p_n IS NULL OR p_n < 0 THEN
        RAISE EXCEPTION 'key usage only counts upwards' USING ERRCODE = '22023';
      END IF;
      INSERT INTO %2$s AS k (key_id, encryptions) VALUES (p_key_id, p_n)
        ON CONFLICT (key_id) DO UPDATE SET encryptions = k.encryptions + excluded.encryptions, updated_at = now()
        RETURNING k.encryptions INTO total;
      RETURN total;
    END
    $body$$f$, fn, usage);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,bigint) FROM PUBLIC', fn);
END
$etl$"#
        ),
    ]
}

/// Version 2 of a vault table: the one-step recovery function is dropped; recovery is a grant
/// (audited, committed) and then a read of that grant's tokens.
pub fn vault_v2_ddl(vault_table: &str) -> Vec<String> {
    let vault = qualified_expr(vault_table);
    let registry = qualified_expr(REGISTRY_TABLE);
    let append = qualified_expr(AUDIT_APPEND_FUNCTION);
    let use_fn = qualified_expr(GRANT_USE_FUNCTION);
    let old = qualified_expr(&read_function_name(vault_table));
    let grant_fn = qualified_expr(&grant_function_name(vault_table));
    let me = literal(vault_table);
    vec![format!(
        r#"DO $etl$
DECLARE
  vault text := {vault};
  registry text := {registry};
  append text := {append};
  use_fn text := {use_fn};
  fn text := {old};
  grant_fn text := {grant_fn};
BEGIN
  EXECUTE format('DROP FUNCTION IF EXISTS %s(text,text,text,text[],text,text)', fn);
  EXECUTE format($f$
    CREATE FUNCTION %1$s(p_spec text, p_target_table text, p_column text, p_tokens text[], p_actor text, p_reason text)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    DECLARE
      toks text[];
      n integer;
    BEGIN
      IF p_reason IS NULL OR btrim(p_reason) = '' OR p_actor IS NULL OR btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'reading the vault needs an actor and a reason' USING ERRCODE = '22023';
      END IF;
      toks := ARRAY(SELECT DISTINCT t FROM unnest(p_tokens) AS u(t) WHERE t IS NOT NULL ORDER BY 1);
      IF cardinality(toks) > {max} THEN
        RAISE EXCEPTION 'at most {max} tokens per recovery (asked for %%)', cardinality(toks) USING ERRCODE = '54000';
      END IF;
      IF NOT EXISTS (SELECT 1 FROM %2$s AS g WHERE g.object_table = %3$L AND g.target_table = p_target_table AND g.column_name = p_column) THEN
        RAISE EXCEPTION 'column %%.%% is not an encrypted column registered for recovery from %3$s (etl-engine setup registers each spec''s encrypted columns)', p_target_table, p_column
          USING ERRCODE = '42501';
      END IF;
      SELECT count(*) INTO n FROM %4$s AS v
        WHERE v.target_table = p_target_table AND v.column_name = p_column AND v.token = ANY(toks);
      RETURN %5$s('recover', p_actor, p_spec, NULL, p_target_table, p_column, n, p_reason, toks, %3$L);
    END
    $body$$f$, grant_fn, registry, {me}, vault, append);
  EXECUTE format($f$
    CREATE FUNCTION %1$s(p_grant bigint)
    RETURNS TABLE(token text, key_id text, nonce bytea, ciphertext bytea)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    #variable_conflict use_column
    DECLARE
      g record;
    BEGIN
      SELECT * INTO g FROM %2$s(p_grant, %3$L);
      RETURN QUERY SELECT v.token, v.key_id, v.nonce, v.ciphertext FROM %4$s AS v
        WHERE v.target_table = g.target_table AND v.column_name = g.column_name AND v.token = ANY(g.tokens);
    END
    $body$$f$, fn, use_fn, {me}, vault);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text,text[],text,text) FROM PUBLIC', grant_fn);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(bigint) FROM PUBLIC', fn);
END
$etl$"#,
        max = MAX_RECOVER,
    )]
}

/// Version 2 of a rejects table: reading bodies is a grant (audited with the pipeline, the
/// message ids chosen, committed) and then a read of exactly those.
pub fn rejects_v2_ddl(rejects_table: &str) -> Vec<String> {
    let rejects = qualified_expr(rejects_table);
    let registry = qualified_expr(REGISTRY_TABLE);
    let append = qualified_expr(AUDIT_APPEND_FUNCTION);
    let use_fn = qualified_expr(GRANT_USE_FUNCTION);
    let old = qualified_expr(&read_function_name(rejects_table));
    let grant_fn = qualified_expr(&grant_function_name(rejects_table));
    let me = literal(rejects_table);
    let body = literal(REJECTS_AUDIT_COLUMN);
    vec![format!(
        r#"DO $etl$
DECLARE
  rejects text := {rejects};
  registry text := {registry};
  append text := {append};
  use_fn text := {use_fn};
  fn text := {old};
  grant_fn text := {grant_fn};
BEGIN
  EXECUTE format('DROP FUNCTION IF EXISTS %s(text,text,text[],integer,text,text)', fn);
  EXECUTE format($f$
    CREATE FUNCTION %1$s(p_spec text, p_pipeline text, p_ids text[], p_limit integer, p_actor text, p_reason text)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    DECLARE
      ids text[];
    BEGIN
      IF p_reason IS NULL OR btrim(p_reason) = '' OR p_actor IS NULL OR btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'reading reject bodies needs an actor and a reason' USING ERRCODE = '22023';
      END IF;
      IF coalesce(cardinality(p_ids), 0) > {max} OR coalesce(p_limit, 0) > {max} THEN
        RAISE EXCEPTION 'at most {max} reject bodies per recovery' USING ERRCODE = '54000';
      END IF;
      IF NOT EXISTS (SELECT 1 FROM %2$s AS g WHERE g.object_table = %3$L AND g.target_table = p_pipeline AND g.column_name = %6$L) THEN
        RAISE EXCEPTION 'pipeline %% is not registered for reading bodies from %3$s (etl-engine setup registers each spec''s pipeline)', p_pipeline
          USING ERRCODE = '42501';
      END IF;
      SELECT coalesce(array_agg(s.message_id), '{{}}') INTO ids FROM (
        SELECT r.message_id FROM %4$s AS r
        WHERE r.pipeline = p_pipeline AND (p_ids IS NULL OR r.message_id = ANY(p_ids))
        ORDER BY r.rejected_at DESC, r.message_id LIMIT greatest(coalesce(p_limit, {max}), 0)) AS s;
      RETURN %5$s('rejects', p_actor, p_spec, p_pipeline, %3$L, %6$L, cardinality(ids), p_reason, ids, %3$L);
    END
    $body$$f$, grant_fn, registry, {me}, rejects, append, {body});
  EXECUTE format($f$
    CREATE FUNCTION %1$s(p_grant bigint)
    RETURNS TABLE(message_id text, reason text, rejected_at timestamptz, key_id text, nonce bytea, body_ciphertext bytea)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    #variable_conflict use_column
    DECLARE
      g record;
    BEGIN
      SELECT * INTO g FROM %2$s(p_grant, %3$L);
      RETURN QUERY SELECT r.message_id, r.reason, r.rejected_at, r.key_id, r.nonce, r.body_ciphertext FROM %4$s AS r
        WHERE r.pipeline = g.pipeline AND r.message_id = ANY(g.tokens)
        ORDER BY r.rejected_at DESC, r.message_id;
    END
    $body$$f$, fn, use_fn, {me}, rejects);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text[],integer,text,text) FROM PUBLIC', grant_fn);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(bigint) FROM PUBLIC', fn);
END
$etl$"#,
        max = MAX_RECOVER,
    )]
}
