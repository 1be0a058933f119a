//! Text transforms: trim, lowercase, uppercase, replace.

use crate::value::Val;

/// A compiled `replace` pattern; equal when the pattern text is (so transforms compare).
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// Applies `f` to a textual value; non-string JSON is first turned into its text form.
pub fn map(v: Val, f: impl Fn(&str) -> String) -> Result<Val, String> {
    match v.to_text() {
        Some(s) => Ok(Val::Text(f(&s))),
        None => Ok(Val::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::{Context, Transform};

    fn run(t: Transform, v: Val) -> Val {
        let mut vault = Vec::new();
        let mut ctx = Context {
            tokenizer: None,
            table: "t",
            column: "c",
            vault: &mut vault,
        };
        t.apply(v, &mut ctx).unwrap()
    }

    #[test]
    fn trims_and_cases() {
        assert_eq!(
            run(Transform::Trim, Val::Json(" RU ".into())),
            Val::Text("RU".into())
        );
        assert_eq!(
            run(Transform::Lowercase, Val::Text("Android".into())),
            Val::Text("android".into())
        );
        assert_eq!(
            run(Transform::Uppercase, Val::Text("ru".into())),
            Val::Text("RU".into())
        );
        assert_eq!(run(Transform::Trim, Val::Null), Val::Null);
    }

    #[test]
    fn replace_rewrites_every_match() {
        let replace = |p: &str, with: &str| Transform::Replace {
            pattern: Pattern(regex::Regex::new(p).unwrap()),
            with: with.into(),
        };
        // Equal phone numbers written differently normalise to one text, so one token.
        for phone in ["+1 555 0100", "+1-555-0100", "+1 (555) 0100"] {
            assert_eq!(
                run(replace("[^0-9+]", ""), Val::Json(phone.into())),
                Val::Text("+15550100".into())
            );
        }
        assert_eq!(
            run(
                replace(r"(\w+)@(\w+)", "$2 at $1"),
                Val::Text("me@host".into())
            ),
            Val::Text("host at me".into())
        );
        // A JSON number is replaced in its text form.
        assert_eq!(
            run(replace("0", "o"), Val::Json(serde_json::json!(100))),
            Val::Text("1oo".into())
        );
        assert_eq!(run(replace("x", ""), Val::Null), Val::Null);
    }
}
