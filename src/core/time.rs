//! Time as the core sees it: instants handed in by the caller, never read from a clock.

use std::time::Duration;

/// Milliseconds since the Unix epoch. Only the edges (a [`crate::clock::Clock`]) make one
/// from the wall clock; the core compares and adds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

/// Width of one wheel tick. Deadlines are rounded *up* to a tick, so an entry never fires
/// before its deadline, and at most one tick after it (invariant 5).
pub const TICK_MS: u64 = 1000;

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_sub(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The first tick at or after this instant: where a deadline is filed in the wheel.
    pub fn tick_ceil(self) -> u64 {
        self.0.div_ceil(TICK_MS)
    }

    /// The tick this instant falls in: entries filed at or before it are due.
    pub fn tick_floor(self) -> u64 {
        self.0 / TICK_MS
    }
}

/// Whole seconds from `now` to `later`, rounded up, at least 1: what `Retry-After` carries.
pub fn retry_after_secs(now: Timestamp, later: Timestamp) -> u64 {
    later.since(now).as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_a_tick_and_instants_down() {
        assert_eq!(Timestamp::from_millis(1000).tick_ceil(), 1);
        assert_eq!(Timestamp::from_millis(1001).tick_ceil(), 2);
        assert_eq!(Timestamp::from_millis(1999).tick_floor(), 1);
    }

    #[test]
    fn retry_after_is_never_zero() {
        let t = Timestamp::from_millis(5000);
        assert_eq!(retry_after_secs(t, t), 1);
        assert_eq!(retry_after_secs(t, Timestamp::from_millis(6001)), 2);
    }
}
