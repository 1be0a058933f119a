//! What `setup` checks about the objects it relies on, by owner rather than by name: every
//! function the engine calls (or attaches as a trigger) must be owned by the role running setup
//! or by the audit owner, and be `SECURITY DEFINER` exactly when the engine made it so. A
//! function planted under one of these names by someone else is refused before setup uses it.
//! Also the registry of recoverable columns, which only setup writes.

use super::literal;
use super::policy::{
    AUDIT_APPEND_FUNCTION, AUDIT_OWNER, AUDIT_TRIGGER_FUNCTION, GRANT_TABLE, GRANT_USE_FUNCTION,
    KEY_USAGE_FUNCTION, REGISTRY_TABLE, grant_function_name, read_function_name,
};
use super::schema::{AUDIT_TABLE, EngineTables};
use sqlx::{AssertSqlSafe, PgPool};

/// Who must own an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The role running setup.
    Setup,
    /// [`AUDIT_OWNER`].
    Audit,
}

/// One function the engine relies on.
#[derive(Debug, Clone)]
struct Expected {
    name: String,
    owner: Owner,
    definer: bool,
}

/// Why setup refuses to go on.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Postgres refused a query.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// A function is not what the engine made.
    #[error(
        "function {function} is owned by {owner} (security definer: {definer}), but the engine needs it owned by {want} with security definer {want_definer}: it may have been planted by another role. Drop it as a superuser after checking who made it, then run setup again"
    )]
    Foreign {
        /// The function's signature.
        function: String,
        /// Its owner.
        owner: String,
        /// Its `prosecdef`.
        definer: bool,
        /// Who should own it.
        want: String,
        /// The `prosecdef` it should have.
        want_definer: bool,
    },
    /// A function that setup should have made does not exist.
    #[error("function {0} is missing after setup")]
    Missing(String),
    /// A table is not owned by who it should be.
    #[error("table {table} is owned by {owner}, not {want}")]
    TableOwner {
        /// The table.
        table: String,
        /// Its owner.
        owner: String,
        /// Who should own it.
        want: String,
    },
}

fn expected(tables: &EngineTables) -> Vec<Expected> {
    let e = |name: String, owner, definer| Expected {
        name,
        owner,
        definer,
    };
    vec![
        e(AUDIT_TRIGGER_FUNCTION.into(), Owner::Setup, false),
        e(AUDIT_APPEND_FUNCTION.into(), Owner::Audit, true),
        e(GRANT_USE_FUNCTION.into(), Owner::Audit, true),
        e(KEY_USAGE_FUNCTION.into(), Owner::Setup, true),
        e(grant_function_name(&tables.vault), Owner::Setup, true),
        e(read_function_name(&tables.vault), Owner::Setup, true),
        e(grant_function_name(&tables.rejects), Owner::Setup, true),
        e(read_function_name(&tables.rejects), Owner::Setup, true),
    ]
}

/// `(schema expression, name)` of a possibly qualified name, the schema defaulting to the one
/// setup creates objects in.
fn split(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((s, n)) => (literal(s), n.to_string()),
        None => ("current_schema()".into(), name.to_string()),
    }
}

/// Checks every function of that name (every overload) that exists; with `all_present`, also
/// that each one exists. Run before migrating (a planted function is refused before it is
/// used) and after (everything setup relies on is its own).
pub async fn check(
    pool: &PgPool,
    tables: &EngineTables,
    all_present: bool,
) -> Result<(), OwnerError> {
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await?;
    for exp in expected(tables) {
        let (schema, name) = split(&exp.name);
        let rows: Vec<(String, String, bool)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text, p.prosecdef FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = {schema} AND p.proname = $1"
        )))
        .bind(&name)
        .fetch_all(pool)
        .await?;
        let want = match exp.owner {
            Owner::Setup => me.clone(),
            Owner::Audit => AUDIT_OWNER.to_string(),
        };
        if rows.is_empty() && all_present {
            return Err(OwnerError::Missing(exp.name));
        }
        for (function, owner, definer) in rows {
            // Before version 2 the audit functions did not exist and the others were the
            // setup role's; the audit owner's own functions may also be found owned by it.
            if owner != want || definer != exp.definer {
                return Err(OwnerError::Foreign {
                    function,
                    owner,
                    definer,
                    want,
                    want_definer: exp.definer,
                });
            }
        }
    }
    // Every trigger on the audit table must call the engine's own append-only function.
    let triggers: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT t.tgfoid::regprocedure::text, pg_get_userbyid(p.proowner)::text FROM pg_trigger t \
         JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal AND t.tgrelid = to_regclass({})",
        super::qualified_expr(AUDIT_TABLE)
    )))
    .fetch_all(pool)
    .await?;
    for (function, owner) in triggers {
        if owner != me {
            return Err(OwnerError::Foreign {
                function,
                owner,
                definer: false,
                want: me,
                want_definer: false,
            });
        }
    }
    if all_present {
        for table in [AUDIT_TABLE, GRANT_TABLE] {
            let owner: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT pg_get_userbyid(c.relowner)::text FROM pg_class c WHERE c.oid = to_regclass({})",
                super::qualified_expr(table)
            )))
            .fetch_optional(pool)
            .await?;
            if owner.as_deref() != Some(AUDIT_OWNER) {
                return Err(OwnerError::TableOwner {
                    table: table.into(),
                    owner: owner.unwrap_or_else(|| "nobody (missing)".into()),
                    want: AUDIT_OWNER.into(),
                });
            }
        }
    }
    Ok(())
}

/// Whether PUBLIC may still create objects in the schema setup used (setup revokes it when it
/// owns the schema; otherwise the schema's owner must).
pub async fn public_can_create(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    let row: (String, bool) = sqlx::query_as(
        "SELECT current_schema()::text, coalesce(bool_or(a.privilege_type = 'CREATE' AND a.grantee = 0), false) \
         FROM pg_namespace n LEFT JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a ON true \
         WHERE n.nspname = current_schema()",
    )
    .fetch_one(pool)
    .await?;
    Ok(row.1.then_some(row.0))
}

/// One recoverable column: (vault or rejects table, target table or pipeline, column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The vault table (or rejects table).
    pub object_table: String,
    /// The output table (or, for rejects, the pipeline).
    pub target_table: String,
    /// The encrypted column (or `body`).
    pub column: String,
}

/// Records what may be recovered; the recovery functions refuse anything else. Additive: a
/// column a spec no longer encrypts stays registered until deleted from the registry table.
pub async fn register(pool: &PgPool, entries: &[Registered]) -> Result<(), sqlx::Error> {
    for e in entries {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (object_table, target_table, column_name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            super::quote_ident(REGISTRY_TABLE)
        )))
        .bind(&e.object_table)
        .bind(&e.target_table)
        .bind(&e.column)
        .execute(pool)
        .await?;
    }
    Ok(())
}
