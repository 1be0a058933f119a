//! `version_to_int`: app versions as integers that sort like the versions do.
//!
//! Encoding: `major * 1_000_000 + minor * 1_000 + patch`, missing parts are 0. So "2.3.0" →
//! 2_003_000, "0.96" → 96_000, "2.00" → 2_000_000, "9.10" → 9_010_000 (after "9.9" → 9_009_000,
//! as in semantic versioning). Limits: at most three numeric parts, minor and patch below 1000,
//! major at most 2146 (so the result fits a Postgres `integer`). Anything else is a reject.
//!
//! A version sent as a JSON *number* with a fraction (`9.10` rather than `"9.10"`) is a reject
//! too: the parser already turned it into 9.1, so it cannot be told apart from `9.1` and would
//! sort before `9.9`. Whole JSON numbers (`3`) are fine.

use crate::value::Val;

/// Largest major version that keeps the result within i32.
const MAX_MAJOR: u64 = 2146;

/// Encodes a version string.
pub fn encode(s: &str) -> Result<i32, String> {
    let s = s.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    let parts: Vec<&str> = s.split('.').collect();
    if s.is_empty() || parts.len() > 3 {
        return Err("not a version: expected 1 to 3 dot-separated numbers".into());
    }
    let mut nums = [0u64; 3];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err("not a version: expected 1 to 3 dot-separated numbers".into());
        }
        nums[i] = p
            .parse::<u64>()
            .map_err(|_| "not a version: part too large".to_string())?;
    }
    if nums[1] > 999 || nums[2] > 999 || nums[0] > MAX_MAJOR {
        return Err(format!(
            "version out of range: major at most {MAX_MAJOR}, minor and patch at most 999"
        ));
    }
    i32::try_from(nums[0] * 1_000_000 + nums[1] * 1_000 + nums[2])
        .map_err(|_| "version out of range".into())
}

/// Applies the transform to a value (strings, or whole JSON numbers such as `3`).
pub fn apply(v: &Val) -> Result<Val, String> {
    if let Val::Json(serde_json::Value::Number(n)) = v
        && !(n.is_u64() || n.is_i64())
    {
        return Err(
            "version is a JSON number with a fraction, which loses trailing zeros \
             (9.10 reads as 9.1); send versions as strings"
                .into(),
        );
    }
    let text = v.to_text().ok_or("version is null")?;
    encode(&text).map(Val::Int)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_keeps_order() {
        assert_eq!(encode("2.3.0"), Ok(2_003_000));
        assert_eq!(encode("0.96"), Ok(96_000));
        assert_eq!(encode("2.00"), Ok(2_000_000));
        assert_eq!(encode("9.10"), Ok(9_010_000));
        assert_eq!(encode("3"), Ok(3_000_000));
        assert_eq!(encode("v1.2.3"), Ok(1_002_003));
        let mut vs = ["9.10", "0.96", "2.3.0", "9.9", "2.00", "10.0.1"];
        vs.sort_by_key(|v| encode(v).unwrap());
        assert_eq!(vs, ["0.96", "2.00", "2.3.0", "9.9", "9.10", "10.0.1"]);
    }

    #[test]
    fn rejects_what_it_cannot_encode() {
        for bad in [
            "", "1.2.3.4", "1..2", "a.b", "1.1000", "2147.0.0", "-1", "1.2-beta",
        ] {
            assert!(encode(bad).is_err(), "{bad}");
        }
        assert_eq!(encode("2146.999.999"), Ok(2_146_999_999));
    }

    #[test]
    fn accepts_whole_json_numbers_and_rejects_fractions() {
        assert_eq!(
            apply(&Val::Json(serde_json::json!(3))),
            Ok(Val::Int(3_000_000))
        );
        // 9.10 as a JSON number is 9.1: encoding it would sort it before 9.9.
        let err = apply(&Val::Json(serde_json::json!(9.10))).unwrap_err();
        assert!(err.contains("send versions as strings"), "{err}");
        assert!(apply(&Val::Json(serde_json::json!(0.96))).is_err());
        assert_eq!(apply(&Val::Text("9.10".into())), Ok(Val::Int(9_010_000)));
    }
}
