//! Arithmetic with exact decimals: `multiply`, `divide` by a constant, and `scale` (move the
//! decimal point, e.g. cents → dollars). Results are `numeric`; nothing passes through `f64`.

use crate::value::Val;
use crate::value::numeric::to_decimal;
use rust_decimal::Decimal;

/// `v * by`, or an error when the result does not fit a decimal.
pub fn multiply(v: &Val, by: Decimal) -> Result<Val, String> {
    to_decimal(v)?
        .checked_mul(by)
        .map(Val::Numeric)
        .ok_or_else(|| "result out of range".to_string())
}

/// `v / by` (28 decimals at most; `by` is never zero, checked with the spec).
pub fn divide(v: &Val, by: Decimal) -> Result<Val, String> {
    to_decimal(v)?
        .checked_div(by)
        .map(Val::Numeric)
        .ok_or_else(|| "result out of range".to_string())
}

/// `v / 10^decimals`, exactly: the digits stay, the point moves (1999 → 19.99, 5 → 0.05).
pub fn scale(v: &Val, decimals: u32) -> Result<Val, String> {
    let d = to_decimal(v)?;
    let mut shifted = d;
    shifted
        .set_scale(d.scale() + decimals)
        .map_err(|_| "result has more than 28 decimals".to_string())?;
    Ok(Val::Numeric(shifted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::numeric::parse;
    use serde_json::json;

    fn text(v: Result<Val, String>) -> String {
        v.unwrap().to_text().unwrap()
    }

    #[test]
    fn exact_arithmetic() {
        assert_eq!(text(scale(&Val::Json(json!(1999)), 2)), "19.99");
        assert_eq!(text(scale(&Val::Json(json!("5")), 2)), "0.05");
        assert_eq!(text(scale(&Val::BigInt(-250), 2)), "-2.50");
        assert_eq!(text(scale(&Val::Json(json!(7)), 0)), "7");
        // 0.1 * 3 is exactly 0.3 (it is 0.30000000000000004 in f64).
        assert_eq!(
            text(multiply(&Val::Json(json!(0.1)), Decimal::from(3))),
            "0.3"
        );
        assert_eq!(
            text(multiply(&Val::Json(json!(1999)), parse("0.01").unwrap())),
            "19.99"
        );
        assert_eq!(
            text(divide(&Val::Json(json!(1999)), Decimal::from(100))),
            "19.99"
        );
        assert_eq!(
            text(divide(&Val::Int(1), Decimal::from(3))),
            "0.3333333333333333333333333333"
        );
    }

    #[test]
    fn failures_are_clean() {
        assert!(scale(&Val::Json(json!(1)), 28).is_ok());
        assert!(scale(&Val::Json(json!(0.5)), 28).is_err());
        let max = Val::Numeric(Decimal::MAX);
        assert_eq!(
            multiply(&max, Decimal::from(2)).unwrap_err(),
            "result out of range"
        );
        let err = multiply(&Val::Json(json!("12abc34")), Decimal::ONE).unwrap_err();
        assert!(!err.contains("12abc34"), "{err}");
        assert!(scale(&Val::Json(json!(true)), 2).is_err());
    }
}
