//! The period a usage limit is counted in (the reference on models, tokens and budgets `periodic_reset`), in UTC:
//! a day from 00:00, an ISO week from Monday 00:00, a month from the 1st
//! 00:00, or forever. Usage is stored by period key, so a reset needs no job.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};

use time::{Date, Month};

use crate::limits::Reset;

const DAY_MS: i64 = 86_400_000;
/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// One counting period of a usage limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    /// The storage key: `2026-11` (monthly), `2026-11-30` (daily),
    /// `2026-W48` (weekly, ISO week-numbering year and week) or `all`.
    pub key: Arc<str>,
    /// Start, milliseconds since the Unix epoch (inclusive); `0` for `all`.
    pub start_ms: i64,
    /// End, milliseconds since the Unix epoch (exclusive), when the next
    /// period starts; `None` when the limit never resets.
    pub end_ms: Option<i64>,
}

/// The period that contains the instant `now_ms` (milliseconds since the
/// Unix epoch) for a limit that resets as `reset` (`None`: never).
///
/// Instants outside the years −9999..=9999 are clamped into them.
pub fn period_of(reset: Option<Reset>, now_ms: i64) -> Period {
    // Every period starts and ends at 00:00 UTC, so the instants of one UTC
    // day share their period: each thread keeps the last one it worked out
    // for each kind of reset (a counted request asks up to three times).
    thread_local! {
        static LAST: RefCell<[Option<(i64, Period)>; 3]> = const { RefCell::new([None, None, None]) };
    }
    let Some(r) = reset else {
        return period_uncached(None, now_ms);
    };
    let slot = match r {
        Reset::Daily => 0,
        Reset::Weekly => 1,
        Reset::Monthly => 2,
    };
    let day = now_ms.div_euclid(DAY_MS);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((d, p)) = &last[slot] {
            if *d == day {
                return p.clone();
            }
        }
        let p = period_uncached(reset, now_ms);
        last[slot] = Some((day, p.clone()));
        p
    })
}

/// [`period_of`], worked out.
fn period_uncached(reset: Option<Reset>, now_ms: i64) -> Period {
    let Some(reset) = reset else {
        static ALL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("all"));
        return Period {
            key: ALL.clone(),
            start_ms: 0,
            end_ms: None,
        };
    };
    let date = date_of(now_ms);
    match reset {
        Reset::Daily => {
            let start = day_start_ms(date);
            Period {
                key: Arc::from(format!(
                    "{:04}-{:02}-{:02}",
                    date.year(),
                    u8::from(date.month()),
                    date.day()
                )),
                start_ms: start,
                end_ms: Some(start.saturating_add(DAY_MS)),
            }
        }
        Reset::Weekly => {
            let (iso_year, week, weekday) = date.to_iso_week_date();
            let start = day_start_ms(date)
                .saturating_sub(i64::from(weekday.number_days_from_monday()) * DAY_MS);
            Period {
                key: Arc::from(format!("{iso_year:04}-W{week:02}")),
                start_ms: start,
                end_ms: Some(start.saturating_add(7 * DAY_MS)),
            }
        }
        Reset::Monthly => {
            let (year, month) = (date.year(), date.month());
            let first = Date::from_calendar_date(year, month, 1).unwrap_or(date);
            let next = match month {
                Month::December => Date::from_calendar_date(year + 1, Month::January, 1),
                m => Date::from_calendar_date(year, m.next(), 1),
            };
            Period {
                key: Arc::from(format!("{:04}-{:02}", year, u8::from(month))),
                start_ms: day_start_ms(first),
                end_ms: next.ok().map(day_start_ms),
            }
        }
    }
}

/// The UTC calendar date of an instant, clamped to what `time` represents.
fn date_of(now_ms: i64) -> Date {
    let julian = now_ms
        .div_euclid(DAY_MS)
        .saturating_add(UNIX_EPOCH_JULIAN_DAY)
        .clamp(
            i64::from(Date::MIN.to_julian_day()),
            i64::from(Date::MAX.to_julian_day()),
        );
    i32::try_from(julian)
        .ok()
        .and_then(|j| Date::from_julian_day(j).ok())
        .unwrap_or(Date::MIN)
}

/// 00:00 UTC of a date, in milliseconds since the Unix epoch.
fn day_start_ms(date: Date) -> i64 {
    (i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY) * DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use time::PrimitiveDateTime;

    fn ms(dt: PrimitiveDateTime) -> i64 {
        (dt.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn period(reset: Reset, dt: PrimitiveDateTime) -> (String, i64, Option<i64>) {
        let p = period_of(Some(reset), ms(dt));
        (p.key.to_string(), p.start_ms, p.end_ms)
    }

    #[test]
    fn the_kept_period_is_the_one_worked_out() {
        // Every instant of a span that crosses day, week, month and year
        // boundaries, in an order that comes back to days already seen.
        let start = ms(datetime!(2026-12-27 22:00));
        let hour = 3_600_000;
        let mut steps: Vec<i64> = (0..24 * 9).map(|h| start + h * hour).collect();
        steps.extend((0..24 * 9).rev().map(|h| start + h * hour + 1));
        steps.extend([i64::MIN, i64::MAX, -1, 0, start]);
        for reset in [Reset::Daily, Reset::Weekly, Reset::Monthly] {
            for &t in &steps {
                assert_eq!(
                    period_of(Some(reset), t),
                    period_uncached(Some(reset), t),
                    "{reset:?} at {t}"
                );
            }
        }
    }

    #[test]
    fn never_resetting_limit_has_one_period() {
        let p = period_of(None, ms(datetime!(2026-11-30 10:00)));
        assert_eq!(
            p,
            Period {
                key: "all".into(),
                start_ms: 0,
                end_ms: None
            }
        );
    }

    #[test]
    fn daily_period_is_the_utc_day() {
        assert_eq!(
            period(Reset::Daily, datetime!(2026-11-30 10:15:30)),
            (
                "2026-11-30".into(),
                ms(datetime!(2026-11-30 0:00)),
                Some(ms(datetime!(2026-12-01 0:00)))
            )
        );
    }

    #[test]
    fn daily_boundaries_are_exact() {
        let midnight = ms(datetime!(2026-12-01 0:00));
        assert_eq!(&*period_of(Some(Reset::Daily), midnight).key, "2026-12-01");
        assert_eq!(
            &*period_of(Some(Reset::Daily), midnight - 1).key,
            "2026-11-30"
        );
        assert_eq!(
            period_of(Some(Reset::Daily), midnight - 1).end_ms,
            Some(midnight)
        );
    }

    #[test]
    fn daily_period_rolls_over_the_year() {
        assert_eq!(
            period(Reset::Daily, datetime!(2026-12-31 23:59:59.999)),
            (
                "2026-12-31".into(),
                ms(datetime!(2026-12-31 0:00)),
                Some(ms(datetime!(2027-01-01 0:00)))
            )
        );
    }

    #[test]
    fn monthly_period_starts_on_the_first() {
        assert_eq!(
            period(Reset::Monthly, datetime!(2026-11-30 23:59:59.999)),
            (
                "2026-11".into(),
                ms(datetime!(2026-11-01 0:00)),
                Some(ms(datetime!(2026-12-01 0:00)))
            )
        );
        let first = ms(datetime!(2026-12-01 0:00));
        assert_eq!(&*period_of(Some(Reset::Monthly), first).key, "2026-12");
        assert_eq!(&*period_of(Some(Reset::Monthly), first - 1).key, "2026-11");
    }

    #[test]
    fn monthly_period_crosses_december_to_january() {
        assert_eq!(
            period(Reset::Monthly, datetime!(2026-12-15 12:00)),
            (
                "2026-12".into(),
                ms(datetime!(2026-12-01 0:00)),
                Some(ms(datetime!(2027-01-01 0:00)))
            )
        );
        assert_eq!(
            period(Reset::Monthly, datetime!(2027-01-01 0:00)).0,
            "2027-01"
        );
    }

    #[test]
    fn february_follows_leap_years() {
        // 2028 is a leap year: February has 29 days.
        assert_eq!(
            period(Reset::Monthly, datetime!(2028-02-29 12:00)),
            (
                "2028-02".into(),
                ms(datetime!(2028-02-01 0:00)),
                Some(ms(datetime!(2028-03-01 0:00)))
            )
        );
        assert_eq!(
            period(Reset::Daily, datetime!(2028-02-29 12:00)).2,
            Some(ms(datetime!(2028-03-01 0:00)))
        );
        // 2100 is not (divisible by 100, not by 400); 2000 was.
        let feb_2100 = period(Reset::Monthly, datetime!(2100-02-28 23:00));
        assert_eq!(feb_2100.2, Some(ms(datetime!(2100-03-01 0:00))));
        assert_eq!(feb_2100.2.map(|e| e - feb_2100.1), Some(28 * DAY_MS));
        let feb_2000 = period(Reset::Monthly, datetime!(2000-02-10 0:00));
        assert_eq!(feb_2000.2.map(|e| e - feb_2000.1), Some(29 * DAY_MS));
    }

    #[test]
    fn weekly_period_starts_on_monday() {
        // 2026-11-30 is a Monday, ISO week 49.
        let monday = ms(datetime!(2026-11-30 0:00));
        assert_eq!(
            period(Reset::Weekly, datetime!(2026-12-06 23:59:59.999)),
            ("2026-W49".into(), monday, Some(monday + 7 * DAY_MS))
        );
        assert_eq!(&*period_of(Some(Reset::Weekly), monday).key, "2026-W49");
        assert_eq!(&*period_of(Some(Reset::Weekly), monday - 1).key, "2026-W48");
        assert_eq!(
            period_of(Some(Reset::Weekly), monday - 1).start_ms,
            ms(datetime!(2026-11-23 0:00))
        );
    }

    #[test]
    fn weekly_period_crosses_the_year_under_its_iso_year() {
        // 2027-01-01 is a Friday in ISO week 2026-W53 (Mon 2026-12-28).
        assert_eq!(
            period(Reset::Weekly, datetime!(2027-01-01 8:00)),
            (
                "2026-W53".into(),
                ms(datetime!(2026-12-28 0:00)),
                Some(ms(datetime!(2027-01-04 0:00)))
            )
        );
        // 2024-12-30 is a Monday in ISO week 2025-W01.
        assert_eq!(
            period(Reset::Weekly, datetime!(2024-12-31 0:00)).0,
            "2025-W01"
        );
        assert_eq!(
            period(Reset::Weekly, datetime!(2025-01-05 23:59)).0,
            "2025-W01"
        );
    }

    #[test]
    fn instants_before_the_epoch_work() {
        assert_eq!(
            period(Reset::Daily, datetime!(1969-12-31 23:59:59.999)),
            ("1969-12-31".into(), -DAY_MS, Some(0))
        );
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for now in [i64::MIN, i64::MAX, 0, -1] {
            for reset in [Reset::Daily, Reset::Weekly, Reset::Monthly] {
                let p = period_of(Some(reset), now);
                assert!(!p.key.is_empty());
            }
        }
        assert_eq!(period_of(Some(Reset::Monthly), i64::MAX).end_ms, None);
    }
}
