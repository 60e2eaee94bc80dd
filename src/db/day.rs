//! [`Day`]: a calendar day in UTC, stored as a PostgreSQL `date` (chrono's `NaiveDate`
//! and tokio-postgres's mapping of it do the calendar and the wire format).

use chrono::{DateTime, NaiveDate, Utc};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// A UTC calendar day (proleptic Gregorian), as used for usage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(NaiveDate);

impl Day {
    /// The UTC day `time` falls on.
    pub fn of(time: SystemTime) -> Day {
        Day(DateTime::<Utc>::from(time).date_naive())
    }

    /// Today in UTC.
    pub fn today() -> Day {
        Day::of(SystemTime::now())
    }

    /// The day `n` days later (earlier for negative `n`), saturating at the ends of the
    /// calendar chrono can represent.
    pub fn add_days(self, n: i32) -> Day {
        let shifted = match chrono::Days::new(u64::from(n.unsigned_abs())) {
            days if n >= 0 => self.0.checked_add_days(days),
            days => self.0.checked_sub_days(days),
        };
        Day(shifted.unwrap_or(if n >= 0 {
            NaiveDate::MAX
        } else {
            NaiveDate::MIN
        }))
    }
}

/// `YYYY-MM-DD`.
impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

/// A string that is not a `YYYY-MM-DD` date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a YYYY-MM-DD date: {0:?}")]
pub struct ParseDayError(pub String);

impl FromStr for Day {
    type Err = ParseDayError;

    /// Parses `YYYY-MM-DD` (four-digit year, two-digit month and day).
    fn from_str(text: &str) -> Result<Day, ParseDayError> {
        let shaped = text.len() == 10
            && text.bytes().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            });
        shaped
            .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
            .flatten()
            .map(Day)
            .ok_or_else(|| ParseDayError(text.to_string()))
    }
}

impl tokio_postgres::types::ToSql for Day {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.0.to_sql(ty, out)
    }

    tokio_postgres::types::accepts!(DATE);
    tokio_postgres::types::to_sql_checked!();
}

impl<'a> tokio_postgres::types::FromSql<'a> for Day {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Day, Box<dyn std::error::Error + Sync + Send>> {
        NaiveDate::from_sql(ty, raw).map(Day)
    }

    tokio_postgres::types::accepts!(DATE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use tokio_postgres::types::{FromSql, ToSql, Type};

    #[test]
    fn parses_and_prints() {
        let day: Day = "2024-03-01".parse().unwrap();
        assert_eq!(day.to_string(), "2024-03-01");
        assert_eq!(day.add_days(-1).to_string(), "2024-02-29");
        assert_eq!(day.add_days(365).to_string(), "2025-03-01");
        for bad in [
            "2024-3-01",
            "2024-02-30",
            "2023-02-29",
            "20240301",
            "2024-0a-01",
            "+024-01-01",
            "2024-13-01",
        ] {
            assert!(bad.parse::<Day>().is_err(), "{bad}");
        }
    }

    #[test]
    fn instants_fall_on_their_utc_day() {
        assert_eq!(Day::of(UNIX_EPOCH).to_string(), "1970-01-01");
        assert_eq!(
            Day::of(UNIX_EPOCH - Duration::from_secs(1)).to_string(),
            "1969-12-31"
        );
        assert_eq!(
            Day::of(UNIX_EPOCH + Duration::from_secs(86_399)).to_string(),
            "1970-01-01"
        );
    }

    #[test]
    fn adding_days_saturates_instead_of_panicking() {
        let day: Day = "2024-03-01".parse().unwrap();
        assert_eq!(day.add_days(i32::MAX), Day(NaiveDate::MAX));
        assert_eq!(day.add_days(i32::MIN), Day(NaiveDate::MIN));
    }

    #[test]
    fn binary_date_encoding() {
        let day: Day = "2000-01-02".parse().unwrap();
        let mut out = bytes::BytesMut::new();
        day.to_sql(&Type::DATE, &mut out).unwrap();
        assert_eq!(&out[..], &1i32.to_be_bytes(), "days since 2000-01-01");
        assert_eq!(Day::from_sql(&Type::DATE, &out).unwrap(), day);
        assert!(Day::from_sql(&Type::DATE, &i32::MAX.to_be_bytes()).is_err());
    }
}
