//! The one clock: every window, minute boundary and age check reads time here, so tests can
//! drive the whole service with a fake clock that moves only when told to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds in one minute.
pub const MINUTE_NANOS: u64 = 60 * 1_000_000_000;

/// Source of "now" for the whole process.
#[derive(Debug)]
pub enum Clock {
    /// Wall-clock time.
    System,
    /// Test clock: starts at a fixed instant and moves only through [`Clock::advance`].
    Fake(AtomicU64),
}

impl Clock {
    /// A fake clock starting at `start`.
    pub fn fake(start: SystemTime) -> Self {
        Clock::Fake(AtomicU64::new(unix_nanos(start)))
    }

    /// Current time in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        match self {
            Clock::System => unix_nanos(SystemTime::now()),
            Clock::Fake(nanos) => nanos.load(Ordering::Acquire),
        }
    }

    /// Current time.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.now_nanos())
    }

    /// Whether this is the test clock.
    pub fn is_fake(&self) -> bool {
        matches!(self, Clock::Fake(_))
    }

    /// Moves a fake clock forward; returns the new time, or `None` for the system clock.
    pub fn advance(&self, by: Duration) -> Option<SystemTime> {
        match self {
            Clock::System => None,
            Clock::Fake(nanos) => {
                let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
                let new = nanos.fetch_add(by, Ordering::AcqRel).saturating_add(by);
                Some(UNIX_EPOCH + Duration::from_nanos(new))
            }
        }
    }
}

/// Nanoseconds since the epoch; instants before it read as 0.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Start of the minute containing `nanos`, as a minute index since the epoch.
pub fn minute_of(nanos: u64) -> u64 {
    nanos / MINUTE_NANOS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_advanced() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Clock::fake(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(60));
        assert_eq!(clock.now(), start + Duration::from_secs(60));
        assert!(Clock::System.advance(Duration::from_secs(1)).is_none());
    }

    #[test]
    fn minute_boundaries() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(MINUTE_NANOS - 1), 0);
        assert_eq!(minute_of(MINUTE_NANOS), 1);
    }
}
