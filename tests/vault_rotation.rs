//! Key rotation end to end against real LocalStack and Postgres: run the pipeline under key A,
//! add key B, `vault-rotate`, remove key A, and every vault value and reject body still
//! decrypts; rotation resumes where it stopped and stays correct next to a concurrent rotation
//! and a pipeline still writing with the old key; encryptions are counted per key, during a run
//! as well as at its end.

mod common;
mod vault_common;
use common::*;
use etl_engine::crypto::{Binding, Keyring, VaultCipher};
use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use vault_common::*;

/// Recovers every token of `column` through `vault-decrypt --stdin --format json`.
fn decrypt_all(f: &Fixture, column: &str, tokens: &[String]) -> HashMap<String, String> {
    let mut child = engine()
        .args([
            "vault-decrypt",
            f.spec_s(),
            "--column",
            column,
            "--stdin",
            "--reason",
            "rotation test",
            "--format",
            "json",
        ])
        .env("ETL_KEYRING", &f.keyring)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(tokens.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    exited(&out, 0);
    let items: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    items
        .into_iter()
        .map(|v| {
            (
                v["token"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Checks that every row's masked columns decrypt to the values that were sent.
async fn assert_all_rows_decrypt(f: &Fixture, sent: &[Login]) {
    let pool = f.pool().await;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT user_id, masked_ip, masked_device_id FROM user_logins")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), sent.len());
    let by_user: HashMap<&str, &Login> = sent.iter().map(|l| (l.user_id.as_str(), l)).collect();
    let ips = decrypt_all(
        f,
        "masked_ip",
        &rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
    );
    let devices = decrypt_all(
        f,
        "masked_device_id",
        &rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
    );
    for (user, ip_token, device_token) in &rows {
        let l = by_user[user.as_str()];
        assert_eq!(ips.get(ip_token), Some(&l.ip), "ip of {user}");
        assert_eq!(
            devices.get(device_token),
            Some(&l.device_id),
            "device of {user}"
        );
    }
    pool.close().await;
}

fn active_encryption_key(path: &std::path::Path) -> String {
    Keyring::from_file(path)
        .unwrap()
        .active_encryption_key()
        .unwrap()
        .id
        .clone()
}

async fn count_by_key(pool: &sqlx::PgPool, table: &str) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(format!(
        "SELECT key_id, count(*) FROM {table} WHERE key_id IS NOT NULL GROUP BY 1"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// "etl_vault: 80 re-encrypted, 0 changed concurrently, ..." → (80, 0).
fn rotated(stdout: &str, table: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.contains(&format!("{table}:")))
        .unwrap_or_else(|| panic!("no {table} line in:\n{stdout}"));
    let num = |after: &str| -> u64 {
        let head = line.split(after).next().unwrap();
        head.rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (num(" re-encrypted"), num(" changed concurrently"))
}

#[tokio::test]
async fn rotate_then_remove_the_old_key_and_everything_still_decrypts() {
    let f = Fixture::new().await;
    let kr = f.keyring_s();
    let first = logins(40, 1);
    let rejected = [
        r#"{"user_id": null, "ip": "203.0.113.9", "device_id": "777-00-0001"}"#.to_string(),
        "not json 203.0.113.10".to_string(),
    ];
    let mut bodies: Vec<String> = first.iter().map(Login::body).collect();
    bodies.extend(rejected.iter().cloned());
    f.send(&bodies).await;
    f.run_drain(&f.keyring, &[]);
    let key_a = active_encryption_key(&f.keyring);

    let out = run_engine(
        &["keyring", "add-key", kr, "--purpose", "encryption"],
        &[],
        true,
    );
    let key_b = active_encryption_key(&f.keyring);
    assert_ne!(key_a, key_b);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{key_a} is now decrypt_only")));

    // More rows, now under key B, so the rotation meets both keys.
    let second = logins(10, 2);
    f.send(&second.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    let pool = f.pool().await;
    let before = count_by_key(&pool, "etl_vault").await;
    assert_eq!(before.get(&key_a), Some(&80));
    assert_eq!(before.get(&key_b), Some(&20));
    assert_eq!(
        count_by_key(&pool, "etl_rejects").await.get(&key_a),
        Some(&2)
    );

    // The old key cannot be removed while values still use it.
    let out = f.engine(
        &["keyring", "remove-key", kr, &key_a, "--spec", f.spec_s()],
        &f.keyring,
        &[],
    );
    let err = exited(&out, 2);
    assert!(
        err.contains(&key_a) && err.contains("vault-rotate") && err.contains("80 vault value"),
        "{err}"
    );

    let out = f.engine(
        &["vault-rotate", f.spec_s(), "--batch-size", "7"],
        &f.keyring,
        &[],
    );
    exited(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(rotated(&stdout, "etl_vault"), (80, 0), "{stdout}");
    assert_eq!(rotated(&stdout, "etl_rejects"), (2, 0), "{stdout}");
    assert_eq!(
        count_by_key(&pool, "etl_vault").await,
        HashMap::from([(key_b.clone(), 100)])
    );
    assert_eq!(
        count_by_key(&pool, "etl_rejects").await,
        HashMap::from([(key_b.clone(), 2)])
    );
    let (stamped,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM etl_vault WHERE rotated_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stamped, 80);

    // A second run has nothing left to do.
    let out = f.engine(&["vault-rotate", f.spec_s()], &f.keyring, &[]);
    exited(&out, 0);
    assert_eq!(
        rotated(&String::from_utf8_lossy(&out.stdout), "etl_vault"),
        (0, 0)
    );

    // Retire, then remove key A: the keyring no longer has it at all.
    run_engine(&["keyring", "set-state", kr, &key_a, "retired"], &[], true);
    run_engine(
        &["keyring", "remove-key", kr, &key_a, "--spec", f.spec_s()],
        &[],
        true,
    );
    let listing = String::from_utf8_lossy(&run_engine(&["keyring", "list", kr], &[], true).stdout)
        .to_string();
    assert!(
        !listing.contains(&key_a) && listing.contains(&key_b),
        "{listing}"
    );

    // Every value still decrypts, through the CLI (vault) and the library (reject bodies).
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    assert_all_rows_decrypt(&f, &all).await;
    let ring = Keyring::from_file(&f.keyring).unwrap();
    let cipher = VaultCipher::new(&ring).unwrap();
    let rejects: Vec<(String, String, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT message_id, key_id, nonce, body_ciphertext FROM etl_rejects")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut bodies: Vec<String> = rejects
        .iter()
        .map(|(id, kid, nonce, ct)| {
            let b = Binding {
                scope: "logins",
                column: "rejects",
                token: id,
            };
            String::from_utf8(cipher.decrypt(b, kid, nonce, ct).unwrap().to_vec()).unwrap()
        })
        .collect();
    bodies.sort();
    let mut want = rejected.to_vec();
    want.sort();
    assert_eq!(bodies, want);
    pool.close().await;
}

#[tokio::test]
async fn rotation_resumes_and_is_safe_next_to_a_concurrent_rotation_and_an_old_pipeline() {
    let f = Fixture::new().await;
    let first = logins(60, 1);
    f.send(&first.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    let key_a = active_encryption_key(&f.keyring);
    // A pipeline that was not restarted keeps encrypting with key A.
    let only_a = f.dir.path().join("only-a.json");
    std::fs::copy(&f.keyring, &only_a).unwrap();
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
    let key_b = active_encryption_key(&f.keyring);

    // Stopped part-way: exit 3, and the rest is still under key A.
    let out = f.engine(
        &[
            "vault-rotate",
            f.spec_s(),
            "--batch-size",
            "10",
            "--max-rows",
            "25",
        ],
        &f.keyring,
        &[],
    );
    let err = exited(&out, 3);
    assert!(err.contains("run vault-rotate again"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains(&format!("left: 95 under {key_a}")),
        "{stdout}"
    );
    let mut total = rotated(&stdout, "etl_vault").0;
    assert_eq!(total, 25);

    // Two rotations and an old pipeline at once.
    let second = logins(30, 2);
    f.send(&second.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    let spawn = |args: &[&str], keyring: &std::path::Path| {
        engine()
            .args(args)
            .env("ETL_KEYRING", keyring)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let r1 = spawn(
        &["vault-rotate", f.spec_s(), "--batch-size", "5"],
        &f.keyring,
    );
    let r2 = spawn(
        &["vault-rotate", f.spec_s(), "--batch-size", "5"],
        &f.keyring,
    );
    let old = spawn(
        &["run", f.spec_s(), "--drain", "--progress", "off"],
        &only_a,
    );
    let mut raced = 0;
    for child in [r1, r2] {
        let out = child.wait_with_output().unwrap();
        // 3: the old pipeline added rows under key A after this rotation passed them.
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(3)),
            "{code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (n, r) = rotated(&String::from_utf8_lossy(&out.stdout), "etl_vault");
        total += n;
        raced += r;
    }
    exited(&old.wait_with_output().unwrap(), 0);
    let out = f.engine(&["vault-rotate", f.spec_s()], &f.keyring, &[]);
    exited(&out, 0);
    total += rotated(&String::from_utf8_lossy(&out.stdout), "etl_vault").0;

    // Every row was under key A once, and compare-and-set rotated each exactly once.
    let pool = f.pool().await;
    assert_eq!(
        count_by_key(&pool, "etl_vault").await,
        HashMap::from([(key_b, 180)])
    );
    assert_eq!(total, 180, "rows rotated over all runs (raced: {raced})");
    let (stamped,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM etl_vault WHERE rotated_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stamped, 180);
    pool.close().await;

    // Without key A, everything decrypts.
    run_engine(
        &[
            "keyring",
            "remove-key",
            f.keyring_s(),
            &key_a,
            "--spec",
            f.spec_s(),
        ],
        &[],
        true,
    );
    let mut all = first;
    all.extend(second);
    assert_all_rows_decrypt(&f, &all).await;
}

async fn usage(pool: &sqlx::PgPool, key: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT encryptions FROM etl_key_usage WHERE key_id = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|r| r.0)
        .unwrap_or(0)
}

#[tokio::test]
async fn key_usage_accumulates_across_runs_and_is_written_during_a_run() {
    let f = Fixture::new().await;
    let key_a = active_encryption_key(&f.keyring);
    // Distinct values: one encryption per masked value, one per reject body.
    let mut bodies: Vec<String> = logins(30, 1).iter().map(Login::body).collect();
    bodies.push("not json".into());
    f.send(&bodies).await;
    f.run_drain(&f.keyring, &[]);
    let pool = f.pool().await;
    assert_eq!(usage(&pool, &key_a).await, 61);
    f.send(&logins(20, 2).iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    assert_eq!(usage(&pool, &key_a).await, 101);

    // Rotation encrypts too, under the new key.
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
    let key_b = active_encryption_key(&f.keyring);
    exited(&f.engine(&["vault-rotate", f.spec_s()], &f.keyring, &[]), 0);
    assert_eq!(usage(&pool, &key_b).await, 101);
    assert_eq!(usage(&pool, &key_a).await, 101);

    // A run that never ends on its own: counts appear while it runs, and survive a SIGKILL.
    f.send(&logins(10, 3).iter().map(Login::body).collect::<Vec<_>>())
        .await;
    let mut child = engine()
        .args(["run", f.spec_s(), "--progress", "off"])
        .env("ETL_KEYRING", &f.keyring)
        .env("ETL_KEY_USAGE_FLUSH_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if usage(&pool, &key_b).await == 121 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended on its own"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "key usage was not written while running: {}",
            usage(&pool, &key_b).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run must still be running"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(usage(&pool, &key_b).await, 121);
    pool.close().await;
}
