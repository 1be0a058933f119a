//! Commands for writing specs, none of which touches a queue or a database:
//! `schema` (the JSON Schema editors complete specs from), `validate`, `ddl` (the tables a spec
//! writes), `test` (a spec's `tests:` block) and `preview` (what a JSON Lines file would become).

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

/// `etl-engine validate SPEC...`: checks each spec and reports every problem of every spec.
/// Exit 0 when all are valid, 2 when one is not.
pub fn cmd_validate(specs: &[PathBuf]) -> Result<u8> {
    let mut invalid = false;
    for path in specs {
        match load(path) {
            Ok(s) => println!(
                "{}: OK ({} columns in {}, pipeline {})",
                path.display(),
                s.all_columns().count(),
                s.table_names().join(", "),
                s.name
            ),
            Err(e) => {
                eprintln!("error: {e:#}");
                invalid = true;
            }
        }
    }
    Ok(if invalid { 2 } else { 0 })
}

/// `etl-engine ddl SPEC`: prints the `CREATE TABLE` statements of the spec's outputs.
pub fn cmd_ddl(spec_path: &Path) -> Result<u8> {
    let spec = load(spec_path)?;
    print!("{}", etl_engine::sink::ddl::create_tables(&spec));
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
    /// Rows as (output index, values in column order).
    Rows(Vec<(usize, Vec<serde_json::Value>)>),
    Skip(String),
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
    let processor = Processor::new(&spec, tokenizer, None).map_err(anyhow::Error::msg)?;
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
            Outcome::Rows { rows, .. } => Previewed::Rows(
                rows.into_iter()
                    .map(|r| (r.output, r.values.iter().map(|v| v.to_json()).collect()))
                    .collect(),
            ),
            Outcome::Skip { reason } => Previewed::Skip(reason),
            Outcome::Reject { reason } => Previewed::Reject(reason),
        };
        results.push((line_no, p));
    }

    let mut out = std::io::stdout().lock();
    if std::io::stdout().is_terminal() {
        print_tables(&mut out, &spec, &results)?;
    } else {
        let single = spec.outputs.len() == 1;
        for (line, p) in &results {
            let row_map = |oi: usize, values: &[serde_json::Value]| {
                spec.outputs[oi]
                    .columns
                    .iter()
                    .map(|c| c.name.clone())
                    .zip(values.iter().cloned())
                    .collect::<serde_json::Map<String, serde_json::Value>>()
            };
            let v = match p {
                // One table, one row: the flat form, as before outputs existed.
                Previewed::Rows(rows) if single && rows.len() == 1 => {
                    serde_json::json!({"line": line, "row": row_map(rows[0].0, &rows[0].1)})
                }
                Previewed::Rows(rows) => {
                    let mut by_table = serde_json::Map::new();
                    for (oi, values) in rows {
                        let entry = by_table
                            .entry(spec.outputs[*oi].table.clone())
                            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                        if let serde_json::Value::Array(a) = entry {
                            a.push(serde_json::Value::Object(row_map(*oi, values)));
                        }
                    }
                    serde_json::json!({"line": line, "rows": by_table})
                }
                Previewed::Skip(reason) => serde_json::json!({"line": line, "skip": reason}),
                Previewed::Reject(reason) => serde_json::json!({"line": line, "reject": reason}),
            };
            writeln!(out, "{v}")?;
        }
    }
    let count = |f: fn(&Previewed) -> bool| results.iter().filter(|(_, p)| f(p)).count();
    let rows: usize = results
        .iter()
        .map(|(_, p)| match p {
            Previewed::Rows(r) => r.len(),
            _ => 0,
        })
        .sum();
    eprintln!(
        "preview: {} messages from {}: {rows} rows, {} rejects, {} skipped (nothing written)",
        results.len(),
        input.display(),
        count(|p| matches!(p, Previewed::Reject(_))),
        count(|p| matches!(p, Previewed::Skip(_))),
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

/// Rows as one aligned table per output, then skips and rejects by line.
fn print_tables(out: &mut impl Write, spec: &Spec, results: &[(u64, Previewed)]) -> Result<()> {
    for (oi, o) in spec.outputs.iter().enumerate() {
        if spec.outputs.len() > 1 {
            writeln!(out, "{}:", o.table)?;
        }
        let columns: Vec<&str> = o.columns.iter().map(|c| c.name.as_str()).collect();
        let rows: Vec<Vec<String>> = results
            .iter()
            .flat_map(|(line, p)| match p {
                Previewed::Rows(rows) => rows
                    .iter()
                    .filter(|(i, _)| *i == oi)
                    .map(|(_, values)| {
                        std::iter::once(line.to_string())
                            .chain(values.iter().map(cell))
                            .collect()
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        print_table(out, &columns, &rows)?;
    }
    for (title, pick) in [
        (
            "skipped",
            (|p| match p {
                Previewed::Skip(r) => Some(r),
                _ => None,
            }) as fn(&Previewed) -> Option<&String>,
        ),
        ("rejects", |p| match p {
            Previewed::Reject(r) => Some(r),
            _ => None,
        }),
    ] {
        let lines: Vec<_> = results
            .iter()
            .filter_map(|(l, p)| pick(p).map(|r| (l, r)))
            .collect();
        if !lines.is_empty() {
            writeln!(out, "\n{title}:")?;
            for (l, r) in lines {
                writeln!(out, "  line {l}: {r}")?;
            }
        }
    }
    Ok(())
}

/// One aligned table: a `line` column, then the given columns.
fn print_table(out: &mut impl Write, columns: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let header: Vec<String> = std::iter::once("line".to_string())
        .chain(columns.iter().map(|c| c.to_string()))
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(rows)
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
    for r in rows {
        writeln!(out, "{}", line(r))?;
    }
    Ok(())
}
