//! `from_epoch`: epoch seconds or milliseconds (e.g. the SQS SentTimestamp) to a UTC date or timestamp.

use crate::spec::{CastType, EpochUnit};
use crate::value::Val;
use crate::value::cast;
use chrono::DateTime;

/// Converts an epoch number.
pub fn from_epoch(v: &Val, unit: EpochUnit, to: CastType) -> Result<Val, String> {
    let n = match cast::apply(v.clone(), CastType::Bigint)? {
        Val::BigInt(n) => n,
        _ => return Err("epoch value is not a number".into()),
    };
    let t = match unit {
        EpochUnit::Millis => DateTime::from_timestamp_millis(n),
        EpochUnit::Seconds => DateTime::from_timestamp(n, 0),
    }
    .ok_or("epoch value out of range")?;
    Ok(if to == CastType::Date {
        Val::Date(t.date_naive())
    } else {
        Val::Timestamp(t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn millis_and_seconds() {
        let d = from_epoch(
            &Val::BigInt(1_700_000_000_000),
            EpochUnit::Millis,
            CastType::Date,
        )
        .unwrap();
        assert_eq!(d, Val::Date(NaiveDate::from_ymd_opt(2023, 11, 14).unwrap()));
        let t = from_epoch(
            &Val::Text("1700000000".into()),
            EpochUnit::Seconds,
            CastType::Timestamp,
        )
        .unwrap();
        assert_eq!(t.to_text().unwrap(), "2023-11-14T22:13:20.000Z");
        assert!(from_epoch(&Val::Text("soon".into()), EpochUnit::Millis, CastType::Date).is_err());
    }
}
