//! Decode: message body bytes → JSON value. A body that is not JSON is a reject reason,
//! never a crash, and the reason never quotes the body.

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("body is not valid JSON (line {line}, column {column}: {category})")]
    InvalidJson {
        line: usize,
        column: usize,
        category: &'static str,
    },
    #[error("body is JSON but not an object")]
    NotAnObject,
}

/// Parses a body; the top level must be a JSON object.
pub fn decode(body: &str) -> Result<serde_json::Value, DecodeError> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| DecodeError::InvalidJson {
            line: e.line(),
            column: e.column(),
            category: match e.classify() {
                serde_json::error::Category::Eof => "unexpected end of input",
                serde_json::error::Category::Syntax => "syntax error",
                serde_json::error::Category::Data => "data error",
                serde_json::error::Category::Io => "read error",
            },
        })?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(DecodeError::NotAnObject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_objects_and_rejects_the_rest() {
        assert!(decode(r#"{"a": 1}"#).is_ok());
        assert!(matches!(
            decode(r#"{"ip": "10.1.2.3""#),
            Err(DecodeError::InvalidJson { .. })
        ));
        assert_eq!(decode("[1,2]"), Err(DecodeError::NotAnObject));
        let msg = decode(r#"{"ip": "10.1.2.3" oops"#).unwrap_err().to_string();
        assert!(!msg.contains("10.1.2.3"), "{msg}");
    }
}
