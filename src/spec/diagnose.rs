//! Diagnosing a spec: the problems found ([`SpecIssue`], [`SpecError`]), each placed at its key
//! path and file position, with "did you mean" hints, and serde's errors turned into such
//! problems one section at a time.

use super::load::Sources;
use super::position::Positions;
use super::types::TransformConfig;
use serde::de::DeserializeOwned;
use serde_json::Value as J;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecIssue {
    /// Key path, e.g. `columns.app_version.transforms[0]`.
    pub path: String,
    /// What is wrong, with a hint where one helps.
    pub message: String,
    /// 1-based line and column, where known.
    pub position: Option<(usize, usize)>,
}

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {file}: {source}")]
    /// The file could not be read.
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}{}: invalid YAML: {message}", position_suffix(*position))]
    /// The text is not YAML (or not a mapping), or an override could not be merged.
    Syntax {
        file: PathBuf,
        message: String,
        position: Option<(usize, usize)>,
    },
    #[error("{}", render_issues(file, issues))]
    /// The spec is YAML but has problems: all of them, in the order found.
    Invalid {
        file: PathBuf,
        issues: Vec<SpecIssue>,
    },
}

/// `:line:col`, or nothing when the position is unknown.
fn position_suffix(p: Option<(usize, usize)>) -> String {
    p.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default()
}

/// The whole report: a header, then one `file:line:col: key.path: message` line per problem.
fn render_issues(file: &Path, issues: &[SpecIssue]) -> String {
    let mut out = format!(
        "spec {} has {} problem{}:",
        file.display(),
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        out.push_str(&format!(
            "\n  {}{}: {}: {}",
            file.display(),
            position_suffix(i.position),
            i.path,
            i.message
        ));
    }
    out
}

impl fmt::Display for SpecIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Closest name within a small edit distance, for "did you mean" hints.
pub fn suggest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(wrong, c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `msg` with the closest candidate as a hint, or the list of candidates when none is close.
pub(super) fn with_suggestion(msg: String, wrong: &str, candidates: &[&str]) -> String {
    match suggest(wrong, candidates.iter().copied()) {
        Some(s) => format!("{msg} (did you mean `{s}`?)"),
        None => format!("{msg} (expected one of: {})", candidates.join(", ")),
    }
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" / "unknown variant" messages.
fn parse_unknown(msg: &str) -> Option<(&'static str, String, Vec<String>)> {
    let kind = if msg.starts_with("unknown field") {
        "field"
    } else if msg.starts_with("unknown variant") {
        "variant"
    } else {
        return None;
    };
    let mut ticks = msg.split('`').skip(1).step_by(2);
    let wrong = ticks.next()?.to_string();
    Some((kind, wrong, ticks.map(str::to_string).collect()))
}

/// The problems found so far, each placed at its key path and file position.
pub(super) struct Diagnostics<'a> {
    issues: Vec<SpecIssue>,
    /// The spec text, indexed for positions only when the first problem needs one.
    text: &'a str,
    positions: Option<Positions>,
    /// What figment loaded: a problem with a key a variable set names the variable, not a line.
    sources: &'a Sources,
}

impl<'a> Diagnostics<'a> {
    /// No problems yet, for `text` as figment loaded it into `sources`.
    pub(super) fn new(text: &'a str, sources: &'a Sources) -> Self {
        Self {
            issues: Vec::new(),
            text,
            positions: None,
            sources,
        }
    }

    /// The problems found.
    pub(super) fn into_issues(self) -> Vec<SpecIssue> {
        self.issues
    }

    /// Records a problem with the key at `path`.
    pub(super) fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let mut message = message.into();
        let vars = self.sources.env_vars(&path);
        let position = match vars.as_slice() {
            [] => self.position(&path),
            [var] => {
                message.push_str(&format!(" (set by environment variable {var})"));
                None
            }
            many => {
                message.push_str(&format!(
                    " (set by environment variables {})",
                    many.join(", ")
                ));
                None
            }
        };
        self.issues.push(SpecIssue {
            path,
            message,
            position,
        });
    }

    /// Records a problem with the key at `path`, placed at `position` (for a key that is not
    /// in the file at all).
    pub(super) fn issue_at(&mut self, path: &str, message: String, position: (usize, usize)) {
        self.issues.push(SpecIssue {
            path: path.to_string(),
            message,
            position: Some(position),
        });
    }

    /// Where exactly `path` is in the text, if it is there (for ordering keys as written).
    pub(super) fn exact_position(&mut self, path: &str) -> Option<(usize, usize)> {
        self.positions
            .get_or_insert_with(|| Positions::index(self.text))
            .exact(path)
    }

    /// Where `path` (or its closest ancestor) is in the text. The span-aware YAML pass runs here,
    /// once, at the first problem that needs a position: a valid spec never pays for it.
    fn position(&mut self, path: &str) -> Option<(usize, usize)> {
        self.positions
            .get_or_insert_with(|| Positions::index(self.text))
            .find(path)
    }

    /// Deserializes `value` as `T`, reporting every unknown key (with a suggestion) and the
    /// first other error, each at its own key path.
    pub(super) fn section<T: DeserializeOwned>(&mut self, value: &J, path: &str) -> Option<T> {
        let mut value = value.clone();
        // Names already suggested for a misspelled key: their "missing key" follow-up is noise.
        let mut suggested: Vec<String> = Vec::new();
        loop {
            let res: Result<T, _> = serde_path_to_error::deserialize(&value);
            let err = match res {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let inner = err.inner().to_string();
            let sub = err.path().to_string();
            let mut full = if sub == "." || sub.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{sub}")
            };
            full = full.trim_start_matches('.').replace(".[", "[");
            // Internally tagged enums (`type: ...`) buffer their content before deserializing it,
            // so the path stops at the enum; the offending key inside it is found by looking.
            let node = node_at(&mut value, err.path()).map(|n| n.clone());
            let inside_enum = |key: Option<String>, full: &str| match key {
                Some(k) => join_key(full, &k),
                None => full.to_string(),
            };
            match parse_unknown(&inner) {
                Some(("field", wrong, expected)) => {
                    let cands: Vec<&str> = expected.iter().map(String::as_str).collect();
                    let ends_at_key = matches!(err.path().iter().next_back(), Some(serde_path_to_error::Segment::Map { key }) if *key == wrong);
                    let key_path = if ends_at_key {
                        full.clone()
                    } else {
                        join_key(&full, &wrong)
                    };
                    if let Some(s) = suggest(&wrong, cands.iter().copied()) {
                        suggested.push(s.to_string());
                    }
                    self.issue(
                        key_path,
                        with_suggestion(format!("unknown key `{wrong}`"), &wrong, &cands),
                    );
                    // Drop the unknown key and try again, to find the next problem too.
                    let removed = if ends_at_key {
                        remove_at(&mut value, err.path(), &wrong)
                    } else {
                        match node_at(&mut value, err.path()) {
                            Some(J::Object(m)) => m.remove(&wrong).is_some(),
                            _ => false,
                        }
                    };
                    if !removed {
                        return None;
                    }
                }
                Some((_, wrong, expected)) => {
                    let cands: Vec<&str> = expected.iter().map(String::as_str).collect();
                    let key = match &node {
                        Some(J::Object(m)) => m
                            .iter()
                            .find(|(_, v)| v.as_str() == Some(wrong.as_str()))
                            .map(|(k, _)| k.clone()),
                        _ => None,
                    };
                    let key_path = inside_enum(key, &full);
                    let what = if key_path.ends_with(".type") || key_path == "type" {
                        if cands.iter().all(|c| TransformConfig::NAMES.contains(c)) {
                            "transform"
                        } else {
                            "type"
                        }
                    } else {
                        "value"
                    };
                    self.issue(
                        key_path,
                        with_suggestion(format!("unknown {what} \"{wrong}\""), &wrong, &cands),
                    );
                    return None;
                }
                None => {
                    if let Some(missing) = inner
                        .strip_prefix("missing field `")
                        .and_then(|r| r.split('`').next())
                    {
                        if !suggested.iter().any(|s| s == missing) {
                            self.issue(full, format!("missing key `{missing}`"));
                        }
                        return None;
                    }
                    let key = match &node {
                        Some(J::Object(m)) => offending_key(&inner, m),
                        _ => None,
                    };
                    self.issue(inside_enum(key, &full), friendly_type_error(&inner));
                    return None;
                }
            }
        }
    }
}

/// Removes key `key` from its object inside `value`; `at` is the path to the key itself.
fn remove_at(value: &mut J, at: &serde_path_to_error::Path, key: &str) -> bool {
    use serde_path_to_error::Segment;
    let mut cur = value;
    let segs: Vec<&Segment> = at.iter().collect();
    let parent = segs.len().saturating_sub(1);
    for seg in segs.into_iter().take(parent) {
        cur = match (seg, cur) {
            (Segment::Map { key }, J::Object(m)) => match m.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, J::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Enum { .. }, c) => c,
            _ => return false,
        };
    }
    match cur {
        J::Object(m) => m.remove(key).is_some(),
        _ => false,
    }
}

/// The node `at` points to (enum segments are transparent in a JSON tree).
fn node_at<'v>(value: &'v mut J, at: &serde_path_to_error::Path) -> Option<&'v mut J> {
    use serde_path_to_error::Segment;
    let mut cur = value;
    for seg in at.iter() {
        cur = match (seg, cur) {
            (Segment::Map { key }, J::Object(m)) => m.get_mut(key)?,
            (Segment::Seq { index }, J::Array(a)) => a.get_mut(*index)?,
            (Segment::Enum { .. }, c) => c,
            _ => return None,
        };
    }
    Some(cur)
}

/// `base.key`, or `key` at the top.
fn join_key(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// serde names Rust types ("expected u32"); a spec author thinks in YAML values.
fn friendly_type_error(msg: &str) -> String {
    let Some((head, expected)) = msg.split_once(", expected ") else {
        return msg.to_string();
    };
    let want = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        other => other,
    };
    format!("{head}, expected {want}")
}

/// How serde describes a JSON value in "invalid type: ..., expected ..." messages.
fn describe_unexpected(v: &J) -> String {
    match v {
        J::Null => "null".into(),
        J::Bool(b) => format!("boolean `{b}`"),
        J::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        J::Number(n) => format!("integer `{n}`"),
        J::String(s) => format!("string {s:?}"),
        J::Array(_) => "sequence".into(),
        J::Object(_) => "map".into(),
    }
}

/// For an "invalid type/value" error inside a tagged enum: the one key whose value serde
/// complained about (none when it is ambiguous).
fn offending_key(msg: &str, obj: &serde_json::Map<String, J>) -> Option<String> {
    let what = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))?;
    let what = what.split(", expected").next()?;
    let mut hits = obj
        .iter()
        .filter(|(k, v)| *k != "type" && describe_unexpected(v) == what)
        .map(|(k, _)| k.clone());
    let first = hits.next()?;
    if hits.next().is_some() {
        None
    } else {
        Some(first)
    }
}
