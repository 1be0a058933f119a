//! The benchmark's helper program (`scripts/bench.sh` drives it): generates the data, fills
//! queues, measures the two ceilings (A: the SQS endpoint, D: Postgres binary COPY), runs the
//! engine and the Python reference under a stopwatch that also records peak RSS and the moment
//! the queue is empty, checks what landed in the database, writes the report, and serves the
//! latency proxy the BL/AL/CL rows go through.
//!
//! Run through `cargo bench` or `cargo test` without a subcommand it only says how to use it:
//! the measurements need services and minutes, which unit tests must not.

mod datagen;
mod orders_gen;
mod pg;
mod proxy;
mod report;
mod sqs;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "etl_bench", about = "Benchmark helper for scripts/bench.sh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write N deterministic messages (about 1% invalid) as JSON Lines: logins, or orders for
    /// specs/orders.yaml (with updates, late older versions and returning customers).
    Gen {
        #[arg(long)]
        messages: usize,
        /// `logins` or `orders`.
        #[arg(long, default_value = "logins")]
        kind: String,
        #[arg(long, default_value_t = 20240517)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Drop and create a database, then apply DDL files to it.
    ResetDb {
        /// URL of an existing database to connect to (e.g. .../postgres).
        #[arg(long)]
        admin_url: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        ddl: Vec<PathBuf>,
    },
    /// Create a queue and send every line of a file to it; prints the queue URL.
    Load {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        queue: String,
        #[arg(long)]
        input: PathBuf,
        /// Pad every body to this many bytes first (an extra JSON string field; 0: as is).
        #[arg(long, default_value_t = 0)]
        pad_to: usize,
        /// At most this many bytes of bodies in one SendMessageBatch (classic SQS: 256 KiB).
        #[arg(long, default_value_t = sqs::CLASSIC_BATCH_BYTES)]
        batch_bytes: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Delete a queue.
    DeleteQueue {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        queue_url: String,
    },
    /// A: receive + delete-batch with no processing, at the spec's poller concurrency.
    SqsCeiling {
        /// The SQS spec whose source settings (batch size, visibility, a fixed poller count)
        /// to mirror.
        #[arg(long)]
        spec: PathBuf,
        /// Concurrent receive loops (default: the spec's fixed `pollers`, or 4 with `auto`).
        #[arg(long)]
        workers: Option<u32>,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        queue_url: String,
        /// Stop once this many messages are deleted.
        #[arg(long)]
        expect: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// D: binary COPY of the engine's final rows for the input messages.
    PgCeiling {
        /// The spec whose transforms and tables to use (keyring from ETL_KEYRING).
        #[arg(long)]
        spec: PathBuf,
        /// Parallel COPY connections (default: one per core).
        #[arg(long)]
        connections: Option<usize>,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        db: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a command under a stopwatch: wall time, peak RSS (via /usr/bin/time), and with
    /// --queue-url the time until the queue is empty.
    Measure {
        #[arg(long)]
        out: PathBuf,
        /// Where the command's stdout and stderr go.
        #[arg(long)]
        log: PathBuf,
        #[arg(long, requires = "queue_url")]
        endpoint: Option<String>,
        #[arg(long, requires = "endpoint")]
        queue_url: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Count what a run left in a database; fails unless the counts add up.
    CheckDb {
        #[arg(long)]
        db: String,
        #[arg(long)]
        target_table: String,
        /// Rows the target table must hold.
        #[arg(long)]
        expect_rows: i64,
        /// Also check the engine's tables: ledger = messages, rejects = messages - rows (or
        /// --expect-rejects, where a message may write several rows or update one).
        #[arg(long)]
        expect_messages: Option<i64>,
        /// Rejects the run must leave (with --expect-messages; default messages - rows).
        #[arg(long)]
        expect_rejects: Option<i64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a TCP proxy that delays every byte by --delay-ms each way (prints its port).
    LatencyProxy {
        #[arg(long)]
        target_port: u16,
        /// One-way delay in milliseconds.
        #[arg(long)]
        delay_ms: u64,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Print the table, check the targets, write results.json.
    Report {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

fn main() -> std::process::ExitCode {
    // `cargo bench` and `cargo test --all-targets` run this with their own flags: nothing to do.
    let known = [
        "gen",
        "reset-db",
        "load",
        "delete-queue",
        "sqs-ceiling",
        "pg-ceiling",
        "measure",
        "check-db",
        "report",
        "latency-proxy",
        "help",
        "--help",
        "-h",
    ];
    if !std::env::args()
        .nth(1)
        .is_some_and(|a| known.contains(&a.as_str()))
    {
        println!(
            "etl_bench: the benchmark runs through scripts/bench.sh (see `etl_bench --help`); nothing to do here."
        );
        return std::process::ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cmd: Cmd) -> Result<u8> {
    match cmd {
        Cmd::Gen {
            messages,
            kind,
            seed,
            out,
        } => {
            let f = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let counts = match kind.as_str() {
                "logins" => serde_json::to_string(&datagen::write(messages, seed, &mut w)?)?,
                "orders" => serde_json::to_string(&orders_gen::write(messages, seed, &mut w)?)?,
                other => anyhow::bail!("--kind {other}: expected logins or orders"),
            };
            println!("{counts}");
        }
        Cmd::ResetDb {
            admin_url,
            name,
            ddl,
        } => {
            anyhow::ensure!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "bad database name {name}"
            );
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .with_context(|| format!("connecting to {admin_url}"))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await?;
            let cut = admin_url
                .rfind('/')
                .context("the admin URL has no database path")?;
            let url = format!("{}/{name}", &admin_url[..cut]);
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            for f in ddl {
                let sql = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("applying {}", f.display()))?;
            }
            println!("{url}");
        }
        Cmd::Load {
            endpoint,
            queue,
            input,
            pad_to,
            batch_bytes,
            concurrency,
        } => {
            let bodies = read_lines(&input)?;
            let url =
                sqs::load(&endpoint, &queue, &bodies, pad_to, batch_bytes, concurrency).await?;
            println!("{url}");
        }
        Cmd::DeleteQueue {
            endpoint,
            queue_url,
        } => sqs::delete_queue(&endpoint, &queue_url).await?,
        Cmd::SqsCeiling {
            spec,
            workers,
            endpoint,
            queue_url,
            expect,
            out,
        } => {
            let spec = etl_engine::spec::load_spec(&spec)?;
            let etl_engine::spec::SourceConfig::Sqs(cfg) = &spec.source else {
                bail!("{}: source is not sqs", spec.file.display())
            };
            let workers = workers.unwrap_or(match cfg.pollers {
                etl_engine::spec::Pollers::Fixed(n) => n,
                etl_engine::spec::Pollers::Auto => 4,
            });
            let r = sqs::ceiling(&endpoint, &queue_url, cfg, workers, expect).await?;
            write_json(&out, &r)?;
        }
        Cmd::PgCeiling {
            spec,
            connections,
            input,
            db,
            out,
        } => {
            let spec = etl_engine::spec::load_spec(&spec)?;
            let bodies = read_lines(&input)?;
            let cores = std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2);
            let r = pg::run(&spec, &bodies, &db, connections.unwrap_or(cores)).await?;
            write_json(&out, &r)?;
        }
        Cmd::Measure {
            out,
            log,
            endpoint,
            queue_url,
            command,
        } => return measure(&out, &log, endpoint, queue_url, &command).await,
        Cmd::CheckDb {
            db,
            target_table,
            expect_rows,
            expect_messages,
            expect_rejects,
            out,
        } => {
            let mut conn = sqlx::PgConnection::connect(&db).await?;
            let count =
                |t: &str| format!("SELECT count(*) FROM {}", etl_engine::db::quote_ident(t));
            let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count(&target_table)))
                .fetch_one(&mut conn)
                .await?;
            let mut res = serde_json::json!({"target_rows": rows});
            anyhow::ensure!(
                rows == expect_rows,
                "{target_table} holds {rows} rows, expected {expect_rows}"
            );
            if let Some(m) = expect_messages {
                let (ledger,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count("etl_ledger")))
                    .fetch_one(&mut conn)
                    .await?;
                let (rejects,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count("etl_rejects")))
                    .fetch_one(&mut conn)
                    .await?;
                let (vault,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count("etl_vault")))
                    .fetch_one(&mut conn)
                    .await?;
                anyhow::ensure!(
                    ledger == m,
                    "the ledger holds {ledger} messages, expected {m}"
                );
                let want_rejects = expect_rejects.unwrap_or(m - rows);
                anyhow::ensure!(
                    rejects == want_rejects,
                    "the rejects table holds {rejects}, expected {want_rejects}"
                );
                res = serde_json::json!({"target_rows": rows, "ledger_rows": ledger, "reject_rows": rejects, "vault_rows": vault});
            }
            write_json(&out, &res)?;
        }
        Cmd::Report { dir } => return report::report(&dir),
        Cmd::LatencyProxy {
            target_port,
            delay_ms,
            port,
        } => {
            proxy::serve(
                target_port,
                port,
                std::time::Duration::from_millis(delay_ms),
            )
            .await?
        }
    }
    Ok(0)
}

/// What `measure` records.
#[derive(serde::Serialize)]
struct Measured {
    command: String,
    exit_code: Option<i32>,
    wall_secs: f64,
    /// From start until the queue was first seen empty (visible + in flight = 0).
    drained_secs: Option<f64>,
    peak_rss_kb: Option<u64>,
    /// User + system CPU time of the command (its own process and waited-for children).
    cpu_secs: Option<f64>,
}

async fn measure(
    out: &Path,
    log: &Path,
    endpoint: Option<String>,
    queue_url: Option<String>,
    command: &[String],
) -> Result<u8> {
    let rss_file = out.with_extension("rss");
    let logf = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    // GNU time reports the child's peak RSS (ru_maxrss) exactly, whatever its lifetime.
    let mut child = tokio::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M %U %S")
        .arg("-o")
        .arg(&rss_file)
        .args(command)
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .context("starting /usr/bin/time (install the `time` package)")?;
    let watch = async {
        match (&endpoint, &queue_url) {
            (Some(e), Some(q)) => Some(sqs::watch_until_empty(e, q, started).await),
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(watch);
    let mut drained = None;
    let status = tokio::select! {
        s = child.wait() => s?,
        d = &mut watch => {
            drained = d;
            child.wait().await?
        }
    };
    let wall = started.elapsed();
    if drained.is_none() && endpoint.is_some() {
        // The command ended first: one last look (it may have emptied the queue just before).
        drained = Some(
            tokio::time::timeout(std::time::Duration::from_secs(5), &mut watch)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(anyhow::anyhow!("queue not empty after the command ended"))),
        );
    }
    let drained_secs = match drained {
        Some(Ok(d)) => Some(d.min(wall).as_secs_f64()),
        Some(Err(e)) => {
            eprintln!("warning: {e}");
            None
        }
        None => None,
    };
    // The last line is "peak-RSS-KiB user-secs system-secs" (earlier lines may be a notice).
    let last: Vec<String> = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|t| {
            t.lines()
                .next_back()
                .map(|l| l.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default();
    let peak_rss_kb = last.first().and_then(|v| v.parse::<u64>().ok());
    let cpu_secs = match (last.get(1), last.get(2)) {
        (Some(u), Some(s)) => u
            .parse::<f64>()
            .ok()
            .zip(s.parse::<f64>().ok())
            .map(|(u, s)| u + s),
        _ => None,
    };
    let m = Measured {
        command: command.join(" "),
        exit_code: status.code(),
        wall_secs: wall.as_secs_f64(),
        drained_secs,
        peak_rss_kb,
        cpu_secs,
    };
    write_json(out, &m)?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); its output is in {}",
            command.join(" "),
            log.display()
        );
    }
    Ok(0)
}
