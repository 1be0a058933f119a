//! KMS-wrapped keyrings against a real KMS implementation (moto's KMS server) and real
//! LocalStack SQS and Postgres: `keygen --kms-key-id` makes a keyring whose file holds only KMS
//! blobs; the logins pipeline tokenizes and encrypts with it and `vault-decrypt` recovers; a
//! blob moved to another key fails its encryption context; each command unwraps only the keys
//! it needs; `keyring wrap` converts a plain keyring, and `add-key` extends a wrapped one.

mod common;
mod vault_common;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use etl_engine::crypto::{KeyUse, Keyring, Tokenizer};
use std::path::{Path, PathBuf};
use vault_common::*;

/// `keygen --kms-key-id` into `dir/name`.
fn kms_keygen(dir: &Path, name: &str, arn: &str) -> PathBuf {
    let p = dir.join(name);
    let out = run_engine(
        &[
            "keygen",
            p.to_str().unwrap(),
            "--kms-key-id",
            arn,
            "--kms-endpoint-url",
            &kms_endpoint(),
        ],
        &[],
        true,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(arn),
        "{out:?}"
    );
    p
}

/// Every plain key of `ring` as base64 and hex, to look for in files.
fn material_texts(ring: &Keyring) -> Vec<String> {
    ring.hash_keys
        .iter()
        .chain(&ring.encryption_keys)
        .filter_map(|k| k.material().ok())
        .flat_map(|m| [B64.encode(m), hex::encode(m)])
        .collect()
}

async fn token_of(pool: &sqlx::PgPool, user: &str) -> String {
    sqlx::query_as::<_, (String,)>("SELECT masked_ip FROM user_logins WHERE user_id = $1")
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

fn decrypt(f: &Fixture, keyring: &Path, token: &str) -> std::process::Output {
    f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--token",
            token,
            "--reason",
            "ticket 7",
        ],
        keyring,
        &[],
    )
}

#[tokio::test]
async fn kms_wrapped_keyring_runs_the_logins_pipeline_and_recovers() {
    let f = Fixture::new().await;
    let arn = fresh_kms_key().await;
    let kr = kms_keygen(f.dir.path(), "kms.json", &arn);
    let text = std::fs::read_to_string(&kr).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["kms_key_id"], arn.as_str());
    for k in json["hash_keys"]
        .as_array()
        .unwrap()
        .iter()
        .chain(json["encryption_keys"].as_array().unwrap())
    {
        assert!(k.get("key").is_none(), "{k}");
        assert!(k["wrapped_key"].as_str().unwrap().len() > 44, "{k}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kr).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let sent = logins(6, 1);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&kr, &[]);
    let pool = f.pool().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM user_logins").await,
        6,
        "every login written"
    );

    // The unwrapped keys (in this test's memory only) are what the pipeline used: tokens are
    // the hash key's in the column's domain, and the file holds none of the key bytes.
    let ring = Keyring::load(Some(&kr), KeyUse::ROTATE).await.unwrap();
    let ip_tokens = Tokenizer::new(ring.active_hash_key().unwrap())
        .unwrap()
        .domain("user_logins.masked_ip");
    let t0 = token_of(&pool, &sent[0].user_id).await;
    assert_eq!(t0, ip_tokens.token(sent[0].ip.as_bytes()));
    let secrets = material_texts(&ring);
    assert_eq!(secrets.len(), 4);
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()),
            "plaintext key material in the file"
        );
    }

    // Recovery with the wrapped keyring: audited as ever.
    let out = decrypt(&f, &kr, &t0);
    exited(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{t0}\t{}\n", sent[0].ip)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_vault_audit").await,
        1
    );

    // The same keyring from ETL_KEYRING_JSON (no file): the engine unwraps it just the same.
    let mut c = engine();
    c.args([
        "vault-decrypt",
        f.spec_s(),
        "--column",
        "masked_ip",
        "--token",
        &t0,
        "--reason",
        "ticket 8",
    ])
    .env_remove("ETL_KEYRING")
    .env("ETL_KEYRING_JSON", &text);
    let out = c.output().unwrap();
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sent[0].ip));
}

#[tokio::test]
async fn a_blob_moved_to_another_key_fails_and_only_needed_keys_are_unwrapped() {
    let f = Fixture::new().await;
    let arn = fresh_kms_key().await;
    let kr = kms_keygen(f.dir.path(), "kms.json", &arn);
    let sent = logins(2, 2);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&kr, &[]);
    let pool = f.pool().await;
    let t0 = token_of(&pool, &sent[0].user_id).await;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kr).unwrap()).unwrap();
    let enc_id = json["encryption_keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hash_id = json["hash_keys"][0]["id"].as_str().unwrap().to_string();

    // The hash key's blob put in the encryption key's place: same KMS key, but the encryption
    // context (purpose, key id) differs, so KMS refuses to unwrap it.
    let mut swapped = json.clone();
    swapped["encryption_keys"][0]["wrapped_key"] = json["hash_keys"][0]["wrapped_key"].clone();
    let swapped_path = f.dir.path().join("swapped.json");
    std::fs::write(&swapped_path, swapped.to_string()).unwrap();
    let err = exited(&decrypt(&f, &swapped_path, &t0), 1);
    assert!(
        err.contains(&format!("KMS Decrypt for key {enc_id}")) && err.contains(&arn),
        "{err}"
    );
    assert!(
        err.contains("does not belong to this key") && err.contains("InvalidCiphertextException"),
        "{err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(!errors[0].contains("headers"), "{err}");
    // The file was written with the default umask (group/others may read it): warned.
    #[cfg(unix)]
    assert!(err.contains("make it owner-only (chmod 600)"), "{err}");
    let lib = Keyring::load(Some(&swapped_path), KeyUse::RECOVER)
        .await
        .unwrap_err()
        .to_string();
    assert!(lib.contains(&enc_id), "{lib}");

    // A broken hash-key blob does not stop recovery, which never unwraps the hash key (least
    // key: fewer kms:Decrypt calls, fewer keys in memory) ...
    let mut broken = json.clone();
    broken["hash_keys"][0]["wrapped_key"] = B64.encode([9u8; 180]).into();
    let broken_path = f.dir.path().join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let out = decrypt(&f, &broken_path, &t0);
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sent[0].ip));
    let ring = Keyring::load(Some(&broken_path), KeyUse::RECOVER)
        .await
        .unwrap();
    assert!(!ring.hash_keys[0].is_loaded() && ring.encryption_keys[0].is_loaded());
    // ... but `run`, which tokenizes, needs it and says which key failed.
    let out = f.engine(
        &["run", f.spec_s(), "--drain", "--progress", "off"],
        &broken_path,
        &[],
    );
    let err = exited(&out, 1);
    assert!(
        err.contains(&format!("KMS Decrypt for key {hash_id}")),
        "{err}"
    );

    // Another KMS key cannot unwrap the blobs either.
    let other = fresh_kms_key().await;
    let mut moved = json.clone();
    moved["kms_key_id"] = other.clone().into();
    let moved_path = f.dir.path().join("moved.json");
    std::fs::write(&moved_path, moved.to_string()).unwrap();
    let err = exited(&decrypt(&f, &moved_path, &t0), 1);
    assert!(err.contains(&other) && err.contains(&enc_id), "{err}");
}

#[tokio::test]
async fn keyring_wrap_converts_a_plain_keyring_and_add_key_extends_it() {
    let f = Fixture::new().await;
    let arn = fresh_kms_key().await;
    let sent = logins(3, 3);
    f.send(&sent.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    f.run_drain(&f.keyring, &[]);
    let pool = f.pool().await;
    let t0 = token_of(&pool, &sent[0].user_id).await;

    let plain = Keyring::from_file(&f.keyring).unwrap();
    let secrets = material_texts(&plain);
    assert_eq!(secrets.len(), 4);
    let old_text = std::fs::read_to_string(&f.keyring).unwrap();
    assert!(secrets.iter().any(|s| old_text.contains(s.as_str())));

    let out = run_engine(
        &[
            "keyring",
            "wrap",
            f.keyring_s(),
            "--kms-key-id",
            &arn,
            "--kms-endpoint-url",
            &kms_endpoint(),
        ],
        &[],
        true,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Wrapped 2 key(s)"));
    let text = std::fs::read_to_string(&f.keyring).unwrap();
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "plaintext key material left");
    }
    // The directory holds the keyring only: no temporary copy with the old material.
    assert_eq!(
        std::fs::read_dir(f.dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("keyring"))
            .count(),
        1
    );
    // A second wrap is refused.
    let again = run_engine(
        &["keyring", "wrap", f.keyring_s(), "--kms-key-id", &arn],
        &[],
        false,
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already wrapped"));

    // Values written before the wrap still decrypt, with the same keys, now from KMS.
    let out = decrypt(&f, &f.keyring, &t0);
    exited(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sent[0].ip));

    // A new encryption key is made inside KMS; new values go under it, old ones still decrypt.
    let out = run_engine(
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("Added"));
    let ring = Keyring::from_file(&f.keyring).unwrap();
    let new_key = ring.active_encryption_key().map(|_| ()).unwrap_err();
    assert!(
        new_key.to_string().contains("not loaded"),
        "administration unwraps nothing: {new_key}"
    );
    let new_id = ring.encryption_keys[1].id.clone();
    let late = logins(1, 4);
    f.send(&[late[0].body()]).await;
    f.run_drain(&f.keyring, &[]);
    let (key_id,): (String,) = sqlx::query_as(
        "SELECT v.key_id FROM etl_vault v JOIN user_logins u ON u.masked_ip = encode(v.token, 'hex') WHERE u.user_id = $1",
    )
    .bind(&late[0].user_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(key_id, new_id);
    let t_late = token_of(&pool, &late[0].user_id).await;
    for (t, ip) in [(&t0, &sent[0].ip), (&t_late, &late[0].ip)] {
        let out = decrypt(&f, &f.keyring, t);
        exited(&out, 0);
        assert!(String::from_utf8_lossy(&out.stdout).contains(ip.as_str()));
    }
}
