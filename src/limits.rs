//! Abuse limits: request rates and failed attempts counted per subject (a client address, its
//! network prefix, a session, a key), and the names they are counted under. Time comes in as
//! an argument, so tests drive it with a manual clock.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::core::{retry_after_secs, Timestamp};

/// Subjects remembered before the first sweep of expired ones. A sweep scans every subject,
/// so the next one waits until the map has doubled: under a flood of distinct subjects (an
/// attacker rotating IPv6 addresses) each request stays cheap (amortised O(1)) instead of
/// rescanning every live subject, and memory stays within twice what is live.
const MAX_SUBJECTS: usize = 100_000;

/// When to sweep a map of subjects: once it holds `next` of them.
#[derive(Debug)]
struct Sweep {
    next: usize,
}

impl Sweep {
    fn new() -> Self {
        Sweep { next: MAX_SUBJECTS }
    }

    /// Runs `sweep` (which drops expired subjects and returns how many are left) when the map
    /// holds `len` subjects and has grown enough since the last sweep.
    fn maybe(&mut self, len: usize, sweep: impl FnOnce() -> usize) {
        if len >= self.next {
            let left = sweep();
            self.next = MAX_SUBJECTS.max(left.saturating_mul(2));
        }
    }
}

/// Every abuse limit, as `leaseline_rejected_by_limits_total` labels it: a closed set, so the
/// label stays bounded and every series exists from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Allocations from pages, per client address.
    PageIp,
    /// Allocations from pages, per address prefix (/24, /56).
    PagePrefix,
    /// Allocations from pages, per (tenant, session).
    PageSession,
    /// Allocations per key in pools that set `allocations_per_minute_per_key`.
    KeyRate,
    /// Renewals without a site key, per lease.
    RenewLease,
    /// Renewals without a site key, per client address.
    RenewIp,
    /// Wrong access codes, per visitor address.
    RedeemIp,
    /// Wrong access codes, per visitor address prefix (/24, /56).
    RedeemPrefix,
    /// Wrong access codes, per (tenant, `client` value).
    RedeemClient,
    /// Open event streams, per lease.
    StreamLease,
    /// Open event streams, per client address.
    StreamIp,
}

impl Limit {
    pub const ALL: [Limit; 11] = [
        Limit::PageIp,
        Limit::PagePrefix,
        Limit::PageSession,
        Limit::KeyRate,
        Limit::RenewLease,
        Limit::RenewIp,
        Limit::RedeemIp,
        Limit::RedeemPrefix,
        Limit::RedeemClient,
        Limit::StreamLease,
        Limit::StreamIp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::PageIp => "page_ip",
            Limit::PagePrefix => "page_prefix",
            Limit::PageSession => "page_session",
            Limit::KeyRate => "key_rate",
            Limit::RenewLease => "renew_lease",
            Limit::RenewIp => "renew_ip",
            Limit::RedeemIp => "redeem_ip",
            Limit::RedeemPrefix => "redeem_prefix",
            Limit::RedeemClient => "redeem_client",
            Limit::StreamLease => "stream_lease",
            Limit::StreamIp => "stream_ip",
        }
    }
}

/// The network a client address belongs to for limits: its /24 (IPv4) or /56 (IPv6), what one
/// subscriber or one small hosting block usually holds, so an attacker cannot multiply its
/// allowance by using every address of its block.
pub fn prefix_of(ip: IpAddr) -> Cidr {
    let ip = ip.to_canonical();
    Cidr::new(ip, if ip.is_ipv4() { 24 } else { 56 })
}

/// An address block (`10.0.0.0/8`, `2001:db8::/32`, or one address), kept masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The block of `len` leading bits holding `addr` (`len` capped at the address's size).
    pub fn new(addr: IpAddr, len: u8) -> Cidr {
        let addr = addr.to_canonical();
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Cidr {
                    addr: IpAddr::from((u32::from(a) & mask).to_be_bytes()),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Cidr {
                    addr: IpAddr::from((u128::from(a) & mask).to_be_bytes()),
                    len,
                }
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.len) == *self
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `"10.0.0.0/8"`, `"::1"` (one address), `"2001:db8::/32"`.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let expected = || {
            format!("{s:?} is not an address or block such as \"10.0.0.1\", \"10.0.0.0/8\" or \"2001:db8::/32\"")
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| expected())?;
        let bits = if addr.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        let len = match len {
            None => bits,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= bits)
                .ok_or_else(expected)?,
        };
        Ok(Cidr::new(addr, len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// How wrong guesses are slowed down: a subject may fail `free` times; after that each further
/// failure makes it wait, `first_delay` then twice as long each time, up to `max_delay`. Its
/// failures are forgotten `forget` after the last one. Nobody is ever locked out for what
/// someone else did: each subject (an address, a prefix, a client) pays for its own failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub free: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub forget: Duration,
}

impl BackoffPolicy {
    /// How long a subject with `failures` waits after its last one.
    pub fn delay(&self, failures: u32) -> Duration {
        let Some(over) = failures.checked_sub(self.free).filter(|n| *n > 0) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
        self.first_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Timestamp,
}

/// Failures per subject, slowed by a [`BackoffPolicy`].
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    entries: HashMap<String, Failures>,
    sweep: Sweep,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            entries: HashMap::new(),
            sweep: Sweep::new(),
        }
    }

    fn live(&self, who: &str, now: Timestamp) -> Option<Failures> {
        self.entries
            .get(who)
            .copied()
            .filter(|f| now < f.last.saturating_add(self.policy.forget))
    }

    /// `Err(seconds)` while `who` must wait before trying again.
    pub fn check(&self, who: &str, now: Timestamp) -> Result<(), u64> {
        let Some(f) = self.live(who, now) else {
            return Ok(());
        };
        let until = f.last.saturating_add(self.policy.delay(f.count));
        if now < until {
            return Err(retry_after_secs(now, until));
        }
        Ok(())
    }

    /// Counts a failure of `who` at `now`.
    pub fn fail(&mut self, who: &str, now: Timestamp) {
        let (forget, entries) = (self.policy.forget, &mut self.entries);
        self.sweep.maybe(entries.len(), || {
            entries.retain(|_, f| now < f.last.saturating_add(forget));
            entries.len()
        });
        let count = self.live(who, now).map_or(0, |f| f.count);
        self.entries.insert(
            who.to_owned(),
            Failures {
                count: count.saturating_add(1),
                last: now,
            },
        );
    }

    /// Takes back a failure counted before the attempt's outcome was known: it succeeded.
    pub fn forgive(&mut self, who: &str) {
        if let Some(f) = self.entries.get_mut(who) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                // Nothing left to remember: a site's right codes do not fill the map.
                self.entries.remove(who);
            }
        }
    }
}

/// At most `limit` requests per subject in each fixed `window`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    counts: HashMap<String, (Timestamp, u32)>,
    sweep: Sweep,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            counts: HashMap::new(),
            sweep: Sweep::new(),
        }
    }

    /// Counts one request of `who`; `Err(seconds)` if it is over the limit.
    pub fn hit(&mut self, who: &str, now: Timestamp) -> Result<(), u64> {
        let (window, counts) = (self.window, &mut self.counts);
        self.sweep.maybe(counts.len(), || {
            counts.retain(|_, (start, _)| now < start.saturating_add(window));
            counts.len()
        });
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

    fn backoff() -> Backoff {
        Backoff::new(BackoffPolicy {
            free: 3,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3600),
            forget: Duration::from_secs(86_400),
        })
    }

    #[test]
    fn failures_past_the_free_ones_wait_twice_as_long_each_time() {
        let mut b = backoff();
        for i in 0..3 {
            b.fail("a", t(i));
            assert!(b.check("a", t(i)).is_ok(), "failure {i} is free");
        }
        b.fail("a", t(3));
        assert_eq!(b.check("a", t(3)), Err(1));
        assert!(b.check("a", t(4)).is_ok());
        b.fail("a", t(4));
        assert_eq!(b.check("a", t(4)), Err(2));
        b.fail("a", t(6));
        assert_eq!(b.check("a", t(6)), Err(4));
        assert!(b.check("b", t(6)).is_ok(), "others are not affected");
    }

    #[test]
    fn the_wait_is_capped_and_failures_are_forgotten() {
        let p = backoff().policy;
        assert_eq!(p.delay(3), Duration::ZERO);
        assert_eq!(p.delay(4 + 10), Duration::from_secs(1024));
        assert_eq!(p.delay(4 + 12), Duration::from_secs(3600));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(3600));
        let mut b = backoff();
        for i in 0..20 {
            b.fail("a", t(i * 4000));
        }
        assert_eq!(b.check("a", t(76_000)), Err(3600));
        // A day after the last failure, the subject starts afresh.
        assert!(b.check("a", t(76_000 + 86_400)).is_ok());
        b.fail("a", t(76_000 + 86_400));
        assert!(b.check("a", t(76_000 + 86_400)).is_ok(), "free again");
    }

    #[test]
    fn a_failure_counted_in_advance_can_be_taken_back() {
        let mut b = backoff();
        for i in 0..4 {
            b.fail("a", t(i));
        }
        assert_eq!(b.check("a", t(3)), Err(1));
        b.forgive("a");
        assert!(b.check("a", t(3)).is_ok());
        b.fail("right-first-time", t(4));
        b.forgive("right-first-time");
        assert!(!b.entries.contains_key("right-first-time"));
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

    /// Hits `n` distinct subjects, failing the test once `budget` is spent: a limiter that
    /// rescans every subject it knows on each new one (quadratic) gives up here quickly.
    fn many_subjects(n: usize, budget: Duration, mut hit: impl FnMut(&str)) {
        let started = std::time::Instant::now();
        for i in 0..n {
            hit(&format!("2001:db8::{i:x}"));
            if i % 1024 == 0 {
                assert!(
                    started.elapsed() < budget,
                    "{i} distinct subjects took {:?}: each new one costs a scan of all",
                    started.elapsed()
                );
            }
        }
    }

    #[test]
    fn a_flood_of_distinct_addresses_costs_each_request_little() {
        // An attacker rotating IPv6 addresses keeps more subjects live than the limiter's
        // nominal size within one window: every hit must stay cheap, not rescan them all.
        let mut r = RateLimiter::new(60, Duration::from_secs(60));
        many_subjects(3 * MAX_SUBJECTS, Duration::from_secs(10), |who| {
            let _ = r.hit(who, t(1));
        });
        // Still counting: a subject over its limit is refused.
        for _ in 0..60 {
            r.hit("203.0.113.1", t(2)).unwrap();
        }
        assert!(r.hit("203.0.113.1", t(2)).is_err());
        // Once the window is over, the flood is forgotten at the next sweep.
        many_subjects(4 * MAX_SUBJECTS, Duration::from_secs(10), |who| {
            let _ = r.hit(&format!("later-{who}"), t(120));
        });
        assert!(
            r.counts.len() <= 4 * MAX_SUBJECTS,
            "{} subjects kept: the expired ones were not dropped",
            r.counts.len()
        );
        let mut b = backoff();
        many_subjects(3 * MAX_SUBJECTS, Duration::from_secs(10), |who| {
            b.fail(who, t(1))
        });
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_prefix_is_its_slash_24_or_slash_56() {
        assert_eq!(prefix_of(ip("203.0.113.77")).to_string(), "203.0.113.0/24");
        assert_eq!(
            prefix_of(ip("::ffff:203.0.113.77")),
            prefix_of(ip("203.0.113.1"))
        );
        let v6 = prefix_of(ip("2001:db8:0:1ff::1"));
        assert_eq!(v6.to_string(), "2001:db8:0:100::/56");
        assert!(v6.contains(ip("2001:db8:0:100::9")));
        assert!(!v6.contains(ip("2001:db8:0:200::1")));
    }

    #[test]
    fn blocks_parse_with_or_without_a_length() {
        let b: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(b.to_string(), "10.0.0.0/8");
        assert!(b.contains(ip("10.200.0.1")) && !b.contains(ip("11.0.0.1")));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("192.0.2.1")));
        for bad in ["10.0.0.0/33", "proxy", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
    }
}
