-- The engine's own tables with their default names (created by `etl-engine run` when missing).
-- Generated from src/sink/schema.rs; a unit test fails when this file is stale
-- (regenerate: UPDATE_SCHEMA=1 cargo test --lib engine_sql_is_current).

CREATE TABLE IF NOT EXISTS "etl_ledger" (
  pipeline text NOT NULL,
  message_id text NOT NULL,
  outcome text NOT NULL,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, message_id));

CREATE INDEX IF NOT EXISTS "etl_ledger_processed_at" ON "etl_ledger" (processed_at);

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

CREATE TABLE IF NOT EXISTS "etl_rejects" (
  pipeline text NOT NULL,
  message_id text NOT NULL,
  reason text NOT NULL,
  key_id text,
  nonce bytea,
  body_ciphertext bytea,
  rejected_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, message_id));

CREATE TABLE IF NOT EXISTS etl_key_usage (
  key_id text PRIMARY KEY,
  encryptions bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now());

CREATE TABLE IF NOT EXISTS etl_vault_audit (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  actor text NOT NULL,
  db_user text NOT NULL DEFAULT current_user,
  spec text NOT NULL,
  target_table text NOT NULL,
  column_name text NOT NULL,
  value_count integer NOT NULL,
  reason text NOT NULL);

