//! Helpers for the vault tests: a fresh database, queue, keyring and logins spec per test;
//! messages with known, distinct PII; running the engine; psql for the shipped SQL scripts;
//! login roles for the least-privilege tests.
#![allow(dead_code)]

use super::common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// One test's world: its own database, queue, keyring and spec.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub endpoint: String,
    pub queue_url: String,
    pub spec: PathBuf,
    pub keyring: PathBuf,
}

impl Fixture {
    /// Fresh database with the users' table, fresh queue, new keyring, logins spec.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_db().await;
        exec(&db, USER_LOGINS_DDL).await;
        let endpoint = sqs_endpoint();
        let (name, queue_url) = fresh_queue(&endpoint).await;
        let keyring = keygen(dir.path(), "keyring.json");
        let spec = logins_spec(dir.path(), &endpoint, &name, &db, "auto");
        // The spec's own setup registers its encrypted columns for recovery.
        run_engine(&["setup", spec.to_str().unwrap()], &[], true);
        Fixture {
            dir,
            db,
            endpoint,
            queue_url,
            spec,
            keyring,
        }
    }

    pub fn spec_s(&self) -> &str {
        self.spec.to_str().unwrap()
    }

    pub fn keyring_s(&self) -> &str {
        self.keyring.to_str().unwrap()
    }

    /// Sends message bodies to the queue.
    pub async fn send(&self, bodies: &[String]) {
        let c = sqs_client(&self.endpoint).await;
        for chunk in bodies.chunks(10) {
            let mut req = c.send_message_batch().queue_url(&self.queue_url);
            for (i, b) in chunk.iter().enumerate() {
                req = req.entries(
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .unwrap(),
                );
            }
            let out = req.send().await.unwrap();
            assert!(out.failed.is_empty(), "send failed: {:?}", out.failed);
        }
    }

    /// `run --drain` with a keyring file; panics with the output if it fails.
    pub fn run_drain(&self, keyring: &Path, envs: &[(&str, &str)]) -> Output {
        let mut all = vec![("ETL_KEYRING", keyring.to_str().unwrap())];
        all.extend_from_slice(envs);
        run_engine(
            &["run", self.spec_s(), "--drain", "--progress", "off"],
            &all,
            true,
        )
    }

    /// Runs the engine with this fixture's keyring (or another) and returns its output, whatever it is.
    pub fn engine(&self, args: &[&str], keyring: &Path, envs: &[(&str, &str)]) -> Output {
        let mut c = engine();
        c.args(args).env("ETL_KEYRING", keyring);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// The engine with this fixture's keyring, to spawn with pipes.
    pub fn engine_command(&self, args: &[&str]) -> std::process::Command {
        let mut c = engine();
        c.args(args).env("ETL_KEYRING", &self.keyring);
        c
    }

    /// A pool on the test database (as its owner).
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.db).await.unwrap()
    }
}

/// A login message with known PII.
#[derive(Clone)]
pub struct Login {
    pub user_id: String,
    pub ip: String,
    pub device_id: String,
}

impl Login {
    pub fn body(&self) -> String {
        serde_json::json!({
            "user_id": self.user_id, "app_version": "2.3.0", "device_type": "android",
            "ip": self.ip, "locale": "RU", "device_id": self.device_id
        })
        .to_string()
    }
}

/// `n` logins with distinct IPs (TEST-NET-2, 198.51.100.0/24 and up) and device ids.
pub fn logins(n: usize, tag: u8) -> Vec<Login> {
    (0..n)
        .map(|i| Login {
            user_id: format!("u-{tag}-{i}"),
            ip: format!("198.51.{}.{}", 100 + tag as usize + i / 250, 1 + i % 250),
            device_id: format!("555-{:02}-{:04}", tag, i),
        })
        .collect()
}

/// Asserts the engine did not panic and exited with `code`; returns stderr.
pub fn exited(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "the engine panicked:\n{err}");
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// The `psql` client that ships with the server binaries.
pub fn psql_bin() -> PathBuf {
    for dir in ["/usr/lib/postgresql/15/bin", "/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("psql");
        if p.exists() {
            return p;
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let p = e.path().join("bin/psql");
            if p.exists() {
                return p;
            }
        }
    }
    panic!("psql not found (install the PostgreSQL client)");
}

/// Runs psql on `url` with ON_ERROR_STOP; panics with its output on failure.
pub fn psql(url: &str, args: &[&str]) -> Output {
    let out = std::process::Command::new(psql_bin())
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A file of the project.
pub fn project_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_str()
        .unwrap()
        .to_string()
}

/// `url` with another user (the test cluster trusts loopback connections).
pub fn url_as(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (_, host) = rest.split_once('@').unwrap();
    format!("{scheme}://{user}:pw@{host}")
}

/// Creates a login role that is a member of `group` (roles are cluster-wide; names are unique).
pub async fn login_role(group: &str) -> String {
    let name = unique(&format!("u_{group}"));
    let admin = sqlx::PgPool::connect(&db_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE {group}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    name
}

/// Key material of a keyring file in every spelling a leak could take: base64 (padded and
/// not, standard and URL-safe) and hex (lower and upper case).
pub fn key_spellings(keyring: &Path) -> Vec<String> {
    use base64::Engine;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(keyring).unwrap()).unwrap();
    let mut out = Vec::new();
    for purpose in ["hash_keys", "encryption_keys"] {
        for k in json[purpose].as_array().unwrap() {
            let b64 = k["key"].as_str().unwrap().to_string();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .unwrap();
            out.push(b64.trim_end_matches('=').to_string());
            out.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw));
            out.push(hex::encode(&raw));
            out.push(hex::encode_upper(&raw));
        }
    }
    assert!(out.len() >= 8);
    out
}
