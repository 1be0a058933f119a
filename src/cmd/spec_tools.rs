//! Commands for writing specs, none of which touches a queue or a database:
//! `schema` (the JSON Schema editors complete specs from), `test` (a spec's `tests:` block) and
//! `preview` (what a JSON Lines file would become).

use super::{load, usage};
use anyhow::{Context, Result};
use etl_engine::crypto::{KeyUse, Keyring, KeyringError};
use etl_engine::process::{Outcome, Processor};
use etl_engine::source::file;
use etl_engine::source::jsonl::JsonLinesReader;
use etl_engine::spec::{SourceConfig, Spec, SpecConfig};
use etl_engine::spec_test::run_spec_tests;
use etl_engine::transform::Tokenizer;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// The JSON Schema of spec files, generated from the spec types.
pub fn spec_schema() -> Result<String> {
    let schema = schemars::schema_for!(SpecConfig);
    Ok(serde_json::to_string_pretty(&schema)? + "\n")
}

/// `etl-engine schema`: prints the JSON Schema (kept in the repository as schema/spec.schema.json).
pub fn cmd_schema() -> Result<u8> {
    print!("{}", spec_schema()?);
    Ok(0)
}

/// `etl-engine test SPEC...`: runs each spec's tests. Exit 0 when all pass, 1 when a test fails,
/// 2 when a spec is invalid.
pub fn cmd_test(specs: &[PathBuf]) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    let (mut failed, mut invalid) = (0usize, false);
    for path in specs {
        let spec = match load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                invalid = true;
                continue;
            }
        };
        if spec.tests.is_empty() {
            writeln!(out, "{}: no tests (add a `tests:` block)", path.display())?;
            continue;
        }
        let reports =
            run_spec_tests(&spec).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for r in &reports {
            writeln!(
                out,
                "{}  {}: {}",
                if r.passed() { "PASS" } else { "FAIL" },
                path.display(),
                r.name
            )?;
            for f in &r.failures {
                for line in f.to_string().lines() {
                    writeln!(out, "      {line}")?;
                }
            }
        }
        let bad = reports.iter().filter(|r| !r.passed()).count();
        failed += bad;
        writeln!(
            out,
            "{}: {} passed, {} failed",
            path.display(),
            reports.len() - bad,
            bad
        )?;
    }
    Ok(if invalid {
        2
    } else if failed > 0 {
        1
    } else {
        0
    })
}

/// The tokenizer for previews: the spec's keyring when one is configured, else the public test
/// keyring (with a note, since those tokens differ from what `run` would write).
async fn preview_tokenizer(spec: &Spec) -> Result<Option<Tokenizer>> {
    if !spec.uses_hash() {
        return Ok(None);
    }
    let hash_only = KeyUse {
        hash: true,
        ..KeyUse::NONE
    };
    let ring = match Keyring::load(spec.vault.keyring.as_deref().map(Path::new), hash_only).await {
        Ok(r) => r,
        Err(KeyringError::Missing) => {
            eprintln!(
                "note: no keyring (ETL_KEYRING or vault.keyring): hashed and encrypted columns use the public test keyring, so their tokens are not the ones `run` writes."
            );
            Keyring::fixed_test_keyring()
        }
        Err(e) => return Err(usage(e)),
    };
    Ok(Some(super::spec_tokenizer(spec, &ring)?))
}

/// One previewed message.
enum Previewed {
    Row(Vec<serde_json::Value>),
    Reject(String),
}

/// `etl-engine preview SPEC [--input FILE] [--limit N]`: transforms messages from a JSON Lines
/// file and prints rows and rejects, writing nothing anywhere. Lines are read as the file source
/// reads them, so a line that is not UTF-8 or too long shows as the reject `run` would write.
pub async fn cmd_preview(
    spec_path: &Path,
    input: Option<&Path>,
    limit: Option<usize>,
) -> Result<u8> {
    let spec = load(spec_path)?;
    let input: PathBuf = match (input, &spec.source) {
        (Some(p), _) => p.to_path_buf(),
        (None, SourceConfig::File(f)) => PathBuf::from(&f.path),
        (None, SourceConfig::Sqs(_)) => {
            return Err(usage(format!(
                "{}: the source is a queue; give a JSON Lines file with --input FILE",
                spec_path.display()
            )));
        }
    };
    let file = tokio::fs::File::open(&input)
        .await
        .map_err(|e| usage(format!("cannot read --input {}: {e}", input.display())))?;
    let tokenizer = preview_tokenizer(&spec).await?;
    let sqs = matches!(spec.source, SourceConfig::Sqs(_));
    if sqs {
        eprintln!(
            "note: SQS metadata is simulated: sent_timestamp = now, receive_count = 1, message_id = FILE:LINE."
        );
    }
    let processor = Processor::new(&spec.target.table, spec.columns.clone(), tokenizer, None)
        .map_err(anyhow::Error::msg)?;
    let name = file::file_name(&input);
    let now = chrono::Utc::now().timestamp_millis().to_string();

    let mut lines = JsonLinesReader::new(tokio::io::BufReader::new(file));
    let mut results: Vec<(u64, Previewed)> = Vec::new();
    while limit.is_none_or(|l| results.len() < l) {
        let Some(line) = lines
            .next_line()
            .await
            .with_context(|| format!("reading {}", input.display()))?
        else {
            break;
        };
        let line_no = line.number;
        let mut msg = file::line_message(&name, line);
        if sqs {
            msg.attributes
                .insert("SentTimestamp".to_string(), now.clone());
            msg.attributes
                .insert("ApproximateReceiveCount".to_string(), "1".to_string());
        }
        let p = match processor.process(msg).outcome {
            Outcome::Row { values, .. } => {
                Previewed::Row(values.iter().map(|v| v.to_json()).collect())
            }
            Outcome::Reject { reason } => Previewed::Reject(reason),
        };
        results.push((line_no, p));
    }

    let columns: Vec<&str> = spec.columns.iter().map(|c| c.name.as_str()).collect();
    let mut out = std::io::stdout().lock();
    if std::io::stdout().is_terminal() {
        print_table(&mut out, &columns, &results)?;
    } else {
        for (line, p) in &results {
            let v = match p {
                Previewed::Row(values) => {
                    let row: serde_json::Map<String, serde_json::Value> = columns
                        .iter()
                        .map(|c| c.to_string())
                        .zip(values.iter().cloned())
                        .collect();
                    serde_json::json!({"line": line, "row": row})
                }
                Previewed::Reject(reason) => serde_json::json!({"line": line, "reject": reason}),
            };
            writeln!(out, "{v}")?;
        }
    }
    let rows = results
        .iter()
        .filter(|(_, p)| matches!(p, Previewed::Row(_)))
        .count();
    eprintln!(
        "preview: {} messages from {}: {rows} rows, {} rejects (nothing written)",
        results.len(),
        input.display(),
        results.len() - rows
    );
    Ok(0)
}

/// Longest cell shown in the terminal table; JSON output (stdout not a terminal) is never cut.
const MAX_CELL: usize = 36;

fn cell(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::Null => "NULL".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > MAX_CELL {
        s.chars().take(MAX_CELL - 1).chain(['…']).collect()
    } else {
        s
    }
}

fn print_table(out: &mut impl Write, columns: &[&str], results: &[(u64, Previewed)]) -> Result<()> {
    let header: Vec<String> = std::iter::once("line".to_string())
        .chain(columns.iter().map(|c| c.to_string()))
        .collect();
    let rows: Vec<Vec<String>> = results
        .iter()
        .filter_map(|(line, p)| match p {
            Previewed::Row(values) => Some(
                std::iter::once(line.to_string())
                    .chain(values.iter().map(cell))
                    .collect(),
            ),
            Previewed::Reject(_) => None,
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&header))?;
    writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    )?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    let rejects: Vec<_> = results
        .iter()
        .filter_map(|(l, p)| match p {
            Previewed::Reject(r) => Some((l, r)),
            Previewed::Row(_) => None,
        })
        .collect();
    if !rejects.is_empty() {
        writeln!(out, "\nrejects:")?;
        for (l, r) in rejects {
            writeln!(out, "  line {l}: {r}")?;
        }
    }
    Ok(())
}
