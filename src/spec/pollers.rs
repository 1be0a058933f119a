//! `source.pollers`: how many receive loops an SQS source runs, either `auto` (the engine adapts
//! the count to the queue and the writers) or a fixed number.
//!
//! Written by hand rather than derived so the YAML stays a plain `auto` or `8`, and a bad value
//! says what is accepted instead of naming a Rust type.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

/// The most receive loops one process runs (also the bound a fixed number must respect).
pub const MAX_POLLERS: u32 = 64;

/// Concurrent receive loops of an SQS source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pollers {
    /// Start small and add loops while receives come back full and the writers keep up;
    /// remove them when receives come back empty or the in-flight budget is reached.
    #[default]
    Auto,
    /// Exactly this many loops (1 to [`MAX_POLLERS`]).
    Fixed(u32),
}

impl Serialize for Pollers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pollers::Auto => s.serialize_str("auto"),
            Pollers::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

/// Accepts `auto` or a whole number; the range is checked by validation, which names the key.
struct PollersVisitor;

impl Visitor<'_> for PollersVisitor {
    type Value = Pollers;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("`auto` or a whole number of receive loops (1 to 64)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Pollers, E> {
        // Out of u32 range is still "a number": validation reports it with the bounds.
        Ok(Pollers::Fixed(u32::try_from(v).unwrap_or(u32::MAX)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Pollers, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Pollers, E> {
        if v == "auto" {
            Ok(Pollers::Auto)
        } else {
            Err(E::invalid_value(Unexpected::Str(v), &self))
        }
    }
}

impl<'de> Deserialize<'de> for Pollers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PollersVisitor)
    }
}

impl JsonSchema for Pollers {
    fn schema_name() -> Cow<'static, str> {
        "Pollers".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`auto` (adapt the number of receive loops), or a fixed number of them.",
            "oneOf": [
                {"const": "auto"},
                {"type": "integer", "minimum": 1, "maximum": MAX_POLLERS}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_or_a_number_round_trips() {
        let p: Pollers = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(p, Pollers::Auto);
        let p: Pollers = serde_json::from_str("8").unwrap();
        assert_eq!(p, Pollers::Fixed(8));
        assert_eq!(serde_json::to_string(&Pollers::Fixed(8)).unwrap(), "8");
        assert_eq!(serde_json::to_string(&Pollers::Auto).unwrap(), "\"auto\"");
        let e = serde_json::from_str::<Pollers>("\"lots\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid value: string \"lots\", expected `auto` or a whole number"),
            "{e}"
        );
        assert!(serde_json::from_str::<Pollers>("-1").is_err());
        assert!(serde_json::from_str::<Pollers>("1.5").is_err());
    }
}
