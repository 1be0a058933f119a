//! Binary COPY streams (`COPY … FROM STDIN (FORMAT binary)`, the format of the Postgres `COPY`
//! docs): the encoder the sink writes ledger, vault and `insert` outputs with, the benchmark its
//! ceiling with, and the rule for when a plain COPY into a keyed table is worth trying.
//!
//! Only types whose binary form is fixed and simple are sent in it: text, int4, int8, bool,
//! date and timestamptz. A column goes in by COPY only when its table column has exactly that
//! type ([`direct_type`]): binary COPY does no assignment cast, so an int4 sent to a bigint
//! column would be refused, and the text of a timestamp cast to a text column would depend on
//! the session. Numeric, jsonb, uuid and text[] columns are bound as arrays of text and cast by
//! Postgres, which parses them exactly: no amount ever passes through a float.

use crate::value::{Val, ValType};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use std::sync::atomic::{AtomicU32, Ordering};

/// The Postgres epoch (2000-01-01) dates and timestamps count from in the binary format.
fn pg_epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default()
}

/// A binary COPY stream under construction.
#[derive(Debug)]
pub struct CopyBuf {
    /// The bytes so far: header, rows, and (after [`CopyBuf::finish`]) the trailer.
    buf: Vec<u8>,
    /// Rows written.
    pub rows: u64,
}

impl Default for CopyBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyBuf {
    /// A buffer holding the signature, no flags and an empty header extension.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Self { buf, rows: 0 }
    }

    /// Starts a row of `fields` fields (a table has at most 1,600 columns, so `i16` holds it).
    pub fn row(&mut self, fields: usize) {
        self.rows += 1;
        let n = i16::try_from(fields).unwrap_or(i16::MAX);
        self.buf.extend_from_slice(&n.to_be_bytes());
    }

    /// One field: its bytes in the column type's binary form, or NULL.
    pub fn field(&mut self, v: Option<&[u8]>) {
        match v {
            Some(b) => {
                // A field over 2 GiB cannot exist: Postgres caps a value at 1 GB.
                let len = i32::try_from(b.len()).unwrap_or(i32::MAX);
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(b);
            }
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    /// A text (or varchar) field.
    pub fn text(&mut self, s: &str) {
        self.field(Some(s.as_bytes()));
    }

    /// A bytea field.
    pub fn bytes(&mut self, b: &[u8]) {
        self.field(Some(b));
    }

    /// A value of a column of static type `ty`, in that type's binary form ([`direct_type`]
    /// says when a column takes it). A value of another runtime type than `ty` is NULL, as the
    /// array binding made it.
    pub fn val(&mut self, ty: ValType, v: &Val) {
        match (ty, v) {
            (_, v) if v.is_null() => self.field(None),
            (ValType::Integer, Val::Int(i)) => self.field(Some(&i.to_be_bytes())),
            (ValType::BigInt, Val::BigInt(i)) => self.field(Some(&i.to_be_bytes())),
            (ValType::BigInt, Val::Int(i)) => self.field(Some(&i64::from(*i).to_be_bytes())),
            (ValType::Boolean, Val::Bool(b)) => self.field(Some(&[u8::from(*b)])),
            (ValType::Date, Val::Date(d)) => {
                // Every chrono date is within ±262,143 years: the day count fits an i32.
                let days = i32::try_from((*d - pg_epoch()).num_days()).unwrap_or(i32::MAX);
                self.field(Some(&days.to_be_bytes()))
            }
            (ValType::Timestamp, Val::Timestamp(t)) => {
                let base: DateTime<Utc> = pg_epoch()
                    .and_hms_opt(0, 0, 0)
                    .unwrap_or_default()
                    .and_utc();
                match (*t - base).num_microseconds() {
                    Some(micros) => self.field(Some(&micros.to_be_bytes())),
                    // Beyond ±292,000 years of 2000: no Postgres timestamp holds it either.
                    None => self.field(None),
                }
            }
            (ValType::Integer | ValType::Boolean | ValType::Date | ValType::Timestamp, _) => {
                self.field(None)
            }
            (ValType::BigInt, _) => self.field(None),
            (ValType::Numeric, Val::Numeric(d)) => self.field(Some(&numeric_binary(*d))),
            (ValType::Numeric, Val::Int(i)) => self.field(Some(&numeric_binary(Decimal::from(*i)))),
            (ValType::Numeric, Val::BigInt(i)) => {
                self.field(Some(&numeric_binary(Decimal::from(*i))))
            }
            (ValType::Jsonb, v) => {
                // jsonb's binary form: a version byte (1), then the JSON text.
                let mut b = vec![1u8];
                b.extend_from_slice(v.to_json().to_string().as_bytes());
                self.field(Some(&b))
            }
            (
                ValType::Json
                | ValType::Text
                | ValType::Numeric
                | ValType::Uuid
                | ValType::TextArray,
                v,
            ) => match super::bind::bound_text(ty, v) {
                Some(s) => self.text(&s),
                None => self.field(None),
            },
        }
    }

    /// The finished stream, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// The type a value of spec type `ty` is encoded as in a binary COPY into a column of Postgres
/// type `pg_type` (`information_schema` name), or `None` when a COPY would not store exactly
/// what binding the value and letting Postgres cast it stores: then the column's output is
/// bound as arrays instead.
pub fn direct_type(ty: ValType, pg_type: &str) -> Option<ValType> {
    match (ty, pg_type) {
        // varchar(n) and char(n) check their length on receive as on input (SQLSTATE 22001).
        (ValType::Text | ValType::Json, "text" | "character varying" | "character") => Some(ty),
        (ValType::Integer, "integer") => Some(ValType::Integer),
        (ValType::Integer | ValType::BigInt, "bigint") => Some(ValType::BigInt),
        (ValType::Numeric, "numeric") | (ValType::Jsonb, "jsonb") => Some(ty),
        (ValType::Boolean, "boolean")
        | (ValType::Date, "date")
        | (ValType::Timestamp, "timestamp with time zone") => Some(ty),
        _ => None,
    }
}

/// Whether [`CopyBuf::val`] stores exactly what binding `v` as text and casting it stores: not
/// for a numeric column's value that is not a number (Postgres would refuse its text, where a
/// COPY would have to send something else); the batch then goes in by array binding.
pub fn exact_in_copy(ty: ValType, v: &Val) -> bool {
    !matches!(ty, ValType::Numeric)
        || matches!(v, Val::Numeric(_) | Val::Int(_) | Val::BigInt(_))
        || v.is_null()
}

/// Postgres's binary form of a numeric: digit count, weight (of the first base-10,000 digit),
/// sign, display scale, then the base-10,000 digits, most significant first. Postgres
/// applies the column's precision and scale on receipt, rounding as a cast would.
fn numeric_binary(d: Decimal) -> Vec<u8> {
    let scale = d.scale();
    // Align the fraction to whole base-10,000 digits: 12.5 (125, scale 1) → 125000 (scale 4).
    let pad = (4 - scale % 4) % 4;
    let frac_groups = (scale + pad) / 4;
    // |mantissa| < 2^96, times at most 10^3: fits a u128.
    let mut n = d.mantissa().unsigned_abs() * 10u128.pow(pad);
    let mut groups: Vec<i16> = Vec::new();
    while n > 0 {
        groups.push((n % 10_000) as i16);
        n /= 10_000;
    }
    // Fraction groups that are all zero below the first non-zero integer digit still count.
    while (groups.len() as u32) < frac_groups {
        groups.push(0);
    }
    groups.reverse();
    let mut weight = groups.len() as i32 - frac_groups as i32 - 1;
    // Leading zeros are not sent (each lowers the weight); nor are trailing ones.
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= lead as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign: u16 = if d.is_sign_negative() && !groups.is_empty() {
        0x4000
    } else {
        0
    };
    let mut out = Vec::with_capacity(8 + 2 * groups.len());
    // At most 10 groups (29 digits + 3 of padding) and a weight within ±8: all fit an i16.
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    out
}

/// Sends one finished binary COPY stream with `statement` (`COPY … FROM STDIN (FORMAT binary)`)
/// and returns the rows Postgres took. The whole stream is one write, so the driver's small
/// closing message follows it at once (the driver sets TCP_NODELAY).
pub async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    buf: CopyBuf,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(buf.finish()).await?;
    copy.finish().await
}

/// The most writes a table skips COPY for after conflicts in a row.
const MAX_SKIP: u32 = 64;

/// Whether to try a plain COPY into a table whose unique key may already hold some of the rows
/// (the ledger: redelivered messages; the vault: tokens stored by another process; keyed
/// outputs: existing rows). A COPY that hits a stored key fails as a whole and is redone as
/// `INSERT … ON CONFLICT`, so a conflict costs one wasted COPY. After a conflict the next
/// writes go straight to the `INSERT`: 1 after a first conflict, doubling with every conflict
/// in a row up to [`MAX_SKIP`], back to 1 after a COPY that went through. A stretch of
/// redeliveries, or a vault filled before a restart, then wastes a few COPYs, not one a batch.
#[derive(Debug)]
pub struct CopyGate {
    /// Writes left before trying COPY again.
    skip: AtomicU32,
    /// Writes to skip after the next conflict.
    backoff: AtomicU32,
}

impl Default for CopyGate {
    fn default() -> Self {
        Self {
            skip: AtomicU32::new(0),
            backoff: AtomicU32::new(1),
        }
    }
}

impl CopyGate {
    /// Whether this write should try COPY (counts down the writes to skip).
    pub fn try_copy(&self) -> bool {
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// A COPY hit a stored key.
    pub fn conflicted(&self) {
        let n = self
            .backoff
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some((n * 2).min(MAX_SKIP))
            })
            .unwrap_or(MAX_SKIP);
        self.skip.store(n, Ordering::Relaxed);
    }

    /// A COPY went through.
    pub fn succeeded(&self) {
        self.backoff.store(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_has_header_rows_and_trailer() {
        let mut b = CopyBuf::new();
        b.row(3);
        b.val(ValType::Integer, &Val::Int(7));
        b.val(ValType::Text, &Val::Text("é".into()));
        b.val(ValType::Date, &Val::Null);
        let out = b.finish();
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        want.extend_from_slice(&[0, 3, 0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 2, 0xc3, 0xa9]);
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(out, want);
    }

    #[test]
    fn dates_and_timestamps_count_from_2000() {
        let mut b = CopyBuf::new();
        let d = NaiveDate::from_ymd_opt(2000, 1, 2).unwrap();
        b.val(ValType::Date, &Val::Date(d));
        b.val(
            ValType::Timestamp,
            &Val::Timestamp(d.and_hms_opt(0, 0, 1).unwrap().and_utc()),
        );
        let out = b.finish();
        assert_eq!(&out[19..27], &[0, 0, 0, 4, 0, 0, 0, 1]);
        let micros = (86_400_000_000i64 + 1_000_000).to_be_bytes();
        assert_eq!(&out[27..31], &[0, 0, 0, 8]);
        assert_eq!(&out[31..39], &micros);
    }

    #[test]
    fn a_gate_skips_copy_longer_after_each_conflict_in_a_row() {
        let g = CopyGate::default();
        // Writes skipped before the next try, after each of several conflicts in a row.
        let skipped_after_conflict = |g: &CopyGate| {
            g.conflicted();
            (0..).take_while(|_| !g.try_copy()).count()
        };
        assert!(g.try_copy());
        let skips: Vec<usize> = (0..8).map(|_| skipped_after_conflict(&g)).collect();
        assert_eq!(skips, vec![1, 2, 4, 8, 16, 32, 64, 64]);
        g.succeeded();
        assert_eq!(
            skipped_after_conflict(&g),
            1,
            "a COPY that went through resets it"
        );
    }

    #[test]
    fn only_exact_binary_forms_are_copied() {
        assert_eq!(
            direct_type(ValType::Integer, "bigint"),
            Some(ValType::BigInt)
        );
        assert_eq!(direct_type(ValType::BigInt, "integer"), None);
        assert_eq!(
            direct_type(ValType::Timestamp, "timestamp without time zone"),
            None
        );
        assert_eq!(direct_type(ValType::Integer, "text"), None);
        assert_eq!(direct_type(ValType::Numeric, "real"), None);
        assert_eq!(direct_type(ValType::Uuid, "uuid"), None);
        assert_eq!(
            direct_type(ValType::Text, "character varying"),
            Some(ValType::Text)
        );
    }

    /// (digit count, weight, sign, display scale, digits) of a numeric's binary form.
    fn numeric_parts(s: &str) -> (i16, i16, u16, i16, Vec<i16>) {
        let b = numeric_binary(s.parse().unwrap());
        let at = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
        let digits = (0..at(0) as usize).map(|k| at(8 + 2 * k)).collect();
        (at(0), at(2), at(4) as u16, at(6), digits)
    }

    #[test]
    fn numerics_in_base_ten_thousand() {
        assert_eq!(numeric_parts("12.50"), (2, 0, 0, 2, vec![12, 5000]));
        assert_eq!(
            numeric_parts("-12345678.9"),
            (3, 1, 0x4000, 1, vec![1234, 5678, 9000])
        );
        assert_eq!(numeric_parts("0.0001"), (1, -1, 0, 4, vec![1]));
        assert_eq!(numeric_parts("0.00001"), (1, -2, 0, 5, vec![1000]));
        assert_eq!(numeric_parts("10000"), (1, 1, 0, 0, vec![1]));
        assert_eq!(numeric_parts("0.00"), (0, 0, 0, 2, vec![]));
        assert_eq!(numeric_parts("-0"), (0, 0, 0, 0, vec![]));
        assert_eq!(
            numeric_parts("79228162514264337593543950335"),
            (8, 7, 0, 0, vec![7, 9228, 1625, 1426, 4337, 5935, 4395, 335])
        );
    }

    #[test]
    fn a_value_of_another_runtime_type_is_null() {
        let mut b = CopyBuf::new();
        b.val(ValType::Integer, &Val::Text("1".into()));
        assert_eq!(&b.finish()[19..23], &[0xff; 4]);
    }
}
