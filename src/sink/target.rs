//! Checking, before any write, that the target table has every spec column with a type the
//! column's values can be written to.

use super::{Sink, SinkError};
use crate::spec::{Column, Spec, Write};
use crate::value::ValType;
use sqlx::postgres::PgPool;
use std::collections::HashMap;

impl Sink {
    /// Checks every output of `spec`: its table and columns ([`Sink::check_target`]) and, for
    /// `write: upsert`, that a unique index or primary key covers exactly the key columns
    /// (without one, `ON CONFLICT` fails on the first batch).
    pub async fn check_outputs(pool: &PgPool, spec: &Spec) -> Result<(), SinkError> {
        for o in &spec.outputs {
            Self::check_target(pool, &o.table, &o.columns).await?;
            if let Write::Upsert { key, .. } = &o.write {
                Self::check_unique_key(pool, &o.table, key).await?;
            }
        }
        Ok(())
    }

    /// Whether a valid, non-partial unique index on `table` has exactly the columns `key`.
    async fn check_unique_key(pool: &PgPool, table: &str, key: &[String]) -> Result<(), SinkError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT i.indexrelid::regclass::text FROM pg_index i \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL \
               AND i.indexprs IS NULL AND i.indnatts = cardinality($2::text[]) \
               AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a \
                    WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) \
                   = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) AS k) \
             LIMIT 1",
        )
        .bind(crate::db::quote_ident(table))
        .bind(key)
        .fetch_optional(pool)
        .await?;
        match found {
            Some(_) => Ok(()),
            None => Err(SinkError::Target {
                table: table.to_string(),
                problem: format!(
                    "`write: upsert` needs a primary key or unique index on exactly ({}); none found \
                     (e.g. ALTER TABLE {table} ADD PRIMARY KEY ({}), or see `etl-engine ddl`)",
                    key.join(", "),
                    key.join(", ")
                ),
            }),
        }
    }

    /// Checks that the target table exists and has every spec column with a type the column's
    /// value can be written to, naming every problem at once.
    pub async fn check_target(
        pool: &PgPool,
        table: &str,
        columns: &[Column],
    ) -> Result<(), SinkError> {
        let have = column_types(pool, table).await?;
        if have.is_empty() {
            return Err(SinkError::Target {
                table: table.to_string(),
                problem: "does not exist (or this role cannot see it); create it first, e.g. from schema/".into(),
            });
        }
        let mut problems = Vec::new();
        for c in columns {
            match have.get(&c.name) {
                None => problems.push(format!("has no column {}", c.name)),
                Some(pg_type) if !type_compatible(c.out_type, pg_type) => problems.push(format!(
                    "column {} is {pg_type}, but the spec produces {} values for it{}",
                    c.name,
                    c.out_type.name(),
                    cast_hint(pg_type)
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = have.keys().map(String::as_str).collect();
        names.sort_unstable();
        Err(SinkError::Target {
            table: table.to_string(),
            problem: format!("{} (it has: {})", problems.join("; "), names.join(", ")),
        })
    }
}

/// The columns of `table` (`schema.table`, or a name found on the search path) with their types
/// as `information_schema.columns.data_type` says (`text[]` / `character varying[]` for those
/// arrays); empty when the table does not exist or this role cannot see it.
pub(super) async fn column_types(
    pool: &PgPool,
    table: &str,
) -> Result<HashMap<String, String>, sqlx::Error> {
    let (schema, name) = match table.split_once('.') {
        Some((s, n)) => (Some(s.to_string()), n.to_string()),
        None => (None, table.to_string()),
    };
    // An array column's data_type is just ARRAY; udt_name (`_text`) says of what.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, CASE WHEN data_type = 'ARRAY' THEN \
         CASE udt_name WHEN '_text' THEN 'text[]' WHEN '_varchar' THEN 'character varying[]' ELSE udt_name::text END \
         ELSE data_type::text END FROM information_schema.columns \
         WHERE table_name = $1 AND ($2::text IS NULL AND table_schema = ANY(current_schemas(false)) OR table_schema = $2)",
    )
    .bind(&name)
    .bind(&schema)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The `cast` that would make the spec's values fit a column of `pg_type`, as a hint.
fn cast_hint(pg_type: &str) -> &'static str {
    match pg_type {
        "jsonb" | "json" => " (add `- type: cast` with `to: jsonb`)",
        "numeric" => " (add `- type: cast` with `to: numeric`)",
        "uuid" => " (add `- type: cast` with `to: uuid`)",
        "text[]" | "character varying[]" => " (add `- type: cast` with `to: text[]`)",
        _ => "",
    }
}

/// Whether values of `ty` can be inserted into a column of Postgres type `pg_type`
/// (`information_schema.columns.data_type`, or `text[]` / `character varying[]` for those
/// arrays) by an assignment cast. A decimal never goes into an integer column (Postgres would
/// round it silently): cast it to `integer` first, which refuses fractions.
pub fn type_compatible(ty: ValType, pg_type: &str) -> bool {
    let textual = matches!(pg_type, "text" | "character varying" | "character");
    let numeric = matches!(
        pg_type,
        "integer" | "bigint" | "numeric" | "real" | "double precision"
    );
    textual
        || match ty {
            ValType::Json | ValType::Text => false,
            ValType::Integer | ValType::BigInt => numeric,
            ValType::Numeric => matches!(pg_type, "numeric" | "real" | "double precision"),
            ValType::Jsonb => matches!(pg_type, "jsonb" | "json"),
            ValType::Uuid => pg_type == "uuid",
            ValType::TextArray => matches!(pg_type, "text[]" | "character varying[]"),
            ValType::Boolean => pg_type == "boolean",
            ValType::Date | ValType::Timestamp => {
                matches!(
                    pg_type,
                    "date" | "timestamp without time zone" | "timestamp with time zone"
                )
            }
        }
}
