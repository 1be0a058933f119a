-- Least-privilege roles for etl-engine. Run as the owner of the tables, after `etl-engine setup SPEC`
-- (run as the owner) created the engine's tables and the target table exists. Once per target table (re-running is harmless):
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -v target=user_logins -f schema/roles.sql
--
-- Optional variables (defaults in brackets): schema [public], vault [etl_vault],
-- ledger [etl_ledger], rejects [etl_rejects]. Names are unqualified, inside `schema`.
--
-- The roles are group roles without LOGIN; give them to login roles, e.g.
--   CREATE ROLE etl_app LOGIN PASSWORD '...' IN ROLE etl_writer;
--
--   etl_writer    what `etl-engine run` needs and nothing more: INSERT into the target, vault,
--                 ledger and rejects; SELECT only on the key columns that ON CONFLICT and
--                 RETURNING read (never nonces or ciphertexts); SELECT on the vault's registry
--                 of column ids (<vault>_columns); reading the key-usage counters and adding to
--                 them only through etl_key_usage_add (never UPDATE).
--   etl_analyst   SELECT on the target table: tokens, never originals.
--   etl_recovery  SELECT on the target table (for `vault-decrypt --where`) and EXECUTE on the
--                 vault's two recovery functions (<vault>_recover_grant writes and commits the
--                 audit row, <vault>_recover(grant) then reads). No privilege on the vault or the
--                 audit table themselves. For `etl-engine rejects`: SELECT on the rejects' ids,
--                 reasons and times, and EXECUTE on the rejects table's two functions, never the
--                 ciphertexts.
--   etl_rotator   `vault-rotate`: SELECT on the vault, its registry of column ids and the
--                 rejects' key columns and ciphertexts, UPDATE of key_id/nonce/ciphertext/rotated_at only, counting its
--                 encryptions through etl_key_usage_add. Not an owner; no audit privilege.
--   etl_auditor   SELECT on the audit table, for `etl-engine audit verify`.
-- The audit and the recovery grants belong to etl_audit_owner (created by setup, NOLOGIN).
-- Retokenization, erasure (`vault-erase`) and setup run as the tables' owner.

\set ON_ERROR_STOP 1
\if :{?target}
\else
  DO $$ BEGIN RAISE EXCEPTION 'set the target table: psql -v target=TABLE -f schema/roles.sql'; END $$;
\endif
\if :{?schema}
\else
  \set schema public
\endif
\if :{?vault}
\else
  \set vault etl_vault
\endif
\if :{?ledger}
\else
  \set ledger etl_ledger
\endif
\if :{?rejects}
\else
  \set rejects etl_rejects
\endif
\set recover_fn :vault '_recover'
\set vault_columns :vault '_columns'
\set grant_fn :vault '_recover_grant'
\set rejects_fn :rejects '_recover'
\set rejects_grant_fn :rejects '_recover_grant'

BEGIN;

-- Roles are shared by every database of the cluster; another session may be creating them
-- at the same moment, which is fine.
DO $roles$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['etl_writer', 'etl_analyst', 'etl_recovery', 'etl_rotator', 'etl_auditor'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN', r);
      EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
      END;
    END IF;
  END LOOP;
END
$roles$;

SET LOCAL search_path = :"schema";

GRANT USAGE ON SCHEMA :"schema" TO etl_writer, etl_analyst, etl_recovery, etl_rotator, etl_auditor;

-- Start from nothing, so re-running after a change of this file takes privileges away too.
REVOKE ALL ON :"target", :"vault", :"vault_columns", :"ledger", :"rejects", etl_key_usage, etl_vault_audit, etl_schema_version,
  etl_recovery_grant, etl_recovery_columns
  FROM etl_writer, etl_analyst, etl_recovery, etl_rotator, etl_auditor;

-- Every command checks the engine's schema version before it starts.
GRANT SELECT ON etl_schema_version TO etl_writer, etl_recovery, etl_rotator, etl_auditor;
REVOKE ALL ON FUNCTION :"grant_fn"(text, text, text, text[], text, text) FROM PUBLIC, etl_writer, etl_analyst, etl_rotator;
REVOKE ALL ON FUNCTION :"recover_fn"(bigint) FROM PUBLIC, etl_writer, etl_analyst, etl_rotator;
REVOKE ALL ON FUNCTION :"rejects_grant_fn"(text, text, text[], integer, text, text) FROM PUBLIC, etl_writer, etl_analyst, etl_rotator;
REVOKE ALL ON FUNCTION :"rejects_fn"(bigint) FROM PUBLIC, etl_writer, etl_analyst, etl_rotator;
REVOKE ALL ON FUNCTION etl_key_usage_add(text, bigint) FROM PUBLIC, etl_analyst, etl_recovery;

-- Writer.
GRANT INSERT ON :"target" TO etl_writer;
GRANT INSERT, SELECT (pipeline, message_id) ON :"ledger" TO etl_writer;
GRANT INSERT, SELECT (column_id, token) ON :"vault" TO etl_writer;
-- The vault's column ids (read once at start; the writer never registers a column).
GRANT SELECT ON :"vault_columns" TO etl_writer, etl_rotator;
GRANT INSERT, SELECT (pipeline, message_id) ON :"rejects" TO etl_writer;
GRANT SELECT (key_id, encryptions) ON etl_key_usage TO etl_writer, etl_rotator;
GRANT EXECUTE ON FUNCTION etl_key_usage_add(text, bigint) TO etl_writer, etl_rotator;

-- Analyst.
GRANT SELECT ON :"target" TO etl_analyst;

-- Recovery.
GRANT SELECT ON :"target" TO etl_recovery;
GRANT EXECUTE ON FUNCTION :"grant_fn"(text, text, text, text[], text, text) TO etl_recovery;
GRANT EXECUTE ON FUNCTION :"recover_fn"(bigint) TO etl_recovery;
GRANT SELECT (pipeline, message_id, reason, rejected_at) ON :"rejects" TO etl_recovery;
GRANT EXECUTE ON FUNCTION :"rejects_grant_fn"(text, text, text[], integer, text, text) TO etl_recovery;
GRANT EXECUTE ON FUNCTION :"rejects_fn"(bigint) TO etl_recovery;

-- Rotator: reads what it re-encrypts, updates only the key columns and ciphertexts.
GRANT SELECT, UPDATE (key_id, nonce, ciphertext, rotated_at) ON :"vault" TO etl_rotator;
GRANT SELECT (pipeline, message_id, key_id, nonce, body_ciphertext, rejected_at),
  UPDATE (key_id, nonce, body_ciphertext) ON :"rejects" TO etl_rotator;

-- Auditor: reads the audit to verify its chain.
GRANT SELECT ON etl_vault_audit TO etl_auditor;

COMMIT;
