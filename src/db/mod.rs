//! Postgres plumbing shared by every layer above: identifier quoting, SQL literals, SQLSTATE
//! classes, and (in [`schema`]) every DDL statement of the engine's own objects.
//!
//! A leaf: it knows nothing of specs, messages or keys, so the sink and the vault
//! administration can both use it without depending on each other.

pub mod audit;
pub mod migrate;
pub mod owners;
pub mod policy;
pub mod schema;
pub mod vault_v3;

/// Quotes a validated `name` or `schema.name` as a Postgres identifier.
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A string as an SQL literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `format('%I.%I', schema, name)` for a possibly schema-qualified name, resolving an
/// unqualified one against the schema it is created in, so the definer function never
/// depends on the caller's `search_path`.
pub fn qualified_expr(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => {
            format!("format('%I.%I', {}, {})", literal(schema), literal(table))
        }
        None => format!("format('%I.%I', current_schema(), {})", literal(name)),
    }
}
