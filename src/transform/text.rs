//! Text transforms: trim, lowercase, uppercase.

use crate::value::Val;

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
}
