//! Static typing of transform chains: which transform applies to which value type, and what
//! type it yields. Checked when the spec is loaded, so a transform applied to the wrong type is
//! a spec error naming its key, never a reject at run time.

use super::TransformConfig;
use crate::value::cast;
use crate::value::{CastType, ValType};

/// The type `cfg` yields for an input of type `input`, or a message saying why it does not
/// apply (a spec error).
pub fn output_type(cfg: &TransformConfig, input: ValType) -> Result<ValType, String> {
    let needs_text = |name: &str| -> Result<ValType, String> {
        if input.is_textual() {
            Ok(ValType::Text)
        } else {
            Err(format!(
                "`{name}` needs a text value, but the value is {} here; cast it to text first",
                input.name()
            ))
        }
    };
    match cfg {
        TransformConfig::Hash {} | TransformConfig::Encrypt {} => Ok(ValType::Text),
        TransformConfig::Cast { to } => {
            cast::check(input, *to)?;
            Ok(cast::out_type(*to))
        }
        TransformConfig::VersionToInt {} => needs_text("version_to_int").map(|_| ValType::Integer),
        TransformConfig::FromEpoch { to, .. } => {
            from_epoch_check(input, *to)?;
            Ok(cast::out_type(*to))
        }
        TransformConfig::Default { value } => {
            cast::default_value(value, input)?;
            Ok(input)
        }
        TransformConfig::Trim {} => needs_text("trim"),
        TransformConfig::Lowercase {} => needs_text("lowercase"),
        TransformConfig::Uppercase {} => needs_text("uppercase"),
        TransformConfig::Replace { .. } => needs_text("replace"),
        TransformConfig::ParseJson {} => needs_text("parse_json").map(|_| ValType::Json),
        TransformConfig::Multiply { .. } => needs_number("multiply", input),
        TransformConfig::Divide { .. } => needs_number("divide", input),
        TransformConfig::Scale { .. } => needs_number("scale", input),
    }
}

/// Arithmetic takes numbers (JSON numbers or numeric text at run time) and yields `numeric`.
fn needs_number(name: &str, input: ValType) -> Result<ValType, String> {
    if matches!(
        input,
        ValType::Json | ValType::Text | ValType::Integer | ValType::BigInt | ValType::Numeric
    ) {
        Ok(ValType::Numeric)
    } else {
        Err(format!(
            "`{name}` needs a number, but the value is {} here",
            input.name()
        ))
    }
}

/// A transform argument that is wrong whatever the value's type: the key under the
/// transform that is at fault, and why.
pub struct ArgError {
    /// The key, e.g. `pattern`.
    pub key: &'static str,
    /// The problem, in one line.
    pub message: String,
}

/// Largest `scale` shift: the digits a decimal can hold after its point.
pub const MAX_SCALE: u32 = 28;

/// Checks a transform's own arguments (a regular expression compiles, a divisor is not zero).
pub fn check_args(cfg: &TransformConfig) -> Result<(), ArgError> {
    let err = |key, message: String| Err(ArgError { key, message });
    match cfg {
        TransformConfig::Replace { pattern, .. } => {
            compile_regex(pattern)
                .map(|_| ())
                .map_err(|message| ArgError {
                    key: "pattern",
                    message,
                })
        }
        TransformConfig::Multiply { by } | TransformConfig::Divide { by } => {
            match crate::value::numeric::parse(&by.to_string()) {
                Ok(d) if d.is_zero() && matches!(cfg, TransformConfig::Divide { .. }) => {
                    err("by", "must not be zero".into())
                }
                Ok(_) => Ok(()),
                Err(_) => err(
                    "by",
                    "must be a decimal number with at most 28 decimals and 29 digits".into(),
                ),
            }
        }
        TransformConfig::Scale { decimals } if *decimals > MAX_SCALE => {
            err("decimals", format!("must be between 0 and {MAX_SCALE}"))
        }
        _ => Ok(()),
    }
}

/// Compiles a `replace` pattern, or says in one line why it is not a regular expression.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        // Patterns are short; this bounds the compiled program of a pathological one.
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let detail = match &e {
                regex::Error::Syntax(s) => s
                    .lines()
                    .rev()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .unwrap_or("syntax error")
                    .to_string(),
                regex::Error::CompiledTooBig(_) => "the pattern compiles too large".into(),
                _ => "not a valid pattern".into(),
            };
            format!("not a valid regular expression (regex crate syntax): {detail}")
        })
}

/// Whether `from_epoch ... to` applies to an input of type `from`.
fn from_epoch_check(from: ValType, to: CastType) -> Result<(), String> {
    if !matches!(to, CastType::Date | CastType::Timestamp) {
        return Err("`from_epoch` converts to `date` or `timestamp` only".into());
    }
    if matches!(
        from,
        ValType::Json | ValType::Text | ValType::Integer | ValType::BigInt | ValType::Numeric
    ) {
        Ok(())
    } else {
        Err(format!(
            "`from_epoch` needs a number, but the value is {} here",
            from.name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::EpochUnit;

    #[test]
    fn from_epoch_needs_a_number_and_a_date_type() {
        let to = |to| TransformConfig::FromEpoch {
            unit: EpochUnit::Millis,
            to,
        };
        assert_eq!(
            output_type(&to(CastType::Date), ValType::BigInt),
            Ok(ValType::Date)
        );
        assert!(output_type(&to(CastType::Date), ValType::Boolean).is_err());
        assert!(output_type(&to(CastType::Integer), ValType::BigInt).is_err());
    }

    #[test]
    fn new_transforms_are_typed_and_their_arguments_checked() {
        let replace = |p: &str| TransformConfig::Replace {
            pattern: p.into(),
            with: String::new(),
        };
        assert_eq!(
            output_type(&replace("[^0-9]"), ValType::Json),
            Ok(ValType::Text)
        );
        assert!(output_type(&replace("x"), ValType::Integer).is_err());
        assert!(check_args(&replace("[^0-9]")).is_ok());
        let bad = check_args(&replace("[0-9")).unwrap_err();
        assert_eq!(bad.key, "pattern");
        assert!(
            bad.message.contains("unclosed character class"),
            "{}",
            bad.message
        );
        assert!(!bad.message.contains('\n'));

        assert_eq!(
            output_type(&TransformConfig::ParseJson {}, ValType::Text),
            Ok(ValType::Json)
        );
        assert!(output_type(&TransformConfig::ParseJson {}, ValType::Date).is_err());

        let by = |n: f64| serde_json::Number::from_f64(n).unwrap();
        assert_eq!(
            output_type(&TransformConfig::Multiply { by: by(0.01) }, ValType::BigInt),
            Ok(ValType::Numeric)
        );
        assert!(output_type(&TransformConfig::Scale { decimals: 2 }, ValType::Boolean).is_err());
        assert!(check_args(&TransformConfig::Divide { by: by(0.0) }).is_err());
        assert!(check_args(&TransformConfig::Multiply { by: by(0.0) }).is_ok());
        assert_eq!(
            check_args(&TransformConfig::Scale { decimals: 29 })
                .unwrap_err()
                .key,
            "decimals"
        );
        assert_eq!(
            output_type(
                &TransformConfig::Cast {
                    to: CastType::Numeric
                },
                ValType::Json
            ),
            Ok(ValType::Numeric)
        );
    }

    #[test]
    fn text_transforms_refuse_numbers_and_defaults_must_fit() {
        assert!(output_type(&TransformConfig::Trim {}, ValType::Integer).is_err());
        assert_eq!(
            output_type(&TransformConfig::Trim {}, ValType::Json),
            Ok(ValType::Text)
        );
        let default = |v| TransformConfig::Default { value: v };
        assert!(output_type(&default(serde_json::json!("x")), ValType::Integer).is_err());
        assert_eq!(
            output_type(&default(serde_json::json!(3)), ValType::Integer),
            Ok(ValType::Integer)
        );
    }
}
