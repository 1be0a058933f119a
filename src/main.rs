//! The `etl-engine` command line: parses arguments, sets up logging, and turns library results
//! into messages and exit codes. `anyhow` lives only here.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad spec, keyring or arguments; 3 `vault-decrypt`
//! found tokens with no vault entry; 130 second interrupt.

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use etl_engine::pipeline::{self, RunOptions, Stats};
use etl_engine::process::Processor;
use etl_engine::retry::{Backoff, retry};
use etl_engine::sink::{self, Sink, SinkError};
use etl_engine::source::{self, BatchEntry, QueueClient, SqsError};
use etl_engine::spec::{self, SourceConfig, Spec};
use etl_engine::transform::Tokenizer;
use etl_engine::vault::recover::{self, Selector};
use etl_engine::vault::{Keyring, VaultCipher};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    },
    /// Check a spec and report every problem, without touching any service.
    Validate {
        /// The spec file.
        spec: PathBuf,
    },
    /// Write a new keyring (one hashing key, one encryption key) to FILE, readable by the owner only.
    Keygen {
        /// Where to write it. Never overwritten unless --force.
        file: PathBuf,
        /// Replace an existing file (its keys are lost: values encrypted with them can no longer be recovered).
        #[arg(long)]
        force: bool,
    },
    /// Recover original values of an encrypted column. Every recovery is audited.
    VaultDecrypt {
        /// The spec whose target table and vault to read.
        spec: PathBuf,
        /// The encrypted column, e.g. masked_ip.
        #[arg(long)]
        column: String,
        /// Tokens to recover (the values stored in the column).
        #[arg(long = "token")]
        tokens: Vec<String>,
        /// Read tokens from stdin, one per line.
        #[arg(long)]
        stdin: bool,
        /// Select rows of the target table: COLUMN=VALUE (repeatable; values are bound as parameters).
        #[arg(long = "where")]
        selectors: Vec<String>,
        /// Why the values are needed; recorded in the audit table. Required.
        #[arg(long)]
        reason: String,
        /// Who is recovering (default: the OS user).
        #[arg(long)]
        actor: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Send the lines of a JSON Lines file as messages to the spec's SQS queue (example loader).
    Send {
        /// The spec whose source queue to send to.
        spec: PathBuf,
        /// JSON Lines file; each non-empty line becomes one message body, sent as is.
        input: PathBuf,
        /// Create the queue first if it does not exist.
        #[arg(long)]
        create_queue: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum OutputFormat {
    Text,
    Csv,
    Json,
}

/// An error that has already been explained to the user, with its exit code.
#[derive(Debug)]
struct Exit(u8);
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// Errors in what the user gave us (spec, keyring, arguments): exit code 2.
#[derive(Debug)]
struct UsageError(String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
            eprintln!("error: {e:#}");
            ExitCode::from(if e.downcast_ref::<UsageError>().is_some() { 2 } else { 1 })
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(cmd: Command) -> Result<u8> {
    match cmd {
        Command::Run { spec, drain, summary_json } => cmd_run(&spec, drain, summary_json.as_deref()).await,
        Command::Validate { spec } => {
            let s = load(&spec)?;
            println!("{}: OK ({} columns, pipeline {})", spec.display(), s.columns.len(), s.name);
            Ok(0)
        }
        Command::Keygen { file, force } => {
            let ring = Keyring::generate().map_err(usage)?;
            ring.write(&file, force).map_err(usage)?;
            println!(
                "Wrote keyring {} (hash key {}, encryption key {}). Keep it secret and backed up: without it, vaulted values cannot be recovered.",
                file.display(),
                ring.hash_keys[0].id,
                ring.encryption_keys[0].id
            );
            Ok(0)
        }
        Command::VaultDecrypt { spec, column, tokens, stdin, selectors, reason, actor, format } => {
            cmd_decrypt(&spec, column, tokens, stdin, selectors, reason, actor, format).await
        }
        Command::Send { spec, input, create_queue } => cmd_send(&spec, &input, create_queue).await,
    }
}

fn load(path: &Path) -> Result<Spec> {
    spec::load_spec(path).map_err(usage)
}

fn load_keyring(spec: &Spec) -> Result<Keyring> {
    Keyring::load(spec.vault.keyring.as_deref().map(Path::new)).map_err(usage)
}

/// Connects to Postgres, retrying while it is unreachable (it may be restarting).
async fn connect_db(url: &str, max_connections: u32, cancel: &CancellationToken) -> Result<sqlx::PgPool> {
    let backoff = Backoff { max_elapsed: std::time::Duration::from_secs(60), ..Backoff::WRITE };
    retry(
        backoff,
        cancel,
        |e: &SinkError| e.is_retriable(),
        |e, attempt, _| tracing::warn!(attempt, error = %e, "Postgres is not reachable yet; retrying."),
        || async { sink::connect_pool(url, max_connections).await.map_err(SinkError::from) },
    )
    .await
    .map_err(|e| anyhow!("cannot connect to Postgres (target.url; override with ETL_SPEC_TARGET__URL): {e}"))
}

fn shutdown_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let wait = || async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                    return std::future::pending::<()>().await;
                };
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        wait().await;
        tracing::info!("Shutting down: no more receives; flushing, committing and deleting what is in flight. Signal again to exit at once.");
        cancel.cancel();
        wait().await;
        // Nothing is lost: uncommitted messages become visible again and the ledger skips committed ones.
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(130);
    });
}

async fn cmd_run(spec_path: &Path, drain: bool, summary_json: Option<&Path>) -> Result<u8> {
    let spec = load(spec_path)?;
    let ring = load_keyring(&spec)?;
    let tokenizer = if spec.uses_hash() { Some(Tokenizer::new(ring.active_hash_key().map_err(usage)?)) } else { None };
    // Rejects are stored encrypted, so an encryption key is needed even without `encrypt` columns.
    ring.active_encryption_key().map_err(usage)?;
    let cipher = Arc::new(VaultCipher::new(&ring).map_err(usage)?);
    drop(ring);

    let cancel = CancellationToken::new();
    shutdown_on_signals(cancel.clone());

    let pool = connect_db(&spec.target.url, spec.target.writers + 2, &cancel).await?;
    sink::schema::ensure(&pool, &spec).await.context("creating the engine's tables")?;
    Sink::check_target(&pool, &spec.target.table, &spec.columns).await.map_err(usage)?;

    let queue: Option<Arc<dyn QueueClient>> = match &spec.source {
        SourceConfig::Sqs(cfg) => Some(
            retry(
                Backoff { max_elapsed: std::time::Duration::from_secs(60), ..Backoff::SQS },
                &cancel,
                SqsError::is_retriable,
                |e, attempt, _| tracing::warn!(attempt, error = %e, "SQS is not reachable yet; retrying."),
                || source::sqs::connect(cfg),
            )
            .await
            .map_err(|e| anyhow!("cannot connect to SQS queue {} (source.queue): {e}", cfg.queue))?,
        ),
        SourceConfig::File(_) => None,
    };
    let max_receive = match &spec.source {
        SourceConfig::Sqs(cfg) => Some(cfg.max_receive_count),
        SourceConfig::File(_) => None,
    };
    let columns = Arc::new(spec.columns.clone());
    let processor = Processor::new(spec.columns.clone(), tokenizer, max_receive);
    let sink = Arc::new(Sink::new(pool.clone(), &spec, columns, cipher));
    let stats = Arc::new(Stats::default());
    tracing::info!(pipeline = %spec.name, table = %spec.target.table, drain, "Pipeline started.");
    let summary = pipeline::run(&spec, processor, sink, queue, RunOptions { drain }, stats.clone(), cancel).await?;
    sink::record_key_usage(&pool, &stats).await;
    println!("{}: {summary}", spec.name);
    if let Some(p) = summary_json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
async fn cmd_decrypt(
    spec_path: &Path,
    column: String,
    mut tokens: Vec<String>,
    stdin: bool,
    selectors: Vec<String>,
    reason: String,
    actor: Option<String>,
    format: OutputFormat,
) -> Result<u8> {
    if reason.trim().is_empty() {
        return Err(usage("--reason must say why the values are needed"));
    }
    let spec = load(spec_path)?;
    let ring = load_keyring(&spec)?;
    let cipher = VaultCipher::new(&ring).map_err(usage)?;
    drop(ring);
    if stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading tokens from stdin")?;
            if !line.trim().is_empty() {
                tokens.push(line.trim().to_string());
            }
        }
    }
    let selector = match (tokens.is_empty(), selectors.is_empty()) {
        (false, true) => Selector::Tokens(tokens),
        (true, false) => Selector::Where(selectors.iter().map(|s| recover::parse_where(s)).collect::<Result<_, _>>().map_err(usage)?),
        (true, true) => return Err(usage("say what to recover: --token TOKEN, --stdin, or --where COLUMN=VALUE")),
        (false, false) => return Err(usage("use either tokens (--token/--stdin) or --where, not both")),
    };
    let actor = actor.or_else(|| whoami::username().ok()).unwrap_or_else(|| "unknown".into());
    let cancel = CancellationToken::new();
    let pool = connect_db(&spec.target.url, 2, &cancel).await?;
    sink::schema::ensure(&pool, &spec).await.context("creating the engine's tables")?;
    let req = recover::Request { column, selector, actor, reason };
    let out = recover::recover(&pool, &spec, &cipher, &req).await?;
    let mut stdout = std::io::stdout().lock();
    match format {
        OutputFormat::Text => {
            for r in &out.recovered {
                writeln!(stdout, "{}\t{}", r.token, r.value.as_str())?;
            }
        }
        OutputFormat::Csv => {
            writeln!(stdout, "token,value")?;
            for r in &out.recovered {
                writeln!(stdout, "{},{}", r.token, csv_field(&r.value))?;
            }
        }
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> =
                out.recovered.iter().map(|r| serde_json::json!({"token": r.token, "value": r.value.as_str()})).collect();
            writeln!(stdout, "{}", serde_json::Value::Array(items))?;
        }
    }
    for t in &out.missing {
        eprintln!("not found in the vault: {t}");
    }
    Ok(if out.missing.is_empty() { 0 } else { 3 })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

async fn cmd_send(spec_path: &Path, input: &Path, create: bool) -> Result<u8> {
    let spec = load(spec_path)?;
    let SourceConfig::Sqs(cfg) = &spec.source else {
        return Err(usage(format!("{}: source.type is not sqs; nothing to send to", spec_path.display())));
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let setup = source::sqs::aws_setup(cfg.endpoint_url.as_deref(), &cfg.region, cfg.wait_time_secs).await?;
    if create && !cfg.queue.starts_with("http") {
        source::sqs::create_queue(&setup, &cfg.queue, &[]).await?;
    }
    let queue = source::sqs::connect_with(&setup, &cfg.queue, cfg.protocol).await?;
    let bodies: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let chunks: Vec<Vec<BatchEntry>> = bodies
        .chunks(10)
        .map(|c| c.iter().enumerate().map(|(i, b)| BatchEntry { id: i.to_string(), value: (*b).to_string() }).collect())
        .collect();
    use futures::StreamExt;
    let cancel = CancellationToken::new();
    let results: Vec<Result<usize, SqsError>> = futures::stream::iter(chunks)
        .map(|entries| {
            let (q, cancel) = (queue.clone(), cancel.clone());
            async move {
                let n = entries.len();
                let failed = retry(Backoff::SQS, &cancel, SqsError::is_retriable, |_, _, _| {}, || q.send_batch(entries.clone())).await?;
                if let Some(f) = failed.first() {
                    return Err(SqsError::new(source::ErrorKind::Permanent, "SendMessageBatch", format!("{} entries failed: {} {}", failed.len(), f.code, f.message)));
                }
                Ok(n)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut sent = 0;
    for r in results {
        sent += r?;
    }
    println!("Sent {sent} messages from {} to {}.", input.display(), cfg.queue);
    Ok(0)
}
