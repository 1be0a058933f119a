//! `parse_json`: a string holding JSON (an embedded document) → that JSON value.

use crate::value::Val;
use serde_json::Value as J;

/// Parses a string's content as JSON; a value that is already JSON but not a string passes
/// through, so a producer that stops double-encoding does not break the spec. The error gives
/// the position, never the text.
pub fn parse(v: Val) -> Result<Val, String> {
    let text = match v {
        Val::Json(J::String(s)) | Val::Text(s) => s,
        Val::Json(other) => return Ok(Val::Json(other)),
        _ => return Err("value is not text".into()),
    };
    serde_json::from_str::<J>(&text)
        .map(Val::Json)
        .map_err(|e| {
            format!(
                "the text is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_strings_and_passes_json_through() {
        assert_eq!(
            parse(Val::Json(json!("{\"a\": [1, 2]}"))),
            Ok(Val::Json(json!({"a": [1, 2]})))
        );
        assert_eq!(parse(Val::Text("7".into())), Ok(Val::Json(json!(7))));
        assert_eq!(
            parse(Val::Json(json!({"a": 1}))),
            Ok(Val::Json(json!({"a": 1})))
        );
        let err = parse(Val::Json(json!("{\"card\": \"4111 1111\""))).unwrap_err();
        assert!(err.starts_with("the text is not valid JSON"), "{err}");
        assert!(!err.contains("4111"), "{err}");
    }
}
