//! Binary COPY streams (`COPY … FROM STDIN (FORMAT binary)`, the format of the Postgres `COPY`
//! docs): the encoder the sink writes batches with, and the benchmark its ceiling with.
//!
//! The sink writes by array binding for now (see the sink module: the driver does not set
//! TCP_NODELAY, so each COPY waits ~40 ms for a delayed ACK); [`staging_type`] and
//! [`staging_cast`] describe the staging tables a COPY path uses.
//!
//! Only types whose binary form is fixed and simple are sent in it: text, int4, int8, bool,
//! date and timestamptz. Numeric, jsonb, uuid and text[] values are sent as their text and cast
//! by Postgres in the `INSERT … SELECT` that follows the COPY into a staging table, exactly as
//! the array-binding path did: Postgres parses them, so no amount ever passes through a float
//! and an unparsable value is refused with the same SQLSTATE as before.

use crate::value::{Val, ValType};
use chrono::{DateTime, NaiveDate, Utc};

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

    /// A value of a column of static type `ty`, in the binary form of the staging column type
    /// [`staging_type`] gives. A value of another runtime type than `ty` is NULL, as the
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
            (
                ValType::Json
                | ValType::Text
                | ValType::Numeric
                | ValType::Jsonb
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

/// The type of a staging column holding values of `ty` as [`CopyBuf::val`] encodes them.
pub fn staging_type(ty: ValType) -> &'static str {
    match ty {
        ValType::Integer => "int4",
        ValType::BigInt => "int8",
        ValType::Boolean => "bool",
        ValType::Date => "date",
        ValType::Timestamp => "timestamptz",
        ValType::Json
        | ValType::Text
        | ValType::Numeric
        | ValType::Jsonb
        | ValType::Uuid
        | ValType::TextArray => "text",
    }
}

/// The cast from the staging column to the value's own type, where they differ (Postgres
/// parses the text exactly; an unparsable value fails with class 22, like any refused row).
pub fn staging_cast(ty: ValType) -> Option<&'static str> {
    match ty {
        ValType::Numeric => Some("numeric"),
        ValType::Jsonb => Some("jsonb"),
        ValType::Uuid => Some("uuid"),
        ValType::TextArray => Some("text[]"),
        _ => None,
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
    fn a_value_of_another_runtime_type_is_null() {
        let mut b = CopyBuf::new();
        b.val(ValType::Integer, &Val::Text("1".into()));
        assert_eq!(&b.finish()[19..23], &[0xff; 4]);
    }
}
