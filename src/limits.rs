//! Abuse limits: failed attempts counted per subject over a window, with a lockout once too
//! many fail. Time comes in as an argument, so tests drive it with a manual clock.

use std::collections::HashMap;
use std::time::Duration;

use crate::core::{retry_after_secs, Timestamp};

/// Most subjects remembered; beyond, expired entries are dropped first.
const MAX_SUBJECTS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureLimit {
    /// Failures allowed within `window` before the subject is locked out.
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Timestamp,
    locked_until: Option<Timestamp>,
}

#[derive(Debug)]
pub struct FailureLimiter {
    limit: FailureLimit,
    entries: HashMap<String, Entry>,
}

impl FailureLimiter {
    pub fn new(limit: FailureLimit) -> Self {
        FailureLimiter {
            limit,
            entries: HashMap::new(),
        }
    }

    /// `Err(seconds)` while `who` is locked out.
    pub fn check(&self, who: &str, now: Timestamp) -> Result<(), u64> {
        match self.entries.get(who).and_then(|e| e.locked_until) {
            Some(until) if now < until => Err(retry_after_secs(now, until)),
            _ => Ok(()),
        }
    }

    /// Counts a failure; returns true if it locked `who` out.
    pub fn fail(&mut self, who: &str, now: Timestamp) -> bool {
        if self.entries.len() >= MAX_SUBJECTS {
            let limit = self.limit;
            self.entries.retain(|_, e| {
                e.locked_until.is_some_and(|u| now < u)
                    || now < e.window_start.saturating_add(limit.window)
            });
        }
        let limit = self.limit;
        let e = self.entries.entry(who.to_owned()).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
        });
        if now >= e.window_start.saturating_add(limit.window) {
            *e = Entry {
                failures: 0,
                window_start: now,
                locked_until: None,
            };
        }
        e.failures += 1;
        if e.failures >= limit.max_failures {
            e.locked_until = Some(now.saturating_add(limit.lockout));
            e.failures = 0;
            e.window_start = now.saturating_add(limit.lockout);
            return true;
        }
        false
    }
}

/// At most `limit` requests per subject in each fixed `window`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    counts: HashMap<String, (Timestamp, u32)>,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            counts: HashMap::new(),
        }
    }

    /// Counts one request of `who`; `Err(seconds)` if it is over the limit.
    pub fn hit(&mut self, who: &str, now: Timestamp) -> Result<(), u64> {
        let window = self.window;
        if self.counts.len() >= MAX_SUBJECTS {
            self.counts
                .retain(|_, (start, _)| now < start.saturating_add(window));
        }
        let (start, n) = self.counts.entry(who.to_owned()).or_insert((now, 0));
        if now >= start.saturating_add(window) {
            *start = now;
            *n = 0;
        }
        if *n >= self.limit {
            return Err(retry_after_secs(now, start.saturating_add(window)));
        }
        *n += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_millis(1_800_000_000_000 + s * 1000)
    }

    fn limiter() -> FailureLimiter {
        FailureLimiter::new(FailureLimit {
            max_failures: 3,
            window: Duration::from_secs(600),
            lockout: Duration::from_secs(900),
        })
    }

    #[test]
    fn too_many_failures_lock_out_for_the_lockout() {
        let mut l = limiter();
        assert!(!l.fail("a", t(0)));
        assert!(!l.fail("a", t(1)));
        assert!(l.fail("a", t(2)));
        assert_eq!(l.check("a", t(3)), Err(899));
        assert!(l.check("b", t(3)).is_ok(), "others are not affected");
        assert!(l.check("a", t(902)).is_ok());
    }

    #[test]
    fn rates_are_limited_per_subject_and_window() {
        let mut r = RateLimiter::new(2, Duration::from_secs(60));
        assert!(r.hit("ip", t(0)).is_ok());
        assert!(r.hit("ip", t(1)).is_ok());
        assert_eq!(r.hit("ip", t(2)), Err(58));
        assert!(r.hit("other", t(2)).is_ok());
        assert!(r.hit("ip", t(60)).is_ok());
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_add_up() {
        let mut l = limiter();
        l.fail("a", t(0));
        l.fail("a", t(1));
        assert!(!l.fail("a", t(700)));
        assert!(l.check("a", t(701)).is_ok());
    }
}
