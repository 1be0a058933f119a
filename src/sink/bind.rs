//! The text a value is sent as when its column type is not sent in binary form.
//!
//! Numeric, jsonb and uuid values are sent as text and cast by Postgres (`c::numeric`), which
//! parses them exactly: no float ever holds an amount. A `text[]` value is sent as its array
//! literal and cast the same way.

use crate::value::{Val, ValType};

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
