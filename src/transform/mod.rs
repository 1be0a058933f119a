//! Field-level transforms: compiled from the spec with static type checking, then applied
//! per value in order. One file per family.
//!
//! Transform errors become reject reasons, so they name the transform and the problem but
//! never the value (which may be PII).

pub mod cast;
pub mod date;
pub mod text;
pub mod version;

pub use crate::crypto::Tokenizer;

use crate::spec::{CastType, EpochUnit, TransformConfig};
use crate::value::{Val, ValType};
use zeroize::Zeroizing;

/// A compiled transform.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Hash,
    Encrypt,
    Cast(CastType),
    VersionToInt,
    FromEpoch { unit: EpochUnit, to: CastType },
    Default(Val),
    Trim,
    Lowercase,
    Uppercase,
}

/// A value the sink must store in the vault (encrypted there, once per distinct token).
pub struct PendingVault {
    pub column: String,
    pub token: String,
    pub plaintext: Zeroizing<String>,
}

impl std::fmt::Debug for PendingVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingVault")
            .field("column", &self.column)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// What a transform needs besides the value.
pub struct Context<'a> {
    pub tokenizer: Option<&'a Tokenizer>,
    pub column: &'a str,
    pub vault: &'a mut Vec<PendingVault>,
}

impl Transform {
    /// The spec name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Hash => "hash",
            Transform::Encrypt => "encrypt",
            Transform::Cast(_) => "cast",
            Transform::VersionToInt => "version_to_int",
            Transform::FromEpoch { .. } => "from_epoch",
            Transform::Default(_) => "default",
            Transform::Trim => "trim",
            Transform::Lowercase => "lowercase",
            Transform::Uppercase => "uppercase",
        }
    }

    /// Compiles a transform for an input of type `input`, returning it and its output type,
    /// or a message saying why it does not apply.
    pub fn compile(cfg: &TransformConfig, input: ValType) -> Result<(Transform, ValType), String> {
        let needs_text = |name: &str| -> Result<(), String> {
            if input.is_textual() {
                Ok(())
            } else {
                Err(format!(
                    "`{name}` needs a text value, but the value is {} here; cast it to text first",
                    input.name()
                ))
            }
        };
        Ok(match cfg {
            TransformConfig::Hash {} => (Transform::Hash, ValType::Text),
            TransformConfig::Encrypt {} => (Transform::Encrypt, ValType::Text),
            TransformConfig::Cast { to } => {
                cast::check(input, *to)?;
                (Transform::Cast(*to), cast::out_type(*to))
            }
            TransformConfig::VersionToInt {} => {
                needs_text("version_to_int")?;
                (Transform::VersionToInt, ValType::Integer)
            }
            TransformConfig::FromEpoch { unit, to } => {
                date::check(input, *to)?;
                (
                    Transform::FromEpoch {
                        unit: *unit,
                        to: *to,
                    },
                    cast::out_type(*to),
                )
            }
            TransformConfig::Default { value } => {
                let v = cast::default_value(value, input)?;
                (Transform::Default(v), input)
            }
            TransformConfig::Trim {} => {
                needs_text("trim")?;
                (Transform::Trim, ValType::Text)
            }
            TransformConfig::Lowercase {} => {
                needs_text("lowercase")?;
                (Transform::Lowercase, ValType::Text)
            }
            TransformConfig::Uppercase {} => {
                needs_text("uppercase")?;
                (Transform::Uppercase, ValType::Text)
            }
        })
    }

    /// Applies the transform. Null passes through everything but `default`.
    pub fn apply(&self, v: Val, ctx: &mut Context<'_>) -> Result<Val, String> {
        if v.is_null() {
            return Ok(match self {
                Transform::Default(d) => d.clone(),
                _ => Val::Null,
            });
        }
        match self {
            Transform::Hash | Transform::Encrypt => {
                let tok = ctx.tokenizer.ok_or("no hash key loaded")?;
                let text = Zeroizing::new(v.to_text().unwrap_or_default());
                let token = tok.token(text.as_bytes());
                if *self == Transform::Encrypt {
                    ctx.vault.push(PendingVault {
                        column: ctx.column.to_string(),
                        token: token.clone(),
                        plaintext: text,
                    });
                }
                Ok(Val::Text(token))
            }
            Transform::Cast(to) => cast::apply(v, *to),
            Transform::VersionToInt => version::apply(&v),
            Transform::FromEpoch { unit, to } => date::from_epoch(&v, *unit, *to),
            Transform::Default(_) => Ok(v),
            Transform::Trim => text::map(v, |s| s.trim().to_string()),
            Transform::Lowercase => text::map(v, |s| s.to_lowercase()),
            Transform::Uppercase => text::map(v, |s| s.to_uppercase()),
        }
    }
}
