//! The values that flow between extract, transforms and the sink, and their static types.
//!
//! Values may be PII, so `Debug` shows only the variant, never the content. Casts between
//! the types live in [`cast`]: the spec checks them, transforms apply them.

pub mod cast;

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
        }
    }

    /// The Postgres array type used to bind a column of this type in `UNNEST`.
    pub fn pg_array_type(self) -> &'static str {
        match self {
            ValType::Json | ValType::Text => "text[]",
            ValType::Integer => "int4[]",
            ValType::BigInt => "int8[]",
            ValType::Boolean => "bool[]",
            ValType::Date => "date[]",
            ValType::Timestamp => "timestamptz[]",
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
            other => other
                .to_text()
                .map(serde_json::Value::String)
                .unwrap_or(serde_json::Value::Null),
        }
    }
}
