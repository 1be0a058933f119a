//! `etl-engine keyring ...` (key versions managed without hand-editing JSON),
//! `etl-engine vault-rotate` (re-encrypt stored values under the active key) and
//! `etl-engine vault-retokenize` (new tokens after a hash key change).

use super::{connect_db, load, load_keyring, spec_tokenizer, usage};
use anyhow::{Context, Result};
use etl_engine::crypto::{KeyState, KeyUse, Keyring, KmsSettings, Purpose, VaultCipher};
use etl_engine::sink;
use etl_engine::vault::retokenize;
use etl_engine::vault::rotate::{self, Options, TableReport};
use sqlx::AssertSqlSafe;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// `etl-engine keyring` subcommands. Key material is never printed.
#[derive(clap::Subcommand)]
pub enum KeyringAction {
    /// List key ids, purposes and states (never key material).
    List {
        /// The keyring file.
        file: PathBuf,
    },
    /// Add a new active key; the previous active key of that purpose becomes decrypt_only.
    AddKey {
        /// The keyring file (replaced atomically, owner-only permissions).
        file: PathBuf,
        /// `encryption` (vault values and reject bodies; rotate freely) or `hash` (tokens).
        #[arg(long)]
        purpose: Purpose,
        /// Required for a hash key: a new hash key changes the token of every value from now on
        /// (see SECURITY.md, "Replacing a hash key").
        #[arg(long)]
        force: bool,
    },
    /// Set a key's state: active, decrypt_only or retired. Activating a key demotes the
    /// purpose's current active key to decrypt_only.
    SetState {
        /// The keyring file.
        file: PathBuf,
        /// The key id (see `keyring list`).
        key_id: String,
        /// active, decrypt_only or retired.
        state: KeyState,
    },
    /// Convert a plain keyring into a KMS-wrapped one (kms:Encrypt of each key, file replaced
    /// atomically). Retired keys keep no material.
    Wrap {
        /// The keyring file.
        file: PathBuf,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Remove a key for good (not the active one). Values still encrypted with it can never be
    /// decrypted again: run `vault-rotate` first and pass --spec to have that checked.
    RemoveKey {
        /// The keyring file.
        file: PathBuf,
        /// The key id.
        key_id: String,
        /// Refuse if the spec's vault or rejects still hold values under this key.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
}

/// Where keyring material is wrapped: a KMS key, and how to reach KMS.
#[derive(clap::Args)]
pub struct KmsArgs {
    /// Wrap the key material with this AWS KMS key (id, ARN or alias): the file then holds KMS
    /// ciphertext blobs only, unwrapped in memory with kms:Decrypt when a command starts.
    #[arg(long)]
    pub kms_key_id: Option<String>,
    /// KMS endpoint override, written into the keyring (tests, VPC endpoints). Without it the
    /// AWS defaults apply, including AWS_ENDPOINT_URL_KMS.
    #[arg(long, requires = "kms_key_id")]
    pub kms_endpoint_url: Option<String>,
    /// KMS region, written into the keyring; default: the key ARN's region, else AWS_REGION.
    #[arg(long, requires = "kms_key_id")]
    pub kms_region: Option<String>,
}

impl KmsArgs {
    fn settings(self) -> Option<KmsSettings> {
        self.kms_key_id.map(|key_id| KmsSettings {
            key_id,
            endpoint_url: self.kms_endpoint_url,
            region: self.kms_region,
        })
    }
}

/// `etl-engine keygen`: a new keyring, plain or KMS-wrapped (keys made inside KMS).
pub async fn cmd_keygen(file: &Path, force: bool, kms: KmsArgs) -> Result<u8> {
    let ring = match kms.settings() {
        Some(settings) => Keyring::generate_wrapped(settings).await?,
        None => Keyring::generate().map_err(usage)?,
    };
    ring.write(file, force).map_err(usage)?;
    let wrapped = match &ring.kms {
        Some(k) => format!(
            " Its key material is wrapped by KMS key {}: commands unwrap it with kms:Decrypt, and no plaintext key is on disk.",
            k.key_id
        ),
        None => String::new(),
    };
    println!(
        "Wrote keyring {} (hash key {}, encryption key {}). Keep it secret and backed up: without it, vaulted values cannot be recovered.{wrapped}",
        file.display(),
        ring.hash_keys[0].id,
        ring.encryption_keys[0].id
    );
    Ok(0)
}

/// Arguments of `etl-engine vault-rotate`.
#[derive(clap::Args)]
pub struct RotateArgs {
    /// The spec whose vault values (rows of its target table) and reject bodies to re-encrypt.
    spec: PathBuf,
    /// Rows per read-re-encrypt-update round trip.
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// Stop after this many rows; run again to continue (to spread the work over time).
    #[arg(long)]
    max_rows: Option<u64>,
}

/// Arguments of `etl-engine vault-retokenize`.
#[derive(clap::Args)]
pub struct RetokenizeArgs {
    /// The spec whose target table and vault to update.
    spec: PathBuf,
    /// The encrypted column whose tokens to replace with the active hash key's (repeatable).
    #[arg(long = "column", required = true)]
    columns: Vec<String>,
    /// Vault rows per batch (one transaction each).
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
}

fn read_ring(file: &Path) -> Result<Keyring> {
    Keyring::from_file(file).map_err(usage)
}

fn write_ring(ring: &Keyring, file: &Path) -> Result<()> {
    ring.replace_file(file).map_err(usage)
}

/// Runs a `keyring` subcommand.
pub async fn cmd_keyring(action: KeyringAction) -> Result<u8> {
    match action {
        KeyringAction::List { file } => {
            let ring = read_ring(&file)?;
            println!("{:<12} {:<32} state", "purpose", "id");
            for (purpose, id, state) in ring.summary() {
                println!("{:<12} {:<32} {state}", purpose.name(), id);
            }
            Ok(0)
        }
        KeyringAction::AddKey {
            file,
            purpose,
            force,
        } => {
            if purpose == Purpose::Hash && !force {
                return Err(usage(
                    "a new hash key changes the token of every value written from now on, so old and new rows of the same \
                     value stop matching; pass --force if that is intended (SECURITY.md: \"Replacing a hash key\")",
                ));
            }
            let mut ring = read_ring(&file)?;
            let before = ring
                .keys(purpose)
                .iter()
                .find(|k| k.state == KeyState::Active)
                .map(|k| k.id.clone());
            let id = if ring.kms.is_some() {
                ring.add_wrapped_key(purpose).await?
            } else {
                ring.add_key(purpose).map_err(usage)?
            };
            write_ring(&ring, &file)?;
            match (purpose, before) {
                (Purpose::Encryption, Some(old)) => println!(
                    "Added encryption key {id} (active) to {}; {old} is now decrypt_only. New values are encrypted with {id}; \
                     run `etl-engine vault-rotate SPEC` to re-encrypt existing ones, then retire or remove {old}.",
                    file.display()
                ),
                (Purpose::Hash, Some(old)) => println!(
                    "Added hash key {id} (active) to {}; {old} is now decrypt_only. New tokens differ from old ones; \
                     run `etl-engine vault-retokenize SPEC --column COLUMN` for encrypted columns.",
                    file.display()
                ),
                (_, None) => println!(
                    "Added {} key {id} (active) to {}.",
                    purpose.name(),
                    file.display()
                ),
            }
            Ok(0)
        }
        KeyringAction::SetState {
            file,
            key_id,
            state,
        } => {
            let mut ring = read_ring(&file)?;
            let demoted = ring.set_state(&key_id, state).map_err(usage)?;
            write_ring(&ring, &file)?;
            print!("Key {key_id} is now {state}");
            if let Some(d) = demoted {
                print!("; {d} is now decrypt_only");
            }
            println!(".");
            if state == KeyState::Retired {
                println!(
                    "Its key material was dropped from {}: values still under it can no longer be decrypted.",
                    file.display()
                );
            }
            if state != KeyState::Active
                && ring.purpose_of(&key_id).ok() == Some(Purpose::Encryption)
                && ring.active_encryption_key().is_err()
            {
                eprintln!(
                    "warning: the keyring has no active encryption key now; `run` and `vault-rotate` need one."
                );
            }
            Ok(0)
        }
        KeyringAction::Wrap { file, kms } => {
            let Some(settings) = kms.settings() else {
                return Err(usage("keyring wrap needs --kms-key-id"));
            };
            let mut ring = read_ring(&file)?;
            let kms_key = settings.key_id.clone();
            ring.wrap(settings).await?;
            write_ring(&ring, &file)?;
            println!(
                "Wrapped {} key(s) of {} with KMS key {kms_key}; the file holds no plaintext key material now. \
                 Copies of the old file (backups, other hosts) still do: replace or destroy them.",
                ring.summary()
                    .iter()
                    .filter(|(_, _, s)| *s != KeyState::Retired)
                    .count(),
                file.display()
            );
            Ok(0)
        }
        KeyringAction::RemoveKey { file, key_id, spec } => {
            let mut ring = read_ring(&file)?;
            ring.purpose_of(&key_id).map_err(usage)?;
            if let Some(spec_path) = spec {
                let spec = load(&spec_path)?;
                let cancel = CancellationToken::new();
                let pool = connect_db(&spec.target.url, 1, &cancel).await?;
                // The counts below read the vault's current layout.
                super::require_schema(&pool, &spec).await?;
                let count = |sql: String, scope: String| {
                    let pool = pool.clone();
                    let key_id = key_id.clone();
                    async move {
                        sqlx::query_as::<_, (i64,)>(AssertSqlSafe(sql))
                            .bind(scope)
                            .bind(key_id)
                            .fetch_one(&pool)
                            .await
                            .map(|r| r.0)
                    }
                };
                let vault = etl_engine::db::quote_ident(&spec.vault.table);
                let columns = etl_engine::db::quote_ident(
                    &etl_engine::db::vault_v3::columns_table(&spec.vault.table),
                );
                let rejects = etl_engine::db::quote_ident(&spec.rejects.table);
                let mut in_vault = 0;
                for table in spec.table_names() {
                    in_vault += count(
                        format!(
                            "SELECT count(*) FROM {vault} AS v JOIN {columns} AS c ON c.id = v.column_id \
                             WHERE c.target_table = $1 AND v.key_id = $2"
                        ),
                        table.to_string(),
                    )
                    .await
                    .with_context(|| {
                        format!("counting rows of {} under key {key_id}", spec.vault.table)
                    })?;
                }
                let in_rejects = count(
                    format!("SELECT count(*) FROM {rejects} WHERE pipeline = $1 AND key_id = $2"),
                    spec.name.clone(),
                )
                .await
                .with_context(|| {
                    format!("counting rows of {} under key {key_id}", spec.rejects.table)
                })?;
                if in_vault + in_rejects > 0 {
                    return Err(usage(format!(
                        "key {key_id} still encrypts {in_vault} vault value(s) and {in_rejects} reject bod(ies) of {}; \
                         run `etl-engine vault-rotate {}` first",
                        spec_path.display(),
                        spec_path.display()
                    )));
                }
            }
            let purpose = ring.remove_key(&key_id).map_err(usage)?;
            write_ring(&ring, &file)?;
            println!(
                "Removed {} key {key_id} from {}.",
                purpose.name(),
                file.display()
            );
            Ok(0)
        }
    }
}

fn describe(t: &TableReport) -> String {
    let mut s = format!(
        "{}: {} re-encrypted, {} changed concurrently, {} failed, ",
        t.table,
        t.rotated,
        t.raced,
        t.failed_total()
    );
    if t.remaining.is_empty() {
        s.push_str("none left under other keys");
    } else {
        let left: Vec<String> = t
            .remaining
            .iter()
            .map(|(k, n)| format!("{n} under {k}"))
            .collect();
        s.push_str(&format!("left: {}", left.join(", ")));
    }
    s
}

/// `etl-engine vault-rotate`: exit 0 when every value is under the active key, 1 when some
/// could not be decrypted, 3 when some are left for another run.
pub async fn cmd_rotate(args: RotateArgs) -> Result<u8> {
    let spec = load(&args.spec)?;
    let ring = load_keyring(&spec, KeyUse::RECOVER).await?;
    ring.active_encryption_key().map_err(usage)?;
    let cipher = VaultCipher::new(&ring).map_err(usage)?;
    drop(ring);
    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 2, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    let opts = Options {
        batch_size: args.batch_size,
        max_rows: args.max_rows,
    };
    let report = rotate::rotate(&pool, &spec, &cipher, opts)
        .await
        .map_err(|e| match e {
            rotate::RotateError::BatchSize(_) | rotate::RotateError::NoActiveKey => usage(e),
            other => anyhow::Error::from(other),
        })?;
    let failed =
        sink::record_key_counts(&pool, report.encryptions.clone().into_iter().collect()).await;
    if !failed.is_empty() {
        tracing::warn!("Could not record the rotation's encryptions in the key-usage table.");
    }
    println!(
        "{}: re-encrypting under key {}",
        spec.name, report.active_key
    );
    println!("  vault {}", describe(&report.vault));
    println!("  rejects {}", describe(&report.rejects));
    let mut code = 0;
    for t in [&report.vault, &report.rejects] {
        for (err, n) in &t.failed {
            let example = t.failed_examples.get(err).map(String::as_str).unwrap_or("");
            eprintln!(
                "error: {}: {n} value(s) could not be decrypted (e.g. {example}): {err}",
                t.table
            );
            code = 1;
        }
    }
    if code == 0 && !report.complete() {
        eprintln!(
            "Some values are not under key {} yet; run vault-rotate again to continue.",
            report.active_key
        );
        code = 3;
    }
    if code == 0 {
        println!(
            "Every value of this spec is under key {}. Once every spec using this keyring is rotated, older encryption keys \
             can be retired (`keyring set-state`) and removed (`keyring remove-key --spec`).",
            report.active_key
        );
    }
    Ok(code)
}

/// `etl-engine vault-retokenize`: exit 0 when every value of the columns has the active hash
/// key's token, 1 when some could not be decrypted, 3 when some changed concurrently.
pub async fn cmd_retokenize(args: RetokenizeArgs) -> Result<u8> {
    let spec = load(&args.spec)?;
    for c in &args.columns {
        retokenize::check_column(&spec, c).map_err(usage)?;
    }
    let ring = load_keyring(&spec, KeyUse::ROTATE).await?;
    let tokenizer = spec_tokenizer(&spec, &ring)?;
    ring.active_encryption_key().map_err(usage)?;
    let cipher = VaultCipher::new(&ring).map_err(usage)?;
    drop(ring);
    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 2, &cancel).await?;
    super::require_schema(&pool, &spec).await?;
    let mut code = 0;
    for column in &args.columns {
        let r = retokenize::retokenize(&pool, &spec, column, &cipher, &tokenizer, args.batch_size)
            .await
            .map_err(|e| match e {
                retokenize::RetokenizeError::Db(_) => anyhow::Error::from(e),
                other => usage(other),
            })?;
        let failed =
            sink::record_key_counts(&pool, r.encryptions.clone().into_iter().collect()).await;
        if !failed.is_empty() {
            tracing::warn!("Could not record the encryptions in the key-usage table.");
        }
        println!(
            "{}.{column}: {} token(s) replaced with hash key {} ({} target row(s) updated), {} already current, {} changed concurrently, {} failed",
            r.table,
            r.retokenized,
            r.hash_key,
            r.target_rows,
            r.current,
            r.raced,
            r.failed_total()
        );
        for (err, n) in &r.failed {
            let example = r.failed_examples.get(err).map(String::as_str).unwrap_or("");
            eprintln!(
                "error: {column}: {n} value(s) could not be decrypted (e.g. token {example}): {err}"
            );
            code = 1;
        }
        if code == 0 && r.raced > 0 {
            eprintln!(
                "{column}: some values changed while re-tokenizing; run vault-retokenize again to finish."
            );
            code = 3;
        }
    }
    Ok(code)
}
