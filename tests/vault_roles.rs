//! Least privilege, against real Postgres (and LocalStack for the pipeline): with the engine's
//! tables created ahead of time by their owner (`schema/engine.sql`) and `schema/roles.sql`
//! applied, each role connects as itself and can do what it must and nothing more. The writer
//! runs the pipeline end to end but cannot read ciphertexts; the analyst reads only the target
//! table; the recovery role reads the vault only through the audited function.

mod common;
mod vault_common;
use common::*;
use vault_common::*;

/// Runs `sql` as `url`'s user and asserts Postgres refuses it for lack of privilege.
async fn denied(url: &str, sql: &str) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .expect_err(sql);
    let code = match &err {
        sqlx::Error::Database(d) => d.code().map(|c| c.to_string()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    pool.close().await;
}

/// Runs `sql` as `url`'s user and returns the first column of the first row as text.
async fn allowed(url: &str, sql: &str) -> Option<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let row: Option<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_optional(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
    row.and_then(|r| r.0)
}

#[tokio::test]
async fn each_role_can_do_what_it_must_and_nothing_more() {
    let f = Fixture::new().await;
    // The spec's own setup registers its encrypted columns for recovery.
    run_engine(&["setup", f.spec_s()], &[], true);
    psql(
        &f.db,
        &[
            "-v",
            "target=user_logins",
            "-f",
            &project_file("schema/roles.sql"),
        ],
    );
    // Applying it twice changes nothing (operators re-run it after adding tables).
    psql(
        &f.db,
        &[
            "-v",
            "target=user_logins",
            "-f",
            &project_file("schema/roles.sql"),
        ],
    );
    let writer = url_as(&f.db, &login_role("etl_writer").await);
    let analyst = url_as(&f.db, &login_role("etl_analyst").await);
    let recovery_user = login_role("etl_recovery").await;
    let recovery = url_as(&f.db, &recovery_user);

    // The writer runs the pipeline end to end: rows, vault, ledger, rejects, key usage.
    let sent = logins(20, 1);
    let mut bodies: Vec<String> = sent.iter().map(Login::body).collect();
    bodies.push(r#"{"user_id": null, "ip": "203.0.113.5"}"#.into());
    f.send(&bodies).await;
    f.run_drain(&f.keyring, &[("ETL_SPEC_TARGET__URL", &writer)]);
    let admin = f.pool().await;
    assert_eq!(count(&admin, "SELECT count(*) FROM user_logins").await, 20);
    assert_eq!(count(&admin, "SELECT count(*) FROM etl_vault").await, 40);
    assert_eq!(count(&admin, "SELECT count(*) FROM etl_rejects").await, 1);
    assert_eq!(count(&admin, "SELECT count(*) FROM etl_ledger").await, 21);
    assert_eq!(
        count(&admin, "SELECT sum(encryptions)::bigint FROM etl_key_usage").await,
        41
    );

    // Writer: only the key columns ON CONFLICT needs; no ciphertexts, no target rows, no recovery.
    assert!(
        allowed(
            &writer,
            "SELECT encode(token, 'hex') FROM etl_vault LIMIT 1"
        )
        .await
        .is_some()
    );
    // ... and the vault's column ids, which it reads once at start but never writes.
    assert_eq!(
        allowed(
            &writer,
            "SELECT string_agg(target_table || '.' || column_name, ',' ORDER BY column_name) FROM etl_vault_columns"
        )
        .await
        .as_deref(),
        Some("user_logins.masked_device_id,user_logins.masked_ip")
    );
    for sql in [
        "SELECT ciphertext FROM etl_vault",
        "SELECT nonce FROM etl_vault",
        "SELECT * FROM etl_vault",
        "SELECT body_ciphertext FROM etl_rejects",
        "SELECT reason FROM etl_rejects",
        "SELECT * FROM user_logins",
        "SELECT * FROM etl_vault_audit",
        "UPDATE etl_vault SET key_id = 'x'",
        "DELETE FROM etl_vault",
        "INSERT INTO etl_vault_columns (target_table, column_name) VALUES ('x', 'y')",
        "DELETE FROM etl_vault_columns",
        "DELETE FROM user_logins",
        "INSERT INTO etl_vault_audit (actor, spec, target_table, column_name, value_count, reason) VALUES ('w', 's', 't', 'c', 0, 'r')",
        "SELECT etl_vault_recover_grant('s', 'user_logins', 'masked_ip', ARRAY['x'], 'w', 'curious')",
        "SELECT * FROM etl_vault_recover(1)",
        "SELECT etl_rejects_recover_grant('s', 'logins', NULL, 10, 'w', 'curious')",
        "SELECT * FROM etl_rejects_recover(1)",
        "UPDATE etl_key_usage SET encryptions = 0",
        "INSERT INTO etl_key_usage (key_id, encryptions) VALUES ('k-new', 0)",
        "SELECT etl_vault_audit_append('recover', 'w', 's', NULL, 't', 'c', 0, 'r', NULL, NULL)",
        "CREATE TABLE sneaky (x int)",
    ] {
        denied(&writer, sql).await;
    }
    let token: (String,) = sqlx::query_as("SELECT masked_ip FROM user_logins WHERE user_id = $1")
        .bind(&sent[0].user_id)
        .fetch_one(&admin)
        .await
        .unwrap();
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--token",
            &token.0,
            "--reason",
            "curious",
        ],
        &f.keyring,
        &[("ETL_SPEC_TARGET__URL", &writer)],
    );
    let err = exited(&out, 1);
    assert!(
        out.stdout.is_empty() && err.contains("may not call the recovery function"),
        "{err}"
    );

    // Analyst: the target table, nothing else.
    assert_eq!(
        allowed(&analyst, "SELECT count(*)::text FROM user_logins")
            .await
            .as_deref(),
        Some("20")
    );
    for sql in [
        "SELECT * FROM etl_vault",
        "SELECT token FROM etl_vault",
        "SELECT * FROM etl_vault_columns",
        "SELECT * FROM etl_rejects",
        "SELECT * FROM etl_ledger",
        "SELECT * FROM etl_vault_audit",
        "SELECT * FROM etl_key_usage",
        "INSERT INTO user_logins (user_id) VALUES ('x')",
        "UPDATE user_logins SET locale = 'x'",
        "SELECT etl_vault_recover_grant('s', 'user_logins', 'masked_ip', ARRAY['x'], 'a', 'curious')",
        "SELECT * FROM etl_vault_recover(1)",
        "SELECT etl_rejects_recover_grant('s', 'logins', NULL, 10, 'a', 'curious')",
    ] {
        denied(&analyst, sql).await;
    }

    // Recovery: never the vault itself, only the audited function.
    for sql in [
        "SELECT * FROM etl_vault",
        "SELECT ciphertext FROM etl_vault",
        "SELECT * FROM etl_rejects",
        "SELECT body_ciphertext FROM etl_rejects",
        "SELECT nonce FROM etl_rejects",
        "SELECT * FROM etl_vault_audit",
        "INSERT INTO etl_vault_audit (actor, spec, target_table, column_name, value_count, reason) VALUES ('r', 's', 't', 'c', 0, 'r')",
        "UPDATE user_logins SET locale = 'x'",
        "DELETE FROM etl_vault_audit",
    ] {
        denied(&recovery, sql).await;
    }
    let audits = count(&admin, "SELECT count(*) FROM etl_vault_audit").await;
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--token",
            &token.0,
            "--reason",
            "ticket 7",
        ],
        &f.keyring,
        &[("ETL_SPEC_TARGET__URL", &recovery)],
    );
    exited(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\t{}\n", token.0, sent[0].ip)
    );
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_device_id",
            "--where",
            &format!("user_id={}", sent[1].user_id),
            "--reason",
            "ticket 8",
            "--format",
            "json",
        ],
        &f.keyring,
        &[("ETL_SPEC_TARGET__URL", &recovery)],
    );
    exited(&out, 0);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got[0]["value"], sent[1].device_id.as_str());
    // Calling the functions directly (e.g. from psql) is audited just the same.
    let grant = allowed(&recovery, &format!("SELECT etl_vault_recover_grant('psql', 'user_logins', 'masked_ip', ARRAY['{}'], 'r', 'ticket 9')::text", token.0))
        .await
        .expect("a grant id");
    assert!(
        allowed(
            &recovery,
            &format!("SELECT token FROM etl_vault_recover({grant})")
        )
        .await
        .is_some()
    );
    // Rejects: the list (ids, reasons) without audit, the bodies only through the audited function.
    let out = f.engine(
        &["rejects", f.spec_s(), "--format", "json"],
        &f.keyring,
        &[("ETL_SPEC_TARGET__URL", &recovery)],
    );
    exited(&out, 0);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(listed[0].get("body").is_none(), "{listed}");
    let out = f.engine(
        &[
            "rejects",
            f.spec_s(),
            "--show-bodies",
            "--reason",
            "ticket 10",
            "--format",
            "json",
        ],
        &f.keyring,
        &[("ETL_SPEC_TARGET__URL", &recovery)],
    );
    exited(&out, 0);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown[0]["body"], bodies[20].as_str(), "{shown}");
    assert_eq!(shown[0]["message_id"], listed[0]["message_id"]);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM etl_vault_audit").await,
        audits + 4
    );
    let (column, n, ids): (String, i32, Vec<String>) = sqlx::query_as(
        "SELECT column_name, value_count, tokens FROM etl_vault_audit WHERE reason = 'ticket 10'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(
        (column.as_str(), n, ids.len()),
        ("body", 1, 1),
        "the audit row names the message ids read"
    );
    assert_eq!(Some(ids[0].as_str()), listed[0]["message_id"].as_str());
    let who: Vec<(String, String)> =
        sqlx::query_as("SELECT db_user, reason FROM etl_vault_audit ORDER BY id")
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(
        who,
        vec![
            (recovery_user.clone(), "ticket 7".to_string()),
            (recovery_user.clone(), "ticket 8".to_string()),
            (recovery_user.clone(), "ticket 9".to_string()),
            (recovery_user.clone(), "ticket 10".to_string())
        ]
    );
    admin.close().await;
}

#[tokio::test]
async fn roles_script_needs_a_target_table() {
    let db = fresh_db().await;
    let out = std::process::Command::new(psql_bin())
        .arg(&db)
        .args(["-X", "-q", "-f", &project_file("schema/roles.sql")])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && all.contains("-v target=TABLE"),
        "{all}"
    );
}
