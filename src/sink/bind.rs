//! Binding one column of a batch as a typed array, and the `SELECT … FROM UNNEST(…)` that
//! turns those arrays back into rows.
//!
//! Numeric, jsonb and uuid values are bound as text and cast by Postgres (`$n::numeric[]`),
//! which parses them exactly: no float ever holds an amount. A `text[]` value is bound as its
//! array literal and cast per row, because an array of arrays cannot carry lists of different
//! lengths (Postgres arrays are rectangular and `UNNEST` flattens them).

use crate::spec::Column;
use crate::value::{Val, ValType};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Postgres;

/// A query whose typed-array parameters are bound column by column.
pub(super) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// `SELECT u.c1, u.c2::text[], … FROM UNNEST($1::int4[], $2::text[], …) AS u(c1, c2, …)`
/// for `columns`, in order: parameter `$i` is column `i`'s array.
pub(super) fn unnest_select(columns: &[Column]) -> String {
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.out_type.pg_array_type()))
        .collect();
    let select: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c.out_type.pg_row_cast() {
            Some(cast) => format!("u.c{}::{cast}", i + 1),
            None => format!("u.c{}", i + 1),
        })
        .collect();
    let aliases: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    format!(
        "SELECT {} FROM UNNEST({}) AS u({})",
        select.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// The text a value of static type `ty` is bound as, for the types bound as text.
pub(super) fn bound_text(ty: ValType, v: &Val) -> Option<String> {
    if v.is_null() {
        return None;
    }
    match ty {
        ValType::Jsonb => Some(v.to_json().to_string()),
        ValType::TextArray => match v {
            Val::Json(serde_json::Value::Array(items)) => Some(array_literal(items)),
            _ => None,
        },
        _ => v.to_text(),
    }
}

/// A Postgres array literal of texts: `{"a","b \"c\"",NULL}`. Every element is quoted, so
/// commas, braces and spaces in it need no thought; `"` and `\` are backslash-escaped.
fn array_literal(items: &[serde_json::Value]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            serde_json::Value::Null => out.push_str("NULL"),
            serde_json::Value::String(s) => quote_element(&mut out, s),
            other => quote_element(&mut out, &other.to_string()),
        }
    }
    out.push('}');
    out
}

/// Appends `s` as a double-quoted array element.
fn quote_element(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Binds one column of a batch as a typed array.
pub(super) fn bind_column<'q, 'v>(
    q: PgQuery<'q>,
    ty: ValType,
    vals: impl Iterator<Item = &'v Val>,
) -> PgQuery<'q> {
    match ty {
        ValType::Json
        | ValType::Text
        | ValType::Numeric
        | ValType::Jsonb
        | ValType::Uuid
        | ValType::TextArray => q.bind(
            vals.map(|v| bound_text(ty, v))
                .collect::<Vec<Option<String>>>(),
        ),
        ValType::Integer => q.bind(
            vals.map(|v| match v {
                Val::Int(i) => Some(*i),
                _ => None,
            })
            .collect::<Vec<Option<i32>>>(),
        ),
        ValType::BigInt => q.bind(
            vals.map(|v| match v {
                Val::BigInt(i) => Some(*i),
                Val::Int(i) => Some(i64::from(*i)),
                _ => None,
            })
            .collect::<Vec<Option<i64>>>(),
        ),
        ValType::Boolean => q.bind(
            vals.map(|v| match v {
                Val::Bool(b) => Some(*b),
                _ => None,
            })
            .collect::<Vec<Option<bool>>>(),
        ),
        ValType::Date => q.bind(
            vals.map(|v| match v {
                Val::Date(d) => Some(*d),
                _ => None,
            })
            .collect::<Vec<Option<NaiveDate>>>(),
        ),
        ValType::Timestamp => q.bind(
            vals.map(|v| match v {
                Val::Timestamp(t) => Some(*t),
                _ => None,
            })
            .collect::<Vec<Option<DateTime<Utc>>>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn array_literals_quote_every_element() {
        assert_eq!(array_literal(&[]), "{}");
        assert_eq!(
            array_literal(&[json!("a,b"), json!(null), json!("q\"\\"), json!(1)]),
            r#"{"a,b",NULL,"q\"\\","1"}"#
        );
    }

    #[test]
    fn values_bound_as_text() {
        assert_eq!(
            bound_text(ValType::Jsonb, &Val::Json(json!({"a": "x"}))),
            Some(r#"{"a":"x"}"#.into())
        );
        assert_eq!(bound_text(ValType::Jsonb, &Val::Json(json!(null))), None);
        assert_eq!(
            bound_text(ValType::TextArray, &Val::Json(json!(["x"]))),
            Some(r#"{"x"}"#.into())
        );
        let d = crate::value::numeric::parse("12.50").unwrap();
        assert_eq!(
            bound_text(ValType::Numeric, &Val::Numeric(d)),
            Some("12.50".into())
        );
    }
}
