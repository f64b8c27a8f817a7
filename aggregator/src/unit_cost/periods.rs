//! The calendar periods cost is reported by: the UTC hour, the UTC day and the ISO week
//! (Monday to Sunday, UTC), each named by the instant it starts.

/// Nanoseconds in an hour.
pub const HOUR_NANOS: i64 = 3_600_000_000_000;
/// Nanoseconds in a day.
pub const DAY_NANOS: i64 = 24 * HOUR_NANOS;

/// A calendar period (the `period` label: `hour`, `day`, `week`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Hour,
    Day,
    Week,
}

impl Period {
    /// Every period, shortest first.
    pub const ALL: [Period; 3] = [Period::Hour, Period::Day, Period::Week];

    /// Its `period` label.
    pub const fn label(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
        }
    }

    /// The start of the period holding `at` (UTC nanoseconds since the epoch).
    pub fn start(self, at: i64) -> i64 {
        match self {
            Period::Hour => at.div_euclid(HOUR_NANOS) * HOUR_NANOS,
            Period::Day => at.div_euclid(DAY_NANOS) * DAY_NANOS,
            Period::Week => {
                // 1970-01-01 was a Thursday: days since the epoch + 3 counts from a Monday.
                let day = at.div_euclid(DAY_NANOS);
                (day - (day + 3).rem_euclid(7)) * DAY_NANOS
            }
        }
    }

    /// The start of the period after the one starting at `start`.
    pub fn next(self, start: i64) -> i64 {
        start
            + match self {
                Period::Hour => HOUR_NANOS,
                Period::Day => DAY_NANOS,
                Period::Week => 7 * DAY_NANOS,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// UTC nanoseconds of `days` since the epoch plus `hours`.
    fn at(days: i64, hours: i64) -> i64 {
        days * DAY_NANOS + hours * HOUR_NANOS
    }

    #[test]
    fn weeks_start_on_monday_in_utc() {
        // 2026-11-30 is a Monday (day 20 787); 2026-12-06 a Sunday.
        let monday = at(20_787, 0);
        for day in 20_787..20_794 {
            assert_eq!(Period::Week.start(at(day, 23) + 59), monday, "{day}");
        }
        assert_eq!(Period::Week.start(at(20_794, 0)), at(20_794, 0));
        assert_eq!(Period::Week.next(monday), at(20_794, 0));
        // The epoch's week started on Monday 1969-12-29; before the epoch too.
        assert_eq!(Period::Week.start(0), at(-3, 0));
        assert_eq!(Period::Week.start(-1), at(-3, 0));
        assert_eq!(Period::Day.start(at(5, 7) + 1), at(5, 0));
        assert_eq!(Period::Hour.start(at(5, 7) + 1), at(5, 7));
        assert_eq!(Period::Hour.start(-1), -HOUR_NANOS);
    }
}
