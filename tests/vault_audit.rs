//! The audit nobody can skip, against real Postgres (and LocalStack for the pipeline):
//! `BEGIN; recover; ROLLBACK` through plain SQL as `etl_recovery` leaks nothing without a
//! durable audit record; the recovery policy (cap, registered columns, one user's grants) is
//! enforced by the database; `audit verify` finds an edited row; setup refuses a planted
//! function; the rotator rotates without owning anything; a key at its nonce limit stops the
//! pipeline; `vault-erase` removes one person's unique value and keeps a shared one.

mod common;
mod vault_common;
use common::*;
use sqlx::Connection;
use vault_common::*;

/// Applies schema/roles.sql for the logins target.
fn roles(db: &str) {
    psql(
        db,
        &[
            "-v",
            "target=user_logins",
            "-f",
            &project_file("schema/roles.sql"),
        ],
    );
}

/// The SQLSTATE of a failed statement.
fn code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn begin_recover_rollback_yields_a_durable_audit_row_or_nothing() {
    let f = Fixture::new().await;
    roles(&f.db);
    let sent = logins(3, 41);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    let admin = f.pool().await;
    let (token,): (String,) =
        sqlx::query_as("SELECT masked_ip FROM user_logins WHERE user_id = $1")
            .bind(&sent[0].user_id)
            .fetch_one(&admin)
            .await
            .unwrap();
    let recovery = url_as(&f.db, &login_role("etl_recovery").await);
    let mut c = sqlx::PgConnection::connect(&recovery).await.unwrap();
    let audits = || async { count(&admin, "SELECT count(*) FROM etl_vault_audit").await };
    let before = audits().await;
    let grant_sql = format!(
        "SELECT etl_vault_recover_grant('psql', 'user_logins', 'masked_ip', ARRAY['{token}'], 'mallory', 'curious')"
    );

    // The attack: grant and read in one transaction, then roll back. The read is refused, and
    // the rollback takes the grant with it: nothing returned, nothing to audit.
    sqlx::raw_sql("BEGIN").execute(&mut c).await.unwrap();
    let g: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(grant_sql.clone()))
        .fetch_one(&mut c)
        .await
        .unwrap();
    let err = sqlx::query_as::<_, (String, Vec<u8>)>(sqlx::AssertSqlSafe(format!(
        "SELECT token, ciphertext FROM etl_vault_recover({g})"
    )))
    .fetch_all(&mut c)
    .await
    .expect_err("a grant of this very transaction opens nothing");
    assert_eq!(code(&err).as_deref(), Some("42501"), "{err}");
    sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
    assert_eq!(audits().await, before);

    // The same through a savepoint (the grant in a subtransaction) is refused too.
    sqlx::raw_sql("BEGIN; SAVEPOINT s")
        .execute(&mut c)
        .await
        .unwrap();
    let g: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(grant_sql.clone()))
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::raw_sql("RELEASE SAVEPOINT s")
        .execute(&mut c)
        .await
        .unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM etl_vault_recover({g})"
    )))
    .fetch_all(&mut c)
    .await
    .expect_err("a grant of a subtransaction of this transaction opens nothing");
    assert_eq!(code(&err).as_deref(), Some("42501"), "{err}");
    sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
    assert_eq!(audits().await, before);

    // Committed grant, then the read inside a rolled-back transaction: the ciphertext comes
    // out, and the audit row naming the token is already durable.
    let g: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(grant_sql.clone()))
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut c).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT token, ciphertext FROM etl_vault_recover({g})"
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
    let (actor, db_user, tokens): (String, String, Vec<String>) =
        sqlx::query_as("SELECT actor, db_user, tokens FROM etl_vault_audit WHERE id = $1")
            .bind(g)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(actor, "mallory");
    assert!(db_user.starts_with("u_etl_recovery"), "{db_user}");
    assert_eq!(tokens, vec![token.clone()]);
    // Used once (committed), a grant opens nothing again; nor does another user's grant.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM etl_vault_recover({g})"
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM etl_vault_recover({g})"
    )))
    .fetch_all(&mut c)
    .await
    .expect_err("a used grant");
    assert_eq!(code(&err).as_deref(), Some("42501"));
    let other = url_as(&f.db, &login_role("etl_recovery").await);
    let g2: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(grant_sql.clone()))
        .fetch_one(&mut c)
        .await
        .unwrap();
    let mut c2 = sqlx::PgConnection::connect(&other).await.unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM etl_vault_recover({g2})"
    )))
    .fetch_all(&mut c2)
    .await
    .expect_err("another user's grant");
    assert_eq!(code(&err).as_deref(), Some("42501"));

    // Policy inside the database: a cap per call, and only registered encrypted columns.
    let many: Vec<String> = (0..1001).map(|i| format!("t{i}")).collect();
    let err = sqlx::query_scalar::<_, i64>(
        "SELECT etl_vault_recover_grant('psql', 'user_logins', 'masked_ip', $1, 'm', 'bulk')",
    )
    .bind(&many)
    .fetch_one(&mut c)
    .await
    .expect_err("more than 1000 tokens");
    assert_eq!(code(&err).as_deref(), Some("54000"), "{err}");
    let err = sqlx::query_scalar::<_, i64>(
        "SELECT etl_vault_recover_grant('psql', 'user_logins', 'user_id', ARRAY['x'], 'm', 'not encrypted')",
    )
    .fetch_one(&mut c)
    .await
    .expect_err("an unregistered column");
    assert_eq!(code(&err).as_deref(), Some("42501"), "{err}");

    // The engine uses the two steps: each recovery leaves a chained audit row.
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--where-stdin",
            "--reason",
            "ticket 12",
        ],
        &f.keyring,
        &[],
    );
    // --where-stdin with no stdin given reads nothing: a usage error.
    assert_eq!(out.status.code(), Some(2));
    let mut child = f
        .engine_command(&[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--where-stdin",
            "--reason",
            "ticket 12",
        ])
        .env("ETL_SPEC_TARGET__URL", &recovery)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "user_id={}", sent[1].user_id).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sent[1].ip));
    let out = run_engine(&["audit", "verify", f.spec_s()], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("audit intact"), "{stdout}");
    c.close().await.unwrap();
    c2.close().await.unwrap();
}

#[tokio::test]
async fn audit_verify_finds_the_edited_row() {
    let f = Fixture::new().await;
    let sent = logins(2, 42);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    for (i, l) in sent.iter().enumerate() {
        let out = f.engine(
            &[
                "vault-decrypt",
                f.spec_s(),
                "--column",
                "masked_ip",
                "--where",
                &format!("user_id={}", l.user_id),
                "--reason",
                &format!("ticket {i}"),
            ],
            &f.keyring,
            &[],
        );
        exited(&out, 0);
    }
    let out = run_engine(&["audit", "verify", f.spec_s()], &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("audit intact: 2 row(s)"), "{stdout}");
    let head = stdout.split("head ").nth(1).unwrap().trim().to_string();
    let admin = f.pool().await;
    let (owner,): (String,) = sqlx::query_as(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 'etl_vault_audit'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(owner, "etl_audit_owner");
    // Even the owner cannot simply update it ...
    let err = sqlx::query("UPDATE etl_vault_audit SET reason = 'nothing to see'")
        .execute(&admin)
        .await
        .expect_err("append-only");
    assert_eq!(code(&err).as_deref(), Some("42501"));
    // ... and when it drops the guard to edit the first row, verify names that row.
    let (first,): (i64,) = sqlx::query_as("SELECT min(id) FROM etl_vault_audit")
        .fetch_one(&admin)
        .await
        .unwrap();
    sqlx::raw_sql(
        "ALTER TABLE etl_vault_audit DISABLE TRIGGER etl_vault_audit_append_only; \
         UPDATE etl_vault_audit SET reason = 'nothing to see' WHERE id = (SELECT min(id) FROM etl_vault_audit); \
         ALTER TABLE etl_vault_audit ENABLE TRIGGER etl_vault_audit_append_only",
    )
    .execute(&admin)
    .await
    .unwrap();
    let out = run_engine(&["audit", "verify", f.spec_s()], &[], false);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("BROKEN at row {first}")) && stdout.contains("edited"),
        "{stdout}"
    );
    // An anchor kept elsewhere catches a deleted tail even where the rest still chains.
    sqlx::raw_sql(
        "ALTER TABLE etl_vault_audit DISABLE TRIGGER etl_vault_audit_append_only; \
         DELETE FROM etl_vault_audit; \
         ALTER TABLE etl_vault_audit ENABLE TRIGGER etl_vault_audit_append_only",
    )
    .execute(&admin)
    .await
    .unwrap();
    let out = run_engine(
        &["audit", "verify", f.spec_s(), "--anchor", &head],
        &[],
        false,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("anchor row is no longer"));
}

/// A login role in no group.
async fn plain_role() -> String {
    let name = unique("u_plain");
    let admin = sqlx::PgPool::connect(&db_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {name} LOGIN PASSWORD 'pw'"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    name
}

#[tokio::test]
async fn setup_refuses_a_planted_function_and_closes_the_schema() {
    let db = fresh_db_bare().await;
    // Plain login roles: this test must not depend on roles.sql having run in the cluster.
    let planter = plain_role().await;
    exec(&db, &format!("GRANT CREATE ON SCHEMA public TO {planter}")).await;
    exec(
        &url_as(&db, &planter),
        "CREATE FUNCTION etl_vault_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spec = logins_spec(dir.path(), &sqs_endpoint(), "unused", &db, "auto");
    let out = run_engine(&["setup", spec.to_str().unwrap()], &[], false);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etl_vault_audit_append_only()") && err.contains(&planter),
        "{err}"
    );
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'etl_vault'"
        )
        .await,
        0,
        "nothing was set up"
    );
    exec(&db, "DROP FUNCTION etl_vault_audit_append_only()").await;
    run_engine(&["setup", spec.to_str().unwrap()], &[], true);
    // Setup took CREATE on its schema away from PUBLIC.
    let fresh = plain_role().await;
    let (can,): (bool,) = sqlx::query_as("SELECT has_schema_privilege($1, 'public', 'CREATE')")
        .bind(&fresh)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!can);
}

#[tokio::test]
async fn the_rotator_rotates_and_a_key_at_its_limit_stops_the_pipeline() {
    let f = Fixture::new().await;
    roles(&f.db);
    let sent = logins(5, 43);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    let writer = url_as(&f.db, &login_role("etl_writer").await);
    f.run_drain(&f.keyring, &[("ETL_SPEC_TARGET__URL", &writer)]);
    let kr = f.keyring_s();
    run_engine(
        &["keyring", "add-key", kr, "--purpose", "encryption"],
        &[],
        true,
    );
    let rotator = url_as(&f.db, &login_role("etl_rotator").await);
    let out = f.engine(
        &["vault-rotate", f.spec_s()],
        &f.keyring,
        &[("ETL_SPEC_TARGET__URL", &rotator)],
    );
    let err = exited(&out, 0);
    assert!(!err.contains("error"), "{err}");
    let admin = f.pool().await;
    assert_eq!(
        count(&admin, "SELECT count(DISTINCT key_id) FROM etl_vault").await,
        1
    );
    let pool = sqlx::PgPool::connect(&rotator).await.unwrap();
    for sql in [
        "SELECT * FROM etl_vault_audit",
        "UPDATE etl_vault SET column_id = column_id",
        "UPDATE etl_vault SET token = token",
        "DELETE FROM etl_vault",
        "INSERT INTO etl_vault_columns (target_table, column_name) VALUES ('x', 'y')",
        "UPDATE etl_vault_columns SET column_name = 'x'",
        "UPDATE etl_key_usage SET encryptions = 0",
    ] {
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect_err(sql);
        assert_eq!(code(&err).as_deref(), Some("42501"), "{sql}: {err}");
    }
    // The counting function only counts upwards.
    let err = sqlx::query("SELECT etl_key_usage_add('k', -5)")
        .execute(&pool)
        .await
        .expect_err("negative");
    assert_eq!(code(&err).as_deref(), Some("22023"));
    pool.close().await;

    // At 2^32 encryptions the active key encrypts nothing more, and the error says what to do.
    sqlx::query("UPDATE etl_key_usage SET encryptions = 4294967296")
        .execute(&admin)
        .await
        .unwrap();
    f.send(&logins(1, 44).iter().map(Login::body).collect::<Vec<_>>())
        .await;
    let out = f.engine(
        &["run", f.spec_s(), "--drain", "--progress", "off"],
        &f.keyring,
        &[("ETL_SPEC_TARGET__URL", &writer)],
    );
    let err = exited(&out, 1).replace('\n', " ");
    assert!(
        err.contains("keyring add-key") && err.contains("2^32"),
        "{err}"
    );
    assert_eq!(count(&admin, "SELECT count(*) FROM user_logins").await, 5);
}

#[tokio::test]
async fn erasure_removes_one_users_unique_value_and_keeps_a_shared_one() {
    let f = Fixture::new().await;
    let a = "user-a-erase";
    let b = "user-b-keep";
    let body = |user: &str, ip: &str, dev: &str| {
        serde_json::json!({"user_id": user, "app_version": "2.3.0", "device_type": "android",
            "ip": ip, "locale": "RU", "device_id": dev})
        .to_string()
    };
    let bodies = vec![
        body(a, "203.0.113.77", "dev-a-1"),
        body(a, "203.0.113.10", "dev-a-2"),
        body(b, "203.0.113.10", "dev-b-1"),
        // A reject holding user a's id, and one of someone else.
        serde_json::json!({"user_id": a, "app_version": "not-a-version", "ip": "203.0.113.77"})
            .to_string(),
        serde_json::json!({"user_id": "user-c", "app_version": "not-a-version"}).to_string(),
    ];
    f.send(&bodies).await;
    f.run_drain(&f.keyring, &[]);
    let admin = f.pool().await;
    assert_eq!(count(&admin, "SELECT count(*) FROM user_logins").await, 3);
    assert_eq!(count(&admin, "SELECT count(*) FROM etl_rejects").await, 2);
    let vault_before = count(&admin, "SELECT count(*) FROM etl_vault").await;
    assert_eq!(vault_before, 5, "2 distinct IPs (one shared) and 3 devices");

    let mut child = f
        .engine_command(&[
            "vault-erase",
            f.spec_s(),
            "--where-stdin",
            "--reason",
            "GDPR request 99",
            "--actor",
            "dpo",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "user_id={a}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    exited(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("user_logins: 2 row(s) nulled, 3 vault entr(ies) deleted, 1 kept"),
        "{stdout}"
    );
    assert!(stdout.contains("1 reject(s) deleted"), "{stdout}");
    assert!(!stdout.contains("203.0.113"), "{stdout}");
    // a's rows keep no token; the vault keeps only b's values.
    assert_eq!(
        count(
            &admin,
            &format!("SELECT count(*) FROM user_logins WHERE user_id = '{a}' AND masked_ip IS NULL AND masked_device_id IS NULL")
        )
        .await,
        2
    );
    assert_eq!(count(&admin, "SELECT count(*) FROM etl_vault").await, 2);
    assert_eq!(count(&admin, "SELECT count(*) FROM etl_rejects").await, 1);
    // The shared IP is still recoverable for b.
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--where",
            &format!("user_id={b}"),
            "--reason",
            "b asked",
        ],
        &f.keyring,
        &[],
    );
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("203.0.113.10"));
    // The audit records the erasure (counts, no value), and the chain holds.
    let (kind, actor, reason): (String, String, String) =
        sqlx::query_as("SELECT kind, actor, reason FROM etl_vault_audit WHERE kind = 'erase'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), actor.as_str()), ("erase", "dpo"));
    assert!(
        reason.starts_with("GDPR request 99") && reason.contains("vault entries deleted 3"),
        "{reason}"
    );
    assert!(
        !reason.contains(a) && !reason.contains("203.0.113"),
        "{reason}"
    );
    run_engine(&["audit", "verify", f.spec_s()], &[], true);
}
