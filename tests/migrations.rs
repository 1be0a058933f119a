//! Versioned migrations against a real Postgres: a database as 0.1 left it (tables, data, an
//! audit row, no schema version) is refused by `run` until `etl-engine setup` migrates it; after
//! that its vault still decrypts, its ledger still deduplicates, recoveries are still audited,
//! and setup is idempotent. A database migrated by a newer engine is refused.
//!
//! The vault's version 3 (rows keyed by a registered column id and the token's 32 bytes) is
//! reached from 0.1 and from a vault at version 2 written by that engine, keeping every row as
//! it was (same ciphertexts, same tokens) and the privileges of the roles; a token that is not
//! 64 lowercase hex digits stops the migration with nothing changed.

mod common;
mod vault_common;

use common::*;
use std::path::{Path, PathBuf};
use vault_common::{login_role, url_as};

const FIXTURE_USER: &str = "50b48946-833e-4605-bc1a-0771bc177442";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// specs/logins.yaml reading examples/logins.jsonl from a file source into `db`.
fn file_spec(dir: &Path, db: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/logins.yaml"))
            .expect("read specs/logins.yaml");
    let start = text.find("\nsource:").expect("a source block");
    let end = text.find("\ntarget:").expect("a target block");
    let text = format!(
        "{}\nsource:\n  type: file\n  path: {}\n{}",
        &text[..start],
        example_logins().display(),
        &text[end..]
    )
    .replace(
        "url: postgres://postgres:postgres@127.0.0.1:5432/postgres",
        &format!("url: {db}"),
    );
    let p = dir.join("logins-file.yaml");
    std::fs::write(&p, text).expect("write spec");
    p
}

/// The IPs examples/logins.jsonl gives `user`.
fn example_ips(user: &str) -> Vec<String> {
    std::fs::read_to_string(example_logins())
        .expect("read examples")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["user_id"] == user)
        .filter_map(|v| v["ip"].as_str().map(str::to_string))
        .collect()
}

/// The first column of the first row of `sql`, as text.
async fn text(pool: &sqlx::PgPool, sql: &str) -> String {
    sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_default()
}

/// Every vault row of the layout before version 3, as one digest: table, column, token, key id,
/// nonce and ciphertext, in key order.
const FINGERPRINT_V2: &str = "SELECT md5(string_agg(concat_ws('/', target_table, column_name, token, key_id, \
    encode(nonce, 'hex'), encode(ciphertext, 'hex')), ',' ORDER BY target_table, column_name, token)) FROM etl_vault";

/// The same digest of a version-3 vault, names from the registry and tokens as hex.
const FINGERPRINT_V3: &str = "SELECT md5(string_agg(concat_ws('/', c.target_table, c.column_name, encode(v.token, 'hex'), \
    v.key_id, encode(v.nonce, 'hex'), encode(v.ciphertext, 'hex')), ',' ORDER BY c.target_table, c.column_name, encode(v.token, 'hex'))) \
    FROM etl_vault v JOIN etl_vault_columns c ON c.id = v.column_id";

/// The (table.column) pairs of a vault before version 3.
const PAIRS_V2: &str =
    "SELECT string_agg(DISTINCT target_table || '.' || column_name, ',') FROM etl_vault";

/// Checks the version-3 layout: the registry holds exactly `pairs`, the vault `rows` rows keyed
/// by (column_id, token) with 32-byte tokens and registered column ids, the old table is gone
/// and the recorded version is 3.
async fn assert_vault_v3(pool: &sqlx::PgPool, rows: i64, pairs: &str) {
    assert_eq!(
        text(
            pool,
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'etl_vault'::regclass AND attnum > 0 AND NOT attisdropped"
        )
        .await,
        "column_id smallint, token bytea, key_id text, nonce bytea, ciphertext bytea, \
         created_at timestamp with time zone, rotated_at timestamp with time zone"
    );
    assert_eq!(
        text(
            pool,
            "SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = 'etl_vault'::regclass AND i.indisprimary"
        )
        .await,
        "column_id,token"
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM etl_vault v WHERE NOT EXISTS (SELECT 1 FROM etl_vault_columns c WHERE c.id = v.column_id)"
        )
        .await,
        0,
        "every row's column id is registered"
    );
    assert_eq!(count(pool, "SELECT count(*) FROM etl_vault").await, rows);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM etl_vault WHERE octet_length(token) = 32"
        )
        .await,
        rows
    );
    assert_eq!(
        text(
            pool,
            "SELECT string_agg(target_table || '.' || column_name, ',' ORDER BY target_table || '.' || column_name) FROM etl_vault_columns"
        )
        .await,
        pairs
    );
    assert_eq!(
        text(pool, "SELECT to_regclass('etl_vault_v2')::text").await,
        ""
    );
    assert_eq!(
        count(
            pool,
            "SELECT version::bigint FROM etl_schema_version WHERE kind = 'vault' AND object = 'etl_vault'"
        )
        .await,
        3
    );
}

/// The roles a dump with owners and privileges names (cluster-wide; created if missing, as
/// setup and schema/roles.sql would).
async fn ensure_roles() {
    exec(
        &db_url(),
        "DO $$ DECLARE r text; BEGIN
           FOREACH r IN ARRAY ARRAY['etl_audit_owner', 'etl_writer', 'etl_analyst', 'etl_recovery', 'etl_rotator', 'etl_auditor'] LOOP
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
               BEGIN EXECUTE format('CREATE ROLE %I NOLOGIN', r);
               EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
             END IF;
           END LOOP;
         END $$",
    )
    .await;
}

/// The IPs `vault-decrypt --column masked_ip` printed (second tab-separated field).
fn recovered_values(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('\t').nth(1).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_0_1_database_is_migrated_and_still_decrypts_deduplicates_and_audits() {
    let db = fresh_db_bare().await;
    let dump = std::fs::read_to_string(fixture("engine-0.1.sql")).expect("read fixture");
    exec(&db, &dump).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = file_spec(dir.path(), &db);
    let spec_s = spec.to_str().unwrap();
    let keyring = fixture("keyring-0.1.json");
    let env = [("ETL_KEYRING", keyring.to_str().unwrap())];

    // Before setup: every command refuses, naming the step to take, and writes nothing.
    let out = run_engine(&["run", spec_s], &env, false);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("etl-engine setup"), "{stderr}");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM user_logins").await, 130);
    let fingerprint = text(&pool, FINGERPRINT_V2).await;
    let pairs = text(&pool, PAIRS_V2).await;
    assert_eq!(pairs, "user_logins.masked_device_id,user_logins.masked_ip");

    // Setup adopts the 0.1 layout at version 1, takes it to the current one, and keeps every
    // row: the 0.1 (undomained) tokens are 64 hex digits and become the vault's 32-byte keys.
    let out = run_engine(&["setup", spec_s], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("vault etl_vault: version 0 -> 3"),
        "{stdout}"
    );
    assert_vault_v3(&pool, 110, &pairs).await;
    assert_eq!(text(&pool, FINGERPRINT_V3).await, fingerprint);
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_rejects").await, 20);
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_ledger").await, 150);
    // Running it again changes nothing.
    let out = run_engine(&["setup", spec_s], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("nothing to do").count(), 4, "{stdout}");
    // Registering the spec's columns again draws no id: the smallint ids are not wasted.
    assert_eq!(
        count(
            &pool,
            "SELECT last_value::bigint FROM etl_vault_columns_id_seq"
        )
        .await,
        2
    );

    // The old vault still decrypts, and the recovery is audited.
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "masked_ip",
            "--where",
            &format!("user_id={FIXTURE_USER}"),
            "--reason",
            "migration test",
            "--actor",
            "tester",
        ],
        &env,
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ips = example_ips(FIXTURE_USER);
    assert!(!ips.is_empty());
    let recovered: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .collect();
    assert!(!recovered.is_empty(), "{stdout}");
    assert!(
        recovered.iter().all(|ip| ips.iter().any(|e| e == ip)),
        "recovered {recovered:?}, examples give {ips:?}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM etl_vault_audit WHERE actor = 'tester'"
        )
        .await,
        1
    );

    // The 0.1 audit rows (and the new one) are chained by the migration: verify checks out,
    // and the migrated recovery went through the committed grant.
    let out = run_engine(&["audit", "verify", spec_s], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let audit_rows = count(&pool, "SELECT count(*) FROM etl_vault_audit").await;
    assert!(
        stdout.contains(&format!("audit intact: {audit_rows} row(s)")) && audit_rows >= 2,
        "{stdout}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM etl_recovery_grant g JOIN etl_vault_audit a ON a.id = g.audit_id \
             WHERE a.actor = 'tester' AND g.used_at IS NOT NULL"
        )
        .await,
        1
    );
    // The one-step 0.1 recovery function is gone: nothing reads the vault without a grant.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_proc WHERE proname = 'etl_vault_recover' AND pronargs = 6"
        )
        .await,
        0
    );

    // The old ledger still deduplicates: the same 150 messages write nothing again.
    let out = run_engine(&["run", spec_s], &env, true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("duplicates skipped 150"), "{stdout}");
    assert_eq!(count(&pool, "SELECT count(*) FROM user_logins").await, 130);

    // A database migrated by a newer engine is refused by setup and by every other command.
    sqlx::query("UPDATE etl_schema_version SET version = version + 1 WHERE kind = 'vault'")
        .execute(&pool)
        .await
        .unwrap();
    let out = run_engine(&["setup", spec_s], &[], false);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upgrade etl-engine"));
    let out = run_engine(&["run", spec_s], &env, false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer than this engine knows"));
    pool.close().await;
}

#[tokio::test]
async fn a_vault_with_a_token_that_is_not_64_lowercase_hex_digits_is_not_migrated() {
    let db = fresh_db_bare().await;
    exec(
        &db,
        &std::fs::read_to_string(fixture("engine-0.1.sql")).expect("read fixture"),
    )
    .await;
    // One row whose token has upper-case digits: decoding it would give a token the target
    // table does not hold, so the migration must refuse rather than change it.
    exec(
        &db,
        "INSERT INTO etl_vault (target_table, column_name, token, key_id, nonce, ciphertext) \
         SELECT target_table, column_name, upper(token), key_id, nonce, ciphertext FROM etl_vault \
         WHERE token ~ '[a-f]' ORDER BY token LIMIT 1",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spec = file_spec(dir.path(), &db);
    let spec_s = spec.to_str().unwrap();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let fingerprint = text(&pool, FINGERPRINT_V2).await;

    let out = run_engine(&["setup", spec_s], &[], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 row(s) have a token that is not 64 lowercase hex digits")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    // The vault is as it was, at no version, with no registry.
    assert_eq!(text(&pool, FINGERPRINT_V2).await, fingerprint);
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_vault").await, 111);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM etl_schema_version WHERE kind = 'vault'"
        )
        .await,
        0
    );
    assert_eq!(
        text(&pool, "SELECT to_regclass('etl_vault_columns')::text").await,
        ""
    );

    // With the row removed, setup goes through.
    exec(&db, "DELETE FROM etl_vault WHERE token <> lower(token)").await;
    run_engine(&["setup", spec_s], &[], true);
    assert_vault_v3(
        &pool,
        110,
        "user_logins.masked_device_id,user_logins.masked_ip",
    )
    .await;
    pool.close().await;
}

#[tokio::test]
async fn a_vault_at_version_2_written_by_that_engine_moves_to_version_3_and_decrypts() {
    ensure_roles().await;
    let db = fresh_db_bare().await;
    exec(
        &db,
        &std::fs::read_to_string(fixture("engine-vault-v2.sql")).expect("read fixture"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spec = file_spec(dir.path(), &db);
    let spec_s = spec.to_str().unwrap();
    let keyring = fixture("keyring-0.1.json");
    let env = [("ETL_KEYRING", keyring.to_str().unwrap())];
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let fingerprint = text(&pool, FINGERPRINT_V2).await;
    let pairs = text(&pool, PAIRS_V2).await;
    assert_eq!(pairs, "user_logins.masked_device_id,user_logins.masked_ip");
    let rows = count(&pool, "SELECT count(*) FROM etl_vault").await;
    assert_eq!(rows, 97);

    // Before setup, the engine refuses, naming the step.
    let out = run_engine(&["run", spec_s], &env, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schema version 2, this engine needs 3")
            && stderr.contains("etl-engine setup"),
        "{stderr}"
    );

    let out = run_engine(&["setup", spec_s], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("vault etl_vault: version 2 -> 3")
            && stdout.contains("shared shared: at version 2, nothing to do"),
        "{stdout}"
    );
    assert_vault_v3(&pool, rows, &pairs).await;
    assert_eq!(text(&pool, FINGERPRINT_V3).await, fingerprint);

    // The roles keep what schema/roles.sql gave them, on the new columns.
    for (role, object, privilege, want) in [
        ("etl_writer", "etl_vault", "INSERT", true),
        ("etl_writer", "etl_vault", "SELECT", false),
        ("etl_writer", "etl_vault_columns", "SELECT", true),
        ("etl_writer", "etl_vault_columns", "INSERT", false),
        ("etl_rotator", "etl_vault", "SELECT", true),
        ("etl_rotator", "etl_vault", "DELETE", false),
        ("etl_rotator", "etl_vault_columns", "SELECT", true),
        ("etl_recovery", "etl_vault", "SELECT", false),
        ("etl_recovery", "etl_vault_columns", "SELECT", false),
        ("etl_analyst", "etl_vault_columns", "SELECT", false),
    ] {
        let (have,): (bool,) = sqlx::query_as("SELECT has_table_privilege($1, $2, $3)")
            .bind(role)
            .bind(object)
            .bind(privilege)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(have, want, "{role} {privilege} on {object}");
    }
    for (role, column, privilege, want) in [
        ("etl_writer", "column_id", "SELECT", true),
        ("etl_writer", "token", "SELECT", true),
        ("etl_writer", "ciphertext", "SELECT", false),
        ("etl_rotator", "ciphertext", "UPDATE", true),
        ("etl_rotator", "column_id", "UPDATE", false),
    ] {
        let (have,): (bool,) =
            sqlx::query_as("SELECT has_column_privilege($1, 'etl_vault', $2, $3)")
                .bind(role)
                .bind(column)
                .bind(privilege)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(have, want, "{role} {privilege} ({column})");
    }

    // The engine, logged in as a writer, writes the other 50 messages next to the old rows:
    // the 100 the old engine wrote are duplicates, new tokens join the old ones' column ids.
    let writer = url_as(&db, &login_role("etl_writer").await);
    let out = run_engine(
        &["run", spec_s],
        &[env[0], ("ETL_SPEC_TARGET__URL", &writer)],
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("duplicates skipped 100"), "{stdout}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_vault").await,
        count(
            &pool,
            "SELECT (SELECT count(DISTINCT masked_ip) FROM user_logins) + (SELECT count(DISTINCT masked_device_id) FROM user_logins)"
        )
        .await
    );
    assert!(count(&pool, "SELECT count(*) FROM etl_vault").await > rows);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM user_logins u WHERE NOT EXISTS (SELECT 1 FROM etl_vault v \
             JOIN etl_vault_columns c ON c.id = v.column_id \
             WHERE c.column_name = 'masked_ip' AND encode(v.token, 'hex') = u.masked_ip)"
        )
        .await,
        0
    );

    // A recovery operator gets the IPs of rows written by both engines back: every login
    // with locale DE (lines of the example file on both sides of the first 100).
    let users: Vec<String> =
        sqlx::query_scalar("SELECT user_id::text FROM user_logins WHERE locale = 'DE'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let examples: Vec<serde_json::Value> = std::fs::read_to_string(example_logins())
        .expect("read examples")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_default())
        .collect();
    let mine = |v: &serde_json::Value| {
        v["user_id"]
            .as_str()
            .is_some_and(|u| users.iter().any(|x| x == u))
    };
    assert!(examples[..100].iter().any(mine) && examples[100..].iter().any(mine));
    let mut ips: Vec<String> = examples
        .iter()
        .filter(|v| mine(v))
        .filter_map(|v| v["ip"].as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips.dedup();
    let recovery = url_as(&db, &login_role("etl_recovery").await);
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "masked_ip",
            "--where",
            "locale=DE",
            "--reason",
            "migration test",
            "--actor",
            "tester",
        ],
        &[env[0], ("ETL_SPEC_TARGET__URL", &recovery)],
        true,
    );
    let mut recovered = recovered_values(&out);
    recovered.sort();
    assert!(ips.len() > 10, "{ips:?}");
    assert_eq!(recovered, ips);
    // An old row alone, by token: the one the old engine recovered in the fixture.
    let old_token = text(
        &pool,
        "SELECT t FROM etl_vault_audit, unnest(tokens) AS t WHERE actor = 'fixture' LIMIT 1",
    )
    .await;
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "masked_ip",
            "--token",
            &old_token,
            "--reason",
            "migration test",
        ],
        &env,
        true,
    );
    assert_eq!(recovered_values(&out), example_ips(FIXTURE_USER));

    // The audit, old rows and new, still verifies.
    let out = run_engine(&["audit", "verify", spec_s], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("audit intact: 3 row(s)"), "{stdout}");
    pool.close().await;
}
