-- What `etl-engine setup` applies to an empty database, with the default table names.
-- Run `etl-engine setup SPEC` rather than this file: it also migrates older layouts.
-- Generated from src/db/; a unit test fails when this file is stale
-- (regenerate: UPDATE_SCHEMA=1 cargo test --lib engine_sql_is_current).

BEGIN;

CREATE TABLE IF NOT EXISTS "etl_schema_version" (
  kind text NOT NULL,
  object text NOT NULL,
  version integer NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  updated_by text NOT NULL DEFAULT session_user,
  PRIMARY KEY (kind, object));

CREATE TABLE IF NOT EXISTS etl_key_usage (
  key_id text PRIMARY KEY,
  encryptions bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now());

CREATE TABLE IF NOT EXISTS etl_vault_audit (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  actor text NOT NULL,
  db_user text NOT NULL DEFAULT session_user,
  spec text NOT NULL,
  target_table text NOT NULL,
  column_name text NOT NULL,
  value_count integer NOT NULL,
  reason text NOT NULL,
  tokens text[]);

DO $etl$
DECLARE
  s text := current_schema();
  audit regclass := to_regclass(format('%I.%I', current_schema(), 'etl_vault_audit'));
BEGIN
  IF audit IS NULL THEN
    RETURN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = audit AND attname = 'tokens' AND NOT attisdropped) THEN
    EXECUTE format('ALTER TABLE %s ADD COLUMN tokens text[]', audit);
  END IF;
  IF to_regproc(format('%I.%I', s, 'etl_vault_audit_append_only')) IS NULL THEN
    EXECUTE format($f$
      CREATE FUNCTION %I.etl_vault_audit_append_only() RETURNS trigger
      LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
      AS $body$
      BEGIN
        RAISE EXCEPTION USING MESSAGE = 'etl_vault_audit is append-only: ' || TG_OP || ' is not allowed', ERRCODE = '42501';
      END
      $body$$f$, s);
  END IF;
  -- EXECUTE PROCEDURE, not EXECUTE FUNCTION: the same thing, and accepted by PostgreSQL 10 too.
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = audit AND tgname = 'etl_vault_audit_append_only') THEN
    EXECUTE format('CREATE TRIGGER etl_vault_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE PROCEDURE %I.etl_vault_audit_append_only()', audit, s);
  END IF;
END
$etl$;

INSERT INTO "etl_schema_version" (kind, object, version) VALUES ('shared', 'shared', 1) ON CONFLICT (kind, object) DO NOTHING;

CREATE TABLE IF NOT EXISTS "etl_ledger" (
  pipeline text NOT NULL,
  message_id text NOT NULL,
  outcome text NOT NULL,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, message_id));

CREATE INDEX IF NOT EXISTS "etl_ledger_processed_at" ON "etl_ledger" (processed_at);

INSERT INTO "etl_schema_version" (kind, object, version) VALUES ('ledger', 'etl_ledger', 1) ON CONFLICT (kind, object) DO NOTHING;

CREATE TABLE IF NOT EXISTS "etl_vault" (
  target_table text NOT NULL,
  column_name text NOT NULL,
  token text NOT NULL,
  key_id text NOT NULL,
  nonce bytea NOT NULL,
  ciphertext bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  rotated_at timestamptz,
  PRIMARY KEY (target_table, column_name, token));

DO $etl$
DECLARE
  vault text := format('%I.%I', current_schema(), 'etl_vault');
  audit text := format('%I.%I', current_schema(), 'etl_vault_audit');
  fn text := format('%I.%I', current_schema(), 'etl_vault_recover');
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
$etl$;

INSERT INTO "etl_schema_version" (kind, object, version) VALUES ('vault', 'etl_vault', 1) ON CONFLICT (kind, object) DO NOTHING;

CREATE TABLE IF NOT EXISTS "etl_rejects" (
  pipeline text NOT NULL,
  message_id text NOT NULL,
  reason text NOT NULL,
  key_id text,
  nonce bytea,
  body_ciphertext bytea,
  rejected_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, message_id));

DO $etl$
DECLARE
  rejects text := format('%I.%I', current_schema(), 'etl_rejects');
  audit text := format('%I.%I', current_schema(), 'etl_vault_audit');
  fn text := format('%I.%I', current_schema(), 'etl_rejects_recover');
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
      SELECT coalesce(array_agg(s.message_id), '{}') INTO ids FROM (
        SELECT r.message_id FROM %s AS r
        WHERE r.pipeline = p_pipeline AND (p_ids IS NULL OR r.message_id = ANY(p_ids))
        ORDER BY r.rejected_at DESC, r.message_id LIMIT greatest(p_limit, 0)) AS s;
      INSERT INTO %s (actor, db_user, spec, target_table, column_name, value_count, reason, tokens)
        VALUES (p_actor, session_user, p_spec, %L, %L, cardinality(ids), p_reason, ids);
      RETURN QUERY SELECT r.message_id, r.reason, r.rejected_at, r.key_id, r.nonce, r.body_ciphertext FROM %s AS r
        WHERE r.pipeline = p_pipeline AND r.message_id = ANY(ids)
        ORDER BY r.rejected_at DESC, r.message_id;
    END
    $body$$f$, fn, rejects, audit, 'etl_rejects', 'body', rejects);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text[],integer,text,text) FROM PUBLIC', fn);
END
$etl$;

INSERT INTO "etl_schema_version" (kind, object, version) VALUES ('rejects', 'etl_rejects', 1) ON CONFLICT (kind, object) DO NOTHING;

COMMIT;
