//! [`Day`]: a calendar day in UTC, stored as a PostgreSQL `date`. Written by hand (days
//! since the epoch and the civil-calendar conversion) so the crate needs no date library.

use bytes::{BufMut, BytesMut};
use std::error::Error;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's date epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
const SECONDS_PER_DAY: u64 = 86_400;

/// A UTC calendar day (proleptic Gregorian), as used for usage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day {
    /// Days since 1970-01-01.
    days: i32,
}

impl Day {
    /// The day `days` after 1970-01-01 (negative: before).
    pub fn from_days_since_epoch(days: i32) -> Day {
        Day { days }
    }

    /// Days since 1970-01-01.
    pub fn days_since_epoch(self) -> i32 {
        self.days
    }

    /// The day with this year, month (1-12) and day of month, if it exists.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Day> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        // Howard Hinnant's days_from_civil (years shifted so March starts the year).
        let y = i64::from(year) - i64::from(month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        i32::try_from(days).ok().map(|days| Day { days })
    }

    /// Year, month (1-12), day of month.
    pub fn ymd(self) -> (i32, u32, u32) {
        // Howard Hinnant's civil_from_days.
        let z = i64::from(self.days) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // In range by construction: |year| < 2^31 / 365 for any i32 day count, and
        // month and day are 1-12 and 1-31.
        (year as i32, month as u32, day as u32)
    }

    /// The UTC day `time` falls on.
    pub fn of(time: SystemTime) -> Day {
        let days = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() / SECONDS_PER_DAY) as i64,
            // Before 1970: round down to the day that contains the instant.
            Err(e) => {
                let d = e.duration();
                -(d.as_secs().div_ceil(SECONDS_PER_DAY) as i64)
                    - i64::from(d.subsec_nanos() > 0 && d.as_secs() % SECONDS_PER_DAY == 0)
            }
        };
        Day {
            days: days.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
        }
    }

    /// Today in UTC.
    pub fn today() -> Day {
        Day::of(SystemTime::now())
    }

    /// The day `n` days later (earlier for negative `n`), saturating at the ends of `i32`.
    pub fn add_days(self, n: i32) -> Day {
        Day {
            days: self.days.saturating_add(n),
        }
    }

    /// Midnight UTC at the start of this day.
    pub fn start(self) -> SystemTime {
        let secs = u64::from(self.days.unsigned_abs()) * SECONDS_PER_DAY;
        if self.days >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs)
        }
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DD`.
impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// A string that is not a `YYYY-MM-DD` date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a YYYY-MM-DD date: {0:?}")]
pub struct ParseDayError(pub String);

impl FromStr for Day {
    type Err = ParseDayError;

    /// Parses `YYYY-MM-DD` (four-digit year).
    fn from_str(text: &str) -> Result<Day, ParseDayError> {
        let bad = || ParseDayError(text.to_string());
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let digits = |s: &str| {
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        let year = digits(&text[..4]).ok_or_else(bad)?;
        let month = digits(&text[5..7]).ok_or_else(bad)?;
        let day = digits(&text[8..]).ok_or_else(bad)?;
        // A four-digit year always fits an i32.
        Day::from_ymd(year as i32, month, day).ok_or_else(bad)
    }
}

impl ToSql for Day {
    /// The binary `date` format: days since 2000-01-01 as a big-endian `int4`.
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let days = self
            .days
            .checked_sub(PG_EPOCH_DAYS)
            .ok_or("date out of range")?;
        out.put_i32(days);
        Ok(IsNull::No)
    }

    accepts!(DATE);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Day {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Day, Box<dyn Error + Sync + Send>> {
        let bytes: [u8; 4] = raw.try_into().map_err(|_| "date: expected 4 bytes")?;
        let days = i32::from_be_bytes(bytes);
        if days == i32::MAX || days == i32::MIN {
            return Err("date: infinity has no calendar day".into());
        }
        let days = days.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?;
        Ok(Day { days })
    }

    accepts!(DATE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(
            Day::from_ymd(1970, 1, 1),
            Some(Day::from_days_since_epoch(0))
        );
        assert_eq!(
            Day::from_ymd(2000, 1, 1),
            Some(Day::from_days_since_epoch(PG_EPOCH_DAYS))
        );
        assert_eq!(Day::from_days_since_epoch(-1).ymd(), (1969, 12, 31));
        assert_eq!(
            Day::from_ymd(2024, 2, 29).unwrap().to_string(),
            "2024-02-29"
        );
        assert_eq!(Day::from_ymd(2023, 2, 29), None);
        assert_eq!(Day::from_ymd(2100, 2, 29), None);
        assert_eq!(Day::from_ymd(2023, 13, 1), None);
    }

    #[test]
    fn every_day_round_trips() {
        for days in -800_000..800_000 {
            let day = Day::from_days_since_epoch(days);
            let (y, m, d) = day.ymd();
            assert_eq!(Day::from_ymd(y, m, d), Some(day), "{y}-{m}-{d}");
            assert!(day.add_days(1).ymd() > (y, m, d));
        }
    }

    #[test]
    fn parses_and_prints() {
        let day: Day = "2024-03-01".parse().unwrap();
        assert_eq!(day.ymd(), (2024, 3, 1));
        assert_eq!(day.add_days(-1).to_string(), "2024-02-29");
        for bad in [
            "2024-3-01",
            "2024-02-30",
            "20240301",
            "2024-0a-01",
            "+024-01-01",
        ] {
            assert!(bad.parse::<Day>().is_err(), "{bad}");
        }
    }

    #[test]
    fn instants_fall_on_their_utc_day() {
        let day = Day::from_ymd(2024, 5, 17).unwrap();
        assert_eq!(Day::of(day.start()), day);
        assert_eq!(Day::of(day.start() + Duration::from_secs(86_399)), day);
        assert_eq!(
            Day::of(day.start() - Duration::from_secs(1)),
            day.add_days(-1)
        );
        let before = Day::from_ymd(1969, 12, 31).unwrap();
        assert_eq!(Day::of(UNIX_EPOCH - Duration::from_secs(1)), before);
        assert_eq!(Day::of(UNIX_EPOCH - Duration::from_secs(86_400)), before);
        assert_eq!(
            Day::of(UNIX_EPOCH - Duration::from_millis(86_400_500)),
            before.add_days(-1)
        );
        assert_eq!(before.start(), UNIX_EPOCH - Duration::from_secs(86_400));
    }

    #[test]
    fn binary_date_encoding() {
        let day = Day::from_ymd(2000, 1, 2).unwrap();
        let mut out = BytesMut::new();
        day.to_sql(&Type::DATE, &mut out).unwrap();
        assert_eq!(&out[..], &1i32.to_be_bytes());
        assert_eq!(Day::from_sql(&Type::DATE, &out).unwrap(), day);
        assert!(Day::from_sql(&Type::DATE, &i32::MAX.to_be_bytes()).is_err());
    }
}
