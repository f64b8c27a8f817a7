//! Proration, exact: a line's cost spread over the UTC hours of its charge period in
//! proportion to the time it covers in each. Every share but the last is rounded toward zero
//! to the unit (`10^-12`), and the last hour takes the remainder, so the shares sum back to the
//! line exactly. Money stays in `i128` units; no float is involved.

use super::periods::HOUR_NANOS;

/// Most hours one line is spread over: a charge period longer than 400 days is no bill line.
pub const MAX_HOURS: i64 = 400 * 24;

/// Why a line cannot be prorated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProrateError {
    #[error("the charge period ends before it starts")]
    Backwards,
    #[error("the charge period covers {0} hours (at most {MAX_HOURS})")]
    TooLong(i64),
}

/// `cost` (units of `10^-12`) of the charge period `[start, end)` (UTC nanoseconds), as
/// `(hour start, share)` for each hour it covers, in order; the shares sum to `cost`. A period
/// of no length puts the whole cost in the hour of its start.
pub fn prorate(start: i64, end: i64, cost: i128) -> Result<Vec<(i64, i128)>, ProrateError> {
    if end < start {
        return Err(ProrateError::Backwards);
    }
    let first = start.div_euclid(HOUR_NANOS) * HOUR_NANOS;
    if end == start {
        return Ok(vec![(first, cost)]);
    }
    let hours = (end - first + HOUR_NANOS - 1) / HOUR_NANOS;
    if hours > MAX_HOURS {
        return Err(ProrateError::TooLong(hours));
    }
    let total = i128::from(end - start);
    let (negative, magnitude) = (cost < 0, cost.unsigned_abs());
    // cost × covered / total without overflow: (q·total + r) × covered / total
    // = q × covered + r × covered / total, where r < total ≤ 400 days of nanoseconds, so
    // r × covered < 1.2e33, and q × covered ≤ cost.
    let total_u = total.unsigned_abs();
    let (q, r) = (magnitude / total_u, magnitude % total_u);
    let mut shares = Vec::with_capacity(usize::try_from(hours).unwrap_or(0));
    let mut given: i128 = 0;
    let mut hour = first;
    while hour < end {
        let covered = (end.min(hour + HOUR_NANOS) - start.max(hour)).unsigned_abs() as u128;
        let share = q * covered + r * covered / total_u;
        // `share` ≤ `magnitude`, which came from an i128.
        let share = i128::try_from(share).unwrap_or(i128::MAX);
        let share = if negative { -share } else { share };
        shares.push((hour, share));
        given += share;
        hour += HOUR_NANOS;
    }
    if let Some(last) = shares.last_mut() {
        last.1 += cost - given;
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit_cost::periods::{DAY_NANOS, Period};
    use proptest::prelude::*;

    const MINUTE: i64 = 60_000_000_000;
    /// $1 in units.
    const USD: i128 = 1_000_000_000_000;

    #[test]
    fn a_line_of_three_and_a_half_hours() {
        // $7.00 from 10:15 to 13:45: 45 min, 60, 60, 45 of 210 minutes.
        let start = 10 * HOUR_NANOS + 15 * MINUTE;
        let shares = prorate(start, start + 210 * MINUTE, 7 * USD).unwrap();
        let hours: Vec<i64> = shares.iter().map(|(h, _)| h / HOUR_NANOS).collect();
        assert_eq!(hours, [10, 11, 12, 13]);
        // 7 × 45/210 = 1.5, 7 × 60/210 = 2.
        let cost: Vec<i128> = shares.iter().map(|(_, c)| *c).collect();
        assert_eq!(cost, [USD * 3 / 2, 2 * USD, 2 * USD, USD * 3 / 2]);
    }

    #[test]
    fn thirds_leave_their_remainder_to_the_last_hour() {
        // $1 over 3 hours: 0.333333333333 twice, then 0.333333333334.
        let shares = prorate(0, 3 * HOUR_NANOS, USD).unwrap();
        let cost: Vec<i128> = shares.iter().map(|(_, c)| *c).collect();
        assert_eq!(cost, [333_333_333_333, 333_333_333_333, 333_333_333_334]);
        // A credit is split the same way, toward zero.
        let credit: Vec<i128> = prorate(0, 3 * HOUR_NANOS, -USD)
            .unwrap()
            .iter()
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(
            credit,
            [-333_333_333_333, -333_333_333_333, -333_333_333_334]
        );
    }

    #[test]
    fn a_sunday_to_monday_line_splits_at_the_iso_week() {
        // $10.00 from Sunday 2026-12-06 20:00 to Monday 2026-12-07 04:00 UTC: 4 hours in each
        // ISO week, $5.00 each.
        let sunday = 20_793 * DAY_NANOS;
        let start = sunday + 20 * HOUR_NANOS;
        let shares = prorate(start, start + 8 * HOUR_NANOS, 10 * USD).unwrap();
        let mut weeks = std::collections::BTreeMap::<i64, i128>::new();
        for (hour, share) in shares {
            *weeks.entry(Period::Week.start(hour)).or_default() += share;
        }
        let monday = 20_794 * DAY_NANOS;
        assert_eq!(
            weeks.into_iter().collect::<Vec<_>>(),
            [(monday - 7 * DAY_NANOS, 5 * USD), (monday, 5 * USD)]
        );
    }

    #[test]
    fn odd_periods_are_refused_or_kept_whole() {
        assert_eq!(prorate(10, 5, USD), Err(ProrateError::Backwards));
        assert_eq!(prorate(7, 7, USD).unwrap(), [(0, USD)]);
        assert!(matches!(
            prorate(0, 401 * DAY_NANOS, USD),
            Err(ProrateError::TooLong(_))
        ));
        // The largest cost the store holds, over a month, does not overflow.
        let big = 10_i128.pow(37);
        let shares = prorate(0, 31 * DAY_NANOS, big).unwrap();
        assert_eq!(shares.iter().map(|(_, c)| c).sum::<i128>(), big);
    }

    proptest! {
        /// Random charge periods from a minute to a month, with boundaries at any second, and
        /// costs with 10 decimals: the hours sum back to the line exactly, each share lies
        /// within one unit of its exact proportion (the last takes the remainder), and every
        /// hour covered has a share.
        #[test]
        fn shares_sum_back_exactly(
            start_s in 0_i64..(4 * 365 * 86_400),
            length_s in 60_i64..(31 * 86_400),
            cost in -(10_i128.pow(16))..10_i128.pow(16),
        ) {
            let cost = cost * 100; // 10 decimals of the 12
            let (start, end) = (start_s * 1_000_000_000, (start_s + length_s) * 1_000_000_000);
            let shares = prorate(start, end, cost).unwrap();
            prop_assert_eq!(shares.iter().map(|(_, c)| c).sum::<i128>(), cost);
            prop_assert_eq!(shares.first().unwrap().0, Period::Hour.start(start));
            prop_assert_eq!(shares.last().unwrap().0, Period::Hour.start(end - 1));
            for (hour, share) in &shares[..shares.len() - 1] {
                let covered = i128::from(end.min(hour + HOUR_NANOS) - start.max(*hour));
                let exact = cost * covered;
                let total = i128::from(end - start);
                // |share × total − cost × covered| < total
                prop_assert!((share * total - exact).abs() < total);
            }
        }
    }
}
