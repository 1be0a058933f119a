//! The `etl-engine` command line: parses arguments, sets up logging, and turns library results
//! into messages and exit codes. `anyhow` lives only here.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad spec, keyring or arguments; 3 `vault-decrypt`
//! found tokens with no vault entry, `rejects` found no reject for a given message id, or
//! `vault-rotate`/`vault-retokenize` left rows for another run; 130 second interrupt.

mod cmd;

// Every message allocates a few short-lived strings and vectors on two or more threads; glibc's
// allocator spent about a quarter of the engine's CPU time on them (malloc, free, consolidation)
// in a profile of the file-source benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use cmd::{Exit, UsageError};
use etl_engine::crypto::keyring;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "etl-engine",
    version,
    about = "Moves JSON messages from SQS (or a JSON Lines file) into PostgreSQL, driven by a YAML spec, masking PII on the way.",
    long_about = "Moves JSON messages from SQS (or a JSON Lines file) into PostgreSQL, driven by a YAML spec, masking PII on the way.\n\n\
Keys come from a keyring file named by ETL_KEYRING (create one with `etl-engine keygen FILE`).\n\
Spec keys can be overridden from the environment: ETL_SPEC_TARGET__URL=postgres://... overrides target.url.\n\
Log level comes from RUST_LOG (default: info)."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: receive, transform, write, acknowledge.
    Run {
        /// The spec file.
        spec: PathBuf,
        /// Stop when the queue is empty (or the file is read) instead of polling forever.
        #[arg(long)]
        drain: bool,
        /// Also write the final summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        #[command(flatten)]
        observe: cmd::run::ObserveArgs,
    },
    /// Create or migrate the engine's own tables and functions (ledger, vault, rejects, audit) for
    /// each spec. Run it as the database owner before the first `run` and after every upgrade;
    /// the other commands run no DDL and stop with a clear error when a migration is due.
    Setup(cmd::setup::SetupArgs),
    /// Check the spec, the keyring, Postgres (target columns and types) and the queue, without receiving anything.
    Check {
        /// The spec file.
        spec: PathBuf,
    },
    /// Check specs and report every problem, without touching any service. Exit 2 if one is invalid.
    Validate {
        /// Spec files.
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// Print `CREATE TABLE IF NOT EXISTS` statements for every output of a spec (types from the
    /// transforms, NOT NULL from `required`, the upsert key as the primary key).
    Ddl {
        /// The spec file.
        spec: PathBuf,
    },
    /// Print the JSON Schema of spec files (for editor completion; kept as schema/spec.schema.json).
    Schema,
    /// Run the `tests:` block of each spec, without any service (fixed public test keys). Exit 1 if a test fails.
    Test {
        /// Spec files.
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// Show what messages from a JSON Lines file would become (rows and rejects), writing nothing.
    Preview {
        /// The spec file.
        spec: PathBuf,
        /// JSON Lines file, one message body per line (default: the spec's file source).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Preview at most N messages.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write a new keyring (one hashing key, one encryption key) to FILE, readable by the owner only.
    Keygen {
        /// Where to write it. Never overwritten unless --force; never through a symbolic link.
        file: PathBuf,
        /// Replace an existing file atomically (its keys are lost: values encrypted with them can no longer be recovered).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        kms: cmd::vault::KmsArgs,
    },
    /// Recover original values of an encrypted column. Every recovery is audited.
    VaultDecrypt(cmd::decrypt::DecryptArgs),
    /// List rejected messages (id, time, reason); with --show-bodies --reason, also their
    /// original bodies, decrypted and audited.
    Rejects(cmd::rejects::RejectsArgs),
    /// Send the lines of a JSON Lines file as messages to the spec's SQS queue (example loader).
    Send {
        /// The spec whose source queue to send to.
        spec: PathBuf,
        /// JSON Lines file; each non-empty line becomes one message body, sent as is. Lines that
        /// are not UTF-8 or longer than 1 MiB are reported by number and not sent (exit 1).
        input: PathBuf,
        /// Create the queue first if it does not exist.
        #[arg(long)]
        create_queue: bool,
    },
    /// Delete ledger entries older than the queue's retention period, in batches.
    PruneLedger(cmd::ledger::PruneArgs),
    /// Manage keyring versions (list, add-key, set-state, remove-key) without editing JSON.
    Keyring {
        #[command(subcommand)]
        action: cmd::vault::KeyringAction,
    },
    /// Re-encrypt vault values and reject bodies still under an older key with the active key.
    VaultRotate(cmd::vault::RotateArgs),
    /// Erase one person's PII (right to erasure): null or delete their rows' tokens, delete
    /// vault entries no other row uses and their rejects, audited.
    VaultErase(cmd::erase::EraseArgs),
    /// Check the recovery audit's hash chain.
    Audit {
        #[command(subcommand)]
        action: cmd::audit::AuditAction,
    },
    /// Replace the tokens of encrypted columns with the active hash key's, in the vault and the target table.
    VaultRetokenize(cmd::vault::RetokenizeArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum OutputFormat {
    Text,
    Csv,
    Json,
}

fn main() -> ExitCode {
    // The keyring JSON leaves the environment before anything else runs, so child processes
    // and later environment reads no longer see it; the library keeps its copy in memory.
    // (The kernel's copy of the initial environment, /proc/PID/environ, is not rewritten.)
    if keyring::stash_json_from_env() {
        // SAFETY: `remove_var` is unsound only while another thread may read the environment.
        // This is the first statement of `main`: no thread has been spawned yet (the async
        // runtime is built below), and nothing before it reads the environment concurrently.
        unsafe { std::env::remove_var(keyring::KEYRING_JSON_ENV) };
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            // Library errors often repeat their cause in their own message; print each part once.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(if e.downcast_ref::<UsageError>().is_some() {
                2
            } else {
                1
            })
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // The progress line shares stderr; this writer erases it before each log line.
        .with_writer(etl_engine::progress::log_writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Applied after RUST_LOG, whatever it says: see CAPPED_LOG_TARGETS.
    let cap = tracing_subscriber::filter::filter_fn(|m| {
        *m.level() <= tracing::Level::INFO
            || !CAPPED_LOG_TARGETS.iter().any(|p| m.target().starts_with(p))
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    match format {
        LogFormat::Text => builder.finish().with(cap).init(),
        LogFormat::Json => builder.json().finish().with(cap).init(),
    }
}

/// Third-party log targets capped at INFO even when RUST_LOG asks for more: at TRACE the AWS
/// SDK logs every HTTP response body (message contents, i.e. PII), and the HTTP/TLS stacks
/// log headers and payloads. Our own targets, sqlx (statements only; values are always bound
/// parameters) and everything else follow RUST_LOG.
const CAPPED_LOG_TARGETS: &[&str] = &["aws_", "hyper", "h2", "reqwest", "rustls", "tower", "http"];

async fn dispatch(cmd: Command) -> Result<u8> {
    match cmd {
        Command::Run {
            spec,
            drain,
            summary_json,
            observe,
        } => cmd::run::cmd_run(&spec, drain, summary_json.as_deref(), observe).await,
        Command::Setup(args) => cmd::setup::setup(args).await.map(|()| 0),
        Command::Check { spec } => cmd::check::cmd_check(&spec).await,
        Command::Validate { specs } => cmd::spec_tools::cmd_validate(&specs),
        Command::Ddl { spec } => cmd::spec_tools::cmd_ddl(&spec),
        Command::Keygen { file, force, kms } => cmd::vault::cmd_keygen(&file, force, kms).await,
        Command::VaultDecrypt(args) => cmd::decrypt::cmd_decrypt(args).await,
        Command::Send {
            spec,
            input,
            create_queue,
        } => cmd::send::cmd_send(&spec, &input, create_queue).await,
        Command::Schema => cmd::spec_tools::cmd_schema(),
        Command::Test { specs } => cmd::spec_tools::cmd_test(&specs),
        Command::Preview { spec, input, limit } => {
            cmd::spec_tools::cmd_preview(&spec, input.as_deref(), limit).await
        }
        Command::PruneLedger(args) => cmd::ledger::cmd_prune(args).await,
        Command::Rejects(args) => cmd::rejects::cmd_rejects(args).await,
        Command::Keyring { action } => cmd::vault::cmd_keyring(action).await,
        Command::VaultRotate(args) => cmd::vault::cmd_rotate(args).await,
        Command::VaultErase(args) => cmd::erase::cmd_erase(args).await,
        Command::Audit { action } => cmd::audit::cmd_audit(action).await,
        Command::VaultRetokenize(args) => cmd::vault::cmd_retokenize(args).await,
    }
}
