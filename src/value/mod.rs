//! The values that flow between extract, transforms and the sink, and their static types.
//!
//! Values may be PII, so `Debug` shows only the variant, never the content. Casts between
//! the types live in [`cast`]: the spec checks them, transforms apply them.

pub mod cast;
pub mod numeric;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Target types of `cast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CastType {
    Integer,
    Bigint,
    Text,
    Boolean,
    Date,
    Timestamp,
    /// Exact decimal (Postgres `numeric`): money and other amounts that must not round.
    Numeric,
    /// A JSON value written as Postgres `jsonb`.
    Jsonb,
    /// A UUID (checked and written in canonical form).
    Uuid,
    /// A list of texts (Postgres `text[]`).
    #[serde(rename = "text[]")]
    TextArray,
}

/// Static type of a column value at some point of its transform chain; checked when the spec
/// is compiled so that a transform applied to the wrong type is a spec error, not a reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValType {
    /// Whatever the JSONPath found (string, number, bool, object, array); written as text.
    Json,
    Text,
    Integer,
    BigInt,
    Boolean,
    Date,
    Timestamp,
    /// Exact decimal; runtime values are [`Val::Numeric`].
    Numeric,
    /// A JSON value written as `jsonb`; runtime values are [`Val::Json`].
    Jsonb,
    /// A UUID; runtime values are [`Val::Text`] in canonical (lowercase, hyphenated) form.
    Uuid,
    /// A list of texts; runtime values are [`Val::Json`] arrays of strings and nulls.
    TextArray,
}

impl ValType {
    /// Name used in messages and in `schema`.
    pub fn name(self) -> &'static str {
        match self {
            ValType::Json => "json",
            ValType::Text => "text",
            ValType::Integer => "integer",
            ValType::BigInt => "bigint",
            ValType::Boolean => "boolean",
            ValType::Date => "date",
            ValType::Timestamp => "timestamp",
            ValType::Numeric => "numeric",
            ValType::Jsonb => "jsonb",
            ValType::Uuid => "uuid",
            ValType::TextArray => "text[]",
        }
    }

    /// The Postgres array type used to bind a column of this type in `UNNEST`. Numeric, jsonb
    /// and uuid values are bound as their text and cast by Postgres, which parses them exactly;
    /// a `text[]` value cannot be one element of an array (Postgres arrays of arrays are
    /// rectangular and `UNNEST` flattens them), so each is bound as its array literal and cast
    /// per row (see [`ValType::pg_row_cast`]).
    pub fn pg_array_type(self) -> &'static str {
        match self {
            ValType::Json | ValType::Text | ValType::TextArray => "text[]",
            ValType::Numeric => "numeric[]",
            ValType::Jsonb => "jsonb[]",
            ValType::Uuid => "uuid[]",
            ValType::Integer => "int4[]",
            ValType::BigInt => "int8[]",
            ValType::Boolean => "bool[]",
            ValType::Date => "date[]",
            ValType::Timestamp => "timestamptz[]",
        }
    }

    /// The cast applied to each unnested value before it is inserted, when binding alone
    /// cannot give the column's type.
    pub fn pg_row_cast(self) -> Option<&'static str> {
        match self {
            ValType::TextArray => Some("text[]"),
            _ => None,
        }
    }

    /// Whether the value is text-like (a JSON value may be a string).
    pub fn is_textual(self) -> bool {
        matches!(self, ValType::Json | ValType::Text)
    }
}

/// A runtime value.
#[derive(Clone, PartialEq)]
pub enum Val {
    Null,
    Json(serde_json::Value),
    Text(String),
    Int(i32),
    BigInt(i64),
    Bool(bool),
    Date(NaiveDate),
    Timestamp(DateTime<Utc>),
    /// An exact decimal.
    Numeric(rust_decimal::Decimal),
}

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Val::Null => "Null",
            Val::Json(_) => "Json(<redacted>)",
            Val::Text(_) => "Text(<redacted>)",
            Val::Int(_) => "Int(<redacted>)",
            Val::BigInt(_) => "BigInt(<redacted>)",
            Val::Bool(_) => "Bool(<redacted>)",
            Val::Date(_) => "Date(<redacted>)",
            Val::Timestamp(_) => "Timestamp(<redacted>)",
            Val::Numeric(_) => "Numeric(<redacted>)",
        };
        f.write_str(kind)
    }
}

impl Val {
    /// Null, or a JSON null.
    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null | Val::Json(serde_json::Value::Null))
    }

    /// The text form used for hashing, vaulting and writing to text columns: strings as they
    /// are, everything else in its canonical JSON/ISO form.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Val::Null | Val::Json(serde_json::Value::Null) => None,
            Val::Json(serde_json::Value::String(s)) | Val::Text(s) => Some(s.clone()),
            Val::Json(v) => Some(v.to_string()),
            Val::Int(i) => Some(i.to_string()),
            Val::BigInt(i) => Some(i.to_string()),
            Val::Bool(b) => Some(b.to_string()),
            Val::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
            Val::Timestamp(t) => Some(t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            Val::Numeric(d) => Some(d.to_string()),
        }
    }

    /// JSON form, for previews and spec tests.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Val::Null => serde_json::Value::Null,
            Val::Json(v) => v.clone(),
            Val::Int(i) => (*i).into(),
            Val::BigInt(i) => (*i).into(),
            Val::Bool(b) => (*b).into(),
            Val::Numeric(d) => numeric::to_json(d),
            other => other
                .to_text()
                .map(serde_json::Value::String)
                .unwrap_or(serde_json::Value::Null),
        }
    }
}
