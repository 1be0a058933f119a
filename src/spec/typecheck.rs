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
    }
}

/// Whether `from_epoch ... to` applies to an input of type `from`.
fn from_epoch_check(from: ValType, to: CastType) -> Result<(), String> {
    if !matches!(to, CastType::Date | CastType::Timestamp) {
        return Err("`from_epoch` converts to `date` or `timestamp` only".into());
    }
    if matches!(
        from,
        ValType::Json | ValType::Text | ValType::Integer | ValType::BigInt
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
