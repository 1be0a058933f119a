//! Field-level transforms: compiled from the spec with static type checking, then applied
//! per value in order. One file per family.
//!
//! Transform errors become reject reasons, so they name the transform and the problem but
//! never the value (which may be PII).

pub mod date;
pub mod json;
pub mod number;
pub mod text;
pub mod version;

pub use crate::crypto::{DomainTokenizer, Tokenizer};

use std::sync::Arc;

use crate::spec::{Column, EpochUnit, TransformConfig, typecheck};
use crate::value::{CastType, Val, ValType};
use crate::value::{cast, numeric};
use rust_decimal::Decimal;
use zeroize::Zeroizing;

/// A compiled transform.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Hash,
    Encrypt,
    Cast(CastType),
    VersionToInt,
    FromEpoch {
        unit: EpochUnit,
        to: CastType,
    },
    Default(Val),
    Trim,
    Lowercase,
    Uppercase,
    Replace {
        pattern: text::Pattern,
        with: String,
    },
    ParseJson,
    Multiply(Decimal),
    Divide(Decimal),
    Scale(u32),
}

/// A value the sink must store in the vault (encrypted there, once per distinct token).
pub struct PendingVault {
    /// The output table the value was written to (the vault row's binding scope).
    pub table: String,
    pub column: String,
    /// The token domain the token was made in (vault rows are keyed by domain and token).
    pub domain: Arc<str>,
    pub token: String,
    /// The token's 32 bytes (what the vault's key holds; `token` is their hex).
    pub token_bytes: [u8; 32],
    pub plaintext: Zeroizing<String>,
}

impl std::fmt::Debug for PendingVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingVault")
            .field("table", &self.table)
            .field("column", &self.column)
            .field("domain", &self.domain)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// What a transform needs besides the value.
pub struct Context<'a> {
    /// The token maker of the column's domain (for its target table), if it hashes.
    pub tokenizer: Option<&'a DomainTokenizer>,
    /// The output table of the row being built.
    pub table: &'a str,
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
            Transform::Replace { .. } => "replace",
            Transform::ParseJson => "parse_json",
            Transform::Multiply(_) => "multiply",
            Transform::Divide(_) => "divide",
            Transform::Scale(_) => "scale",
        }
    }

    /// Builds the transform `cfg` for an input of type `input`, returning it and its output
    /// type, or the spec error saying why it does not apply (specs are checked when loaded,
    /// so this fails only on a spec that skipped validation).
    pub fn build(cfg: &TransformConfig, input: ValType) -> Result<(Transform, ValType), String> {
        let out = typecheck::output_type(cfg, input)?;
        typecheck::check_args(cfg).map_err(|e| format!("{}: {}", e.key, e.message))?;
        let constant = |by: &serde_json::Number| numeric::parse(&by.to_string());
        let t = match cfg {
            TransformConfig::Hash {} => Transform::Hash,
            TransformConfig::Encrypt {} => Transform::Encrypt,
            TransformConfig::Cast { to } => Transform::Cast(*to),
            TransformConfig::VersionToInt {} => Transform::VersionToInt,
            TransformConfig::FromEpoch { unit, to } => Transform::FromEpoch {
                unit: *unit,
                to: *to,
            },
            TransformConfig::Default { value } => {
                Transform::Default(cast::default_value(value, input)?)
            }
            TransformConfig::Trim {} => Transform::Trim,
            TransformConfig::Lowercase {} => Transform::Lowercase,
            TransformConfig::Uppercase {} => Transform::Uppercase,
            TransformConfig::Replace { pattern, with } => Transform::Replace {
                pattern: text::Pattern(typecheck::compile_regex(pattern)?),
                with: with.clone(),
            },
            TransformConfig::ParseJson {} => Transform::ParseJson,
            TransformConfig::Multiply { by } => Transform::Multiply(constant(by)?),
            TransformConfig::Divide { by } => Transform::Divide(constant(by)?),
            TransformConfig::Scale { decimals } => Transform::Scale(*decimals),
        };
        Ok((t, out))
    }

    /// Builds a column's transform chain, in order.
    pub fn build_chain(column: &Column) -> Result<Vec<Transform>, String> {
        let mut ty = column.source.val_type();
        let mut chain = Vec::with_capacity(column.transforms.len());
        for (i, cfg) in column.transforms.iter().enumerate() {
            let (t, out) = Self::build(cfg, ty)
                .map_err(|e| format!("columns.{}.transforms[{i}]: {e}", column.name))?;
            chain.push(t);
            ty = out;
        }
        Ok(chain)
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
                let token_bytes = tok.token_bytes(text.as_bytes());
                let token = crate::crypto::tokenizer::token_hex(&token_bytes);
                if *self == Transform::Encrypt {
                    ctx.vault.push(PendingVault {
                        table: ctx.table.to_string(),
                        column: ctx.column.to_string(),
                        domain: tok.domain_arc(),
                        token: token.clone(),
                        token_bytes,
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
            Transform::Replace { pattern, with } => {
                text::map(v, |s| pattern.0.replace_all(s, with.as_str()).into_owned())
            }
            Transform::ParseJson => json::parse(v),
            Transform::Multiply(by) => number::multiply(&v, *by),
            Transform::Divide(by) => number::divide(&v, *by),
            Transform::Scale(decimals) => number::scale(&v, *decimals),
        }
    }
}
