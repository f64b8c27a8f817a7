//! Window arithmetic (DESIGN "Math"): which minutes a window at time `t` merges.
//!
//! Windows up to 2h are minute-exact: the minutes starting at or after
//! `floor_minute(t) − W + 1m`, up to and including the open minute. Windows of 6h and longer
//! start at the hour boundary at or before that minute, so they may hold up to 59 extra minutes.

use std::fmt;
use std::ops::RangeInclusive;

use crate::clock::minute_of;

/// A reporting window; the label values are the ones DESIGN fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    M1,
    M5,
    M30,
    H1,
    H2,
    H6,
    D1,
    D3,
    D7,
    D30,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 10] = [
        Window::M1,
        Window::M5,
        Window::M30,
        Window::H1,
        Window::H2,
        Window::H6,
        Window::D1,
        Window::D3,
        Window::D7,
        Window::D30,
    ];

    /// Length in minutes.
    pub const fn minutes(self) -> u64 {
        match self {
            Window::M1 => 1,
            Window::M5 => 5,
            Window::M30 => 30,
            Window::H1 => 60,
            Window::H2 => 120,
            Window::H6 => 360,
            Window::D1 => 1_440,
            Window::D3 => 4_320,
            Window::D7 => 10_080,
            Window::D30 => 43_200,
        }
    }

    /// The `window` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Window::M1 => "1m",
            Window::M5 => "5m",
            Window::M30 => "30m",
            Window::H1 => "1h",
            Window::H2 => "2h",
            Window::H6 => "6h",
            Window::D1 => "1d",
            Window::D3 => "3d",
            Window::D7 => "7d",
            Window::D30 => "30d",
        }
    }

    /// Whether the window is minute-exact (DESIGN: up to 2h).
    pub const fn is_minute_exact(self) -> bool {
        self.minutes() <= 120
    }

    /// The minute indexes (since the epoch) this window merges at `now_nanos`, open minute
    /// included.
    pub fn minute_range(self, now_nanos: u64) -> RangeInclusive<u64> {
        let open = minute_of(now_nanos);
        let first = (open + 1).saturating_sub(self.minutes());
        let first = if self.is_minute_exact() {
            first
        } else {
            first - first % 60
        };
        first..=open
    }
}

impl std::str::FromStr for Window {
    type Err = String;

    /// A window by its label (`5m`, `1h`, `30d`).
    fn from_str(label: &str) -> Result<Self, String> {
        Window::ALL
            .into_iter()
            .find(|w| w.label() == label)
            .ok_or_else(|| {
                let known: Vec<_> = Window::ALL.iter().map(|w| w.label()).collect();
                format!(
                    "`{label}` is not a window; it is one of {}",
                    known.join(", ")
                )
            })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MINUTE_NANOS;

    const T0: u64 = 28_999_980 * MINUTE_NANOS; // a minute boundary that is also an hour boundary

    #[test]
    fn one_minute_window_is_the_open_minute() {
        let m = minute_of(T0);
        assert_eq!(Window::M1.minute_range(T0), m..=m);
        assert_eq!(Window::M1.minute_range(T0 + MINUTE_NANOS - 1), m..=m);
        assert_eq!(Window::M1.minute_range(T0 + MINUTE_NANOS), m + 1..=m + 1);
    }

    #[test]
    fn five_minute_window_includes_open_minute_and_four_before() {
        let m = minute_of(T0);
        let r = Window::M5.minute_range(T0 + 30 * 1_000_000_000);
        assert_eq!(r, m - 4..=m);
        assert_eq!(r.count(), 5);
    }

    #[test]
    fn hour_window_just_before_and_after_a_boundary() {
        let m = minute_of(T0);
        assert_eq!(Window::H1.minute_range(T0 - 1), m - 60..=m - 1);
        assert_eq!(Window::H1.minute_range(T0), m - 59..=m);
    }

    #[test]
    fn long_windows_start_on_an_hour_boundary() {
        let m = minute_of(T0) + 17; // 17 minutes into an hour
        let now = m * MINUTE_NANOS + 5;
        let r = Window::H6.minute_range(now);
        assert_eq!(*r.end(), m);
        assert_eq!(r.start() % 60, 0);
        // t − W + 1m lies 18 minutes into the hour 6 h ago; the window starts at that hour.
        assert_eq!(*r.start(), m - 360 + 1 - 18);
        assert!(r.count() as u64 - 360 < 60);
    }

    #[test]
    fn windows_near_the_epoch_do_not_underflow() {
        assert_eq!(Window::D30.minute_range(0), 0..=0);
    }

    #[test]
    fn labels_match_design() {
        let labels: Vec<_> = Window::ALL.iter().map(|w| w.label()).collect();
        assert_eq!(
            labels,
            ["1m", "5m", "30m", "1h", "2h", "6h", "1d", "3d", "7d", "30d"]
        );
    }
}
