//! Traffic: what each pool was asked for and how long its numbers were held, in five-minute
//! buckets kept a week, and what that says about the pool's size (Erlang-B, [`super::erlang`]).
//!
//! The offered load of a pool in Erlangs is the rate of requests for a new number (granted,
//! answered with a shared code, or refused alike: what was *offered*, not what was carried)
//! times the mean time a number stays held per lease: the lease's lifetime (measured on the
//! leases that ended) plus the quarantine after it. Buckets change in memory as operations
//! happen; `flush` (run by every tick) writes the buckets changed since the last one, so the
//! hot path writes nothing more and a crash loses at most the last tick's counts.

use std::collections::BTreeMap;
use std::time::Duration;

use super::erlang::{erlang_b, servers_for};
use super::lease::LeaseSettings;
use super::outbox::Outbox;
use super::time::Timestamp;
use super::types::PoolId;
use super::Effect;

/// The blocking a pool is sized for unless asked otherwise: 1% of requests find no number.
pub const DEFAULT_BLOCKING: f64 = 0.01;

/// Width of a bucket: the step by which the busiest hour slides.
pub const BUCKET_MS: u64 = 5 * 60 * 1000;
/// Buckets in a window (an hour).
pub const WINDOW_BUCKETS: u64 = 12;
/// Buckets in a week: the windows considered for the busiest hour end in the last week.
pub const WEEK_BUCKETS: u64 = 7 * 24 * WINDOW_BUCKETS;
/// Buckets kept: a week of windows' ends, and the hour before the first.
pub const KEEP_BUCKETS: u64 = WEEK_BUCKETS + WINDOW_BUCKETS;

/// A pool's counts in one bucket. Kept and persisted as they are; the windows add them up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Requests for a new number that got one.
    pub granted: u32,
    /// Requests for a new number answered with a code on the shared number (none was free,
    /// or the page had used its share).
    pub shared: u32,
    /// Requests for a new number refused: no number, no code.
    pub refused: u32,
    /// Leases on pool numbers that ended in this bucket…
    pub ended: u32,
    /// …their lifetimes (creation to end) summed, in milliseconds…
    pub held_ms: u64,
    /// …and how many of them had not received a call by their end.
    pub never_called: u32,
    /// The most numbers held (leased or cooling) seen at a request in this bucket.
    pub peak_in_use: u32,
}

impl Bucket {
    pub fn requests(&self) -> u64 {
        u64::from(self.granted) + u64::from(self.shared) + u64::from(self.refused)
    }

    fn add(&mut self, o: &Bucket) {
        self.granted = self.granted.saturating_add(o.granted);
        self.shared = self.shared.saturating_add(o.shared);
        self.refused = self.refused.saturating_add(o.refused);
        self.ended = self.ended.saturating_add(o.ended);
        self.held_ms = self.held_ms.saturating_add(o.held_ms);
        self.never_called = self.never_called.saturating_add(o.never_called);
        self.peak_in_use = self.peak_in_use.max(o.peak_in_use);
    }

    /// Takes `o`'s counts back out of a sum that holds them (not the peak, which no sum keeps).
    fn sub(&mut self, o: &Bucket) {
        self.granted = self.granted.saturating_sub(o.granted);
        self.shared = self.shared.saturating_sub(o.shared);
        self.refused = self.refused.saturating_sub(o.refused);
        self.ended = self.ended.saturating_sub(o.ended);
        self.held_ms = self.held_ms.saturating_sub(o.held_ms);
        self.never_called = self.never_called.saturating_sub(o.never_called);
    }
}

/// How a request for a new number was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Granted,
    Shared,
    Refused,
}

/// A pool's traffic over one window, and the load it offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub from: Timestamp,
    pub to: Timestamp,
    /// The window's buckets added up (`peak_in_use`: their greatest).
    pub counts: Bucket,
    /// Mean lifetime of a lease: measured on the leases that ended in the window, else on
    /// the week's, else the pool's `ttl` (nothing ended yet).
    pub lifetime: Duration,
    /// How long a number is held per lease: `lifetime` plus the quarantine after it.
    pub holding: Duration,
    /// Requests a second times `holding` in seconds.
    pub erlangs: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        let secs = self.to.since(self.from).as_secs_f64();
        match secs > 0.0 {
            true => self.counts.requests() as f64 / secs,
            false => 0.0,
        }
    }

    /// The load if each number were held `holding` per lease instead.
    fn held(&self, holding: Duration) -> f64 {
        self.rate() * holding.as_secs_f64()
    }
}

/// The capacity answer for one pool: its load now and at its busiest hour, what Erlang-B says
/// of its size, and what the two levers besides buying numbers would change.
#[derive(Clone, Debug, PartialEq)]
pub struct Capacity {
    pub size: u64,
    /// The blocking aimed at (0 < target < 1).
    pub target: f64,
    pub last_hour: Load,
    /// The hour (sliding by a bucket) of the last week with the highest offered load; at least
    /// the last hour's.
    pub busiest_hour: Load,
    /// Erlang-B blocking of `size` numbers at the last hour's load, and at the busiest's.
    pub blocking_now: f64,
    pub blocking_busiest: f64,
    /// The fewest numbers that keep blocking at the busiest hour's load under `target`.
    pub recommended: u64,
    /// Of the week's leases on pool numbers, the share that had no call by their end.
    pub never_called_share: Option<f64>,
    /// The recommendation if leases were made only on click-to-reveal (so those never called
    /// would not have been made), their holding unchanged.
    pub with_click_to_reveal: u64,
    /// The shortest quarantine allowed (the pool's `grace`), and the recommendation with it.
    pub shortest_quarantine: Duration,
    pub with_shortest_quarantine: u64,
}

/// What would save the most numbers, besides buying them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lever {
    ClickToReveal,
    ShorterQuarantine,
    /// Neither would save a number.
    None,
}

impl Lever {
    pub fn as_str(self) -> &'static str {
        match self {
            Lever::ClickToReveal => "click_to_reveal",
            Lever::ShorterQuarantine => "shorter_quarantine",
            Lever::None => "none",
        }
    }
}

impl Capacity {
    /// The lever that lowers the recommendation most (click-to-reveal on a tie: it costs no
    /// protection against late callers).
    pub fn cheapest(&self) -> Lever {
        let (reveal, quarantine) = (self.with_click_to_reveal, self.with_shortest_quarantine);
        match (
            reveal.min(quarantine) < self.recommended,
            reveal <= quarantine,
        ) {
            (false, _) => Lever::None,
            (true, true) => Lever::ClickToReveal,
            (true, false) => Lever::ShorterQuarantine,
        }
    }
}

/// What one pool was asked, bucket by bucket, and which buckets changed since the last flush.
#[derive(Debug, Default)]
struct PoolTraffic {
    buckets: BTreeMap<u64, Bucket>,
    /// Buckets changed since the last flush (the current one, mostly), without repeats in a row.
    dirty: Vec<u64>,
}

impl PoolTraffic {
    fn at(&mut self, bucket: u64) -> &mut Bucket {
        if self.dirty.last() != Some(&bucket) && !self.dirty.contains(&bucket) {
            self.dirty.push(bucket);
        }
        self.buckets.entry(bucket).or_default()
    }
}

/// Every pool's traffic, by `PoolId`.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    pools: Vec<PoolTraffic>,
}

fn bucket_of(t: Timestamp) -> u64 {
    t.as_millis() / BUCKET_MS
}

fn start_of(bucket: u64) -> Timestamp {
    Timestamp::from_millis(bucket.saturating_mul(BUCKET_MS))
}

impl Traffic {
    pub(super) fn new(pools: usize) -> Self {
        Traffic {
            pools: (0..pools).map(|_| PoolTraffic::default()).collect(),
        }
    }

    /// Room for `pools` pools (a reload added some): new ones start with no traffic.
    pub(super) fn grow(&mut self, pools: usize) {
        self.pools
            .resize_with(pools.max(self.pools.len()), PoolTraffic::default);
    }

    /// Buckets as persisted; those of pools no longer configured never reach here.
    pub(super) fn restore(pools: usize, buckets: Vec<(PoolId, u64, Bucket)>) -> Self {
        let mut t = Traffic::new(pools);
        for (pool, index, b) in buckets {
            if let Some(p) = t.pools.get_mut(pool.0 as usize) {
                p.buckets.insert(index, b);
            }
        }
        t
    }

    /// A request for a new number in `pool`, answered `how` at `now`, with `in_use` numbers
    /// held (leased or cooling) after it.
    pub(super) fn asked(&mut self, pool: PoolId, how: Asked, in_use: usize, now: Timestamp) {
        let b = self.pools[pool.0 as usize].at(bucket_of(now));
        let n = match how {
            Asked::Granted => &mut b.granted,
            Asked::Shared => &mut b.shared,
            Asked::Refused => &mut b.refused,
        };
        *n = n.saturating_add(1);
        b.peak_in_use = b.peak_in_use.max(in_use.min(u32::MAX as usize) as u32);
    }

    /// A lease on a number of `pool` ended at `at`, having lived `lived`.
    pub(super) fn ended(&mut self, pool: PoolId, at: Timestamp, lived: Duration, called: bool) {
        let b = self.pools[pool.0 as usize].at(bucket_of(at));
        b.ended = b.ended.saturating_add(1);
        b.held_ms = b
            .held_ms
            .saturating_add(lived.as_millis().min(u64::MAX as u128) as u64);
        b.never_called = b.never_called.saturating_add(u32::from(!called));
    }

    /// Writes the buckets changed since the last flush, and deletes those older than a week
    /// of windows at `now`.
    pub(super) fn flush(&mut self, now: Timestamp, out: &mut Outbox) {
        let oldest_kept = (bucket_of(now) + 1).saturating_sub(KEEP_BUCKETS);
        for (p, t) in self.pools.iter_mut().enumerate() {
            let pool = PoolId(p as u32);
            while let Some(entry) = t.buckets.first_entry() {
                if *entry.key() >= oldest_kept {
                    break;
                }
                out.effects.push(Effect::DelTraffic(pool, *entry.key()));
                entry.remove();
            }
            for index in t.dirty.drain(..) {
                if let Some(b) = t.buckets.get(&index) {
                    out.effects.push(Effect::PutTraffic(pool, index, *b));
                }
            }
        }
    }

    /// The capacity answer for `pool` of `size` numbers with `settings`, aiming at blocking
    /// `target`, at `now`.
    pub(super) fn capacity(
        &self,
        pool: PoolId,
        size: usize,
        settings: &LeaseSettings,
        target: f64,
        now: Timestamp,
    ) -> Capacity {
        let t = &self.pools[pool.0 as usize];
        let cur = bucket_of(now);
        let oldest = (cur + 1).saturating_sub(KEEP_BUCKETS);
        let mut week = Bucket::default();
        for b in t.buckets.range(oldest..=cur).map(|(_, b)| b) {
            week.add(b);
        }
        let week_lifetime = (week.ended > 0).then(|| mean_ms(week.held_ms, week.ended));
        // The load of the window ending with bucket `last`, whose buckets add up to `counts`.
        let load_of = |last: u64, counts: Bucket| {
            let lifetime = match counts.ended {
                0 => week_lifetime.unwrap_or(settings.ttl),
                n => mean_ms(counts.held_ms, n),
            };
            let mut l = Load {
                from: start_of((last + 1).saturating_sub(WINDOW_BUCKETS)),
                to: start_of(last + 1).min(now),
                counts,
                lifetime,
                holding: lifetime + settings.quarantine,
                erlangs: 0.0,
            };
            l.erlangs = l.held(l.holding);
            l
        };
        let window = |last: u64| {
            let mut counts = Bucket::default();
            for (_, b) in t
                .buckets
                .range((last + 1).saturating_sub(WINDOW_BUCKETS)..=last)
            {
                counts.add(b);
            }
            load_of(last, counts)
        };
        let last_hour = window(cur);
        // Every earlier window ending in the week, its sums slid a bucket at a time (a bucket
        // enters at its end, leaves an hour later): one pass over the buckets, whatever their
        // number. The first with the most Erlangs wins; the last hour unless one beats it.
        let mut best = (last_hour.erlangs, cur);
        let mut sum = Bucket::default();
        let mut entering = t.buckets.range(oldest..cur).peekable();
        let mut leaving = t.buckets.range(oldest..cur).peekable();
        for last in (cur + 1).saturating_sub(WEEK_BUCKETS)..cur {
            while let Some((_, b)) = entering.next_if(|(&i, _)| i <= last) {
                sum.add(b);
            }
            while let Some((_, b)) = leaving.next_if(|(&i, _)| i + WINDOW_BUCKETS <= last) {
                sum.sub(b);
            }
            if sum.requests() > 0 {
                let erlangs = load_of(last, sum).erlangs;
                if erlangs > best.0 {
                    best = (erlangs, last);
                }
            }
        }
        let busiest = match best.1 == cur {
            true => last_hour,
            false => window(best.1),
        };
        let recommended = servers_for(busiest.erlangs, target);
        let never_called_share =
            (week.ended > 0).then(|| f64::from(week.never_called) / f64::from(week.ended));
        let reveal = busiest.erlangs * (1.0 - never_called_share.unwrap_or(0.0));
        let shortest = settings.grace.min(settings.quarantine);
        let size = size as u64;
        Capacity {
            size,
            target,
            blocking_now: erlang_b(size, last_hour.erlangs),
            blocking_busiest: erlang_b(size, busiest.erlangs),
            recommended,
            never_called_share,
            with_click_to_reveal: servers_for(reveal, target),
            shortest_quarantine: shortest,
            with_shortest_quarantine: servers_for(
                busiest.held(busiest.lifetime + shortest),
                target,
            ),
            last_hour,
            busiest_hour: busiest,
        }
    }
}

fn mean_ms(total_ms: u64, n: u32) -> Duration {
    Duration::from_millis(total_ms / u64::from(n.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            ttl: Duration::from_secs(15 * 60),
            max_ttl: Duration::from_secs(7200),
            page_max_ttl: Duration::from_secs(7200),
            grace: Duration::from_secs(5 * 60),
            quarantine: Duration::from_secs(10 * 60),
            retention: Duration::from_secs(86400),
        }
    }

    /// A week and a bit after the epoch, at a bucket's start.
    fn t0() -> Timestamp {
        Timestamp::from_millis(10 * 24 * 60 * MIN)
    }

    fn at(min: u64) -> Timestamp {
        Timestamp::from_millis(t0().as_millis() + min * MIN)
    }

    #[test]
    fn offered_load_is_request_rate_times_lifetime_plus_quarantine() {
        let mut t = Traffic::new(1);
        let p = PoolId(0);
        // An hour of 2 requests a minute; every lease lives 20 minutes.
        for m in 0..60 {
            for _ in 0..2 {
                t.asked(p, Asked::Granted, 10, at(m));
            }
            t.ended(p, at(m), Duration::from_secs(20 * 60), m % 4 != 0);
        }
        let c = t.capacity(p, 50, &settings(), 0.01, at(62));
        // The last hour: the current bucket and the eleven before it, 57 minutes so far.
        let l = c.last_hour;
        assert_eq!((l.from, l.to), (at(5), at(62)));
        assert_eq!(
            l.counts.requests(),
            110,
            "the first bucket is out of the window"
        );
        assert_eq!(l.lifetime, Duration::from_secs(20 * 60));
        assert_eq!(l.holding, Duration::from_secs(30 * 60));
        // 110 requests in 57 minutes, each holding a number 30 minutes.
        let expected = 110.0 / (57.0 * 60.0) * 1800.0;
        assert!((l.erlangs - expected).abs() < 1e-9, "{}", l.erlangs);
        // The busiest hour is the one that held all 120 requests: 60 Erlangs.
        assert!((c.busiest_hour.erlangs - 60.0).abs() < 1e-9);
        assert_eq!(c.busiest_hour.from, at(0));
        assert_eq!(c.recommended, servers_for(60.0, 0.01));
        assert_eq!(c.never_called_share, Some(0.25));
        assert_eq!(c.with_click_to_reveal, servers_for(45.0, 0.01));
        // Quarantine 10 minutes to grace 5: held 25 minutes instead of 30.
        assert_eq!(c.with_shortest_quarantine, servers_for(50.0, 0.01));
        assert_eq!(c.cheapest(), Lever::ClickToReveal);
        assert!(c.blocking_busiest > c.blocking_now && c.blocking_now > 0.0);
    }

    #[test]
    fn the_busiest_hour_of_the_week_is_found_and_older_hours_are_forgotten() {
        let mut t = Traffic::new(1);
        let p = PoolId(0);
        let mut out = Outbox::new();
        // A burst three days ago (60 requests in ten minutes), a trickle now.
        for m in 0..10 {
            for _ in 0..6 {
                t.asked(p, Asked::Refused, 3, at(m));
            }
        }
        let later = 3 * 24 * 60;
        t.asked(p, Asked::Granted, 1, at(later));
        t.flush(at(later), &mut out);
        let c = t.capacity(p, 3, &settings(), 0.01, at(later));
        assert_eq!(c.busiest_hour.counts.refused, 60);
        assert_eq!(c.busiest_hour.counts.peak_in_use, 3);
        assert_eq!(c.last_hour.counts.requests(), 1);
        // No lease ended: the holding is the ttl plus the quarantine.
        assert_eq!(c.busiest_hour.holding, Duration::from_secs(25 * 60));
        assert_eq!(c.never_called_share, None);
        assert_eq!(c.with_click_to_reveal, c.recommended);

        // Eight days later the burst is gone, from memory and from disk.
        out.effects.clear();
        let much_later = later + 8 * 24 * 60;
        t.flush(at(much_later), &mut out);
        let deleted = out
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::DelTraffic(..)))
            .count();
        assert_eq!(deleted, 3, "{:?}", out.effects);
        let c = t.capacity(p, 3, &settings(), 0.01, at(much_later));
        assert_eq!(c.busiest_hour.erlangs, 0.0);
        assert_eq!(c.recommended, 0);
        assert_eq!(c.cheapest(), Lever::None);
    }

    #[test]
    fn only_changed_buckets_are_written_and_each_once() {
        let mut t = Traffic::new(2);
        let mut out = Outbox::new();
        t.asked(PoolId(1), Asked::Shared, 2, at(0));
        t.asked(PoolId(1), Asked::Granted, 2, at(1));
        t.ended(PoolId(1), at(1), Duration::from_secs(60), true);
        t.flush(at(1), &mut out);
        let b = Bucket {
            granted: 1,
            shared: 1,
            ended: 1,
            held_ms: 60_000,
            peak_in_use: 2,
            ..Bucket::default()
        };
        let index = bucket_of(at(0));
        assert_eq!(out.effects, vec![Effect::PutTraffic(PoolId(1), index, b)]);
        out.effects.clear();
        t.flush(at(2), &mut out);
        assert!(out.effects.is_empty(), "nothing changed since");
        // A late end (an expiry noticed after a restart) lands in its own bucket.
        t.ended(PoolId(0), at(0), Duration::from_secs(60), false);
        t.asked(PoolId(0), Asked::Granted, 1, at(7));
        t.flush(at(7), &mut out);
        assert_eq!(out.effects.len(), 2);
        let restored = Traffic::restore(2, vec![(PoolId(1), index, b)]);
        let c = restored.capacity(PoolId(1), 3, &settings(), 0.01, at(7));
        assert_eq!(c.last_hour.counts, b);
    }

    #[test]
    fn the_sliding_sums_find_the_busiest_hour_that_adding_each_window_up_finds() {
        let (p, q) = (PoolId(0), settings().quarantine);
        let mut t = Traffic::new(1);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let span = 8 * 24 * 60;
        for _ in 0..4000 {
            let m = next() % span;
            match next() % 3 {
                0 => t.asked(p, Asked::Granted, (next() % 50) as usize, at(m)),
                1 => t.asked(p, Asked::Refused, 50, at(m)),
                _ => t.ended(
                    p,
                    at(m),
                    Duration::from_secs(next() % 3600),
                    next() % 2 == 0,
                ),
            }
        }
        let now = at(span + 2);
        let c = t.capacity(p, 50, &settings(), 0.01, now);
        // Each window of the week added up on its own.
        let buckets = &t.pools[0].buckets;
        let cur = bucket_of(now);
        let week: Vec<&Bucket> = buckets
            .range((cur + 1 - KEEP_BUCKETS)..=cur)
            .map(|(_, b)| b)
            .collect();
        let ended: u64 = week.iter().map(|b| u64::from(b.ended)).sum();
        let held: u64 = week.iter().map(|b| b.held_ms).sum();
        let mut most = 0.0f64;
        for last in (cur + 1 - WEEK_BUCKETS)..=cur {
            let w: Vec<&Bucket> = buckets
                .range((last + 1 - WINDOW_BUCKETS)..=last)
                .map(|(_, b)| b)
                .collect();
            let requests: u64 = w.iter().map(|b| b.requests()).sum();
            let n: u64 = w.iter().map(|b| u64::from(b.ended)).sum();
            let h: u64 = w.iter().map(|b| b.held_ms).sum();
            let lifetime_ms = h.checked_div(n).unwrap_or(held / ended);
            let to = ((last + 1) * BUCKET_MS).min(now.as_millis());
            let secs = (to - (last + 1 - WINDOW_BUCKETS) * BUCKET_MS) as f64 / 1000.0;
            let erlangs = requests as f64 / secs * (lifetime_ms as f64 / 1000.0 + q.as_secs_f64());
            most = most.max(erlangs);
        }
        assert!(most > 0.0);
        assert!(
            (c.busiest_hour.erlangs - most).abs() < 1e-9 * most,
            "{} vs {most}",
            c.busiest_hour.erlangs
        );
        assert!(c.busiest_hour.erlangs >= c.last_hour.erlangs);
    }
}
