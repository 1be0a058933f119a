//! Audited recovery and misuse, against real LocalStack and Postgres: every `vault-decrypt`
//! leaves an audit row (by token, by tokens on stdin, by row selector; text, CSV and JSON); the
//! audit table is append-only; when the audit row cannot be written nothing is decrypted and
//! the exit code is non-zero; tampered ciphertexts, wrong keyrings and removed keys fail with
//! a one-line error naming the token or key, never a panic.

mod common;
mod vault_common;
use common::*;
use std::io::Write;
use std::process::{Output, Stdio};
use vault_common::*;

async fn loaded(n: usize) -> (Fixture, Vec<Login>) {
    let f = Fixture::new().await;
    let sent = logins(n, 1);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    (f, sent)
}

async fn ip_token(pool: &sqlx::PgPool, user: &str) -> String {
    sqlx::query_as::<_, (String,)>("SELECT masked_ip FROM user_logins WHERE user_id = $1")
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

async fn audit_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM etl_vault_audit")
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

/// Writes a keyring file owner-only, as keyrings are (a looser file adds a warning line).
fn write_private(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn decrypt(f: &Fixture, keyring: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "vault-decrypt",
        f.spec_s(),
        "--column",
        "masked_ip",
        "--reason",
        "ticket 42",
    ];
    args.extend_from_slice(extra);
    f.engine(&args, keyring, &[])
}

#[tokio::test]
async fn every_recovery_is_audited_in_every_form() {
    let (f, sent) = loaded(5).await;
    let pool = f.pool().await;
    let t0 = ip_token(&pool, &sent[0].user_id).await;
    let t1 = ip_token(&pool, &sent[1].user_id).await;

    // By token, as text, with an explicit actor.
    let out = decrypt(
        &f,
        &f.keyring,
        &["--token", &t0, "--actor", "alice@example.org"],
    );
    exited(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{t0}\t{}\n", sent[0].ip)
    );

    // Several tokens on stdin, as CSV; one unknown token is reported and makes the exit code 3.
    let mut child = f
        .engine_command(&[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--stdin",
            "--reason",
            "ticket 43",
            "--format",
            "csv",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{t0}\n{t1}\n\nnot-a-token\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = exited(&out, 3);
    assert!(err.contains("not-a-token"), "{err}");
    let csv = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.remove(0), "token,value");
    lines.sort();
    let mut want = vec![
        format!("{t0},{}", sent[0].ip),
        format!("{t1},{}", sent[1].ip),
    ];
    want.sort();
    assert_eq!(lines, want);

    // By row selector, as JSON; the value is bound, so quotes cannot change the query.
    let out = decrypt(
        &f,
        &f.keyring,
        &[
            "--where",
            &format!("user_id={}", sent[2].user_id),
            "--format",
            "json",
        ],
    );
    exited(&out, 0);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got[0]["value"], sent[2].ip.as_str());
    let out = decrypt(
        &f,
        &f.keyring,
        &["--where", "user_id=x' OR '1'='1", "--format", "json"],
    );
    exited(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // Four recoveries, four audit rows, each saying who, what, how many and why.
    type AuditRow = (String, String, String, String, i32, String, Vec<String>);
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT actor, db_user, spec, column_name, value_count, reason, tokens FROM etl_vault_audit ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].0, "alice@example.org");
    assert_eq!(rows[0].1, "postgres");
    assert_eq!(rows[0].2, f.spec_s());
    assert_eq!(
        (rows[0].3.as_str(), rows[0].4, rows[0].5.as_str()),
        ("masked_ip", 1, "ticket 42")
    );
    assert_eq!(rows[0].6, vec![t0.clone()]);
    let os_user = whoami::username().unwrap();
    assert_eq!(rows[1].0, os_user, "default actor is the OS user");
    assert_eq!((rows[1].4, rows[1].5.as_str()), (2, "ticket 43"));
    assert_eq!(rows[1].6.len(), 3);
    assert_eq!(rows[2].4, 1);
    assert_eq!(rows[3].4, 0);

    // A reason is required, by the CLI and by the database function itself.
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--token",
            &t0,
            "--reason",
            " ",
        ],
        &f.keyring,
        &[],
    );
    exited(&out, 2);
    let direct = sqlx::query(
        "SELECT etl_vault_recover_grant('x', 'user_logins', 'masked_ip', ARRAY[$1], 'me', '  ')",
    )
    .bind(&t0)
    .fetch_all(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(direct.contains("reason"), "{direct}");

    // Append-only, for the owner too.
    for sql in [
        "UPDATE etl_vault_audit SET reason = 'nothing to see'",
        "DELETE FROM etl_vault_audit",
        "TRUNCATE etl_vault_audit",
    ] {
        let e = sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(audit_count(&pool).await, 4);
    pool.close().await;
}

#[tokio::test]
async fn no_audit_row_means_nothing_decrypted() {
    let (f, sent) = loaded(3).await;
    let pool = f.pool().await;
    let token = ip_token(&pool, &sent[0].user_id).await;
    exec(
        &f.db,
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit storage is full'; END $$;
         CREATE TRIGGER refuse_audit BEFORE INSERT ON etl_vault_audit FOR EACH ROW EXECUTE PROCEDURE refuse_audit();",
    )
    .await;
    for format in ["text", "csv", "json"] {
        let out = decrypt(&f, &f.keyring, &["--token", &token, "--format", format]);
        let err = exited(&out, 1);
        assert!(
            out.stdout.is_empty(),
            "{format}: printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.contains("audit") && err.contains("nothing was decrypted"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains(&sent[0].ip));
    }
    let out = decrypt(
        &f,
        &f.keyring,
        &["--where", &format!("user_id={}", sent[1].user_id)],
    );
    exited(&out, 1);
    assert!(out.stdout.is_empty());
    exec(&f.db, "DROP TRIGGER refuse_audit ON etl_vault_audit").await;
    assert_eq!(audit_count(&pool).await, 0);
    // With the audit table writable again, the same call works and is audited.
    exited(&decrypt(&f, &f.keyring, &["--token", &token]), 0);
    assert_eq!(audit_count(&pool).await, 1);
    pool.close().await;
}

#[tokio::test]
async fn tampered_values_wrong_keyrings_and_removed_keys_fail_cleanly() {
    let (f, sent) = loaded(4).await;
    let pool = f.pool().await;
    let t: Vec<String> = ip_tokens(&pool, &sent).await;
    let key_a = etl_engine::crypto::Keyring::from_file(&f.keyring)
        .unwrap()
        .active_encryption_key()
        .unwrap()
        .id
        .clone();
    let original = f.dir.path().join("original.json");
    std::fs::copy(&f.keyring, &original).unwrap();

    // A ciphertext copied onto another row (with its nonce and key id) does not decrypt there.
    exec(
        &f.db,
        &format!(
            "UPDATE etl_vault v SET key_id = s.key_id, nonce = s.nonce, ciphertext = s.ciphertext \
             FROM etl_vault s WHERE s.token = decode('{}', 'hex') AND s.column_id = v.column_id AND v.token = decode('{}', 'hex') \
             AND v.column_id = (SELECT id FROM etl_vault_columns WHERE column_name = 'masked_ip')",
            t[0], t[1]
        ),
    )
    .await;
    let out = decrypt(&f, &f.keyring, &["--token", &t[1]]);
    let err = exited(&out, 1);
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&t[1]) && err.contains(&format!("decryption with key {key_a} failed")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains(&sent[0].ip) && !err.contains(&sent[1].ip));
    // The original row is untouched and still decrypts.
    exited(&decrypt(&f, &f.keyring, &["--token", &t[0]]), 0);

    // One flipped bit.
    exec(
        &f.db,
        &format!(
            "UPDATE etl_vault SET ciphertext = set_byte(ciphertext, 3, get_byte(ciphertext, 3) # 1) WHERE token = decode('{}', 'hex') \
             AND column_id = (SELECT id FROM etl_vault_columns WHERE column_name = 'masked_ip')",
            t[2]
        ),
    )
    .await;
    let err = exited(&decrypt(&f, &f.keyring, &["--token", &t[2]]), 1);
    assert!(err.contains(&t[2]) && err.contains("failed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A keyring made elsewhere: its key ids are not those of the data.
    let other = keygen(f.dir.path(), "other.json");
    let err = exited(&decrypt(&f, &other, &["--token", &t[3]]), 1);
    assert!(
        err.contains(&format!("key {key_a} is not in the keyring")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The same key id with different key bytes.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other).unwrap()).unwrap();
    json["encryption_keys"][0]["id"] = key_a.clone().into();
    let forged = f.dir.path().join("forged.json");
    write_private(&forged, &json.to_string());
    let err = exited(&decrypt(&f, &forged, &["--token", &t[3]]), 1);
    assert!(
        err.contains(&format!("decryption with key {key_a} failed")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A retired key, then a removed key, named in the error.
    run_engine(
        &[
            "keyring",
            "add-key",
            f.keyring_s(),
            "--purpose",
            "encryption",
        ],
        &[],
        true,
    );
    run_engine(
        &["keyring", "set-state", f.keyring_s(), &key_a, "retired"],
        &[],
        true,
    );
    let err = exited(&decrypt(&f, &f.keyring, &["--token", &t[3]]), 1);
    assert!(err.contains(&format!("key {key_a} is retired")), "{err}");
    run_engine(&["keyring", "remove-key", f.keyring_s(), &key_a], &[], true);
    let err = exited(&decrypt(&f, &f.keyring, &["--token", &t[3]]), 1);
    assert!(
        err.contains(&format!("key {key_a} is not in the keyring")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A keyring file that is not JSON: one line, exit 2, content not echoed.
    let broken = f.dir.path().join("broken.json");
    write_private(&broken, "{\"hash_keys\": [ c2VjcmV0");
    let err = exited(&decrypt(&f, &broken, &["--token", &t[3]]), 2);
    assert!(
        err.contains("broken.json") && !err.contains("c2VjcmV0"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Rotation meets the damaged rows: it reports them and leaves them alone, never panics.
    run_engine(
        &[
            "keyring",
            "add-key",
            original.to_str().unwrap(),
            "--purpose",
            "encryption",
        ],
        &[],
        true,
    );
    let out = f.engine(&["vault-rotate", f.spec_s()], &original, &[]);
    let err = exited(&out, 1);
    assert!(
        err.contains("2 value(s) could not be decrypted") && err.contains("masked_ip/"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("etl_vault: 6 re-encrypted")
            && stdout.contains(&format!("left: 2 under {key_a}")),
        "{stdout}"
    );

    // Every attempt that reached the vault was audited, failed ones included.
    assert_eq!(audit_count(&pool).await, 7);
    pool.close().await;
}

async fn ip_tokens(pool: &sqlx::PgPool, sent: &[Login]) -> Vec<String> {
    let mut out = Vec::new();
    for l in sent {
        out.push(ip_token(pool, &l.user_id).await);
    }
    out
}

#[tokio::test]
async fn concurrent_first_starts_create_the_audit_guard_and_recovery_function_once() {
    let f = Fixture::new().await;
    // Several processes meet an empty database at the same moment (e.g. N copies deployed at once).
    let children: Vec<_> = (0..4)
        .map(|_| {
            f.engine_command(&["vault-rotate", f.spec_s()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        exited(&c.wait_with_output().unwrap(), 0);
    }
    let pool = f.pool().await;
    let (functions,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_proc WHERE proname IN ('etl_vault_recover', 'etl_vault_audit_append_only')").fetch_one(&pool).await.unwrap();
    assert_eq!(functions, 2);
    let (secdef, public_can_execute): (bool, bool) = sqlx::query_as(
        "SELECT prosecdef, has_function_privilege('public', oid, 'EXECUTE') FROM pg_proc WHERE proname = 'etl_vault_recover'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(secdef && !public_can_execute);
    let (triggers,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'etl_vault_audit_append_only'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, 1);
    pool.close().await;
}
