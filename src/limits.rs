//! Abuse limits: request rates and failed attempts counted per subject (a client address, its
//! network prefix, a session, a key), and the names they are counted under. Time comes in as
//! an argument, so tests drive it with a manual clock.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::core::{retry_after_secs, Timestamp};

/// Most subjects remembered; beyond, expired entries are dropped first.
const MAX_SUBJECTS: usize = 100_000;

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
    /// Wrong access codes, per `client` value.
    RedeemClient,
    /// Wrong access codes, per key.
    RedeemKey,
}

impl Limit {
    pub const ALL: [Limit; 8] = [
        Limit::PageIp,
        Limit::PagePrefix,
        Limit::PageSession,
        Limit::KeyRate,
        Limit::RenewLease,
        Limit::RenewIp,
        Limit::RedeemClient,
        Limit::RedeemKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::PageIp => "page_ip",
            Limit::PagePrefix => "page_prefix",
            Limit::PageSession => "page_session",
            Limit::KeyRate => "key_rate",
            Limit::RenewLease => "renew_lease",
            Limit::RenewIp => "renew_ip",
            Limit::RedeemClient => "redeem_client",
            Limit::RedeemKey => "redeem_key",
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

    #[test]
    fn failures_spread_beyond_the_window_do_not_add_up() {
        let mut l = limiter();
        l.fail("a", t(0));
        l.fail("a", t(1));
        assert!(!l.fail("a", t(700)));
        assert!(l.check("a", t(701)).is_ok());
    }
}
