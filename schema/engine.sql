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

DO $etl$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_audit_owner') THEN
    BEGIN
      CREATE ROLE etl_audit_owner NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
  IF NOT pg_has_role(current_user, 'etl_audit_owner', 'MEMBER') THEN
    EXECUTE format('GRANT etl_audit_owner TO %I', current_user);
  END IF;
  -- Nobody but the schema's owner may create objects where the engine's functions live, so
  -- no one can plant a function or table under a name the engine uses.
  IF pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), 'USAGE') THEN
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    -- Handing objects to the audit owner needs it to hold CREATE here, for this transaction only.
    EXECUTE format('GRANT CREATE ON SCHEMA %I TO etl_audit_owner', current_schema());
  END IF;
END
$etl$;

ALTER TABLE etl_vault_audit ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'recover', ADD COLUMN IF NOT EXISTS pipeline text, ADD COLUMN IF NOT EXISTS hash_alg text, ADD COLUMN IF NOT EXISTS prev_hash text, ADD COLUMN IF NOT EXISTS row_hash text;

DO $etl$
DECLARE
  audit text := format('%I.%I', current_schema(), 'etl_vault_audit');
  r record;
  prev text;
  c text;
  h text;
  alg text;
BEGIN
  EXECUTE format('ALTER TABLE %s DISABLE TRIGGER etl_vault_audit_append_only', audit);
  FOR r IN EXECUTE format('SELECT * FROM %s ORDER BY id', audit) LOOP
    c := 'etl-audit-v1;' || (CASE WHEN r.id::text IS NULL THEN '-' ELSE char_length(r.id::text)::text || ':' || r.id::text END) || (CASE WHEN to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') IS NULL THEN '-' ELSE char_length(to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'))::text || ':' || to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') END) || (CASE WHEN r.kind IS NULL THEN '-' ELSE char_length(r.kind)::text || ':' || r.kind END) || (CASE WHEN r.actor IS NULL THEN '-' ELSE char_length(r.actor)::text || ':' || r.actor END) || (CASE WHEN r.db_user IS NULL THEN '-' ELSE char_length(r.db_user)::text || ':' || r.db_user END) || (CASE WHEN r.spec IS NULL THEN '-' ELSE char_length(r.spec)::text || ':' || r.spec END) || (CASE WHEN r.pipeline IS NULL THEN '-' ELSE char_length(r.pipeline)::text || ':' || r.pipeline END) || (CASE WHEN r.target_table IS NULL THEN '-' ELSE char_length(r.target_table)::text || ':' || r.target_table END) || (CASE WHEN r.column_name IS NULL THEN '-' ELSE char_length(r.column_name)::text || ':' || r.column_name END) || (CASE WHEN r.value_count::text IS NULL THEN '-' ELSE char_length(r.value_count::text)::text || ':' || r.value_count::text END) || (CASE WHEN r.reason IS NULL THEN '-' ELSE char_length(r.reason)::text || ':' || r.reason END) || (CASE WHEN r.tokens IS NULL THEN '-' ELSE coalesce(cardinality(r.tokens), 0)::text || '[' || coalesce((SELECT string_agg((CASE WHEN u.t IS NULL THEN '-' ELSE char_length(u.t)::text || ':' || u.t END), '' ORDER BY u.o) FROM unnest(r.tokens) WITH ORDINALITY AS u(t, o)), '') || ']' END) || (CASE WHEN prev IS NULL THEN '-' ELSE char_length(prev)::text || ':' || prev END);
    IF to_regprocedure('pg_catalog.sha256(bytea)') IS NOT NULL THEN
        alg := 'sha256'; h := encode(sha256(convert_to(c, 'UTF8')), 'hex');
      ELSE
        alg := 'md5'; h := md5(convert_to(c, 'UTF8'));
      END IF;
    EXECUTE format('UPDATE %s SET hash_alg = $1, prev_hash = $2, row_hash = $3 WHERE id = $4', audit)
      USING alg, prev, h, r.id;
    prev := h;
  END LOOP;
  EXECUTE format('ALTER TABLE %s ENABLE TRIGGER etl_vault_audit_append_only', audit);
END
$etl$;

CREATE TABLE IF NOT EXISTS etl_recovery_grant (
  audit_id bigint PRIMARY KEY,
  txid bigint NOT NULL,
  db_user text NOT NULL,
  object_table text NOT NULL,
  target_table text NOT NULL,
  column_name text NOT NULL,
  pipeline text,
  tokens text[] NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  used_at timestamptz);

CREATE TABLE IF NOT EXISTS etl_recovery_columns (
  object_table text NOT NULL,
  target_table text NOT NULL,
  column_name text NOT NULL,
  registered_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (object_table, target_table, column_name));

DO $etl$
DECLARE
  audit text := format('%I.%I', current_schema(), 'etl_vault_audit');
  grants text := format('%I.%I', current_schema(), 'etl_recovery_grant');
  fn text := format('%I.%I', current_schema(), 'etl_vault_audit_append');
  seq text := pg_get_serial_sequence(format('%I.%I', current_schema(), 'etl_vault_audit'), 'id');
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
      c := 'etl-audit-v1;' || (CASE WHEN r.id::text IS NULL THEN '-' ELSE char_length(r.id::text)::text || ':' || r.id::text END) || (CASE WHEN to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') IS NULL THEN '-' ELSE char_length(to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'))::text || ':' || to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') END) || (CASE WHEN r.kind IS NULL THEN '-' ELSE char_length(r.kind)::text || ':' || r.kind END) || (CASE WHEN r.actor IS NULL THEN '-' ELSE char_length(r.actor)::text || ':' || r.actor END) || (CASE WHEN r.db_user IS NULL THEN '-' ELSE char_length(r.db_user)::text || ':' || r.db_user END) || (CASE WHEN r.spec IS NULL THEN '-' ELSE char_length(r.spec)::text || ':' || r.spec END) || (CASE WHEN r.pipeline IS NULL THEN '-' ELSE char_length(r.pipeline)::text || ':' || r.pipeline END) || (CASE WHEN r.target_table IS NULL THEN '-' ELSE char_length(r.target_table)::text || ':' || r.target_table END) || (CASE WHEN r.column_name IS NULL THEN '-' ELSE char_length(r.column_name)::text || ':' || r.column_name END) || (CASE WHEN r.value_count::text IS NULL THEN '-' ELSE char_length(r.value_count::text)::text || ':' || r.value_count::text END) || (CASE WHEN r.reason IS NULL THEN '-' ELSE char_length(r.reason)::text || ':' || r.reason END) || (CASE WHEN r.tokens IS NULL THEN '-' ELSE coalesce(cardinality(r.tokens), 0)::text || '[' || coalesce((SELECT string_agg((CASE WHEN u.t IS NULL THEN '-' ELSE char_length(u.t)::text || ':' || u.t END), '' ORDER BY u.o) FROM unnest(r.tokens) WITH ORDINALITY AS u(t, o)), '') || ']' END) || (CASE WHEN prev IS NULL THEN '-' ELSE char_length(prev)::text || ':' || prev END);
      IF to_regprocedure('pg_catalog.sha256(bytea)') IS NOT NULL THEN
        alg := 'sha256'; h := encode(sha256(convert_to(c, 'UTF8')), 'hex');
      ELSE
        alg := 'md5'; h := md5(convert_to(c, 'UTF8'));
      END IF;
      INSERT INTO %2$s (id, at, kind, actor, db_user, spec, pipeline, target_table, column_name,
                        value_count, reason, tokens, hash_alg, prev_hash, row_hash)
        VALUES (r.id, r.at, r.kind, r.actor, r.db_user, r.spec, r.pipeline, r.target_table,
                r.column_name, r.value_count, r.reason, r.tokens, alg, prev, h);
      IF p_grant_for IS NOT NULL THEN
        INSERT INTO %4$s (audit_id, txid, db_user, object_table, target_table, column_name, pipeline, tokens, created_at)
          VALUES (r.id, txid_current(), session_user, p_grant_for, p_target_table, p_column, p_pipeline,
                  coalesce(p_tokens, '{}'), r.at);
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
    $body$$f$, format('%I.%I', current_schema(), 'etl_recovery_grant_use'), grants, '5 minutes');
  EXECUTE format('ALTER TABLE %s OWNER TO etl_audit_owner', audit);
  EXECUTE format('ALTER TABLE %s OWNER TO etl_audit_owner', grants);
  EXECUTE format('ALTER FUNCTION %s(text,text,text,text,text,text,integer,text,text[],text) OWNER TO etl_audit_owner', fn);
  EXECUTE format('ALTER FUNCTION %s(bigint,text) OWNER TO etl_audit_owner', format('%I.%I', current_schema(), 'etl_recovery_grant_use'));
  EXECUTE format('REVOKE ALL ON %s, %s FROM PUBLIC', audit, grants);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text,text,text,text,integer,text,text[],text) FROM PUBLIC', fn);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(bigint,text) FROM PUBLIC', format('%I.%I', current_schema(), 'etl_recovery_grant_use'));
  -- The engine's own definer functions (owned by the role running setup) call these two.
  EXECUTE format('GRANT EXECUTE ON FUNCTION %s(text,text,text,text,text,text,integer,text,text[],text) TO %I', fn, current_user);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %s(bigint,text) TO %I', format('%I.%I', current_schema(), 'etl_recovery_grant_use'), current_user);
  IF pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), 'USAGE') THEN
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM etl_audit_owner', current_schema());
  END IF;
END
$etl$;

DO $etl$
DECLARE
  usage text := format('%I.%I', current_schema(), 'etl_key_usage');
  fn text := format('%I.%I', current_schema(), 'etl_key_usage_add');
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
$etl$;

INSERT INTO "etl_schema_version" (kind, object, version) VALUES ('shared', 'shared', 2) ON CONFLICT (kind, object) DO NOTHING;

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

DO $etl$
DECLARE
  vault text := format('%I.%I', current_schema(), 'etl_vault');
  registry text := format('%I.%I', current_schema(), 'etl_recovery_columns');
  append text := format('%I.%I', current_schema(), 'etl_vault_audit_append');
  use_fn text := format('%I.%I', current_schema(), 'etl_recovery_grant_use');
  fn text := format('%I.%I', current_schema(), 'etl_vault_recover');
  grant_fn text := format('%I.%I', current_schema(), 'etl_vault_recover_grant');
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
      IF cardinality(toks) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 tokens per recovery (asked for %%)', cardinality(toks) USING ERRCODE = '54000';
      END IF;
      IF NOT EXISTS (SELECT 1 FROM %2$s AS g WHERE g.object_table = %3$L AND g.target_table = p_target_table AND g.column_name = p_column) THEN
        RAISE EXCEPTION 'column %%.%% is not an encrypted column registered for recovery from %3$s (etl-engine setup registers each spec''s encrypted columns)', p_target_table, p_column
          USING ERRCODE = '42501';
      END IF;
      SELECT count(*) INTO n FROM %4$s AS v
        WHERE v.target_table = p_target_table AND v.column_name = p_column AND v.token = ANY(toks);
      RETURN %5$s('recover', p_actor, p_spec, NULL, p_target_table, p_column, n, p_reason, toks, %3$L);
    END
    $body$$f$, grant_fn, registry, 'etl_vault', vault, append);
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
    $body$$f$, fn, use_fn, 'etl_vault', vault);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text,text[],text,text) FROM PUBLIC', grant_fn);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(bigint) FROM PUBLIC', fn);
END
$etl$;

CREATE TABLE IF NOT EXISTS "etl_vault_columns" (
  id smallint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  target_table text NOT NULL,
  column_name text NOT NULL,
  registered_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (target_table, column_name));

DO $etl$
DECLARE
  vault text := format('%I.%I', current_schema(), 'etl_vault');
  cols text := format('%I.%I', current_schema(), 'etl_vault_columns');
  old text := format('%I.%I', current_schema(), 'etl_vault_v2');
  vault_name text := 'etl_vault';
  old_name text := 'etl_vault_v2';
  bad bigint;
  example text;
  n_columns bigint;
  n_old bigint;
  n_new bigint;
  pk name;
  vault_owner text;
  r record;
BEGIN
  -- Already in the new layout (e.g. schema/engine.sql run by hand): nothing to move.
  IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(vault) AND attname = 'column_id' AND NOT attisdropped) THEN
    RETURN;
  END IF;
  EXECUTE format($q$SELECT count(*), min(target_table || '.' || column_name) FROM %s WHERE token !~ '^[0-9a-f]{64}$'$q$, vault)
    INTO bad, example;
  IF bad > 0 THEN
    RAISE EXCEPTION 'vault %: % row(s) have a token that is not 64 lowercase hex digits (the first in column %), so they cannot be keyed by the token''s 32 bytes; nothing was changed. Find them with: SELECT target_table, column_name, token FROM % WHERE token !~ ''^[0-9a-f]{64}$''', vault, bad, example, vault
      USING ERRCODE = '22023';
  END IF;
  EXECUTE format('SELECT count(*) FROM (SELECT DISTINCT target_table, column_name FROM %s) AS d', vault) INTO n_columns;
  IF n_columns > 32767 THEN
    RAISE EXCEPTION 'vault %: % encrypted columns, more than the 32767 a vault can register; nothing was changed', vault, n_columns
      USING ERRCODE = '54000';
  END IF;
  EXECUTE format('INSERT INTO %s (target_table, column_name) SELECT DISTINCT v.target_table, v.column_name FROM %s AS v '
                 'WHERE NOT EXISTS (SELECT 1 FROM %s AS c WHERE c.target_table = v.target_table AND c.column_name = v.column_name) '
                 'ORDER BY 1, 2', cols, vault, cols);

  SELECT pg_get_userbyid(c.relowner)::text INTO vault_owner FROM pg_class AS c WHERE c.oid = to_regclass(vault);
  SELECT c.conname INTO pk FROM pg_constraint AS c WHERE c.conrelid = to_regclass(vault) AND c.contype = 'p';
  EXECUTE format('ALTER TABLE %s RENAME TO %I', vault, old_name);
  IF pk IS NOT NULL THEN
    EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', old, pk, old_name || '_pkey');
  END IF;
  EXECUTE format('CREATE TABLE %s (column_id smallint NOT NULL, token bytea NOT NULL, key_id text NOT NULL, '
                 'nonce bytea NOT NULL, ciphertext bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), '
                 'rotated_at timestamptz, CONSTRAINT %I CHECK (octet_length(token) = 32))',
                 vault, vault_name || '_token_check');
  -- Keys are built after the rows are in: one sort instead of an index insert per row.
  EXECUTE format('INSERT INTO %s (column_id, token, key_id, nonce, ciphertext, created_at, rotated_at) '
                 'SELECT c.id, decode(v.token, ''hex''), v.key_id, v.nonce, v.ciphertext, v.created_at, v.rotated_at '
                 'FROM %s AS v JOIN %s AS c ON c.target_table = v.target_table AND c.column_name = v.column_name',
                 vault, old, cols);
  GET DIAGNOSTICS n_new = ROW_COUNT;
  EXECUTE format('SELECT count(*) FROM %s', old) INTO n_old;
  IF n_new <> n_old THEN
    RAISE EXCEPTION 'vault %: % row(s) moved to the new layout but % were there; nothing was changed', vault, n_new, n_old;
  END IF;
  EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (column_id, token)', vault, vault_name || '_pkey');

  -- The old table's privileges, on the new one.
  FOR r IN
    SELECT a.privilege_type AS p, a.grantee AS g, a.is_grantable AS o, NULL::text AS col
      FROM pg_class AS c, aclexplode(c.relacl) AS a
      WHERE c.oid = to_regclass(old) AND a.grantee <> c.relowner
    UNION ALL
    SELECT a.privilege_type, a.grantee, a.is_grantable,
           CASE WHEN att.attname IN ('target_table', 'column_name') THEN 'column_id' ELSE att.attname::text END
      FROM pg_attribute AS att JOIN pg_class AS c ON c.oid = att.attrelid, aclexplode(att.attacl) AS a
      WHERE att.attrelid = to_regclass(old) AND att.attnum > 0 AND NOT att.attisdropped AND a.grantee <> c.relowner
  LOOP
    EXECUTE format('GRANT %s%s ON %s TO %s%s', r.p, CASE WHEN r.col IS NULL THEN '' ELSE format(' (%I)', r.col) END, vault,
                   CASE WHEN r.g = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.g)) END,
                   CASE WHEN r.o THEN ' WITH GRANT OPTION' ELSE '' END);
    -- Whoever reads the vault maps its column ids to names.
    IF r.p = 'SELECT' THEN
      EXECUTE format('GRANT SELECT ON %s TO %s', cols, CASE WHEN r.g = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.g)) END);
    END IF;
  END LOOP;
  IF vault_owner IS NOT NULL AND vault_owner <> current_user THEN
    EXECUTE format('ALTER TABLE %s OWNER TO %I', vault, vault_owner);
    EXECUTE format('ALTER TABLE %s OWNER TO %I', cols, vault_owner);
  END IF;
  EXECUTE format('DROP TABLE %s', old);
END
$etl$;

DO $etl$
DECLARE
  vault text := format('%I.%I', current_schema(), 'etl_vault');
  cols text := format('%I.%I', current_schema(), 'etl_vault_columns');
  registry text := format('%I.%I', current_schema(), 'etl_recovery_columns');
  append text := format('%I.%I', current_schema(), 'etl_vault_audit_append');
  use_fn text := format('%I.%I', current_schema(), 'etl_recovery_grant_use');
  fn text := format('%I.%I', current_schema(), 'etl_vault_recover');
  grant_fn text := format('%I.%I', current_schema(), 'etl_vault_recover_grant');
BEGIN
  EXECUTE format($f$
    CREATE OR REPLACE FUNCTION %1$s(p_spec text, p_target_table text, p_column text, p_tokens text[], p_actor text, p_reason text)
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
      IF cardinality(toks) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 tokens per recovery (asked for %%)', cardinality(toks) USING ERRCODE = '54000';
      END IF;
      IF NOT EXISTS (SELECT 1 FROM %2$s AS g WHERE g.object_table = %3$L AND g.target_table = p_target_table AND g.column_name = p_column) THEN
        RAISE EXCEPTION 'column %%.%% is not an encrypted column registered for recovery from %3$s (etl-engine setup registers each spec''s encrypted columns)', p_target_table, p_column
          USING ERRCODE = '42501';
      END IF;
      SELECT count(*) INTO n FROM %4$s AS v JOIN %6$s AS c ON c.id = v.column_id
        WHERE c.target_table = p_target_table AND c.column_name = p_column
          AND v.token = ANY(ARRAY(SELECT decode(t, 'hex') FROM unnest(toks) AS u(t) WHERE t ~ '^[0-9a-f]{64}$'));
      RETURN %5$s('recover', p_actor, p_spec, NULL, p_target_table, p_column, n, p_reason, toks, %3$L);
    END
    $body$$f$, grant_fn, registry, 'etl_vault', vault, append, cols);
  EXECUTE format($f$
    CREATE OR REPLACE FUNCTION %1$s(p_grant bigint)
    RETURNS TABLE(token text, key_id text, nonce bytea, ciphertext bytea)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    #variable_conflict use_column
    DECLARE
      g record;
    BEGIN
      SELECT * INTO g FROM %2$s(p_grant, %3$L);
      RETURN QUERY SELECT encode(v.token, 'hex'), v.key_id, v.nonce, v.ciphertext FROM %4$s AS v
        WHERE v.column_id = (SELECT c.id FROM %5$s AS c WHERE c.target_table = g.target_table AND c.column_name = g.column_name)
          AND v.token = ANY(ARRAY(SELECT decode(t, 'hex') FROM unnest(g.tokens) AS u(t) WHERE t ~ '^[0-9a-f]{64}$'));
    END
    $body$$f$, fn, use_fn, 'etl_vault', vault, cols);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text,text[],text,text) FROM PUBLIC', grant_fn);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(bigint) FROM PUBLIC', fn);
END
$etl$;

INSERT INTO "etl_schema_version" (kind, object, version) VALUES ('vault', 'etl_vault', 3) ON CONFLICT (kind, object) DO NOTHING;

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

DO $etl$
DECLARE
  rejects text := format('%I.%I', current_schema(), 'etl_rejects');
  registry text := format('%I.%I', current_schema(), 'etl_recovery_columns');
  append text := format('%I.%I', current_schema(), 'etl_vault_audit_append');
  use_fn text := format('%I.%I', current_schema(), 'etl_recovery_grant_use');
  fn text := format('%I.%I', current_schema(), 'etl_rejects_recover');
  grant_fn text := format('%I.%I', current_schema(), 'etl_rejects_recover_grant');
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
      IF coalesce(cardinality(p_ids), 0) > 1000 OR coalesce(p_limit, 0) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 reject bodies per recovery' USING ERRCODE = '54000';
      END IF;
      IF NOT EXISTS (SELECT 1 FROM %2$s AS g WHERE g.object_table = %3$L AND g.target_table = p_pipeline AND g.column_name = %6$L) THEN
        RAISE EXCEPTION 'pipeline %% is not registered for reading bodies from %3$s (etl-engine setup registers each spec''s pipeline)', p_pipeline
          USING ERRCODE = '42501';
      END IF;
      SELECT coalesce(array_agg(s.message_id), '{}') INTO ids FROM (
        SELECT r.message_id FROM %4$s AS r
        WHERE r.pipeline = p_pipeline AND (p_ids IS NULL OR r.message_id = ANY(p_ids))
        ORDER BY r.rejected_at DESC, r.message_id LIMIT greatest(coalesce(p_limit, 1000), 0)) AS s;
      RETURN %5$s('rejects', p_actor, p_spec, p_pipeline, %3$L, %6$L, cardinality(ids), p_reason, ids, %3$L);
    END
    $body$$f$, grant_fn, registry, 'etl_rejects', rejects, append, 'body');
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
    $body$$f$, fn, use_fn, 'etl_rejects', rejects);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(text,text,text[],integer,text,text) FROM PUBLIC', grant_fn);
  EXECUTE format('REVOKE ALL ON FUNCTION %s(bigint) FROM PUBLIC', fn);
END
$etl$;

INSERT INTO "etl_schema_version" (kind, object, version) VALUES ('rejects', 'etl_rejects', 2) ON CONFLICT (kind, object) DO NOTHING;

COMMIT;
