//! Validating `decode:` (a list of step names) and the `meta: sns.…` columns that need it.

use super::diagnose::with_suggestion;
use super::validate::Validator;
use super::{Column, ColumnSource, DecodeStep, MetaField};
use serde_json::Value as J;

impl Validator<'_> {
    /// The `decode:` steps, each checked on its own (`decode[1]`); empty when absent.
    pub(super) fn decode(&mut self, value: Option<&J>) -> Vec<DecodeStep> {
        let items = match value {
            None | Some(J::Null) => return Vec::new(),
            Some(J::Array(items)) if items.is_empty() => {
                self.d.issue(
                    "decode",
                    "needs at least one step (omit `decode:` to read bodies as JSON)",
                );
                return Vec::new();
            }
            Some(J::Array(items)) => items,
            Some(_) => {
                self.d.issue(
                    "decode",
                    format!(
                        "must be a list of steps, e.g. `decode: [sns]` (steps: {})",
                        DecodeStep::NAMES.join(", ")
                    ),
                );
                return Vec::new();
            }
        };
        let mut steps = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("decode[{i}]");
            let Some(name) = item.as_str() else {
                self.d.issue(
                    key,
                    format!(
                        "a step is one of the names {}",
                        DecodeStep::NAMES.join(", ")
                    ),
                );
                continue;
            };
            match serde_json::from_value::<DecodeStep>(item.clone()) {
                Ok(DecodeStep::Sns) if steps.contains(&DecodeStep::Sns) => self.d.issue(
                    key,
                    "`sns` may appear once (its metadata would be overwritten)",
                ),
                Ok(step) => steps.push(step),
                Err(_) => self.d.issue(
                    key,
                    with_suggestion(
                        format!("unknown decode step \"{name}\""),
                        name,
                        DecodeStep::NAMES,
                    ),
                ),
            }
        }
        steps
    }

    /// Columns reading `meta: sns.…` need `sns` in `decode:`: without it there is no envelope.
    pub(super) fn check_sns_meta(&mut self, decode: &[DecodeStep], columns: &[Column]) {
        if decode.contains(&DecodeStep::Sns) {
            return;
        }
        for c in columns {
            if let ColumnSource::Meta(MetaField::Sns(_)) = c.source {
                self.d.issue(
                    format!("columns.{}.meta", c.name),
                    "SNS metadata needs `sns` in `decode:` (e.g. `decode: [sns]`)",
                );
            }
        }
    }
}
