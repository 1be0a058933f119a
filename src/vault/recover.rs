//! PII recovery (`vault-decrypt`): tokens → original values, in two steps so that no
//! ciphertext is ever returned without a committed audit record.
//!
//! 1. `<vault>_recover_grant(...)` checks the policy (reason, at most
//!    [`MAX_RECOVER`] tokens, a column registered by `setup`), appends the audit row and a grant
//!    for those tokens, and is committed on its own;
//! 2. `<vault>_recover(grant)` returns the ciphertexts, only for a grant committed by an
//!    earlier transaction of the same database user, unused and recent, and marks it used.
//!
//! Both are `SECURITY DEFINER` functions: the recovery role has no privilege on the vault table
//! itself. Who called is recorded as the database session user (not spoofable by the caller)
//! next to the claimed `--actor`.

use crate::crypto::cipher::{Binding, CipherError, VaultCipher};
use crate::db::policy::{MAX_RECOVER, grant_function_name, read_function_name};
use crate::db::quote_ident;
use crate::spec::{Output, Spec};
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// Errors of a recovery. None of them carries a recovered value.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "column {column} is not encrypted by spec {spec} (columns with `- type: encrypt`: {encrypted})"
    )]
    NotEncrypted {
        column: String,
        spec: String,
        encrypted: String,
    },
    #[error("--where: {0}")]
    Selector(String),
    #[error(
        "column {column} is encrypted in several outputs ({tables}): choose one with --output TABLE"
    )]
    AmbiguousOutput { column: String, tables: String },
    #[error("--output {table}: {problem}")]
    Output { table: String, problem: String },
    #[error("the audit record could not be written, so nothing was decrypted: {0}")]
    Audit(sqlx::Error),
    #[error(
        "the recovery function {function} does not exist; run `etl-engine setup SPEC` as the owner of the engine's tables"
    )]
    MissingFunction { function: String },
    #[error(
        "this database role may not call the recovery function {function}; grant it etl_recovery (schema/roles.sql): {source}"
    )]
    NotAllowed {
        function: String,
        source: sqlx::Error,
    },
    #[error("a reason is required (--reason): it is recorded in the audit table")]
    NoReason,
    #[error(
        "{count} values asked for; at most {max} per recovery (the database refuses more): narrow the selection"
    )]
    TooMany { count: usize, max: usize },
    #[error("the database refused the recovery: {0}")]
    Refused(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("token {token}: {source}")]
    Cipher { token: String, source: CipherError },
    #[error("a recovered value is not UTF-8 text")]
    NotText,
}

/// Which values to recover. `Debug` shows column names and counts, not the selector values.
#[derive(Clone)]
pub enum Selector {
    /// Explicit tokens (from arguments or stdin).
    Tokens(Vec<String>),
    /// Rows of the target table where each `column = value` (values bound as parameters).
    Where(Vec<(String, String)>),
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Tokens(t) => write!(f, "Tokens({} tokens)", t.len()),
            Selector::Where(c) => write!(
                f,
                "Where({:?} = <redacted>)",
                c.iter().map(|(col, _)| col.as_str()).collect::<Vec<_>>()
            ),
        }
    }
}

/// Who recovers, and why.
#[derive(Debug, Clone)]
pub struct Request {
    pub column: String,
    /// The output table holding the column (`--output`); needed only when several do.
    pub output: Option<String>,
    pub selector: Selector,
    pub actor: String,
    pub reason: String,
}

/// One recovered value. `Debug` is redacted.
pub struct Recovered {
    pub token: String,
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovered")
            .field("token", &self.token)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// The result: recovered values, and tokens with no vault entry.
#[derive(Debug)]
pub struct Outcome {
    pub recovered: Vec<Recovered>,
    pub missing: Vec<String>,
}

/// Parses `COLUMN=VALUE`.
pub fn parse_where(s: &str) -> Result<(String, String), RecoverError> {
    let (c, v) = s.split_once('=').ok_or_else(|| {
        // The argument is not echoed: it may be a PII value typed in the wrong place.
        RecoverError::Selector(format!(
            "expected COLUMN=VALUE (an argument of {} characters has no `=`)",
            s.chars().count()
        ))
    })?;
    Ok((
        c.trim().to_string(),
        v.trim().trim_matches('\'').to_string(),
    ))
}

/// Recovers values, auditing first.
pub async fn recover(
    pool: &PgPool,
    spec: &Spec,
    cipher: &VaultCipher,
    req: &Request,
) -> Result<Outcome, RecoverError> {
    let output = resolve_output(spec, &req.column, req.output.as_deref())?;
    let table = output.table.as_str();
    if req.reason.trim().is_empty() {
        return Err(RecoverError::NoReason);
    }
    let tokens: Vec<String> = match &req.selector {
        Selector::Tokens(t) => t.clone(),
        Selector::Where(conds) => select_tokens(pool, output, &req.column, conds).await?,
    };
    let mut tokens = tokens;
    tokens.sort();
    tokens.dedup();
    if tokens.len() > MAX_RECOVER {
        return Err(RecoverError::TooMany {
            count: tokens.len(),
            max: MAX_RECOVER,
        });
    }

    // Step 1, committed on its own (autocommit): the audit row and the grant it carries.
    let grant_fn = grant_function_name(&spec.vault.table);
    let grant: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {}($1, $2, $3, $4, $5, $6)",
        quote_ident(&grant_fn)
    )))
    .bind(spec.file.display().to_string())
    .bind(table)
    .bind(&req.column)
    .bind(&tokens)
    .bind(&req.actor)
    .bind(&req.reason)
    .fetch_one(pool)
    .await
    .map_err(|e| classify_call_error(e, grant_fn))?;
    // Step 2: the ciphertexts that grant covers.
    let read_fn = read_function_name(&spec.vault.table);
    let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT token, key_id, nonce, ciphertext FROM {}($1)",
        quote_ident(&read_fn)
    )))
    .bind(grant)
    .fetch_all(pool)
    .await
    .map_err(|e| classify_call_error(e, read_fn))?;

    let mut found: HashMap<String, Recovered> = HashMap::new();
    for (token, key_id, nonce, ct) in rows {
        let b = Binding {
            scope: table,
            column: &req.column,
            token: &token,
        };
        let value = decrypt_text(cipher, b, &key_id, &nonce, &ct)?;
        found.insert(token.clone(), Recovered { token, value });
    }
    let mut recovered = Vec::new();
    let mut missing = Vec::new();
    for t in tokens {
        match found.remove(&t) {
            Some(r) => recovered.push(r),
            None => missing.push(t),
        }
    }
    Ok(Outcome { recovered, missing })
}

/// The distinct values of `column` in the rows of `output` where every `column = value` of
/// `conds` holds (names checked against the spec, values bound as parameters).
pub(crate) async fn select_tokens(
    pool: &PgPool,
    output: &Output,
    column: &str,
    conds: &[(String, String)],
) -> Result<Vec<String>, RecoverError> {
    let table = output.table.as_str();
    let sql = format!(
        "SELECT DISTINCT {}::text FROM {} WHERE {}",
        quote_ident(column),
        quote_ident(table),
        where_clause(output, conds, 1)?
    );
    let mut q = sqlx::query_as::<_, (Option<String>,)>(AssertSqlSafe(sql));
    for (_, v) in conds {
        q = q.bind(v);
    }
    Ok(q.fetch_all(pool)
        .await?
        .into_iter()
        .filter_map(|r| r.0)
        .collect())
}

/// `col1::text = $first AND ...` for `conds`, each column checked against the output's
/// columns; the values are for the caller to bind in order.
pub(crate) fn where_clause(
    output: &Output,
    conds: &[(String, String)],
    first: usize,
) -> Result<String, RecoverError> {
    if conds.is_empty() {
        return Err(RecoverError::Selector("no COLUMN=VALUE given".into()));
    }
    let mut sql = String::new();
    for (i, (col, _)) in conds.iter().enumerate() {
        if !output.columns.iter().any(|c| &c.name == col) {
            let names: Vec<&str> = output.columns.iter().map(|c| c.name.as_str()).collect();
            return Err(RecoverError::Selector(format!(
                "no column {col} in output {} (columns: {})",
                output.table,
                names.join(", ")
            )));
        }
        if i > 0 {
            sql.push_str(" AND ");
        }
        sql.push_str(&format!("{}::text = ${}", quote_ident(col), i + first));
    }
    Ok(sql)
}

/// Parses `COLUMN=VALUE` lines (from stdin), skipping blank ones.
pub fn parse_where_lines(text: &str) -> Result<Vec<(String, String)>, RecoverError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_where)
        .collect()
}

/// The output whose encrypted `column` is meant: the one named by `--output`, or the only one
/// that encrypts it.
pub fn resolve_output<'s>(
    spec: &'s Spec,
    column: &str,
    wanted: Option<&str>,
) -> Result<&'s Output, RecoverError> {
    let encrypts = |o: &Output| o.columns.iter().any(|c| c.name == column && c.encrypts());
    if let Some(table) = wanted {
        let Some(o) = spec.output(table) else {
            return Err(RecoverError::Output {
                table: table.to_string(),
                problem: format!(
                    "not an output of the spec (outputs: {})",
                    spec.table_names().join(", ")
                ),
            });
        };
        if !encrypts(o) {
            return Err(RecoverError::NotEncrypted {
                column: column.to_string(),
                spec: format!("{} (output {table})", spec.file.display()),
                encrypted: encrypted_columns(o).join(", "),
            });
        }
        return Ok(o);
    }
    let candidates: Vec<&Output> = spec.outputs.iter().filter(|o| encrypts(o)).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(RecoverError::NotEncrypted {
            column: column.to_string(),
            spec: spec.file.display().to_string(),
            encrypted: spec
                .outputs
                .iter()
                .flat_map(|o| encrypted_columns(o))
                .collect::<Vec<_>>()
                .join(", "),
        }),
        several => Err(RecoverError::AmbiguousOutput {
            column: column.to_string(),
            tables: several
                .iter()
                .map(|o| o.table.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The outputs a selector on `columns` applies to: the one named by `--output`, else every
/// output that has all of them.
pub(crate) fn resolve_output_tables<'s>(
    spec: &'s Spec,
    columns: &[&str],
    wanted: Option<&str>,
) -> Result<Vec<&'s Output>, RecoverError> {
    let has_all = |o: &Output| {
        columns
            .iter()
            .all(|c| o.columns.iter().any(|x| x.name == *c))
    };
    let found: Vec<&Output> = match wanted {
        Some(table) => match spec.output(table) {
            Some(o) => vec![o],
            None => {
                return Err(RecoverError::Output {
                    table: table.to_string(),
                    problem: format!(
                        "not an output of the spec (outputs: {})",
                        spec.table_names().join(", ")
                    ),
                });
            }
        },
        None => spec.outputs.iter().filter(|o| has_all(o)).collect(),
    };
    if found.is_empty() || !found.iter().all(|o| has_all(o)) {
        return Err(RecoverError::Selector(format!(
            "no output of the spec has the column(s) {} (outputs: {})",
            columns.join(", "),
            spec.table_names().join(", ")
        )));
    }
    Ok(found)
}

/// The names of an output's encrypted columns.
fn encrypted_columns(o: &Output) -> Vec<&str> {
    o.columns
        .iter()
        .filter(|c| c.encrypts())
        .map(|c| c.name.as_str())
        .collect()
}

/// Decrypts one stored value that must be text; errors name the token (or message id).
pub(crate) fn decrypt_text(
    cipher: &VaultCipher,
    b: Binding<'_>,
    key_id: &str,
    nonce: &[u8],
    ct: &[u8],
) -> Result<Zeroizing<String>, RecoverError> {
    let plain = cipher
        .decrypt(b, key_id, nonce, ct)
        .map_err(|source| RecoverError::Cipher {
            token: b.token.to_string(),
            source,
        })?;
    Ok(Zeroizing::new(
        String::from_utf8(plain.to_vec()).map_err(|_| RecoverError::NotText)?,
    ))
}

/// Maps an error of calling an audited read function to what the user can act on.
pub(crate) fn classify_call_error(e: sqlx::Error, function: String) -> RecoverError {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("42883") => {
            RecoverError::MissingFunction { function }
        }
        sqlx::Error::Database(d)
            if d.code().as_deref() == Some("42501")
                && d.message().starts_with("permission denied") =>
        {
            RecoverError::NotAllowed {
                function,
                source: e,
            }
        }
        // The policy of the recovery functions: unregistered column, too many values, a
        // grant that is not usable, no reason.
        sqlx::Error::Database(d)
            if matches!(d.code().as_deref(), Some("42501" | "54000" | "22023")) =>
        {
            RecoverError::Refused(d.message().to_string())
        }
        _ => RecoverError::Audit(e),
    }
}
