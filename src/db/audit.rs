//! Verifying the audit's hash chain (`etl-engine audit verify`): each row's hash covers its
//! content and the previous row's hash, so editing, deleting or inserting a row (even by the
//! audit table's owner, with the append-only trigger dropped) breaks the chain at that row.
//!
//! The canonical text is rebuilt here, independently of the SQL that wrote it
//! ([`super::policy::content_sql`]); SHA-256 rows are hashed here, MD5 rows (PostgreSQL 10)
//! by the server's `md5()` on the text built here.

use super::quote_ident;
use super::schema::AUDIT_TABLE;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool, Row};

/// One audit row as the chain covers it.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Row id (the chain's order).
    pub id: i64,
    /// `at` in UTC, `YYYY-MM-DDTHH:MI:SS.ffffff`.
    pub at: String,
    /// `recover`, `rejects` or `erase`.
    pub kind: String,
    /// The claimed actor.
    pub actor: String,
    /// The database session user.
    pub db_user: String,
    /// The spec file.
    pub spec: String,
    /// The pipeline (reject reads, erasures).
    pub pipeline: Option<String>,
    /// The table read or erased from.
    pub target_table: String,
    /// The column (`body` for rejects).
    pub column_name: String,
    /// How many values.
    pub value_count: i32,
    /// Why.
    pub reason: String,
    /// Tokens or message ids.
    pub tokens: Option<Vec<Option<String>>>,
    /// `sha256` or `md5`.
    pub hash_alg: Option<String>,
    /// The previous row's hash as stored.
    pub prev_hash: Option<String>,
    /// This row's hash as stored.
    pub row_hash: Option<String>,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every row checks out; the newest row's id and hash (keep them elsewhere: an anchor
    /// detects a chain rewritten from some row on).
    Intact {
        /// Rows checked.
        rows: u64,
        /// The newest row's id and hash, if any.
        head: Option<(i64, String)>,
    },
    /// The first row that does not check out, and why.
    Broken {
        /// Its id.
        id: i64,
        /// What is wrong.
        problem: String,
        /// Rows checked before it.
        rows: u64,
    },
}

/// Why the chain could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Postgres refused a query.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// A field as the chain covers it: `N:text`, or `-` for NULL.
fn field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push('-'),
        Some(s) => {
            out.push_str(&s.chars().count().to_string());
            out.push(':');
            out.push_str(s);
        }
    }
}

/// The canonical text of `row` chained to `prev`.
pub fn canonical(row: &AuditRow, prev: Option<&str>) -> String {
    let mut s = String::from("etl-audit-v1;");
    field(&mut s, Some(&row.id.to_string()));
    field(&mut s, Some(&row.at));
    field(&mut s, Some(&row.kind));
    field(&mut s, Some(&row.actor));
    field(&mut s, Some(&row.db_user));
    field(&mut s, Some(&row.spec));
    field(&mut s, row.pipeline.as_deref());
    field(&mut s, Some(&row.target_table));
    field(&mut s, Some(&row.column_name));
    field(&mut s, Some(&row.value_count.to_string()));
    field(&mut s, Some(&row.reason));
    match &row.tokens {
        None => s.push('-'),
        Some(t) => {
            s.push_str(&t.len().to_string());
            s.push('[');
            for x in t {
                field(&mut s, x.as_deref());
            }
            s.push(']');
        }
    }
    field(&mut s, prev);
    s
}

/// Walks the whole chain in id order; stops at the first row that does not check out.
/// `anchor` (an id and hash recorded earlier) must still be in the chain unchanged.
pub async fn verify(pool: &PgPool, anchor: Option<(i64, &str)>) -> Result<Verdict, AuditError> {
    let sql = format!(
        "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') AS at, kind, actor, db_user, spec, \
         pipeline, target_table, column_name, value_count, reason, tokens, hash_alg, prev_hash, row_hash \
         FROM {} ORDER BY id",
        quote_ident(AUDIT_TABLE)
    );
    let rows: Vec<AuditRow> = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AuditRow {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                kind: r.try_get("kind")?,
                actor: r.try_get("actor")?,
                db_user: r.try_get("db_user")?,
                spec: r.try_get("spec")?,
                pipeline: r.try_get("pipeline")?,
                target_table: r.try_get("target_table")?,
                column_name: r.try_get("column_name")?,
                value_count: r.try_get("value_count")?,
                reason: r.try_get("reason")?,
                tokens: r.try_get("tokens")?,
                hash_alg: r.try_get("hash_alg")?,
                prev_hash: r.try_get("prev_hash")?,
                row_hash: r.try_get("row_hash")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let mut prev: Option<String> = None;
    let mut checked = 0u64;
    let mut anchor_seen = anchor.is_none();
    for row in &rows {
        let broken = |problem: String| Verdict::Broken {
            id: row.id,
            problem,
            rows: checked,
        };
        if row.prev_hash != prev {
            return Ok(broken(
                "its previous-row hash does not match the row before it (a row was deleted, inserted or edited)"
                    .into(),
            ));
        }
        let text = canonical(row, prev.as_deref());
        let want = match row.hash_alg.as_deref() {
            Some("sha256") => hex::encode(Sha256::digest(text.as_bytes())),
            Some("md5") => {
                sqlx::query_scalar::<_, String>("SELECT md5(convert_to($1, 'UTF8'))")
                    .bind(&text)
                    .fetch_one(pool)
                    .await?
            }
            other => {
                return Ok(broken(format!(
                    "unknown hash algorithm {}",
                    other.unwrap_or("(none)")
                )));
            }
        };
        if row.row_hash.as_deref() != Some(want.as_str()) {
            return Ok(broken(
                "its content does not match its hash (the row was edited)".into(),
            ));
        }
        if let Some((id, hash)) = anchor
            && id == row.id
        {
            if hash != want {
                return Ok(broken(
                    "it differs from the anchor recorded earlier (the chain was rewritten from here on)"
                        .into(),
                ));
            }
            anchor_seen = true;
        }
        prev = Some(want);
        checked += 1;
    }
    if !anchor_seen && let Some((id, _)) = anchor {
        return Ok(Verdict::Broken {
            id,
            problem: "the anchor row is no longer in the audit (rows were deleted)".into(),
            rows: checked,
        });
    }
    Ok(Verdict::Intact {
        rows: checked,
        head: rows.last().zip(prev).map(|(r, h)| (r.id, h)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> AuditRow {
        AuditRow {
            id: 7,
            at: "2024-01-02T03:04:05.000006".into(),
            kind: "recover".into(),
            actor: "ann".into(),
            db_user: "u".into(),
            spec: "s.yaml".into(),
            pipeline: None,
            target_table: "t".into(),
            column_name: "c".into(),
            value_count: 2,
            reason: "why".into(),
            tokens: Some(vec![Some("ab".into()), None]),
            hash_alg: Some("sha256".into()),
            prev_hash: None,
            row_hash: None,
        }
    }

    #[test]
    fn canonical_text_is_length_prefixed() {
        assert_eq!(
            canonical(&row(), Some("ff")),
            "etl-audit-v1;1:726:2024-01-02T03:04:05.0000067:recover3:ann1:u6:s.yaml-1:t1:c1:23:why2[2:ab-]2:ff"
        );
        // Moving a character between two fields changes the text.
        let mut r = row();
        r.actor = "an".into();
        r.db_user = "nu".into();
        assert_ne!(canonical(&r, None), canonical(&row(), None));
    }
}
