//! Versioned migrations against a real Postgres: a database as 0.1 left it (tables, data, an
//! audit row, no schema version) is refused by `run` until `etl-engine setup` migrates it; after
//! that its vault still decrypts, its ledger still deduplicates, recoveries are still audited,
//! and setup is idempotent. A database migrated by a newer engine is refused.

mod common;

use common::*;
use std::path::{Path, PathBuf};

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

    // Setup adopts the 0.1 layout at version 1 and keeps every row.
    let out = run_engine(&["setup", spec_s], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("vault etl_vault: version 0 -> "),
        "{stdout}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_vault").await, 110);
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_rejects").await, 20);
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_ledger").await, 150);
    // Running it again changes nothing.
    let out = run_engine(&["setup", spec_s], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("nothing to do").count(), 4, "{stdout}");

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
