//! Where "now" comes from. Only the edges (service, tick task) read a [`Clock`]; tests use a
//! [`ManualClock`] they move by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::core::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Makes sure `now` is never before `floor` from here on (used at start-up with the last
    /// instant the store recorded).
    fn raise_to(&self, _floor: Timestamp) {}
}

/// The clock the server runs on: the wall clock read once at start, then moved on by the
/// monotonic clock. An NTP step of the wall clock while running neither expires leases early
/// (a jump forward) nor revives them (a jump back); the small drift from wall time it allows is
/// corrected at the next restart.
#[derive(Debug)]
pub struct SteadyClock {
    base_ms: AtomicU64,
    base: Instant,
}

impl SteadyClock {
    pub fn start() -> Self {
        Self::anchored(SystemClock.now())
    }

    /// A clock reading `wall` now and moving on steadily.
    pub fn anchored(wall: Timestamp) -> Self {
        SteadyClock {
            base_ms: AtomicU64::new(wall.as_millis()),
            base: Instant::now(),
        }
    }
}

impl Clock for SteadyClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(
            self.base_ms.load(Ordering::Acquire) + self.base.elapsed().as_millis() as u64,
        )
    }

    fn raise_to(&self, floor: Timestamp) {
        let behind = floor.since(self.now()).as_millis() as u64;
        self.base_ms.fetch_add(behind, Ordering::AcqRel);
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Timestamp::from_millis(ms as u64)
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(AtomicU64::new(start.as_millis()))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Timestamp) {
        self.0.store(to.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }

    fn raise_to(&self, floor: Timestamp) {
        self.0.fetch_max(floor.as_millis(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_clock_ignores_wall_clock_steps_and_never_goes_back() {
        let c = SteadyClock::anchored(Timestamp::from_millis(1_000_000));
        let a = c.now();
        assert!(a >= Timestamp::from_millis(1_000_000));
        // Whatever the wall clock does meanwhile, readings only move forward, at real speed.
        std::thread::sleep(Duration::from_millis(20));
        let b = c.now();
        assert!(b.since(a) >= Duration::from_millis(20) && b.since(a) < Duration::from_secs(5));
        c.raise_to(Timestamp::from_millis(5_000_000));
        assert!(c.now() >= Timestamp::from_millis(5_000_000));
        c.raise_to(Timestamp::from_millis(10));
        assert!(
            c.now() >= Timestamp::from_millis(5_000_000),
            "raising never lowers"
        );
    }
}
