//! The pools as configured, built once and shared (`Arc`) by the core, the store, the service
//! and the HTTP edge: names ↔ ids, which pool and slot each number is, which pool each shared
//! number serves. Immutable: nothing here changes while serving, so it is read without the
//! core's lock. Ids are positions in this run's configuration only; stored records name pools.

use std::collections::HashMap as StdMap;
use std::sync::Arc;

use super::lease::PoolSpec;
use super::ticket::{Formula, PoolMode};
use super::types::{PhoneNumber, PoolId};
use super::CoreError;

type HashMap<K, V> = StdMap<K, V, ahash::RandomState>;

#[derive(Debug)]
pub struct Directory {
    pub(super) pools: Vec<PoolSpec>,
    by_name: HashMap<Arc<str>, PoolId>,
    /// Which pool and slot each pool number is, as runs of consecutive numbers sorted by
    /// their first: pools are configured as ranges, so a million-number pool is one run and
    /// a lookup a binary search over a few entries that stay in cache, not a hash-map miss.
    runs: Vec<Run>,
    /// Which pool each shared number serves.
    shared: HashMap<PhoneNumber, PoolId>,
}

/// Consecutive numbers of one pool with consecutive slots.
#[derive(Debug)]
struct Run {
    first: u64,
    len: u32,
    pool: PoolId,
    slot: u32,
}

impl Directory {
    /// Checks that names, numbers and shared numbers are each in one place only.
    pub fn new(specs: Vec<PoolSpec>) -> Result<Arc<Directory>, CoreError> {
        // The core's lease records hold a pool id in 16 bits.
        if specs.len() > usize::from(u16::MAX) + 1 {
            return Err(CoreError::Corrupt(format!(
                "{} pools: at most 65536 are served",
                specs.len()
            )));
        }
        let mut d = Directory {
            pools: Vec::with_capacity(specs.len()),
            by_name: HashMap::default(),
            runs: Vec::new(),
            shared: HashMap::default(),
        };
        let mut all: Vec<(PhoneNumber, PoolId, u32)> = Vec::new();
        for (p, spec) in specs.into_iter().enumerate() {
            let pid = PoolId(p as u32);
            if d.by_name
                .insert(Arc::from(spec.name.as_str()), pid)
                .is_some()
            {
                return Err(CoreError::Corrupt(format!(
                    "pool {} defined twice",
                    spec.name
                )));
            }
            all.extend(
                spec.numbers
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (n, pid, i as u32)),
            );
            if let Some(n) = spec.shared_number() {
                if d.shared.insert(n, pid).is_some() {
                    return Err(CoreError::Corrupt(format!(
                        "shared number {n} in two places"
                    )));
                }
            }
            d.pools.push(spec);
        }
        all.sort_unstable_by_key(|&(n, _, _)| n);
        if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(CoreError::Corrupt(format!(
                "number {} in two places",
                w[0].0
            )));
        }
        if let Some(n) = d.shared.keys().find(|&&n| Self::find(&all, n).is_some()) {
            return Err(CoreError::Corrupt(format!(
                "shared number {n} in two places"
            )));
        }
        for (n, pool, slot) in all {
            match d.runs.last_mut() {
                Some(r)
                    if r.pool == pool
                        && r.first + u64::from(r.len) == n.digits()
                        && r.slot + r.len == slot =>
                {
                    r.len += 1
                }
                _ => d.runs.push(Run {
                    first: n.digits(),
                    len: 1,
                    pool,
                    slot,
                }),
            }
        }
        Ok(Arc::new(d))
    }

    fn find(sorted: &[(PhoneNumber, PoolId, u32)], n: PhoneNumber) -> Option<usize> {
        sorted.binary_search_by_key(&n, |&(m, _, _)| m).ok()
    }

    pub fn id(&self, name: &str) -> Option<PoolId> {
        self.by_name.get(name).copied()
    }

    pub fn spec(&self, pool: PoolId) -> &PoolSpec {
        &self.pools[pool.0 as usize]
    }

    pub fn name(&self, pool: PoolId) -> &str {
        &self.pools[pool.0 as usize].name
    }

    pub fn ids(&self) -> impl Iterator<Item = PoolId> {
        (0..self.pools.len() as u32).map(PoolId)
    }

    pub fn specs(&self) -> &[PoolSpec] {
        &self.pools
    }

    /// The pool and slot of a pool number.
    pub fn slot(&self, n: PhoneNumber) -> Option<(PoolId, u32)> {
        let n = n.digits();
        let r = self.runs[..self.runs.partition_point(|r| r.first <= n)].last()?;
        let offset = n - r.first;
        (offset < u64::from(r.len)).then(|| (r.pool, r.slot + offset as u32))
    }

    /// The pool a shared number serves.
    pub fn shared_pool(&self, n: PhoneNumber) -> Option<PoolId> {
        self.shared.get(&n).copied()
    }

    /// The pool a called number belongs to, as a pool number or a shared number.
    pub fn pool_of_number(&self, n: PhoneNumber) -> Option<PoolId> {
        self.slot(n).map(|(p, _)| p).or_else(|| self.shared_pool(n))
    }

    /// The ticketing formula of a pool that sells access codes.
    pub fn formula(&self, pool: PoolId) -> Option<&Formula> {
        match &self.pools[pool.0 as usize].mode {
            PoolMode::Ticketing(f) => Some(f),
            PoolMode::Dynamic => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, numbers: &[u64]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            numbers: numbers
                .iter()
                .map(|&n| PhoneNumber::from_digits(n).unwrap())
                .collect(),
            settings: crate::core::LeaseSettings {
                ttl: std::time::Duration::from_secs(60),
                max_ttl: std::time::Duration::from_secs(60),
                page_max_ttl: std::time::Duration::from_secs(60),
                grace: std::time::Duration::ZERO,
                quarantine: std::time::Duration::ZERO,
                retention: std::time::Duration::ZERO,
            },
            on_exhausted: crate::core::OnExhausted::Reject,
            return_window: std::time::Duration::ZERO,
            fallback: None,
            mode: PoolMode::Dynamic,
            access_ttl: std::time::Duration::ZERO,
            limits: Default::default(),
        }
    }

    fn n(d: u64) -> PhoneNumber {
        PhoneNumber::from_digits(d).unwrap()
    }

    #[test]
    fn every_number_maps_to_its_pool_and_listed_position() {
        // Unsorted lists, interleaved pools and gaps: slots are positions in each pool's list.
        let a = [
            33_100_000_005,
            33_100_000_003,
            33_100_000_004,
            33_100_000_010,
        ];
        let b = [33_100_000_006, 33_100_000_007, 33_100_000_001];
        let d = Directory::new(vec![spec("a", &a), spec("b", &b)]).unwrap();
        for (i, &x) in a.iter().enumerate() {
            assert_eq!(d.slot(n(x)), Some((PoolId(0), i as u32)), "{x}");
        }
        for (i, &x) in b.iter().enumerate() {
            assert_eq!(d.slot(n(x)), Some((PoolId(1), i as u32)), "{x}");
        }
        for x in [
            33_100_000_000,
            33_100_000_002,
            33_100_000_008,
            33_100_000_011,
        ] {
            assert_eq!(d.slot(n(x)), None, "{x}");
        }
    }

    #[test]
    fn a_range_is_one_run() {
        let big: Vec<u64> = (0..100_000).map(|i| 33_800_000_000 + i).collect();
        let d = Directory::new(vec![spec("p", &big)]).unwrap();
        assert_eq!(d.runs.len(), 1);
        assert_eq!(d.slot(n(33_800_099_999)), Some((PoolId(0), 99_999)));
        assert_eq!(d.slot(n(33_800_100_000)), None);
    }

    #[test]
    fn a_number_in_two_pools_is_refused() {
        let (x, y, z) = (33_100_000_005, 33_100_000_006, 33_100_000_007);
        let e = Directory::new(vec![spec("a", &[x, y]), spec("b", &[z, y])]).unwrap_err();
        assert!(e.to_string().contains("+33100000006 in two places"), "{e}");
    }
}
