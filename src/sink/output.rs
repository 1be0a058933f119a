//! One output's writer, built once per spec: its `INSERT … ON CONFLICT` statement for the write
//! mode, its binary `COPY` when the table's column types allow one, and the in-batch
//! deduplication upsert needs.

use super::bind::unnest_select;
use super::copy::{CopyBuf, CopyGate, direct_type, exact_in_copy};
use crate::db::quote_ident;
use crate::spec::{Output, Write};
use crate::value::{Val, ValType};
use std::cmp::Ordering;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

/// One output's statement, built once: how its rows are written.
#[derive(Debug)]
pub(super) struct OutputWriter {
    /// The table as the spec names it.
    pub(super) table: String,
    /// Column names as the spec writes them, in statement order.
    columns: Vec<String>,
    /// Column types, in statement order.
    pub(super) types: Vec<ValType>,
    /// The statement: `INSERT … SELECT * FROM UNNEST(…)` with the write mode's `ON CONFLICT`.
    pub(super) sql: String,
    /// Positions of the upsert key columns (empty unless upsert).
    key: Vec<usize>,
    /// Position of the `only_if_newer` column.
    newer: Option<usize>,
    /// Whether a stored row may conflict with a new one (`upsert`, `ignore`): then a COPY runs
    /// under a savepoint and falls back to the statement on a conflict.
    pub(super) keyed: bool,
    /// Whether the next keyed write tries COPY.
    pub(super) gate: CopyGate,
    /// `COPY table (columns) FROM STDIN (FORMAT binary)`.
    pub(super) sql_copy: String,
}

impl OutputWriter {
    /// The writer of output `o`.
    pub(super) fn new(o: &Output) -> Self {
        let names: Vec<String> = o.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let pos = |name: &str| o.columns.iter().position(|c| c.name == name);
        let mut sql = format!(
            "INSERT INTO {} AS cur ({}) {}",
            quote_ident(&o.table),
            names.join(", "),
            unnest_select(&o.columns)
        );
        let (mut key, mut newer) = (Vec::new(), None);
        match &o.write {
            Write::Insert => {}
            Write::Ignore => sql.push_str(" ON CONFLICT DO NOTHING"),
            Write::Upsert {
                key: k,
                only_if_newer,
            } => {
                key = k.iter().filter_map(|n| pos(n)).collect();
                newer = only_if_newer.as_deref().and_then(pos);
                let keys: Vec<String> = k.iter().map(|n| quote_ident(n)).collect();
                let updates: Vec<String> = o
                    .columns
                    .iter()
                    .filter(|c| !k.contains(&c.name))
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
                    .collect();
                if updates.is_empty() {
                    sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
                } else {
                    sql.push_str(&format!(
                        " ON CONFLICT ({}) DO UPDATE SET {}",
                        keys.join(", "),
                        updates.join(", ")
                    ));
                    if let Some(n) = only_if_newer {
                        // An older message never overwrites a newer row; an equal one may
                        // (a re-sent message then rewrites the same values).
                        sql.push_str(&format!(
                            " WHERE cur.{0} IS NULL OR cur.{0} <= EXCLUDED.{0}",
                            quote_ident(n)
                        ));
                    }
                }
            }
        }
        Self {
            table: o.table.clone(),
            columns: o.columns.iter().map(|c| c.name.clone()).collect(),
            types: o.columns.iter().map(|c| c.out_type).collect(),
            keyed: !matches!(o.write, Write::Insert),
            gate: CopyGate::default(),
            sql_copy: format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                quote_ident(&o.table),
                names.join(", ")
            ),
            sql,
            key,
            newer,
        }
    }

    /// For upsert: one row per key, so the statement never touches a row twice (Postgres
    /// refuses that). The later row wins; with `only_if_newer`, the newer one (ties: later).
    /// The rows come out in key order, so two writers upserting the same keys lock them in the
    /// same order and cannot deadlock. Other modes keep every row, in batch order.
    pub(super) fn dedup<'r>(&self, rows: Vec<&'r Vec<Val>>) -> Vec<&'r Vec<Val>> {
        if self.key.is_empty() {
            return rows;
        }
        let mut kept: BTreeMap<Vec<Option<String>>, &'r Vec<Val>> = BTreeMap::new();
        for row in rows {
            let key: Vec<Option<String>> = self
                .key
                .iter()
                .map(|&i| row.get(i).and_then(Val::to_text))
                .collect();
            match kept.entry(key) {
                Entry::Occupied(mut e) => {
                    let older = self.newer.is_some_and(|n| {
                        newer_order(row.get(n), e.get().get(n)) == Some(Ordering::Less)
                    });
                    if !older {
                        e.insert(row);
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(row);
                }
            }
        }
        kept.into_values().collect()
    }
}

impl OutputWriter {
    /// How each column's values go into a binary COPY of this output, given the table's column
    /// types (`information_schema` names, by column): `None` when a column's binary form would
    /// differ from what an assignment cast makes of the bound value (see [`direct_type`]);
    /// then its rows are bound as arrays instead.
    pub(super) fn copy_plan(&self, pg_types: &HashMap<String, String>) -> Option<Vec<ValType>> {
        self.types
            .iter()
            .zip(&self.columns)
            .map(|(ty, name)| direct_type(*ty, pg_types.get(name)?))
            .collect()
    }

    /// The binary COPY stream of `rows`, each column encoded as `plan` says; `None` when a
    /// value has no exact binary form ([`exact_in_copy`]), so the rows must be bound instead.
    pub(super) fn copy_rows(plan: &[ValType], rows: &[&Vec<Val>]) -> Option<CopyBuf> {
        let mut buf = CopyBuf::new();
        for row in rows {
            buf.row(plan.len());
            for (i, ty) in plan.iter().enumerate() {
                let v = row.get(i).unwrap_or(&Val::Null);
                if !exact_in_copy(*ty, v) {
                    return None;
                }
                buf.val(*ty, v);
            }
        }
        Some(buf)
    }
}

/// The order of two `only_if_newer` values: numbers by value, dates and times by instant,
/// anything else by text; a missing value is older than any other.
fn newer_order(a: Option<&Val>, b: Option<&Val>) -> Option<Ordering> {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    match (a?, b?) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::BigInt(x), Val::BigInt(y)) => Some(x.cmp(y)),
        (Val::Timestamp(x), Val::Timestamp(y)) => Some(x.cmp(y)),
        (Val::Date(x), Val::Date(y)) => Some(x.cmp(y)),
        (x, y) => Some(x.to_text().cmp(&y.to_text())),
    }
}
