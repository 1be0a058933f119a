//! Versioned migrations of the engine's own objects, and the check every other command makes.
//!
//! Each engine object has a kind (`shared` for the key-usage and audit tables every pipeline of
//! a database uses; `ledger`, `vault` and `rejects` for one spec's tables) and a version,
//! recorded in [`VERSION_TABLE`]. `etl-engine setup` applies the missing steps of each object in
//! order, each object in one transaction under an advisory lock, and records the new version
//! in that same transaction: a step that fails leaves the object at its previous version, and
//! two concurrent setups apply each step once. Every other command only reads the versions and
//! stops with a clear error when a migration is due or the database is newer than the engine.
//!
//! Version 1 of every kind is the 0.1 layout. Its DDL only creates what is missing, so a
//! database set up by 0.1 (tables created on first use, no version table) is adopted at version 1
//! without touching its data, and later steps migrate it from there.

use super::owners::{self, OwnerError};
use super::policy;
use super::quote_ident;
use super::schema::{self, EngineTables};
use super::vault_v3;
use sqlx::{AssertSqlSafe, PgPool, Row};

/// The table recording each engine object's schema version.
pub const VERSION_TABLE: &str = "etl_schema_version";

/// Key of the advisory lock taken by every migration transaction (an arbitrary constant:
/// "etl-engine setup" in ASCII, truncated to 63 bits).
const SETUP_LOCK: i64 = 0x0065_746c_2d73_6574;

/// The kinds of engine objects, each with its own sequence of versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Key-usage counters and the recovery audit, shared by every pipeline of a database.
    Shared,
    /// One spec's ledger of processed message ids.
    Ledger,
    /// One spec's vault of encrypted originals, with its recovery function.
    Vault,
    /// One spec's rejects, with their body-reading function.
    Rejects,
}

impl Kind {
    /// The name stored in the version table.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Shared => "shared",
            Kind::Ledger => "ledger",
            Kind::Vault => "vault",
            Kind::Rejects => "rejects",
        }
    }
}

/// One engine object: its kind and the name it is recorded under (the table name as the spec
/// writes it, or `shared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Which sequence of migrations applies.
    pub kind: Kind,
    /// The table name as the spec names it (`shared` for the shared objects).
    pub name: String,
}

/// A migration step: the version it brings an object to, what it does, and its statements.
pub struct Step {
    /// The version after this step.
    pub version: i32,
    /// One line for `setup`'s output.
    pub summary: &'static str,
    /// The statements, given the object's table name.
    pub statements: fn(&str) -> Vec<String>,
}

/// The ordered steps of a kind. The last step's version is the version this engine needs.
pub fn steps(kind: Kind) -> &'static [Step] {
    match kind {
        Kind::Shared => &[
            Step {
                version: 1,
                summary: "key-usage counters and the append-only recovery audit",
                statements: |_| schema::shared_ddl(),
            },
            Step {
                version: 2,
                summary: "audit owned by etl_audit_owner and hash-chained, recovery grants, registry of recoverable columns, key usage counted through a function",
                statements: |_| policy::shared_v2_ddl(),
            },
        ],
        Kind::Ledger => &[Step {
            version: 1,
            summary: "ledger of processed message ids",
            statements: schema::ledger_ddl,
        }],
        Kind::Vault => &[
            Step {
                version: 1,
                summary: "vault of encrypted originals and its audited recovery function",
                statements: schema::vault_ddl,
            },
            Step {
                version: 2,
                summary: "two-step recovery: a committed audit grant, then the read",
                statements: policy::vault_v2_ddl,
            },
            Step {
                version: 3,
                summary: "leaner key: a registry of encrypted columns, rows keyed by (column id, 32-byte token)",
                statements: vault_v3::vault_v3_ddl,
            },
        ],
        Kind::Rejects => &[
            Step {
                version: 1,
                summary: "rejects and their audited body-reading function",
                statements: schema::rejects_ddl,
            },
            Step {
                version: 2,
                summary: "two-step reading of bodies: a committed audit grant naming the pipeline, then the read",
                statements: policy::rejects_v2_ddl,
            },
        ],
    }
}

/// The version of `kind` this engine needs (and writes).
pub fn current_version(kind: Kind) -> i32 {
    steps(kind).last().map_or(0, |s| s.version)
}

/// The engine objects one pipeline uses, in the order they must be migrated (the recovery
/// functions of vault and rejects write to the shared audit table).
pub fn objects(tables: &EngineTables) -> Vec<Object> {
    let o = |kind, name: &str| Object {
        kind,
        name: name.to_string(),
    };
    vec![
        o(Kind::Shared, "shared"),
        o(Kind::Ledger, &tables.ledger),
        o(Kind::Vault, &tables.vault),
        o(Kind::Rejects, &tables.rejects),
    ]
}

/// Why the engine's objects cannot be used as they are.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Postgres refused a statement or the connection failed.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// A function the engine relies on is not the engine's own.
    #[error("{0}")]
    Owner(#[from] OwnerError),
    /// The database has never been set up for this engine, or not for this spec's tables, or
    /// only by 0.1 (which created tables on first use and recorded no version).
    #[error(
        "{what} is not set up in this database (or was created by etl-engine 0.1): run `etl-engine setup SPEC` as the database owner first"
    )]
    NotSetUp {
        /// What is missing, in words.
        what: String,
    },
    /// A migration is due.
    #[error(
        "the engine's {kind} table {name} is at schema version {have}, this engine needs {want}: run `etl-engine setup SPEC` as the database owner to migrate"
    )]
    Due {
        /// The object's kind.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// Its recorded version.
        have: i32,
        /// The version this engine needs.
        want: i32,
    },
    /// The database was migrated by a newer engine.
    #[error(
        "the engine's {kind} table {name} is at schema version {have}, newer than this engine knows ({want}): upgrade etl-engine"
    )]
    TooNew {
        /// The object's kind.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// Its recorded version.
        have: i32,
        /// The newest version this engine knows.
        want: i32,
    },
}

/// What `setup` did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The object.
    pub object: Object,
    /// Its version before.
    pub from: i32,
    /// Its version after.
    pub to: i32,
    /// The summaries of the steps applied, in order.
    pub steps: Vec<&'static str>,
}

fn version_table_ddl() -> String {
    let t = quote_ident(VERSION_TABLE);
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n  kind text NOT NULL,\n  object text NOT NULL,\n  version integer NOT NULL,\n  \
         updated_at timestamptz NOT NULL DEFAULT now(),\n  updated_by text NOT NULL DEFAULT session_user,\n  PRIMARY KEY (kind, object))"
    )
}

/// Applies every missing step to every object of `tables`; idempotent. Refuses (changing
/// nothing for that object) when an object is newer than this engine knows, and refuses
/// before and after migrating when a function the engine relies on is not its own (owner and
/// `SECURITY DEFINER` checked, not just the name).
pub async fn setup(pool: &PgPool, tables: &EngineTables) -> Result<Vec<Applied>, MigrateError> {
    owners::check(pool, tables, false).await?;
    let mut done = Vec::new();
    for object in objects(tables) {
        done.push(migrate_object(pool, &object).await?);
    }
    owners::check(pool, tables, true).await?;
    Ok(done)
}

/// Migrates one object in one transaction.
async fn migrate_object(pool: &PgPool, object: &Object) -> Result<Applied, MigrateError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(version_table_ddl()))
        .execute(&mut *tx)
        .await?;
    let have: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {} WHERE kind = $1 AND object = $2 FOR UPDATE",
        quote_ident(VERSION_TABLE)
    )))
    .bind(object.kind.as_str())
    .bind(&object.name)
    .fetch_optional(&mut *tx)
    .await?;
    let from = have.unwrap_or(0);
    let want = current_version(object.kind);
    if from > want {
        return Err(MigrateError::TooNew {
            kind: object.kind.as_str(),
            name: object.name.clone(),
            have: from,
            want,
        });
    }
    let mut applied = Vec::new();
    for step in steps(object.kind).iter().filter(|s| s.version > from) {
        for stmt in (step.statements)(&object.name) {
            sqlx::raw_sql(AssertSqlSafe(stmt)).execute(&mut *tx).await?;
        }
        applied.push(step.summary);
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (kind, object, version) VALUES ($1, $2, $3) \
         ON CONFLICT (kind, object) DO UPDATE SET version = EXCLUDED.version, updated_at = now(), updated_by = session_user",
        quote_ident(VERSION_TABLE)
    )))
    .bind(object.kind.as_str())
    .bind(&object.name)
    .bind(want)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Applied {
        object: object.clone(),
        from,
        to: want,
        steps: applied,
    })
}

/// Checks that every object of `tables` is at the version this engine needs. Runs no DDL.
pub async fn check(pool: &PgPool, tables: &EngineTables) -> Result<(), MigrateError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(quote_ident(VERSION_TABLE))
        .fetch_one(pool)
        .await?;
    let objects = objects(tables);
    if exists.is_none() {
        return Err(MigrateError::NotSetUp {
            what: "etl-engine".into(),
        });
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT kind, object, version FROM {}",
        quote_ident(VERSION_TABLE)
    )))
    .fetch_all(pool)
    .await?;
    for object in objects {
        let have = rows.iter().find_map(|r| {
            let kind: String = r.try_get("kind").ok()?;
            let name: String = r.try_get("object").ok()?;
            (kind == object.kind.as_str() && name == object.name)
                .then(|| r.try_get::<i32, _>("version").ok())
                .flatten()
        });
        let want = current_version(object.kind);
        let (kind, name) = (object.kind.as_str(), object.name);
        match have {
            None => {
                return Err(MigrateError::NotSetUp {
                    what: format!("the engine's {kind} table {name}"),
                });
            }
            Some(have) if have < want => {
                return Err(MigrateError::Due {
                    kind,
                    name,
                    have,
                    want,
                });
            }
            Some(have) if have > want => {
                return Err(MigrateError::TooNew {
                    kind,
                    name,
                    have,
                    want,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// What `setup` applies to an empty database with the default table names, as kept in
/// `schema/engine.sql` for people who read (or review) the DDL before running it.
pub fn default_ddl_text() -> String {
    let mut out = String::from(
        "-- What `etl-engine setup` applies to an empty database, with the default table names.\n\
         -- Run `etl-engine setup SPEC` rather than this file: it also migrates older layouts.\n\
         -- Generated from src/db/; a unit test fails when this file is stale\n\
         -- (regenerate: UPDATE_SCHEMA=1 cargo test --lib engine_sql_is_current).\n\nBEGIN;\n\n",
    );
    out.push_str(&version_table_ddl());
    out.push_str(";\n\n");
    for object in objects(&EngineTables::default()) {
        for step in steps(object.kind) {
            for stmt in (step.statements)(&object.name) {
                out.push_str(&stmt);
                out.push_str(";\n\n");
            }
        }
        out.push_str(&format!(
            "INSERT INTO {} (kind, object, version) VALUES ({}, {}, {}) ON CONFLICT (kind, object) DO NOTHING;\n\n",
            quote_ident(VERSION_TABLE),
            super::literal(object.kind.as_str()),
            super::literal(&object.name),
            current_version(object.kind)
        ));
    }
    out.push_str("COMMIT;\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_sql_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/engine.sql");
        let want = default_ddl_text();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(want.contains("CREATE TABLE IF NOT EXISTS \"etl_ledger\""));
        assert_eq!(
            have, want,
            "schema/engine.sql is stale: run UPDATE_SCHEMA=1 cargo test --lib engine_sql_is_current"
        );
    }

    #[test]
    fn steps_are_ordered_and_start_at_one() {
        for kind in [Kind::Shared, Kind::Ledger, Kind::Vault, Kind::Rejects] {
            let versions: Vec<i32> = steps(kind).iter().map(|s| s.version).collect();
            assert_eq!(versions.first(), Some(&1), "{kind:?}");
            assert!(
                versions.windows(2).all(|w| w[1] == w[0] + 1),
                "{kind:?}: {versions:?}"
            );
        }
    }

    #[test]
    fn shared_objects_are_migrated_first() {
        let objects = objects(&EngineTables::default());
        assert_eq!(objects[0].kind, Kind::Shared);
        assert_eq!(objects.len(), 4);
    }
}
