//! Exact decimals (`numeric`): reading them from values, and showing them as JSON.
//!
//! Money must not pass through `f64`: `0.1 + 0.2` is not `0.3` there. Values are read from
//! their text (a JSON number's shortest round-trip form, which is what the producer wrote for
//! up to 15 significant digits) into [`Decimal`], 96-bit integer mantissa with a scale of up
//! to 28 digits, and written to Postgres as that text, so nothing rounds on the way.

use super::Val;
use rust_decimal::Decimal;
use serde_json::Value as J;
use std::str::FromStr;

/// Parses decimal text: `19.99`, `-3`, `1e3`, `2.5E-2`. Errors never quote the text.
pub fn parse(s: &str) -> Result<Decimal, String> {
    let s = s.trim();
    let parsed = if s.contains(['e', 'E']) {
        Decimal::from_scientific(s)
    } else {
        Decimal::from_str_exact(s)
    };
    parsed.map_err(|_| {
        "text is not a decimal number (or has more than 28 decimals or 29 digits)".to_string()
    })
}

/// The exact decimal a value holds: numbers, numeric strings, integers, decimals.
pub fn to_decimal(v: &Val) -> Result<Decimal, String> {
    match v {
        Val::Numeric(d) => Ok(*d),
        Val::Int(i) => Ok(Decimal::from(*i)),
        Val::BigInt(i) => Ok(Decimal::from(*i)),
        Val::Json(J::Number(n)) => parse(&n.to_string()),
        Val::Json(J::String(s)) | Val::Text(s) => parse(s),
        _ => Err("value is not a number".into()),
    }
}

/// JSON form of a decimal (previews, spec tests): a JSON number when one shows the same value,
/// otherwise the exact text as a string, so a preview never shows a rounded amount.
pub fn to_json(d: &Decimal) -> J {
    let exact = d.normalize().to_string();
    match exact.parse::<f64>() {
        Ok(f) if f.is_finite() && Decimal::from_str(&f.to_string()).ok() == Some(d.normalize()) => {
            serde_json::Number::from_f64(f)
                .map(|n| {
                    // Whole values are shown as integers (`20`, not `20.0`).
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        J::from(f as i64)
                    } else {
                        J::Number(n)
                    }
                })
                .unwrap_or(J::String(d.to_string()))
        }
        _ => J::String(d.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse("19.99").unwrap().to_string(), "19.99");
        assert_eq!(parse(" 1e3 ").unwrap(), Decimal::from(1000));
        assert_eq!(parse("2.5E-2").unwrap().to_string(), "0.025");
        for bad in ["", "abc", "1.2.3", "NaN", "inf", "1e999"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let err = parse("4111-1111").unwrap_err();
        assert!(!err.contains("4111"), "{err}");
        // 0.1 + 0.2 is exactly 0.3 here, unlike f64.
        let sum = to_decimal(&Val::Json(json!(0.1))).unwrap()
            + to_decimal(&Val::Json(json!(0.2))).unwrap();
        assert_eq!(sum.to_string(), "0.3");
    }

    #[test]
    fn json_form_is_a_number_only_when_exact() {
        assert_eq!(to_json(&parse("19.90").unwrap()), json!(19.9));
        assert_eq!(to_json(&parse("20.00").unwrap()), json!(20));
        let long = parse("1234567890.123456789012345").unwrap();
        assert_eq!(to_json(&long), json!("1234567890.123456789012345"));
    }
}
