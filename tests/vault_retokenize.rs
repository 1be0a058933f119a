//! Replacing a hash key, against real LocalStack and Postgres: after a new hash key, new rows
//! of a value no longer match old ones; `vault-retokenize` gives every encrypted column the new
//! key's tokens, in the vault and the target table, so equality holds again and every value
//! still decrypts. It also moves a vault written with `vault.legacy_tokens` (undomained tokens)
//! to token domains.

mod common;
mod vault_common;
use common::*;
use etl_engine::crypto::Keyring;
use etl_engine::transform::Tokenizer;
use std::collections::HashMap;
use vault_common::*;

#[tokio::test]
async fn retokenize_after_a_new_hash_key_restores_equality() {
    let f = Fixture::new().await;
    let kr = f.keyring_s();
    // 20 logins over 10 distinct IPs.
    let mut sent = logins(20, 1);
    for i in 10..20 {
        sent[i].ip = sent[i - 10].ip.clone();
    }
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    let pool = f.pool().await;
    let old: HashMap<String, (String, String)> = sqlx::query_as::<_, (String, String, String)>(
        "SELECT user_id, masked_ip, masked_device_id FROM user_logins",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(u, ip, d)| (u, (ip, d)))
    .collect();

    // A new hash key is refused without --force, then added.
    let out = f.engine(
        &["keyring", "add-key", kr, "--purpose", "hash"],
        &f.keyring,
        &[],
    );
    let err = exited(&out, 2);
    assert!(err.contains("--force") && err.contains("token"), "{err}");
    run_engine(
        &["keyring", "add-key", kr, "--purpose", "hash", "--force"],
        &[],
        true,
    );
    let ring = Keyring::from_file(&f.keyring).unwrap();
    let tokenizer = Tokenizer::new(ring.active_hash_key().unwrap()).unwrap();
    // Each column has its own token domain (`table.column`).
    let tok = tokenizer.domain("user_logins.masked_ip");
    let tok_device = tokenizer.domain("user_logins.masked_device_id");

    // The problem: the same IP now gets another token.
    let late = Login {
        user_id: "u-late".into(),
        ip: sent[0].ip.clone(),
        device_id: "555-01-9999".into(),
    };
    f.send(&[late.body()]).await;
    f.run_drain(&f.keyring, &[]);
    let (late_ip,): (String,) =
        sqlx::query_as("SELECT masked_ip FROM user_logins WHERE user_id = 'u-late'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_ne!(late_ip, old[&sent[0].user_id].0);
    assert_eq!(late_ip, tok.token(sent[0].ip.as_bytes()));

    // Only encrypted columns can be re-tokenized.
    let err = exited(
        &f.engine(
            &["vault-retokenize", f.spec_s(), "--column", "user_id"],
            &f.keyring,
            &[],
        ),
        2,
    );
    assert!(
        err.contains("user_id") && err.contains("neither hashed nor encrypted"),
        "{err}"
    );

    let out = f.engine(
        &[
            "vault-retokenize",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--column",
            "masked_device_id",
            "--batch-size",
            "3",
        ],
        &f.keyring,
        &[],
    );
    exited(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("user_logins.masked_ip: 10 token(s) replaced")
            && stdout.contains("(20 target row(s) updated), 1 already current"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user_logins.masked_device_id: 20 token(s) replaced"),
        "{stdout}"
    );

    // Every row now has the new key's tokens; the late row matches the early ones again.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT user_id, masked_ip, masked_device_id FROM user_logins")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 21);
    let mut all = sent.clone();
    all.push(late.clone());
    let by_user: HashMap<&str, &Login> = all.iter().map(|l| (l.user_id.as_str(), l)).collect();
    for (u, ip, d) in &rows {
        assert_eq!(ip, &tok.token(by_user[u.as_str()].ip.as_bytes()), "{u}");
        assert_eq!(
            d,
            &tok_device.token(by_user[u.as_str()].device_id.as_bytes()),
            "{u}"
        );
    }
    let (same,): (i64,) = sqlx::query_as("SELECT count(*) FROM user_logins WHERE masked_ip = $1")
        .bind(&late_ip)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(same, 3);
    // No old token is left in the vault, and one entry per distinct value.
    let olds: Vec<String> = old
        .values()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let (left,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM etl_vault WHERE encode(token, 'hex') = ANY($1)")
            .bind(&olds)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
    let per_column: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT c.column_name, count(*) FROM etl_vault v JOIN etl_vault_columns c ON c.id = v.column_id GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        per_column,
        HashMap::from([
            ("masked_ip".to_string(), 10),
            ("masked_device_id".to_string(), 21)
        ])
    );

    // The new tokens decrypt; a second run has nothing to do.
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--where",
            &format!("user_id={}", sent[13].user_id),
            "--reason",
            "retokenize test",
        ],
        &f.keyring,
        &[],
    );
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(&format!("\t{}\n", sent[3].ip)));
    let out = f.engine(
        &["vault-retokenize", f.spec_s(), "--column", "masked_ip"],
        &f.keyring,
        &[],
    );
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("masked_ip: 0 token(s) replaced"));
    pool.close().await;
}

#[tokio::test]
async fn retokenize_moves_a_legacy_vault_to_token_domains() {
    let f = Fixture::new().await;
    let domained_spec = std::fs::read_to_string(&f.spec).unwrap();
    let legacy_spec = domained_spec.replace("vault:\n", "vault:\n  legacy_tokens: true\n");
    assert_ne!(legacy_spec, domained_spec);
    std::fs::write(&f.spec, &legacy_spec).unwrap();
    let sent = logins(4, 6);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    let pool = f.pool().await;
    let ring = Keyring::from_file(&f.keyring).unwrap();
    let tokenizer = Tokenizer::new(ring.active_hash_key().unwrap()).unwrap();
    let rows = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT user_id, masked_ip, masked_device_id FROM user_logins ORDER BY user_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    // Legacy mode: both columns use the undomained token of the hash key itself.
    let legacy = tokenizer.clone().legacy(true).domain("any");
    let by_user: HashMap<&str, &Login> = sent.iter().map(|l| (l.user_id.as_str(), l)).collect();
    for (u, ip, d) in rows(pool.clone()).await {
        assert_eq!(ip, legacy.token(by_user[u.as_str()].ip.as_bytes()), "{u}");
        assert_eq!(d, legacy.token(by_user[u.as_str()].device_id.as_bytes()));
    }

    // Without the flag, re-tokenizing both columns moves them to their domains.
    std::fs::write(&f.spec, &domained_spec).unwrap();
    let out = f.engine(
        &[
            "vault-retokenize",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--column",
            "masked_device_id",
        ],
        &f.keyring,
        &[],
    );
    exited(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 token(s) replaced"),
        "{out:?}"
    );
    let ip_domain = tokenizer.domain("user_logins.masked_ip");
    let device_domain = tokenizer.domain("user_logins.masked_device_id");
    let after = rows(pool.clone()).await;
    assert_eq!(after.len(), 4);
    for (u, ip, d) in &after {
        assert_eq!(
            ip,
            &ip_domain.token(by_user[u.as_str()].ip.as_bytes()),
            "{u}"
        );
        assert_eq!(
            d,
            &device_domain.token(by_user[u.as_str()].device_id.as_bytes())
        );
    }
    // The moved values still decrypt under their new tokens.
    let out = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--token",
            &after[0].1,
            "--reason",
            "migration check",
        ],
        &f.keyring,
        &[],
    );
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&by_user[after[0].0.as_str()].ip));
}
