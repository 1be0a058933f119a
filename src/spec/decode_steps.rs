//! Validating `decode:` (a list of step names) and the `meta: sns.…` columns that need it.

use super::diagnose::with_suggestion;
use super::validate::Validator;
use super::{ColumnSource, DecodeStep, MetaField, Output};
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
    pub(super) fn check_sns_meta(&mut self, decode: &[DecodeStep], outputs: &[Output]) {
        if decode.contains(&DecodeStep::Sns) {
            return;
        }
        let single = outputs.len() == 1;
        for (i, o) in outputs.iter().enumerate() {
            for c in &o.columns {
                if let ColumnSource::Meta(MetaField::Sns(_)) = c.source {
                    let prefix = if single {
                        "columns".to_string()
                    } else {
                        format!("outputs[{i}].columns")
                    };
                    self.d.issue(
                        format!("{prefix}.{}.meta", c.name),
                        "SNS metadata needs `sns` in `decode:` (e.g. `decode: [sns]`)",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{DecodeStep, SpecError, parse_spec_str};
    use std::path::Path;

    /// A spec with `decode` and `columns` as given.
    fn spec(decode: &str, columns: &str) -> String {
        format!(
            "name: t\nsource:\n  type: file\n  path: in.jsonl\n{decode}\ntarget:\n  url: postgres://h/db\n  table: t\ncolumns:\n{columns}"
        )
    }

    /// Every problem's `path: message`, one per line.
    fn issues(text: &str) -> String {
        match parse_spec_str(text, Path::new("specs/t.yaml"), false) {
            Ok(_) => String::new(),
            Err(SpecError::Invalid { issues, .. }) => issues
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => e.to_string(),
        }
    }

    const ID: &str = "  id:\n    path: $.id\n";

    #[test]
    fn steps_are_parsed_in_order() {
        let s = parse_spec_str(
            &spec("decode: [sns, base64, gzip, json]", ID),
            Path::new("t.yaml"),
            false,
        )
        .unwrap();
        use DecodeStep::*;
        assert_eq!(s.decode, [Sns, Base64, Gzip, Json]);
        let s = parse_spec_str(&spec("", ID), Path::new("t.yaml"), false).unwrap();
        assert!(s.decode.is_empty());
    }

    #[test]
    fn errors_name_the_step() {
        let text = issues(&spec("decode: [sns, gzp]", ID));
        assert_eq!(
            text,
            "decode[1]: unknown decode step \"gzp\" (did you mean `gzip`?)"
        );
        assert!(
            issues(&spec("decode: [sns, sns]", ID)).starts_with("decode[1]: `sns` may appear once")
        );
        assert!(issues(&spec("decode: []", ID)).starts_with("decode: needs at least one step"));
        assert!(issues(&spec("decode: sns", ID)).starts_with("decode: must be a list"));
        assert!(
            issues(&spec("decode: [{gzip: 1}]", ID)).starts_with("decode[0]: a step is one of")
        );
    }

    #[test]
    fn sns_metadata_needs_the_sns_step() {
        let cols =
            "  id:\n    meta: sns.message_id\n  tenant:\n    meta: sns.message_attributes.tenant\n";
        assert_eq!(
            issues(&spec("", cols)),
            "columns.id.meta: SNS metadata needs `sns` in `decode:` (e.g. `decode: [sns]`)\n\
             columns.tenant.meta: SNS metadata needs `sns` in `decode:` (e.g. `decode: [sns]`)"
        );
        assert_eq!(issues(&spec("decode: [sns]", cols)), "");
        assert!(
            issues(&spec("decode: [sns]", "  id:\n    meta: sns.topic\n"))
                .contains("unknown metadata field")
        );
    }

    #[test]
    fn transform_arguments_are_checked_at_their_key() {
        let col = |t: &str| format!("  id:\n    path: $.id\n    transforms:\n{t}");
        let text = issues(&spec(
            "",
            &col("      - type: replace\n        pattern: \"[0-9\"\n        with: \"\"\n"),
        ));
        assert!(
            text.starts_with("columns.id.transforms[0].pattern: not a valid regular expression"),
            "{text}"
        );
        let text = issues(&spec("", &col("      - type: divide\n        by: 0\n")));
        assert_eq!(text, "columns.id.transforms[0].by: must not be zero");
        let text = issues(&spec(
            "",
            &col("      - type: scale\n        decimals: 40\n"),
        ));
        assert_eq!(
            text,
            "columns.id.transforms[0].decimals: must be between 0 and 28"
        );
        let text = issues(&spec(
            "",
            &col(
                "      - type: cast\n        to: boolean\n      - type: multiply\n        by: 2\n",
            ),
        ));
        assert_eq!(
            text,
            "columns.id.transforms[1]: `multiply` needs a number, but the value is boolean here"
        );
        let ok = col("      - type: parse_json\n      - type: cast\n        to: jsonb\n");
        assert_eq!(issues(&spec("", &ok)), "");
        let ok = col("      - type: cast\n        to: text[]\n");
        assert_eq!(issues(&spec("", &ok)), "");
    }
}
