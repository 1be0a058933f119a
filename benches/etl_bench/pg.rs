//! D (and DO), the Postgres ceiling: everything the engine writes for a set of messages — every
//! output's rows, vault rows, ledger rows and rejects — transformed and encrypted up front with
//! the engine's own code, then loaded with binary COPY (the encoder the sink itself uses), as
//! many connections as the spec has writers. For an `upsert`/`ignore` output only the rows the
//! table ends with are loaded (the newest version per key): COPY has no conflict rule, and the
//! ceiling is what it costs Postgres to hold the final state.
//!
//! Only the COPY transactions are timed: this is what Postgres itself can take, with nothing of
//! the engine's per-message work in the way.

use chrono::Utc;
use etl_engine::crypto::{Binding, Keyring, VaultCipher};
use etl_engine::process::{Outcome, Processed, Processor};
use etl_engine::sink::copy::CopyBuf;
use etl_engine::source::ReceivedMessage;
use etl_engine::spec::{Spec, Write};
use etl_engine::transform::Tokenizer;
use etl_engine::value::Val;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The COPY streams of one connection: ledger, vault, rejects, then one per output.
struct Part {
    streams: Vec<Vec<u8>>,
}

/// A keyed output's final rows: key values → (message index, row index).
type Finals = HashMap<Vec<Option<String>>, (usize, usize)>;

/// What D measured.
#[derive(Debug, serde::Serialize)]
pub struct PgCeiling {
    pub messages: u64,
    pub target_rows: u64,
    pub vault_rows: u64,
    pub ledger_rows: u64,
    pub reject_rows: u64,
    pub connections: u32,
    pub copy_bytes: u64,
    pub secs: f64,
    pub messages_per_sec: f64,
}

/// The engine's transforms and encryption applied to every line of `bodies`, as the sink would
/// write them, then COPY'd into `db_url`. The SQS SentTimestamp is simulated as "now".
pub async fn run(
    spec: &Spec,
    bodies: &[String],
    db_url: &str,
    connections: usize,
) -> anyhow::Result<PgCeiling> {
    let ring = Keyring::load(
        spec.vault.keyring.as_deref().map(std::path::Path::new),
        etl_engine::crypto::KeyUse::WRITE,
    )
    .await?;
    let tokenizer = Tokenizer::new(ring.active_hash_key()?)?;
    let cipher = VaultCipher::new(&ring)?;
    let processor = Processor::new(spec, Some(tokenizer), None).map_err(anyhow::Error::msg)?;
    let now_ms = Utc::now().timestamp_millis().to_string();
    let processed: Vec<Processed> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            processor.process(ReceivedMessage {
                message_id: format!("bench-{i:08}"),
                receipt_handle: String::new(),
                body: b.clone(),
                attributes: HashMap::from([("SentTimestamp".to_string(), now_ms.clone())]),
                message_attributes: HashMap::new(),
            })
        })
        .collect();

    // Keyed outputs: the row each key ends with (later wins; with only_if_newer, the newer).
    // Rows are named by (message index, row index).
    let mut finals: Vec<Finals> = vec![HashMap::new(); spec.outputs.len()];
    let row_at = |(pi, ri): (usize, usize)| -> Option<&Vec<Val>> {
        match &processed[pi].outcome {
            Outcome::Rows { rows, .. } => rows.get(ri).map(|r| &r.values),
            _ => None,
        }
    };
    for (pi, p) in processed.iter().enumerate() {
        if let Outcome::Rows { rows, .. } = &p.outcome {
            for (ri, row) in rows.iter().enumerate() {
                let out = &spec.outputs[row.output];
                let (key, newer) = match &out.write {
                    Write::Insert => continue,
                    Write::Ignore => (out.columns.iter().map(|c| c.name.clone()).collect(), None),
                    Write::Upsert { key, only_if_newer } => (key.clone(), only_if_newer.clone()),
                };
                let at = |name: &str| out.columns.iter().position(|c| c.name == name);
                let k: Vec<Option<String>> = key
                    .iter()
                    .map(|n| at(n).and_then(|i| row.values[i].to_text()))
                    .collect();
                let keep_old = matches!(out.write, Write::Ignore)
                    || newer.as_deref().and_then(at).is_some_and(|i| {
                        finals[row.output]
                            .get(&k)
                            .and_then(|at| row_at(*at))
                            .is_some_and(|old| old[i].to_text() > row.values[i].to_text())
                    });
                if !(keep_old && finals[row.output].contains_key(&k)) {
                    finals[row.output].insert(k, (pi, ri));
                }
            }
        }
    }
    let final_rows: Vec<HashSet<(usize, usize)>> = finals
        .iter()
        .map(|m| m.values().copied().collect())
        .collect();

    // The same tables the engine creates, with the same keys and indexes, and the vault's
    // column ids its rows are keyed by.
    let pool = sqlx::PgPool::connect(db_url).await?;
    etl_engine::sink::schema::setup(&pool, spec).await?;
    let column_ids: HashMap<(String, String), i16> =
        etl_engine::db::vault_v3::registered_columns(&pool, &spec.vault.table)
            .await?
            .into_iter()
            .map(|(id, table, column)| ((table, column), id))
            .collect();
    pool.close().await;

    let writers = connections.max(1);
    let per = processed.len().div_ceil(writers).max(1);
    let mut seen = HashSet::new();
    let mut parts = Vec::new();
    let (mut target_rows, mut vault_rows, mut reject_rows, mut copy_bytes) = (0, 0, 0, 0u64);
    for (ci, chunk) in processed.chunks(per).enumerate() {
        let (mut ledger, mut vault, mut rejects) = (CopyBuf::new(), CopyBuf::new(), CopyBuf::new());
        let mut targets: Vec<CopyBuf> = spec.outputs.iter().map(|_| CopyBuf::new()).collect();
        for (j, p) in chunk.iter().enumerate() {
            let pi = ci * per + j;
            ledger.row(3);
            ledger.text(&spec.name);
            ledger.text(&p.message_id);
            match &p.outcome {
                Outcome::Rows {
                    rows,
                    vault: pending,
                } => {
                    ledger.text("row");
                    for (ri, row) in rows.iter().enumerate() {
                        let out = &spec.outputs[row.output];
                        if !matches!(out.write, Write::Insert)
                            && !final_rows[row.output].contains(&(pi, ri))
                        {
                            continue;
                        }
                        let target = &mut targets[row.output];
                        target.row(out.columns.len());
                        for (c, v) in out.columns.iter().zip(&row.values) {
                            target.val(c.out_type, v);
                        }
                    }
                    // Distinct over the whole data set: COPY has no ON CONFLICT.
                    for pv in pending {
                        let Some(&id) = column_ids.get(&(pv.table.clone(), pv.column.clone()))
                        else {
                            anyhow::bail!("{}.{} is not registered", pv.table, pv.column);
                        };
                        let token = pv.token_bytes;
                        if !seen.insert((id, token)) {
                            continue;
                        }
                        let b = Binding {
                            scope: &pv.table,
                            column: &pv.column,
                            token: &pv.token,
                        };
                        let sealed = cipher.encrypt(b, pv.plaintext.as_bytes())?;
                        vault.row(5);
                        vault.field(Some(&id.to_be_bytes()));
                        vault.field(Some(&token));
                        vault.text(&sealed.key_id);
                        vault.field(Some(&sealed.nonce));
                        vault.field(Some(&sealed.ciphertext));
                    }
                }
                Outcome::Skip { .. } => ledger.text("skip"),
                Outcome::Reject { reason } => {
                    ledger.text("reject");
                    let body = p.body.as_str();
                    let b = Binding {
                        scope: &spec.name,
                        column: "rejects",
                        token: &p.message_id,
                    };
                    let sealed = cipher.encrypt(b, body.as_bytes())?;
                    rejects.row(6);
                    rejects.text(&spec.name);
                    rejects.text(&p.message_id);
                    rejects.text(reason);
                    rejects.text(&sealed.key_id);
                    rejects.field(Some(&sealed.nonce));
                    rejects.field(Some(&sealed.ciphertext));
                }
            }
        }
        target_rows += targets.iter().map(|t| t.rows).sum::<u64>();
        vault_rows += vault.rows;
        reject_rows += rejects.rows;
        let mut streams = vec![ledger.finish(), vault.finish(), rejects.finish()];
        streams.extend(targets.into_iter().map(CopyBuf::finish));
        copy_bytes += streams.iter().map(|s| s.len() as u64).sum::<u64>();
        parts.push(Part { streams });
    }

    let q = |s: &str| etl_engine::db::quote_ident(s);
    let mut stmts = vec![
        format!(
            "COPY {} (pipeline, message_id, outcome) FROM STDIN (FORMAT binary)",
            q(&spec.ledger.table)
        ),
        format!(
            "COPY {} (column_id, token, key_id, nonce, ciphertext) FROM STDIN (FORMAT binary)",
            q(&spec.vault.table)
        ),
        format!(
            "COPY {} (pipeline, message_id, reason, key_id, nonce, body_ciphertext) FROM STDIN (FORMAT binary)",
            q(&spec.rejects.table)
        ),
    ];
    for o in &spec.outputs {
        let cols: Vec<String> = o.columns.iter().map(|c| q(&c.name)).collect();
        stmts.push(format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            q(&o.table),
            cols.join(", ")
        ));
    }
    let mut conns = Vec::new();
    for _ in 0..parts.len() {
        conns.push(PgConnection::connect(db_url).await?);
    }

    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(parts)
        .map(|(mut conn, part)| {
            let stmts = stmts.clone();
            tokio::spawn(async move {
                let mut tx = conn.begin().await?;
                for (stmt, data) in stmts.iter().zip(part.streams) {
                    let mut copy = tx.copy_in_raw(stmt).await?;
                    copy.send(data).await?;
                    copy.finish().await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let messages = processed.len() as u64;
    Ok(PgCeiling {
        messages,
        target_rows,
        vault_rows,
        ledger_rows: messages,
        reject_rows,
        connections: writers as u32,
        copy_bytes,
        secs,
        messages_per_sec: messages as f64 / secs,
    })
}
