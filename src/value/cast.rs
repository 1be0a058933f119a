//! Casts between value types, and typing of `default` values.

use super::{CastType, Val, ValType};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value as J;

/// The value type a cast produces.
pub fn out_type(to: CastType) -> ValType {
    match to {
        CastType::Integer => ValType::Integer,
        CastType::Bigint => ValType::BigInt,
        CastType::Text => ValType::Text,
        CastType::Boolean => ValType::Boolean,
        CastType::Date => ValType::Date,
        CastType::Timestamp => ValType::Timestamp,
        CastType::Numeric => ValType::Numeric,
        CastType::Jsonb => ValType::Jsonb,
        CastType::Uuid => ValType::Uuid,
        CastType::TextArray => ValType::TextArray,
    }
}

/// Whether a cast from `from` to `to` is meaningful; checked when the spec is compiled.
pub fn check(from: ValType, to: CastType) -> Result<(), String> {
    use ValType as T;
    let ok = match to {
        CastType::Text => true,
        CastType::Integer | CastType::Bigint => matches!(
            from,
            T::Json | T::Text | T::Integer | T::BigInt | T::Boolean | T::Numeric
        ),
        CastType::Numeric => matches!(
            from,
            T::Json | T::Text | T::Integer | T::BigInt | T::Numeric
        ),
        // Every value has a JSON form.
        CastType::Jsonb => true,
        CastType::Uuid => matches!(from, T::Json | T::Text | T::Uuid),
        CastType::TextArray => matches!(from, T::Json | T::Jsonb | T::TextArray),
        CastType::Boolean => matches!(
            from,
            T::Json | T::Text | T::Integer | T::BigInt | T::Boolean
        ),
        CastType::Date | CastType::Timestamp => {
            matches!(from, T::Json | T::Text | T::Date | T::Timestamp)
        }
    };
    if ok {
        Ok(())
    } else {
        let hint = if matches!(to, CastType::Date | CastType::Timestamp) {
            "; for epoch numbers use `from_epoch`"
        } else {
            ""
        };
        Err(format!(
            "cannot cast a {} value to {}{hint}",
            from.name(),
            out_type(to).name()
        ))
    }
}

fn parse_i64(s: &str) -> Option<i64> {
    let s = s.trim();
    s.parse::<i64>().ok().or_else(|| {
        // "42.0" is an integer written as a float; "42.5" is not.
        s.parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

fn to_i64(v: &Val) -> Result<i64, String> {
    match v {
        Val::Int(i) => Ok(i64::from(*i)),
        Val::BigInt(i) => Ok(*i),
        Val::Bool(b) => Ok(i64::from(*b)),
        Val::Json(J::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| "number is not an integer".to_string()),
        Val::Json(J::Bool(b)) => Ok(i64::from(*b)),
        Val::Numeric(d) if d.fract().is_zero() => {
            i64::try_from(*d).map_err(|_| "number out of range for bigint".to_string())
        }
        Val::Numeric(_) => Err("number is not an integer".into()),
        Val::Json(J::String(s)) | Val::Text(s) => {
            parse_i64(s).ok_or_else(|| "text is not an integer".to_string())
        }
        _ => Err("value is not an integer".into()),
    }
}

fn to_bool(v: &Val) -> Result<bool, String> {
    match v {
        Val::Bool(b) | Val::Json(J::Bool(b)) => Ok(*b),
        Val::Int(_) | Val::BigInt(_) | Val::Json(J::Number(_)) => match to_i64(v)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("number is not 0 or 1".into()),
        },
        Val::Json(J::String(s)) | Val::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Ok(true),
            "false" | "f" | "no" | "n" | "0" => Ok(false),
            _ => Err("text is not a boolean".into()),
        },
        _ => Err("value is not a boolean".into()),
    }
}

/// Parses RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` (taken as UTC) or a bare date (midnight UTC).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// A UUID in canonical form (lowercase, hyphenated); Postgres's other accepted spellings
/// (braces, no hyphens, upper case) are accepted too.
fn to_uuid(v: &Val) -> Result<Val, String> {
    v.to_text()
        .and_then(|s| uuid::Uuid::try_parse(s.trim()).ok())
        .map(|u| Val::Text(u.hyphenated().to_string()))
        .ok_or_else(|| "text is not a UUID".to_string())
}

/// A JSON array as a list of texts: strings as they are, nulls kept, other elements as JSON text.
fn to_text_array(v: Val) -> Result<Val, String> {
    match v {
        Val::Json(J::Array(items)) => Ok(Val::Json(J::Array(
            items
                .into_iter()
                .map(|i| match i {
                    J::Null | J::String(_) => i,
                    other => J::String(other.to_string()),
                })
                .collect(),
        ))),
        _ => Err("value is not a JSON array".into()),
    }
}

/// Applies a cast.
pub fn apply(v: Val, to: CastType) -> Result<Val, String> {
    match to {
        CastType::Numeric => super::numeric::to_decimal(&v).map(Val::Numeric),
        CastType::Jsonb => Ok(Val::Json(v.to_json())),
        CastType::Uuid => to_uuid(&v),
        CastType::TextArray => to_text_array(v),
        CastType::Text => Ok(v.to_text().map(Val::Text).unwrap_or(Val::Null)),
        CastType::Integer => {
            let i = to_i64(&v)?;
            i32::try_from(i)
                .map(Val::Int)
                .map_err(|_| "integer out of range for integer (32-bit)".into())
        }
        CastType::Bigint => to_i64(&v).map(Val::BigInt),
        CastType::Boolean => to_bool(&v).map(Val::Bool),
        CastType::Date => match v {
            Val::Date(d) => Ok(Val::Date(d)),
            Val::Timestamp(t) => Ok(Val::Date(t.date_naive())),
            other => other
                .to_text()
                .and_then(|s| parse_timestamp(&s))
                .map(|t| Val::Date(t.date_naive()))
                .ok_or_else(|| "text is not a date (expected YYYY-MM-DD or RFC 3339)".into()),
        },
        CastType::Timestamp => match v {
            Val::Timestamp(t) => Ok(Val::Timestamp(t)),
            Val::Date(d) => Ok(d
                .and_hms_opt(0, 0, 0)
                .map(|t| Val::Timestamp(t.and_utc()))
                .unwrap_or(Val::Null)),
            other => other
                .to_text()
                .and_then(|s| parse_timestamp(&s))
                .map(Val::Timestamp)
                .ok_or_else(|| "text is not a timestamp (expected RFC 3339)".into()),
        },
    }
}

/// Turns a spec `default` value into a value of type `ty`, or says why it cannot.
pub fn default_value(value: &J, ty: ValType) -> Result<Val, String> {
    if value.is_null() {
        return Ok(Val::Null);
    }
    let v = Val::Json(value.clone());
    let res = match ty {
        ValType::Json => Ok(v),
        ValType::Text => match value {
            J::String(s) => Ok(Val::Text(s.clone())),
            _ => Err(String::new()),
        },
        ValType::Integer => apply(v, CastType::Integer),
        ValType::BigInt => apply(v, CastType::Bigint),
        ValType::Boolean => apply(v, CastType::Boolean),
        ValType::Date => apply(v, CastType::Date),
        ValType::Timestamp => apply(v, CastType::Timestamp),
        ValType::Numeric => apply(v, CastType::Numeric),
        ValType::Jsonb => Ok(v),
        ValType::Uuid => apply(v, CastType::Uuid),
        ValType::TextArray => apply(v, CastType::TextArray),
    };
    res.map_err(|_| {
        format!(
            "default value does not fit the {} value at this point",
            ty.name()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn casts() {
        assert_eq!(
            apply(Val::Json(json!("42")), CastType::Integer),
            Ok(Val::Int(42))
        );
        assert_eq!(
            apply(Val::Json(json!(42.0)), CastType::Integer),
            Ok(Val::Int(42))
        );
        assert!(apply(Val::Json(json!(42.5)), CastType::Integer).is_err());
        assert!(apply(Val::Json(json!("3000000000")), CastType::Integer).is_err());
        assert_eq!(
            apply(Val::Json(json!("3000000000")), CastType::Bigint),
            Ok(Val::BigInt(3_000_000_000))
        );
        assert_eq!(
            apply(Val::Json(json!("yes")), CastType::Boolean),
            Ok(Val::Bool(true))
        );
        assert!(apply(Val::Json(json!("maybe")), CastType::Boolean).is_err());
        assert_eq!(
            apply(Val::Int(7), CastType::Text),
            Ok(Val::Text("7".into()))
        );
        assert_eq!(
            apply(Val::Json(json!({"a": 1})), CastType::Text),
            Ok(Val::Text("{\"a\":1}".into()))
        );
        assert_eq!(
            apply(
                Val::Json(json!("2024-02-29T23:00:00-02:00")),
                CastType::Date
            ),
            Ok(Val::Date(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap()))
        );
        assert!(apply(Val::Json(json!("2024-13-01")), CastType::Date).is_err());
        assert!(matches!(
            apply(Val::Json(json!("2024-01-01 10:00:00")), CastType::Timestamp),
            Ok(Val::Timestamp(_))
        ));
    }

    #[test]
    fn cast_errors_do_not_contain_the_value() {
        let err = apply(Val::Json(json!("199.172.111.135")), CastType::Integer).unwrap_err();
        assert!(!err.contains("199.172"), "{err}");
    }

    #[test]
    fn type_checks() {
        assert!(check(ValType::Date, CastType::Integer).is_err());
        assert!(
            check(ValType::BigInt, CastType::Date)
                .unwrap_err()
                .contains("from_epoch")
        );
        assert!(check(ValType::Json, CastType::Integer).is_ok());
    }

    #[test]
    fn casts_to_numeric_jsonb_uuid_and_text_arrays() {
        assert_eq!(
            apply(Val::Json(json!("19.90")), CastType::Numeric)
                .unwrap()
                .to_text(),
            Some("19.90".into())
        );
        assert_eq!(
            apply(Val::Int(7), CastType::Numeric),
            Ok(Val::Numeric(7.into()))
        );
        assert!(apply(Val::Json(json!("ten")), CastType::Numeric).is_err());
        assert!(apply(Val::Json(json!(true)), CastType::Numeric).is_err());
        // numeric → integer only when whole.
        assert_eq!(
            apply(Val::Numeric(20.into()), CastType::Integer),
            Ok(Val::Int(20))
        );
        let half = super::super::numeric::parse("2.5").unwrap();
        assert!(apply(Val::Numeric(half), CastType::Integer).is_err());

        assert_eq!(
            apply(Val::Json(json!({"a": [1]})), CastType::Jsonb),
            Ok(Val::Json(json!({"a": [1]})))
        );
        assert_eq!(
            apply(Val::Text("x".into()), CastType::Jsonb),
            Ok(Val::Json(json!("x")))
        );

        assert_eq!(
            apply(
                Val::Json(json!("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}")),
                CastType::Uuid
            ),
            Ok(Val::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()))
        );
        let err = apply(Val::Json(json!("not-a-uuid-secret")), CastType::Uuid).unwrap_err();
        assert!(!err.contains("secret"), "{err}");

        assert_eq!(
            apply(
                Val::Json(json!(["a", 1, null, {"b": 2}])),
                CastType::TextArray
            ),
            Ok(Val::Json(json!(["a", "1", null, "{\"b\":2}"])))
        );
        assert!(apply(Val::Json(json!("a")), CastType::TextArray).is_err());

        assert!(check(ValType::Boolean, CastType::Numeric).is_err());
        assert!(check(ValType::Date, CastType::Uuid).is_err());
        assert!(check(ValType::Text, CastType::TextArray).is_err());
        assert!(check(ValType::Date, CastType::Jsonb).is_ok());
    }

    #[test]
    fn defaults_are_typed() {
        assert_eq!(
            default_value(&json!("xx"), ValType::Text),
            Ok(Val::Text("xx".into()))
        );
        assert_eq!(default_value(&json!(5), ValType::Integer), Ok(Val::Int(5)));
        assert!(default_value(&json!("abc"), ValType::Integer).is_err());
        assert!(default_value(&json!(5), ValType::Text).is_err());
    }
}
